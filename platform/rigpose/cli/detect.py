"""`rigpose detect`: 2D keypoints from each camera's video, offline, in a format `rigpose datasets ingest` reads.

Needs the `detect` extra (`pip install 'rigpose[detect]'`); the detector is imported inside the command so that
`rigpose --help` stays quick. A bad video, an existing output or a missing extra or weights file prints one red
line on stderr and exits 1.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from rigpose.cli import ui

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class Detector(StrEnum):
    """The 2D detector (rigpose.detect.DETECTORS)."""

    mediapipe = "mediapipe"
    rtmpose = "rtmpose"


class ModelSize(StrEnum):
    """Model size: MediaPipe's pose_landmarker lite/full/heavy, rtmlib's lightweight/balanced/performance."""

    lite = "lite"
    full = "full"
    heavy = "heavy"


_WEIGHTS_HELP = (
    "Weights file or folder. mediapipe: pose_landmarker_<model>.task, or a mediapipe<=0.10.21 wheel, which packages "
    "the 'full' model (default: $RIGPOSE_WEIGHTS, else ~/.cache/rigpose/weights). rtmpose: the folder of rtmlib's "
    ".onnx files (default: rtmlib's cache). Nothing is downloaded."
)


@app.command()
def detect(
    videos: Annotated[list[str], typer.Argument(
        help="One video (or folder of images) per camera, named after its rig camera: cam01.mp4 -> camera cam01.")],
    out: Annotated[str, typer.Option("--out", help="Folder for the keypoint files (created).")],
    detector: Annotated[Detector, typer.Option(
        "--detector", help="mediapipe (MediaPipe JSON, 33 landmarks) or rtmpose (OpenPose JSON, HALPE-26, needs "
                           "rtmlib).")] = Detector.mediapipe,
    model: Annotated[ModelSize, typer.Option("--model", help="Model size.")] = ModelSize.full,
    weights: Annotated[str | None, typer.Option("--weights", help=_WEIGHTS_HELP)] = None,
    every: Annotated[int, typer.Option("--every", min=1, help="Detect every N-th frame (frame numbers stay the "
                                                               "video's).")] = 1,
    max_frames: Annotated[int | None, typer.Option("--max-frames", min=1,
                                                   help="Detect at most N frames per video.")] = None,
    max_people: Annotated[int, typer.Option("--max-people", min=1,
                                            help="mediapipe: at most N people per image.")] = 4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace keypoint files that exist.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Do not show progress bars.")] = False,
) -> None:
    """Detect 2D poses in each camera's video, offline, for `rigpose datasets ingest`.

    Writes OUT/<camera>.json (mediapipe: MediaPipe JSON, read by `ingest mediapipe`) or OUT/<camera>_json/
    (rtmpose: OpenPose JSON, read by `ingest openpose`). The videos of a take must be synchronised: frame N of
    each is matched across cameras. A progress bar per video.

    Nothing is downloaded. MediaPipe's weights: Google's pose_landmarker_full.task in ~/.cache/rigpose/weights,
    or the mediapipe wheel that packages the model: pip download mediapipe==0.10.21 --no-deps
    --only-binary=:all: --python-version 3.11 -d ~/.cache/rigpose/weights. RTMPose: pip install --no-deps
    rtmlib==0.0.16, and its .onnx weights in rtmlib's cache (or --weights).

    Examples:

      rigpose detect videos/cam01.mp4 videos/cam02.mp4 --out take1/pose

      rigpose rig import-qualisys calibration/Calib.qca.txt --out take1/rig.json

      rigpose datasets ingest mediapipe take1/pose/*.json --rig take1/rig.json --out ds --split train

      rigpose detect videos/*.mp4 --out take1/pose --detector rtmpose --every 2
    """
    from rigpose.detect import DetectorUnavailableError, detect_videos

    try:
        summary = detect_videos(videos, out=out, detector=detector.value, model=model.value, weights=weights,
                                every=every, max_frames=max_frames, max_people=max_people, overwrite=overwrite,
                                progress=not no_progress)
    except (ValueError, OSError, DetectorUnavailableError) as e:
        ui.fail(" ".join(str(e).split()) or type(e).__name__)
    console = ui.console()
    table = Table(title=f"{summary.detector} {summary.model} -> {summary.out}")
    for col in ("camera", "frames", "with people", "most people", "written"):
        table.add_column(col, justify="left" if col in ("camera", "written") else "right")
    for c in summary.cameras:
        table.add_row(c.camera, f"{c.frames:,}", f"{c.frames_with_people:,}", str(c.max_people), c.output)
    console.print(table)
    console.print(Text(f"weights: {summary.weights}"), soft_wrap=True)
    files = " ".join(c.output for c in summary.cameras) if summary.ingest == "mediapipe" else summary.out
    console.print(Text(f"next: rigpose datasets ingest {summary.ingest} {files} --rig RIG.json --out DATASET "
                       "--split train"), soft_wrap=True)
