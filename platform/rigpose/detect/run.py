"""`detect_videos`: run a 2D pose detector over each camera's video, offline, and write its keypoint file(s).

One video (or image folder) per camera, named after the camera (`cam01.mp4`, as the ingests match files to rig
cameras); the videos of one take are expected to be synchronised (frame N of each shows the same instant).
`mediapipe` writes `<out>/<camera>.json` (MediaPipe JSON); `rtmpose` writes `<out>/<camera>_json/*.json`
(OpenPose JSON, HALPE-26), in the video's pixels, so its videos must have the rig cameras' resolution. Every
camera's file is checked before any detection starts: an output that exists is refused unless `overwrite`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rigpose.detect.frames import FrameSource, open_source
from rigpose.detect.writers import mediapipe_frame, write_mediapipe_json, write_openpose_frame
from rigpose.storage import url_to_fs

DETECTORS = ("mediapipe", "rtmpose")
INGEST_OF = {"mediapipe": "mediapipe", "rtmpose": "openpose"}


@dataclass(frozen=True)
class CameraResult:
    """What was written for one camera: `frames` detected, `frames_with_people` where anybody was found, `output`
    (the JSON file, or the per-frame folder)."""

    camera: str
    source: str
    frames: int
    frames_with_people: int
    max_people: int
    output: str


@dataclass(frozen=True)
class DetectSummary:
    detector: str
    model: str
    weights: str
    out: str
    cameras: list[CameraResult]

    @property
    def ingest(self) -> str:
        """The `rigpose datasets ingest` sub-command that reads what was written."""
        return INGEST_OF[self.detector]


def _output(detector: str, out: str, camera: str) -> str:
    return f"{out.rstrip('/')}/{camera}.json" if detector == "mediapipe" else f"{out.rstrip('/')}/{camera}_json"


def check_outputs(sources: list[FrameSource], *, detector: str, out: str, overwrite: bool) -> None:
    """ValueError when two sources name the same camera, or a camera's output exists and `overwrite` is off."""
    seen: dict[str, str] = {}
    for s in sources:
        if s.camera in seen:
            raise ValueError(f"{s.path} and {seen[s.camera]} are both camera {s.camera!r}: each camera's video "
                             "needs its own name (the file stem is the camera's name)")
        seen[s.camera] = s.path
    fs, _ = url_to_fs(out)
    for s in sources:
        target = _output(detector, out, s.camera)
        if not overwrite and fs.exists(url_to_fs(target)[1]):
            raise ValueError(f"{target} exists (camera {s.camera} of {s.path}): pass --overwrite to replace it")


def detect_videos(
    videos: list[str | Path],
    *,
    out: str,
    detector: str = "mediapipe",
    model: str = "full",
    weights: str | Path | None = None,
    every: int = 1,
    max_frames: int | None = None,
    max_people: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> DetectSummary:
    """Detect every `every`-th frame (at most `max_frames`) of each video and write one keypoint output per camera
    under `out` (module docstring); a rich progress bar per video on stderr unless `progress` is off."""
    if detector not in DETECTORS:
        raise ValueError(f"detector {detector!r}: expected one of {', '.join(DETECTORS)}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if not videos:
        raise ValueError("no videos given")
    sources = [open_source(v) for v in videos]
    check_outputs(sources, detector=detector, out=out, overwrite=overwrite)
    with _detector(detector, model, weights=weights, max_people=max_people) as det, _bars(progress) as bars:
        if detector == "rtmpose" and overwrite:  # else an earlier, longer run's frames stay
            _remove_frame_files(out, [s.camera for s in sources])
        results = [_detect_one(det, detector, s, out=out, every=every, max_frames=max_frames, bars=bars)
                   for s in sources]
    return DetectSummary(detector=detector, model=model, weights=det.source, out=out, cameras=results)


def _remove_frame_files(out: str, cameras: list[str]) -> None:
    fs, _ = url_to_fs(out)
    for camera in cameras:
        folder = url_to_fs(_output("rtmpose", out, camera))[1]
        if fs.isdir(folder):
            for path in fs.glob(f"{folder}/*.json"):
                fs.rm_file(path)


def _detector(detector: str, model: str, *, weights: str | Path | None, max_people: int) -> Any:
    if detector == "mediapipe":
        from rigpose.detect.mediapipe import MediaPipePose

        return MediaPipePose(model, weights=weights, max_people=max_people)
    from rigpose.detect.rtmpose import RTMPoseBody

    return RTMPoseBody(model, weights=weights)


def _bars(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[label]}"), console=Console(stderr=True), disable=not enabled)


def _detect_one(det: Any, detector: str, source: FrameSource, *, out: str, every: int, max_frames: int | None,
                bars: Any) -> CameraResult:
    total = len(source.frame_numbers(every=every, max_frames=max_frames))
    task = bars.add_task(f"detect {source.camera}", total=total, label="")
    frames: list[dict[str, Any]] = []
    num_done = with_people = most = 0
    for n, rgb in source.frames(every=every, max_frames=max_frames):
        if detector == "mediapipe":
            people = det.detect(rgb)
            frames.append(mediapipe_frame(n, people))
            found = len(people)
        else:
            kp_PK2, score_PK = det.detect(rgb)
            write_openpose_frame(out, source.camera, n, kp_PK2, score_PK)
            found = len(kp_PK2)
        num_done += 1
        with_people += found > 0
        most = max(most, found)
        bars.update(task, advance=1, total=max(total, num_done), label=f"with people: {with_people}/{num_done}")
    if num_done == 0:
        raise ValueError(f"{source.path}: no frame could be read")
    output = _output(detector, out, source.camera)
    if detector == "mediapipe":
        header = {"video": source.path, "camera": source.camera, "width": source.width, "height": source.height,
                  "fps": source.fps, "detector": f"mediapipe pose_landmarker {det.model}", "every": every}
        write_mediapipe_json(output, frames, header=header)
    bars.update(task, total=num_done, completed=num_done)
    return CameraResult(camera=source.camera, source=source.path, frames=num_done, frames_with_people=with_people,
                        max_people=most, output=posixpath.normpath(output) if "://" not in output else output)
