"""`rigpose models ...`: the MLflow model registry from the command line (list, promote, export to ONNX)."""

from __future__ import annotations

import json
import os
import time
from typing import Annotated

import typer

from rigpose.cli.ui import fail

app = typer.Typer(help="MLflow model registry: list, promote, export to ONNX.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

UriOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking/registry URI; default $MLFLOW_TRACKING_URI, else the embedded "
                           "default sqlite:///<cwd>/outputs/mlflow/mlflow.db that `rigpose train`/`demo` write.")]


def tracking_uri(uri: str | None) -> str:
    """The registry to talk to: `uri`, $MLFLOW_TRACKING_URI, or the embedded default of `rigpose train`."""
    from rigpose.config import TrainJob
    from rigpose.tracking.runs import resolve_target

    if uri:
        return uri
    return resolve_target(TrainJob(), dict(os.environ)).uri


def split_ref(ref: str) -> tuple[str, str]:
    """'NAME@ALIAS' | 'NAME/VERSION' | 'models:/...' -> (name, alias-or-version); ValueError otherwise."""
    ref = ref.removeprefix("models:/")
    for sep in ("@", "/"):
        name, found, which = ref.partition(sep)
        if found and name and which:
            return name, which
    raise ValueError(f"{ref!r}: expected NAME@ALIAS or NAME/VERSION (e.g. rigpose-lifter@champion)")


@app.command("list")
def list_command(
    name: Annotated[str, typer.Argument(help="Registered model name (the job file's tracking.model_name).")],
    uri: UriOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Versions of a registered model, newest first: aliases, key metrics and lineage (dataset, rigs, run)."""
    from rich.table import Table

    from rigpose.cli.ui import console
    from rigpose.tracking.registry import list_versions

    try:
        versions = list_versions(name, uri=tracking_uri(uri))
    except ValueError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(versions, indent=1))
        return
    table = Table(title=f"{name} ({tracking_uri(uri)})")
    metric_names = sorted({k for v in versions for k in v["metrics"]})
    for col in ("version", "aliases", "created", *metric_names, "rigs", "manifest", "run"):
        table.add_column(col, justify="right" if col in metric_names or col == "version" else "left")
    for v in versions:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created"] / 1000)) if v["created"] else "-"
        table.add_row(v["version"], " ".join(f"@{a}" for a in v["aliases"]) or "-", created,
                      *(f"{v['metrics'][m]:.4g}" if m in v["metrics"] else "-" for m in metric_names),
                      v["rig_ids"] or "-", (v["manifest_sha256"] or "-")[:12], v["run_id"] or "-")
    console().print(table)


@app.command("promote")
def promote_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to set (moved from any other version).")] = "champion",
    uri: UriOpt = None,
) -> None:
    """Point an alias (default @champion) at a version: `models:/NAME@champion` then loads that version."""
    from rigpose.tracking.registry import promote

    try:
        promote(name, version, alias, uri=tracking_uri(uri))
    except ValueError as e:
        fail(str(e))
    typer.echo(f"{name}@{alias} -> version {version}")


@app.command("export")
def export_command(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/VERSION of a registered lifter.")],
    onnx: Annotated[str, typer.Option("--onnx", help="ONNX file to write.")],
    uri: UriOpt = None,
) -> None:
    """Export a registered lifter's network to ONNX (inputs: normalised 2D `xy` [B, J, 2] and `scores` [B, J]).

    The ONNX graph is the network alone: undistort the 2D and multiply by K^-1 first (the pyfunc does this itself).
    """
    from rigpose.inference.export import export_onnx
    from rigpose.inference.models import load_model

    try:
        name, which = split_ref(ref)
        sep = "/" if which.isdigit() else "@"
        model, skeleton, _ = load_model(f"models:/{name}{sep}{which}", tracking_uri=tracking_uri(uri))
        path = export_onnx(model, onnx, skeleton=skeleton)
    except ValueError as e:
        fail(str(e))
    typer.echo(f"wrote {path} ({name}{sep}{which}, skeleton {skeleton.name})")
