"""`rigpose viz`: an HTML page to check a lifter by eye on one sequence: the 3D skeleton over time, a frame slider,
and every camera's 2D detections beside the reprojection of the 3D (`rigpose.inference.viz`).

The command is a plain function on this module's `app`, which `rigpose.cli.main` merges into `rigpose`. Bad input
(model, dataset URL, split, sequence, camera) prints one red line on stderr and exits 1.
"""

from __future__ import annotations

from typing import Annotated

import typer

from rigpose.cli import ui
from rigpose.cli.evaluate import DEFAULTS, BatchOpt, LiftMode, MultiMode, MultiOpt, SplitOpt

MAX_FRAMES = 300  # rigpose.inference.viz.MAX_FRAMES (not imported here: it pulls in torch)


def viz_command(
    model: Annotated[str, typer.Option("--model", help=(
        "Model file (model.pt), a run folder holding one, or an MLflow registry URI (models:/NAME@ALIAS, "
        "models:/NAME/VERSION, runs:/RUN_ID/model; the registry is $MLFLOW_TRACKING_URI); lifted in this process."))],
    data: Annotated[str, typer.Option("--data", help="Dataset root: local path, file:// or s3:// URL.")],
    out: Annotated[str, typer.Option("--out", help="HTML file to write (path or URL).")],
    split: SplitOpt = DEFAULTS.split,
    sequence: Annotated[str | None, typer.Option("--sequence", help=(
        "Sequence to draw: NAME, or RIG/NAME where two rigs have one of that name (default: the split's first, "
        "sorted by rig and name)."))] = None,
    mode: Annotated[LiftMode, typer.Option("--mode", help=(
        "3D drawn: the fused world pose (multi) or one camera's own lift at its own root (single)."))]
    = LiftMode("multi"),
    camera: Annotated[str | None, typer.Option("--camera", help=(
        "With --mode single: the camera whose lift is drawn (as the rig file names it; default: the rig's first)."
    ))] = None,
    multi: MultiOpt = MultiMode(DEFAULTS.multi_view.method),
    max_frames: Annotated[int, typer.Option("--max-frames", min=1, help=(
        "At most this many frames on the page, evenly spaced over the sequence (the page says so)."))]
    = MAX_FRAMES,
    batch_size: BatchOpt = DEFAULTS.batch_size,
) -> None:
    """Write a self-contained HTML page (no external files or URLs) of one sequence lifted by a model: the 3D
    skeleton (drag to turn it), a frame slider and play button, and per camera the image-sized 2D detections with
    the 3D's reprojection and the mean reprojection error (px) per frame.

    e.g. rigpose viz --model outputs/runs/demo --data outputs/datasets/demo --split test --out viz.html;
    rigpose viz --model models:/rigpose-lifter@champion --data outputs/datasets/demo --sequence cartwheel-p005-s5
    --mode single --camera 54138969 --out cartwheel.html
    """
    from rigpose.config import MultiViewConfig
    from rigpose.inference.viz import dataset_page
    from rigpose.storage import url_to_fs, write_bytes_atomic

    if camera is not None and mode.value != "single":
        ui.fail("--camera picks the camera whose lift is drawn with --mode single; --mode multi uses every camera")
    try:
        page, facts = dataset_page(model, data, split=split, sequence=sequence, mode=mode.value, camera=camera,
                                   multi_view=MultiViewConfig(method=multi.value), max_frames=max_frames,
                                   batch_size=batch_size)
        body = page.encode("utf-8")
        fs, path = url_to_fs(out)
        write_bytes_atomic(fs, path, body)
    except (ValueError, OSError) as e:
        ui.fail(str(e))
    typer.echo(f"wrote {out}: {facts['rig_id']}/{facts['sequence']}, {facts['frames']} of "
               f"{facts['num_source_frames']} frames, {facts['cameras']} cameras, {len(body) / 1e3:.0f} kB")


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("viz")(viz_command)
