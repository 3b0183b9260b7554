"""Frames of one camera, read offline: a video file (anything OpenCV's FFmpeg reads) or a folder of images.

The camera's name is the video's file stem (`cam01.mp4` -> `cam01`) or the folder's name, as the ingests match
keypoint files to rig cameras. Frame numbers are the video's own, 0-based (with `every=N`: 0, N, 2N, ...), so the
files of synchronised cameras line up frame by frame; an image folder numbers its images by the last number in
each file name when every file has a different one, else by their sorted position.

OpenCV (`opencv-python-headless`, in the `detect` extra) is imported when a source is opened.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def import_cv2() -> Any:
    """OpenCV, or a `DetectorUnavailableError` saying which extra brings it."""
    from rigpose.detect.errors import DetectorUnavailableError

    try:
        import cv2
    except ImportError:
        raise DetectorUnavailableError(
            "reading videos needs OpenCV, which is not installed: pip install 'rigpose[detect]'") from None
    return cv2


@dataclass(frozen=True)
class FrameSource:
    """One camera's frames: `path` (video file or image folder), `camera` (its name), the image size in pixels and
    `num_frames` (the container's count for a video: an estimate some formats get wrong)."""

    path: str
    camera: str
    width: int
    height: int
    num_frames: int
    fps: float | None
    images: tuple[tuple[int, str], ...] = ()  # (frame number, file) of an image folder; empty for a video

    def frame_numbers(self, *, every: int = 1, max_frames: int | None = None) -> list[int]:
        """The frame numbers `frames` yields (for a video, as far as `num_frames` is right)."""
        numbers = [n for n, _ in self.images[::every]] if self.images else list(range(0, self.num_frames, every))
        return numbers[:max_frames] if max_frames is not None else numbers

    def frames(self, *, every: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(frame number, RGB image [H, W, 3] uint8) of every `every`-th frame, at most `max_frames` of them."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        cv2 = import_cv2()
        if self.images:
            for n, file in self.images[::every][:max_frames]:
                bgr = cv2.imread(file, cv2.IMREAD_COLOR)
                if bgr is None:
                    raise ValueError(f"{file}: cannot be read as an image")
                yield n, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            return
        cap = cv2.VideoCapture(self.path)
        try:
            count, index = 0, 0
            while max_frames is None or count < max_frames:
                if index % every:
                    if not cap.grab():
                        return
                else:
                    ok, bgr = cap.read()
                    if not ok:
                        return
                    yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    count += 1
                index += 1
        finally:
            cap.release()


def open_source(path: str | Path) -> FrameSource:
    """A video file or a folder of images as a `FrameSource`; ValueError naming the path when it is neither."""
    p = Path(path)
    if p.is_dir():
        return _image_folder(p)
    if not p.is_file():
        raise ValueError(f"{p}: no such video file or image folder")
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(p))
    try:
        ok, bgr = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            raise ValueError(f"{p}: cannot be read as a video (OpenCV opened no frame of it)")
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    h, w = bgr.shape[:2]
    return FrameSource(path=str(p), camera=p.stem, width=w, height=h, num_frames=max(count, 1), fps=fps)


def _image_folder(folder: Path) -> FrameSource:
    files = sorted(str(f) for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images in the folder ({', '.join(IMAGE_SUFFIXES)})")
    numbers = [_LAST_NUMBER.search(Path(f).stem) for f in files]
    if all(numbers) and len({int(m.group(1)) for m in numbers if m}) == len(files):
        images = sorted((int(m.group(1)), f) for m, f in zip(numbers, files, strict=True) if m)
    else:
        images = list(enumerate(files))
    cv2 = import_cv2()
    first = cv2.imread(images[0][1], cv2.IMREAD_COLOR)
    if first is None:
        raise ValueError(f"{images[0][1]}: cannot be read as an image")
    h, w = first.shape[:2]
    return FrameSource(path=str(folder), camera=folder.name, width=w, height=h, num_frames=len(images), fps=None,
                       images=tuple(images))
