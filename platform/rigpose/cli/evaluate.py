"""`rigpose evaluate` and `rigpose lift`: score a saved lifter on a dataset split, or write its predictions.

The commands are plain functions on this module's `app`, which `rigpose.cli.main` merges into `rigpose`.
Bad input (model path, dataset URL, split, option values) prints one red line on stderr and exits 1.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rigpose.cli import ui
from rigpose.config import EVALUATE_MODES, MULTI_VIEW_METHODS, VIEW_MODES, EvaluateJob, load_config

DEFAULTS = EvaluateJob()  # the options' defaults are the job's: one default per setting (rigpose.config)

#: Which evaluations to run (`EvaluateOptions.mode`).
Mode = StrEnum("Mode", [(m, m) for m in EVALUATE_MODES])
#: What `rigpose lift` writes: per-view camera-frame poses, or fused world poses (`LiftOptions.mode`).
LiftMode = StrEnum("LiftMode", [(m, m) for m in VIEW_MODES])
#: The lifter's multi-view answer (`MultiViewConfig.method`).
MultiMode = StrEnum("MultiMode", [(m, m) for m in MULTI_VIEW_METHODS])


_fail = ui.fail


ModelOpt = Annotated[str, typer.Option("--model", help="Model file (model.pt) or a run folder holding one.")]
DataOpt = Annotated[str | None, typer.Option("--data", help="Dataset root: local path, file:// or s3:// URL "
                                                            "(required unless the --config file gives data).")]
SplitOpt = Annotated[str, typer.Option("--split", help="Dataset split to use.")]
MultiOpt = Annotated[MultiMode, typer.Option("--multi", help="Multi-view method of the lifter.")]
AdaptOpt = Annotated[int, typer.Option("--adapt-steps", min=0, help="Test-time adaptation steps per batch (0 = off).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Frames per batch (bounds memory).")]
MaxRowsOpt = Annotated[int | None, typer.Option("--max-rows", min=1, help="Use only the first N frames.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help=(
    "Evaluation job YAML (jobs/evaluate.yaml: data, split, multi_view, ...); options given on the command line "
    "override it."))]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help=(
    "Override a key of the job, e.g. --set multi_view.method=fusion (repeatable; options given override it)."))]
DropOpt = Annotated[list[str] | None, typer.Option("--drop-camera", help=(
    "Leave out this camera (as the rig file names it): the method never sees its 2D (repeatable), e.g. "
    "--drop-camera 54138969 --drop-camera 60457274."))]


def _job(ctx: typer.Context, config: Path | None, sets: list[str] | None, options: dict[str, tuple[str, Any]]
         ) -> EvaluateJob:
    """The job: its defaults < the --config file < --set < the options given on the command line.

    `options`: {parameter name: (job key, value)}; only parameters the user gave count (not their defaults).
    """
    sources = {name: ctx.get_parameter_source(name) for name in options}  # click's ParameterSource (Typer's copy)
    given = {key: value for name, (key, value) in options.items()
             if sources[name] is not None and sources[name].name not in ("DEFAULT", "DEFAULT_MAP")}
    try:
        job = load_config(EvaluateJob, config, sets, options=given)
    except ValueError as e:
        _fail(str(e))
    if job.data is None:
        _fail("no dataset: give --data, or data: in the --config file")
    return job


def _value(x: Any) -> Any:
    return x.value if isinstance(x, StrEnum) else x


def evaluate_command(
    ctx: typer.Context,
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = DEFAULTS.split,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the results as JSON (path or URL).")]
    = None,
    mode: Annotated[Mode, typer.Option("--mode", help="single-view, multi-view, or both.")] = Mode(
        DEFAULTS.evaluate.mode),
    multi: MultiOpt = MultiMode(DEFAULTS.multi_view.method),
    adapt_steps: AdaptOpt = DEFAULTS.multi_view.adapt_steps,
    max_rows: MaxRowsOpt = DEFAULTS.max_rows,
    batch_size: BatchOpt = DEFAULTS.batch_size,
    multi_heldout: Annotated[bool, typer.Option(
        help="Multi-view held-out-view px (re-runs the multi-view method once per left-out view).")]
    = DEFAULTS.evaluate.multi_heldout,
    drop_camera: DropOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score a lifter: MPJPE / PA / N-MPJPE / PCK@150mm (where the data has 3D), held-out-view reprojection px,
    and weighted-DLT and robust-triangulation baselines in the same table.

    --drop-camera NAME checks a method against a camera it did not see: no method is given that camera's 2D,
    but every reprojection metric still scores against it, and "dropped px" is the median error into it of the
    3D estimated without it, e.g. rigpose evaluate --model outputs/runs/demo --data outputs/datasets/demo
    --drop-camera 54138969
    """
    from rigpose.inference.evaluate import evaluate

    job = _job(ctx, config, set_, {
        "data": ("data", data), "split": ("split", split), "mode": ("evaluate.mode", _value(mode)),
        "multi": ("multi_view.method", _value(multi)), "adapt_steps": ("multi_view.adapt_steps", adapt_steps),
        "max_rows": ("max_rows", max_rows), "batch_size": ("batch_size", batch_size),
        "multi_heldout": ("evaluate.multi_heldout", multi_heldout), "drop_camera": ("drop_cameras", drop_camera)})
    modes = VIEW_MODES if job.evaluate.mode == "both" else (job.evaluate.mode,)
    try:
        result = evaluate(model, job.data, split=job.split, modes=modes, multi_view=job.multi_view,
                          batch_size=job.batch_size, max_rows=job.max_rows, json_path=json_out,
                          multi_heldout=job.evaluate.multi_heldout, drop_cameras=job.drop_cameras)
    except (ValueError, OSError) as e:
        _fail(str(e))
    print_results(result)
    if json_out:
        typer.echo(f"wrote {json_out}")


def lift_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help=(
        "Model file (model.pt) or a run folder holding one (lifted in this process), or an MLflow registry URI: "
        "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model (batch inference on Ray Data; the "
        "registry is $MLFLOW_TRACKING_URI)."))],
    data: DataOpt = None,
    out: Annotated[str, typer.Option("--out", help="Parquet file to write (path or URL).")] = ...,  # required
    split: SplitOpt = DEFAULTS.split,
    mode: Annotated[LiftMode, typer.Option("--mode", help="Per-view (single) or fused (multi) poses.")]
    = LiftMode(DEFAULTS.lift.mode),
    multi: MultiOpt = MultiMode(DEFAULTS.multi_view.method),
    adapt_steps: AdaptOpt = DEFAULTS.multi_view.adapt_steps,
    max_rows: MaxRowsOpt = DEFAULTS.max_rows,
    batch_size: BatchOpt = DEFAULTS.batch_size,
    force_ray: Annotated[bool, typer.Option(
        "--ray", help="Run a local model file on Ray Data too (registry URIs always run there).")] = False,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, help="Ray: model actors; each holds the driver's model and uses one torch thread "
        "(default: the cluster's CPUs but one; on a local Ray at most this machine's cores).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Ray: cluster to run on, e.g. ray://head:10001 (default: $RAY_ADDRESS, else a new "
        "local Ray).")] = None,
    drop_camera: DropOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Lift a dataset split and write the 3D poses as Parquet (columns: see rigpose.inference.lift).

    A registry model runs as Ray Data batch inference (rigpose.inference.lift_ray); the file is the same either way.

    --drop-camera NAME lifts without that camera's 2D (its single-view rows are null); the file's metadata
    rigpose.dropped_cameras names the cameras left out, e.g. rigpose lift --model outputs/runs/demo
    --data outputs/datasets/demo --out preds.parquet --mode multi --drop-camera 54138969
    """
    from rigpose.tracking.runs import is_model_uri

    use_ray = force_ray or is_model_uri(model)
    if not use_ray and (concurrency is not None or ray_address is not None):
        _fail("--concurrency and --ray-address are for Ray runs: give a registry model URI or add --ray")
    job = _job(ctx, config, set_, {
        "data": ("data", data), "split": ("split", split), "mode": ("lift.mode", _value(mode)),
        "multi": ("multi_view.method", _value(multi)), "adapt_steps": ("multi_view.adapt_steps", adapt_steps),
        "max_rows": ("max_rows", max_rows), "batch_size": ("batch_size", batch_size),
        "drop_camera": ("drop_cameras", drop_camera)})
    common = {"split": job.split, "out_url": out, "mode": job.lift.mode, "multi_view": job.multi_view,
              "batch_size": job.batch_size, "max_rows": job.max_rows, "drop_cameras": job.drop_cameras}
    try:
        if use_ray:
            from rigpose.cluster.connect import init_ray
            from rigpose.inference.lift_ray import lift_dataset_ray

            info = lift_dataset_ray(model, job.data, **common, concurrency=concurrency,
                                    connect=lambda: init_ray(ray_address))
        else:
            from rigpose.inference.lift import lift_dataset

            info = lift_dataset(model, job.data, **common)
    except (ValueError, OSError) as e:
        _fail(str(e))
    how = f" (model {info['model']}, Ray Data, {info['concurrency']} actors)" if use_ray else ""
    left_out = f"; cameras left out: {', '.join(info['dropped_cameras'])}" if info.get("dropped_cameras") else ""
    typer.echo(f"wrote {info['rows']} rows ({info['frames']} frames) to {info['out']}{how}{left_out}")


_COLUMNS = (("MPJPE mm", "mpjpe_mm"), ("PA-MPJPE mm", "pa_mpjpe_mm"), ("N-MPJPE mm", "n_mpjpe_mm"),
            ("PCK@150", "pck150"), ("abs MPJPE mm", "mpjpe_abs_mm"), ("held-out px", "heldout_px"),
            ("coverage", "coverage"), ("poses", "num_poses"))
_DROPPED_COLUMN = ("dropped px", "dropped_px")  # only when cameras were dropped


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
    columns = _COLUMNS
    if result.get("dropped_cameras"):
        columns = (*_COLUMNS, _DROPPED_COLUMN)
        title += f", cameras left out: {', '.join(result['dropped_cameras'])}"
    table = Table(title=title, caption=None if columns is _COLUMNS else (
        "dropped px: reprojection error into the dropped camera(s), median px, of the 3D estimated without them"))
    table.add_column("method (frame)")
    for header, _ in columns:
        table.add_column(header, justify="right")
    sections = []
    if "single" in result:
        sections.append(("single-view (camera)", result["single"]))
    for method, res in result.get("multi", {}).items():
        kind = "multi" if method == result.get("multi_mode") else "baseline"
        sections.append((f"{kind}: {method} (world)", res))
    for name, res in sections:
        table.add_row(name, *(_cell(res["overall"].get(k)) for _, k in columns), style="bold")
        for cam, metrics in res["per_camera"].items():
            table.add_row(f"  {cam}", *(_cell(metrics.get(k)) for _, k in columns))
    (console or ui.console()).print(table)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("evaluate")(evaluate_command)
app.command("lift")(lift_command)
