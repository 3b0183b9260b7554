"""Shared pieces of the ingest converters: the summary types, the writer loop with its progress bar, the split
rules (`split=` / `split_by=`, and frame ranges `split="train=0:0.8,test=0.8:1"`, see the package docstring),
reading and expanding inputs, matching a file's joints and cameras to a skeleton and a rig, and the check of
keypoints against the calibrated image size."""

from __future__ import annotations

import hashlib
import itertools
import posixpath
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rigpose.data.manifest import Manifest
from rigpose.data.schema import Frames
from rigpose.data.writer import DatasetWriter
from rigpose.rig import Rig, load_rig
from rigpose.skeleton import SKELETONS, Skeleton
from rigpose.storage import url_to_fs

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------------------- summary


@dataclass
class SequenceSummary:
    """What one input sequence contributed: rows kept and rows quarantined."""

    split: str
    rig_id: str
    sequence: str
    subject: str
    source: str
    num_rows: int
    num_quarantined: int


@dataclass
class IngestSummary:
    """The result of one ingest: rows per sequence, totals, notes (truncations, missing views) and the manifest."""

    out: str
    skeleton: str
    sequences: list[SequenceSummary]
    num_rows: int
    num_quarantined: int
    quarantine: str | None
    manifest: Manifest
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # likely input problems (keypoints outside the image, ...)
    counts: dict[str, int] = field(default_factory=dict)  # converter-specific tallies (frames without a person, ...)

    def rows_by(self, *keys: str) -> dict[tuple[str, ...], tuple[int, int, int]]:
        """(sequences, rows, quarantined) grouped by `keys` (any of split, rig_id, sequence, subject)."""
        out: dict[tuple[str, ...], tuple[int, int, int]] = {}
        for s in self.sequences:
            k = tuple(getattr(s, name) for name in keys)
            n, r, q = out.get(k, (0, 0, 0))
            out[k] = (n + 1, r + s.num_rows, q + s.num_quarantined)
        return dict(sorted(out.items()))


class _Ingest:
    """A `DatasetWriter` plus the bookkeeping for the summary. Context manager: exceptions abort the writer."""

    def __init__(self, out: str, *, skeleton: Skeleton, command: str, recipe: dict[str, Any], replace: bool,
                 max_bad_fraction: float) -> None:
        self.out = out
        self.writer = DatasetWriter(out, skeleton=skeleton, command=command, recipe=recipe, replace=replace,
                                    max_bad_fraction=max_bad_fraction)
        self.sequences: list[SequenceSummary] = []
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.counts: dict[str, int] = {}
        self._sources: dict[tuple[str, str], str] = {}

    def __enter__(self) -> _Ingest:
        self.writer.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.writer.__exit__(exc_type, exc, tb)

    def add(self, frames: Frames, rig: Rig, *, split: str, source: str) -> None:
        sequence, subject = str(frames.sequence[0]), str(frames.subject[0])
        key = (rig.rig_id, sequence)
        if key in self._sources:
            raise ValueError(
                f"{source}: field 'sequence' {sequence!r} of rig {rig.rig_id!r} was already given by "
                f"{self._sources[key]}; sequence names must be unique per rig"
            )
        self._sources[key] = source
        rows0, bad0 = self.writer.num_rows, self.writer.num_quarantined
        self.writer.add(frames, rig, split=split, source=source)
        self.sequences.append(SequenceSummary(
            split=split, rig_id=rig.rig_id, sequence=sequence, subject=subject, source=source,
            num_rows=self.writer.num_rows - rows0, num_quarantined=self.writer.num_quarantined - bad0,
        ))

    def commit(self) -> IngestSummary:
        manifest = self.writer.commit()
        w = self.writer
        return IngestSummary(
            out=self.out, skeleton=w.skeleton.name, sequences=self.sequences, num_rows=w.num_rows,
            num_quarantined=w.num_quarantined, quarantine=w.quarantine_path() if w.num_quarantined else None,
            manifest=manifest, notes=self.notes, warnings=self.warnings, counts=self.counts,
        )


@contextmanager
def _progress(enabled: bool, description: str, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr; yields `advance(label)`. Disabled: a no-op."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[label]}"), console=Console(stderr=True), disable=not enabled)
    with bar:
        task = bar.add_task(description, total=total, label="")

        def advance(label: str) -> None:
            bar.update(task, advance=1, label=label)

        yield advance


# ---------------------------------------------------------------------------------------------- splits


def parse_split_by(spec: str) -> tuple[str, list[tuple[str, float]]]:
    """`"sequence:0.8,0.1,0.1"` / `"subject:train=0.9,test=0.1"` -> (key, [(split, fraction), ...])."""
    key, sep, rest = spec.partition(":")
    if not sep or key not in ("sequence", "subject") or not rest:
        raise ValueError(f"split_by {spec!r}: expected 'sequence:F,F,F' or 'subject:NAME=F,...' (fractions)")
    parts = [p.strip() for p in rest.split(",")]
    named = all("=" in p for p in parts)
    if not named and (any("=" in p for p in parts) or len(parts) > 3):
        raise ValueError(f"split_by {spec!r}: give 1-3 fractions (train,val,test) or name every split (train=0.8)")
    pairs = [p.split("=", 1) if named else (("train", "val", "test")[i], p) for i, p in enumerate(parts)]
    out: list[tuple[str, float]] = []
    for name, value in pairs:
        try:
            frac = float(value)
        except ValueError:
            raise ValueError(f"split_by {spec!r}: {value!r} is not a number") from None
        if not 0 <= frac <= 1:
            raise ValueError(f"split_by {spec!r}: fraction {frac} of {name!r} is outside [0, 1]")
        out.append((_check_split_name(name.strip()), frac))
    if abs(sum(f for _, f in out) - 1) > 1e-6:
        raise ValueError(f"split_by {spec!r}: fractions sum to {sum(f for _, f in out):g}, not 1")
    return key, out


def hash_fraction(name: str) -> float:
    """A stable number in [0, 1) for `name` (SHA-256 of its UTF-8): the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64


def split_for(name: str, fractions: list[tuple[str, float]]) -> str:
    """The split of `name` under `fractions` ([(split, fraction)], summing to 1), by `hash_fraction`."""
    u, acc = hash_fraction(name), 0.0
    for split, frac in fractions:
        acc += frac
        if u < acc:
            return split
    return next(s for s, f in reversed(fractions) if f > 0)  # rounding at the top end


def _check_split_name(name: str) -> str:
    if not _SPLIT_NAME.match(name):
        raise ValueError(f"split name {name!r}: use letters, digits, '_', '.', '-' (it becomes a path part)")
    return name


def _split_rule(split: str | None, split_by: str | None) -> Callable[[str, str], str]:
    """(sequence, subject) -> split, from exactly one of `split` / `split_by`."""
    if (split is None) == (split_by is None):
        raise ValueError("give exactly one of split (e.g. 'train') and split_by (e.g. 'sequence:0.8,0.1,0.1')")
    if split is not None:
        fixed = _check_split_name(split)
        return lambda sequence, subject: fixed
    key, fractions = parse_split_by(split_by or "")
    if key == "sequence":
        return lambda sequence, subject: split_for(sequence, fractions)
    return lambda sequence, subject: split_for(subject, fractions)


def is_split_ranges(split: str | None) -> bool:
    """True when `split` is a frame-range spec (`train=0:0.8,...`) rather than one split name."""
    return split is not None and "=" in split


def parse_split_ranges(spec: str) -> tuple[list[tuple[str, float, float | None]], bool]:
    """`"train=0:0.7,val=0.7:0.8,test=0.8:1"` -> ([(split, start, stop), ...], fractions).

    Each part is `NAME=START:STOP`, half-open [START, STOP). When any number has a '.', every number is a fraction
    of the frame range in [0, 1] (`fractions` True); otherwise they are frame numbers (integers >= 0). An empty
    START is the beginning, an empty STOP the end (None). Ranges must not overlap; a split may have several."""
    parts = [p.strip() for p in spec.split(",")]
    numbers = [x for p in parts for x in p.partition("=")[2].split(":")]
    fractions = any("." in x for x in numbers)
    out: list[tuple[str, float, float | None]] = []
    for part in parts:
        name, eq, rng = part.partition("=")
        bounds = rng.split(":")
        if not eq or len(bounds) != 2 or not name.strip():
            raise ValueError(f"split {spec!r}: part {part!r} is not NAME=START:STOP (e.g. train=0:0.8)")
        start, stop = (_range_bound(b, fractions, spec, part) for b in bounds)
        start = 0.0 if start is None else start
        if stop is not None and stop <= start:
            raise ValueError(f"split {spec!r}: part {part!r} is empty (stop {stop:g} <= start {start:g})")
        out.append((_check_split_name(name.strip()), start, stop))
    ordered = sorted(zip(out, parts, strict=True), key=lambda r: r[0][1])
    for (a, part_a), (b, part_b) in itertools.pairwise(ordered):
        if a[2] is None or a[2] > b[1]:
            raise ValueError(f"split {spec!r}: parts {part_a!r} and {part_b!r} overlap")
    return out, fractions


def _range_bound(text: str, fractions: bool, spec: str, part: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text) if fractions else int(text)
    except ValueError:
        kind = "a number" if fractions else "a frame number (integer; give fractions with a '.', e.g. 0.8)"
        raise ValueError(f"split {spec!r}: part {part!r}: {text!r} is not {kind}") from None
    if fractions and not 0 <= value <= 1:
        raise ValueError(f"split {spec!r}: part {part!r}: {text} is outside [0, 1] (a '.' elsewhere makes every "
                         "number a fraction of the frame range)")
    if value < 0:
        raise ValueError(f"split {spec!r}: part {part!r}: frame {text} is negative")
    return float(value)


def split_of_frames(frame: np.ndarray, spec: str, *, frame_range: tuple[int, int] | None = None) -> np.ndarray:
    """Split name [T] (object; "" = in no range) of each frame number [T] under the range spec `spec`.

    Fractions are of `frame_range` (first, last frame; default the min and max of `frame`): frame f sits at
    (f - first) / (last - first + 1), in [0, 1)."""
    ranges, fractions = parse_split_ranges(spec)
    frame = np.asarray(frame, dtype=np.int64)
    out = np.full(len(frame), "", dtype=object)
    if len(frame) == 0:
        return out
    first, last = frame_range if frame_range is not None else (int(frame.min()), int(frame.max()))
    pos = (frame - first) / (last - first + 1) if fractions else frame.astype(np.float64)
    for name, start, stop in ranges:
        inside = (pos >= start) & (True if stop is None else pos < stop)
        out[inside] = name
    return out


# ---------------------------------------------------------------------------------------------- inputs


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, expected a file") from None


def expand_inputs(inputs: list[str], *, suffix: str = ".npz") -> list[str]:
    """Files as given, folders replaced by their `*<suffix>` files (sorted); ValueError when nothing is found."""
    files: list[str] = []
    for item in inputs:
        fs, path = url_to_fs(str(item))
        if fs.isdir(path):
            found = sorted(p for p in fs.ls(path, detail=False) if p.endswith(suffix) and fs.isfile(p))
            if not found:
                raise ValueError(f"{item}: folder holds no *{suffix} files")
            files += [str(item).rstrip("/") + "/" + posixpath.basename(p) for p in found]
        elif fs.exists(path):
            files.append(str(item))
        else:
            raise ValueError(f"{item}: no such file or folder")
    if not files:
        raise ValueError("no input files given")
    return files


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(str(path).rstrip("/")))[0]



# ---------------------------------------------------------------------------------------------- matching


def match_skeleton(joint_names: tuple[str, ...], skeleton: Skeleton | None, *,
                   source: str) -> tuple[Skeleton, np.ndarray]:
    """The skeleton whose joints are `joint_names` (any order) and the index array putting file joints into its
    order. `skeleton` given: the names must be exactly its joints."""
    candidates = [skeleton] if skeleton is not None else list(SKELETONS.values())
    names = set(joint_names)
    for skel in candidates:
        if set(skel.joint_names) == names and len(joint_names) == skel.num_joints:
            return skel, np.array([joint_names.index(n) for n in skel.joint_names])
    best = max(candidates, key=lambda s: len(names & set(s.joint_names)))
    unknown = [n for n in joint_names if n not in best.joint_names]
    lacking = [n for n in best.joint_names if n not in names]
    hint = "" if skeleton is not None else f" (nearest known skeleton {best.name!r})"
    raise ValueError(f"{source}: field 'joint_names' does not match skeleton {best.name!r}{hint}: unknown joints "
                     f"{unknown}, missing joints {lacking}")


def match_cameras(camera_names: tuple[str, ...], rig: Rig, *, source: str) -> np.ndarray:
    """Index array putting the file's views into the rig's camera order; ValueError unless the same set."""
    rig_names = list(rig.camera_names)
    if sorted(camera_names) != sorted(rig_names):
        unknown = [n for n in camera_names if n not in rig_names]
        lacking = [n for n in rig_names if n not in camera_names]
        raise ValueError(f"{source}: field 'camera_names' {list(camera_names)} does not match rig {rig.rig_id!r} "
                         f"cameras {rig_names}: unknown {unknown}, missing {lacking}")
    return np.array([camera_names.index(n) for n in rig_names])



def _as_rig(rig: Rig | str) -> Rig:
    return rig if isinstance(rig, Rig) else load_rig(rig)


# ---------------------------------------------------------------------------------------------- image bounds


def out_of_image_warnings(keypoints: np.ndarray, scores: np.ndarray, rig: Rig, *, source: str) -> list[str]:
    """One warning per camera whose detected keypoints fall outside its calibrated image [0, width] x [0, height].

    keypoints [T, V, J, 2] pixels in rig camera order, scores [T, V, J] (only score > 0 counts). Detectors place
    a few occluded joints just outside the frame; many, or a maximum a few pixels past the edge, usually mean the
    calibration was made at another resolution than the video (1088 vs 1080 rows, a resized export)."""
    out = []
    for v, cam in enumerate(rig.cameras):
        xy = keypoints[:, v][scores[:, v] > 0]  # [N, 2]
        xy = xy[np.isfinite(xy).all(-1)]
        outside = (xy[:, 0] < 0) | (xy[:, 0] > cam.width) | (xy[:, 1] < 0) | (xy[:, 1] > cam.height)
        if not outside.any():
            continue
        lo, hi = xy.min(0), xy.max(0)
        out.append(f"{source}: camera {cam.name!r}: {int(outside.sum())} of {len(xy)} keypoints "
                   f"({outside.mean():.1%}) fall outside its calibrated image {cam.width}x{cam.height} px (x seen "
                   f"{lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f}, max coordinate {hi.max():.1f}); check that "
                   "the calibration was made at the video's resolution")
    return out
