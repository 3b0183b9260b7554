"""`rigpose evaluate` and `rigpose lift`: score a saved lifter on a dataset split, or write its predictions.

The commands are plain functions; `register(app)` adds them to a Typer app (the `rigpose` CLI does that).
Bad input (model path, dataset URL, split, option values) prints one red line on stderr and exits 1.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rigpose.cli import ui

DEFAULT_BATCH_SIZE = 512  # rows per batch; memory grows linearly with it


class Mode(StrEnum):
    """Which evaluations to run."""

    single = "single"
    multi = "multi"
    both = "both"


class LiftMode(StrEnum):
    """What `rigpose lift` writes: per-view camera-frame poses, or fused world poses."""

    single = "single"
    multi = "multi"


class MultiMode(StrEnum):
    """The lifter's multi-view answer: fused lifts, fused + refined against all 2D, or test-time adapted + fused."""

    fusion = "fusion"
    refinement = "refinement"
    adaptation = "adaptation"


_fail = ui.fail


ModelOpt = Annotated[str, typer.Option("--model", help="Model file (model.pt) or a run folder holding one.")]
DataOpt = Annotated[str, typer.Option("--data", help="Dataset root: local path, file:// or s3:// URL.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Dataset split to use.")]
MultiOpt = Annotated[MultiMode, typer.Option("--multi", help="Multi-view method of the lifter.")]
AdaptOpt = Annotated[int, typer.Option("--adapt-steps", min=0, help="Test-time adaptation steps per batch (0 = off).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Frames per batch (bounds memory).")]
MaxRowsOpt = Annotated[int | None, typer.Option("--max-rows", min=1, help="Use only the first N frames.")]


def evaluate_command(
    model: ModelOpt,
    data: DataOpt,
    split: SplitOpt = "test",
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the results as JSON (path or URL).")]
    = None,
    mode: Annotated[Mode, typer.Option("--mode", help="single-view, multi-view, or both.")] = Mode.both,
    multi: MultiOpt = MultiMode.fusion,
    adapt_steps: AdaptOpt = 0,
    max_rows: MaxRowsOpt = None,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    multi_heldout: Annotated[bool, typer.Option(
        help="Multi-view held-out-view px (re-runs the multi-view method once per left-out view).")] = True,
) -> None:
    """Score a lifter: MPJPE / PA / N-MPJPE / PCK@150mm (where the data has 3D), held-out-view reprojection px,
    and weighted-DLT and robust-triangulation baselines in the same table."""
    from rigpose.inference.evaluate import evaluate

    modes = ("single", "multi") if mode is Mode.both else (mode.value,)
    try:
        result = evaluate(model, data, split=split, modes=modes, multi_mode=multi.value, adapt_steps=adapt_steps,
                          batch_size=batch_size, max_rows=max_rows, json_path=json_out,
                          multi_heldout=multi_heldout)
    except (ValueError, OSError) as e:
        _fail(str(e))
    print_results(result)
    if json_out:
        typer.echo(f"wrote {json_out}")


def lift_command(
    model: Annotated[str, typer.Option("--model", help=(
        "Model file (model.pt) or a run folder holding one (lifted in this process), or an MLflow registry URI: "
        "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model (batch inference on Ray Data; the "
        "registry is $MLFLOW_TRACKING_URI)."))],
    data: DataOpt,
    out: Annotated[str, typer.Option("--out", help="Parquet file to write (path or URL).")],
    split: SplitOpt = "test",
    mode: Annotated[LiftMode, typer.Option("--mode", help="Per-view (single) or fused (multi) poses.")]
    = LiftMode.single,
    multi: MultiOpt = MultiMode.fusion,
    adapt_steps: AdaptOpt = 0,
    max_rows: MaxRowsOpt = None,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    force_ray: Annotated[bool, typer.Option(
        "--ray", help="Run a local model file on Ray Data too (registry URIs always run there).")] = False,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, help="Ray: model actors; each loads the model once and uses one torch thread "
        "(default: the cluster's CPUs but one; on a local Ray at most this machine's cores).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Ray: cluster to run on, e.g. ray://head:10001 (default: $RAY_ADDRESS, else a new "
        "local Ray).")] = None,
) -> None:
    """Lift a dataset split and write the 3D poses as Parquet (columns: see rigpose.inference.lift).

    A registry model runs as Ray Data batch inference (rigpose.inference.lift_ray); the file is the same either way.
    """
    from rigpose.tracking.registry import is_model_uri

    use_ray = force_ray or is_model_uri(model)
    if not use_ray and (concurrency is not None or ray_address is not None):
        _fail("--concurrency and --ray-address are for Ray runs: give a registry model URI or add --ray")
    try:
        if use_ray:
            from rigpose.cluster.connect import init_ray
            from rigpose.inference.lift_ray import lift_dataset_ray

            info = lift_dataset_ray(model, data, split=split, out_url=out, mode=mode.value, multi_mode=multi.value,
                                    adapt_steps=adapt_steps, batch_size=batch_size, max_rows=max_rows,
                                    concurrency=concurrency, connect=lambda: init_ray(ray_address))
        else:
            from rigpose.inference.lift import lift_dataset

            info = lift_dataset(model, data, split=split, out_url=out, mode=mode.value, multi_mode=multi.value,
                                adapt_steps=adapt_steps, batch_size=batch_size, max_rows=max_rows)
    except (ValueError, OSError) as e:
        _fail(str(e))
    how = f" (model {info['model']}, Ray Data, {info['concurrency']} actors)" if use_ray else ""
    typer.echo(f"wrote {info['rows']} rows ({info['frames']} frames) to {info['out']}{how}")


_COLUMNS = (("MPJPE mm", "mpjpe_mm"), ("PA-MPJPE mm", "pa_mpjpe_mm"), ("N-MPJPE mm", "n_mpjpe_mm"),
            ("PCK@150", "pck150"), ("abs MPJPE mm", "mpjpe_abs_mm"), ("held-out px", "heldout_px"),
            ("coverage", "coverage"), ("poses", "num_poses"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if value <= 1.0 else f"{value:.1f}"


def print_results(result: dict[str, Any], *, console: Console | None = None) -> None:
    """The evaluation as one rich table: a row per method (overall), then its cameras."""
    title = f"{result['split']} of {result['data']}: {result['num_frames']} frames"
    if not result.get("has_3d"):
        title += " (no 3D labels: label-free metric only)"
    table = Table(title=title)
    table.add_column("method (frame)")
    for header, _ in _COLUMNS:
        table.add_column(header, justify="right")
    sections = []
    if "single" in result:
        sections.append(("single-view (camera)", result["single"]))
    for method, res in result.get("multi", {}).items():
        kind = "multi" if method == result.get("multi_mode") else "baseline"
        sections.append((f"{kind}: {method} (world)", res))
    for name, res in sections:
        table.add_row(name, *(_cell(res["overall"].get(k)) for _, k in _COLUMNS), style="bold")
        for cam, metrics in res["per_camera"].items():
            table.add_row(f"  {cam}", *(_cell(metrics.get(k)) for _, k in _COLUMNS))
    (console or ui.console()).print(table)


def register(app: typer.Typer) -> None:
    """Add `evaluate` and `lift` to `app`."""
    app.command("evaluate")(evaluate_command)
    app.command("lift")(lift_command)
