"""Converters from published 2D/3D pose files into a RigPose dataset (schema v1): interchange npz, VideoPose3D's
Human3.6M and HumanEva-I files, COCO-keypoints JSON. Each returns an `IngestSummary`.

Common to every converter
-------------------------
- Output: `out` is a dataset root on any fsspec URL (local path, `file://`, `s3://`). Rows go through
  `DatasetWriter`: shards first, `manifest.json` last, so a failed ingest leaves the dataset exactly as it was.
  Appending to an existing dataset is allowed; a (rig, sequence) already there is refused unless `replace=True`.
  A sequence name given twice within one ingest is refused (it would silently merge two inputs).
- Bad rows (an infinite value, a NaN keypoint with a non-zero score, no valid view) go to
  `<out>/_quarantine/<token>.parquet` with their reason; the ingest commits only when the bad fraction is at most
  `max_bad_fraction` (default 1%), else nothing is ingested. Missing = NaN keypoint with score 0: that is kept.
- Bad input raises `ValueError` (`DatasetError` from the store) in one line naming the file and the field.
- Split by `split="train"` (one split for everything) or `split_by="sequence:0.8,0.1,0.1"`: each sequence goes to
  train/val/test by a hash of its name (SHA-256 -> a number in [0, 1) -> the split whose cumulative fraction
  covers it). The hash depends on the name only, so adding files never moves old sequences. One to three
  fractions mean train[,val[,test]]; `sequence:train=0.9,test=0.1` names them; `subject:...` hashes the subject
  instead (keeps each actor in one split). Fractions must sum to 1. Split names: letters, digits, `_.-`.
- Inputs may be local paths or fsspec URLs. The interchange npz is read with `allow_pickle=False`; VideoPose3D's
  files are pickled dicts by design and are unpickled: ingest them only from a source you trust.

`ingest_npz`: the interchange npz (../DESIGN.md table), one file per sequence; folders are searched for `*.npz`
(not recursively). Unknown keys are refused (a typo must not silently drop a field). `joint_names` must be a known
skeleton's names (any order: joints are reordered to the skeleton's; `skeleton=` forces one); `camera_names` must be
the rig's camera names (any order: views are reordered to the rig's order). `keypoints` float [T, V, J, 2];
`scores` [T, V, J] in [0, 1] (default 1, 0 where the keypoint is NaN); `frame` integer [T] strictly increasing
(default 0..T-1); `sequence` default = the file stem; `subject` default "unknown"; `joints_3d` [T, J, 3] metres,
evaluation only. All files of one ingest share the rig and the skeleton.

`ingest_h36m`: VideoPose3D's `data_3d_h36m.npz` (`positions_3d[subject][action]` = [T, 32, 3] metres, optional)
and `data_2d_h36m_<detector>.npz` (`positions_2d[subject][action]` = 4 arrays [T, 17, 2|3] pixels in the rig's
camera order, `metadata`). Rig per subject: `<rigs_dir>/h36m-<subject>.json` (e.g. h36m-s9.json). Split: S1, S5,
S6, S7, S8 train; S9, S11 test. Sequence = action name, subject = "S1"... 3D: 32 joints -> h36m17. When the 2D
and 3D lengths differ (a few frames in the real files) the sequence is cut to the shortest and a note says so.
2D with `metadata["layout_name"] == "coco"` (detectron) is ingested as coco17 without 3D (different joints).

`ingest_humaneva`: VideoPose3D's `data_3d_humaneva15.npz` / `data_2d_humaneva15_<detector>.npz`; subject keys
`Train/S1`, `Validate/S2`, `Unlabeled/Train/S1`...; 3 cameras from `<rigs_dir>/humaneva-s<N>.json`; 15 joints.
Split: `Train/*` -> train, `Validate/*` -> test; `Unlabeled/*` (no mocap) is skipped unless
`include_unlabeled=True`, then goes to split "unlabeled" (usable for 2D-supervised training, kept apart so that
test-period video never slips into train by default). Subject = "S1"; sequence = "<prefix>/<action>", e.g.
"Train/Walking 1 chunk0" (action names kept as-is).

In both VideoPose3D converters a camera entry that is missing, None or empty becomes a NaN view with score 0 (never
dropped) and a note; a third channel in the 2D is the detector score; `subjects=` restricts the subjects
(`S1` or a full key such as `Validate/S1`); a missing rig file is an error naming it.

`ingest_coco`: one COCO-keypoints JSON per camera, the i-th file = the rig's i-th camera. A file is either a
dataset file (`images` + `annotations`) or a results list (`[{image_id, keypoints, score}, ...]`). Frame index =
the last integer in each image's file-name stem when every image has one (and they are unique), else the image id.
Per image the best person annotation (`category_id` 1 or absent) is kept: highest `score`, else most labelled
keypoints, then largest area. The third value per keypoint: when every value of a file is 0, 1 or 2 it is COCO
visibility (v = 0 -> missing; otherwise score = the annotation's `score`, or 1 for ground truth), otherwise it is a
detector confidence in [0, 1] (0 -> missing). Frames = the union over cameras; a camera without that frame or
without a person there -> NaN view with score 0; frames with no person in any camera are left out with a note.
Skeleton coco17.

Shape letters: T frames, V views (cameras), J joints.
"""

from __future__ import annotations

import hashlib
import io
import json
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

from rigpose.data.schema import Frames, frames_for_rig
from rigpose.data.store import DEFAULT_MAX_BAD_FRACTION, DatasetWriter, Manifest
from rigpose.rig import Rig, load_rig
from rigpose.skeleton import COCO17, H36M17, HUMANEVA15, SKELETONS, Skeleton, get_skeleton, h36m32_to_h36m17
from rigpose.storage import url_to_fs

NPZ_FIELDS = ("keypoints", "scores", "joint_names", "camera_names", "frame", "sequence", "subject", "joints_3d")
NPZ_REQUIRED = ("keypoints", "joint_names", "camera_names")
H36M_SPLITS = {"S1": "train", "S5": "train", "S6": "train", "S7": "train", "S8": "train", "S9": "test", "S11": "test"}
HUMANEVA_SPLITS = {"Train": "train", "Validate": "test"}
UNLABELED_SPLIT = "unlabeled"
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
            manifest=manifest, notes=self.notes,
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


# ---------------------------------------------------------------------------------------------- interchange npz


@dataclass
class NpzSequence:
    """One validated interchange npz, as stored (file joint and view order)."""

    source: str
    keypoints: np.ndarray  # [T, V, J, 2] float32
    scores: np.ndarray | None  # [T, V, J] float32
    joint_names: tuple[str, ...]
    camera_names: tuple[str, ...]
    frame: np.ndarray | None  # [T] int64
    sequence: str
    subject: str
    joints_3d: np.ndarray | None  # [T, J, 3] float32


def _npz_field(z: Any, name: str, source: str) -> np.ndarray:
    try:
        return np.asarray(z[name])
    except ValueError as e:  # object arrays with allow_pickle=False
        raise ValueError(f"{source}: field {name!r} cannot be read without unpickling ({e}); save strings as a "
                         "NumPy unicode array, numbers as numeric arrays") from None


def _npz_float(z: Any, name: str, source: str, shape: tuple[int | None, ...]) -> np.ndarray:
    a = _npz_field(z, name, source)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{source}: field {name!r} has dtype {a.dtype}, expected float32")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape, strict=True)):
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{source}: field {name!r} has shape {list(a.shape)}, expected {want}")
    return a.astype(np.float32, copy=False)


def _npz_strings(z: Any, name: str, source: str, *, scalar: bool) -> Any:
    a = _npz_field(z, name, source)
    if a.dtype.kind not in "US":
        raise ValueError(f"{source}: field {name!r} has dtype {a.dtype}, expected strings")
    if a.dtype.kind == "S":
        a = a.astype(str)
    if scalar:
        if a.size != 1:
            raise ValueError(f"{source}: field {name!r} has shape {list(a.shape)}, expected one string")
        return str(a.reshape(-1)[0])
    if a.ndim != 1:
        raise ValueError(f"{source}: field {name!r} has shape {list(a.shape)}, expected [n] strings")
    return tuple(str(s) for s in a)


def read_interchange_npz(path: str) -> NpzSequence:
    """Read and check one interchange npz (keys, dtypes, shapes, score range, frame order); ValueError naming
    the file and the field on any problem."""
    data = _read_bytes(path)
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError... all mean the same thing here
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if not hasattr(z, "files"):
        raise ValueError(f"{path}: a single array, expected an .npz archive with named fields")
    unknown = sorted(set(z.files) - set(NPZ_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known: {', '.join(NPZ_FIELDS)}")
    missing = [k for k in NPZ_REQUIRED if k not in z.files]
    if missing:
        raise ValueError(f"{path}: missing required field(s) {missing}")
    kp = _npz_float(z, "keypoints", path, (None, None, None, 2))
    T, V, J, _ = kp.shape
    if T == 0:
        raise ValueError(f"{path}: field 'keypoints' has no frames (T = 0)")
    seq = NpzSequence(
        source=path, keypoints=kp,
        scores=_npz_float(z, "scores", path, (T, V, J)) if "scores" in z.files else None,
        joint_names=_npz_strings(z, "joint_names", path, scalar=False),
        camera_names=_npz_strings(z, "camera_names", path, scalar=False),
        frame=_npz_frame(z, path, T) if "frame" in z.files else None,
        sequence=_npz_strings(z, "sequence", path, scalar=True) if "sequence" in z.files else _stem(path),
        subject=_npz_strings(z, "subject", path, scalar=True) if "subject" in z.files else "unknown",
        joints_3d=_npz_float(z, "joints_3d", path, (T, J, 3)) if "joints_3d" in z.files else None,
    )
    for name, names, n in (("joint_names", seq.joint_names, J), ("camera_names", seq.camera_names, V)):
        if len(names) != n:
            raise ValueError(f"{path}: field {name!r} has {len(names)} names, keypoints have {n}")
        if len(set(names)) != n:
            dup = sorted({x for x in names if names.count(x) > 1})
            raise ValueError(f"{path}: field {name!r} has duplicates: {dup}")
    if seq.scores is not None:
        bad = np.isfinite(seq.scores) & ((seq.scores < 0) | (seq.scores > 1))
        if bad.any():
            t, v, j = np.argwhere(bad)[0]
            raise ValueError(f"{path}: field 'scores' outside [0, 1]: {seq.scores[t, v, j]} at frame row {t}, "
                             f"view {v}, joint {j}")
    return seq


def _npz_frame(z: Any, source: str, T: int) -> np.ndarray:
    frame = _npz_field(z, "frame", source)
    if not np.issubdtype(frame.dtype, np.integer):
        raise ValueError(f"{source}: field 'frame' has dtype {frame.dtype}, expected int64")
    if frame.shape != (T,):
        raise ValueError(f"{source}: field 'frame' has shape {list(frame.shape)}, expected [{T}]")
    steps = np.diff(frame)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(f"{source}: field 'frame' not strictly increasing: {frame[i]} then {frame[i + 1]} "
                         f"at row {i + 1}")
    return frame.astype(np.int64)


def write_interchange_npz(path: str, *, keypoints: np.ndarray, joint_names: Any, camera_names: Any,
                          scores: np.ndarray | None = None, frame: np.ndarray | None = None,
                          sequence: str | None = None, subject: str | None = None,
                          joints_3d: np.ndarray | None = None) -> None:
    """Write one interchange npz (the ../DESIGN.md table) with the documented dtypes; optional fields if given."""
    arrays: dict[str, np.ndarray] = {
        "keypoints": np.asarray(keypoints, np.float32),
        "joint_names": np.asarray([str(n) for n in joint_names], dtype=str),
        "camera_names": np.asarray([str(n) for n in camera_names], dtype=str),
    }
    optional = {"scores": (scores, np.float32), "frame": (frame, np.int64), "joints_3d": (joints_3d, np.float32),
                "sequence": (sequence, str), "subject": (subject, str)}
    arrays |= {k: np.asarray(v, dtype=t) for k, (v, t) in optional.items() if v is not None}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with fsspec.open(path, "wb") as f:
        f.write(buf.getvalue())


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


def _npz_frames(seq: NpzSequence, rig: Rig, skeleton: Skeleton | None) -> tuple[Skeleton, Frames]:
    skel, jperm = match_skeleton(seq.joint_names, skeleton, source=seq.source)
    vperm = match_cameras(seq.camera_names, rig, source=seq.source)
    kp = seq.keypoints[:, vperm][:, :, jperm]
    scores = None if seq.scores is None else seq.scores[:, vperm][:, :, jperm]
    j3d = None if seq.joints_3d is None else seq.joints_3d[:, jperm]
    frames = frames_for_rig(rig, sequence=seq.sequence, keypoints=kp, scores=scores, frame=seq.frame,
                            subject=seq.subject, joints_3d=j3d)
    return skel, frames


def _as_rig(rig: Rig | str) -> Rig:
    return rig if isinstance(rig, Rig) else load_rig(rig)


def ingest_npz(
    inputs: list[str],
    *,
    out: str,
    rig: Rig | str,
    split: str | None = None,
    split_by: str | None = None,
    skeleton: str | None = None,
    replace: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> IngestSummary:
    """Ingest interchange npz files (or folders of them) seen by `rig` into the dataset at `out`."""
    rig = _as_rig(rig)
    split_of = _split_rule(split, split_by)
    files = expand_inputs([str(i) for i in inputs])
    forced = get_skeleton(skeleton) if skeleton else None
    first = read_interchange_npz(files[0])
    skel, _ = match_skeleton(first.joint_names, forced, source=first.source)
    recipe = {"converter": "npz", "inputs": [str(i) for i in inputs], "rig": rig.rig_id, "split": split,
              "split_by": split_by, "skeleton": skel.name}
    ing = _Ingest(out, skeleton=skel, command=f"ingest npz ({len(files)} files)", recipe=recipe, replace=replace,
                  max_bad_fraction=max_bad_fraction)
    with ing, _progress(progress, "ingest npz", len(files)) as advance:
        for i, path in enumerate(files):
            seq = first if i == 0 else read_interchange_npz(path)
            file_skel, frames = _npz_frames(seq, rig, skel)
            assert file_skel is skel
            ing.add(frames, rig, split=split_of(seq.sequence, seq.subject), source=path)
            advance(_stem(path))
        return ing.commit()


# ---------------------------------------------------------------------------------------------- VideoPose3D


@dataclass(frozen=True)
class _Vp3dLayout:
    """What differs between VideoPose3D's Human3.6M and HumanEva-I files."""

    name: str
    skeleton: Skeleton
    layout_names: tuple[str | None, ...]  # metadata["layout_name"] values of 2D in `skeleton`'s joints
    rig_file: Callable[[str], str]  # subject key -> rig file name
    split_of: Callable[[str], str | None]  # subject key -> split, None = skip
    sequence_of: Callable[[str, str], str]  # (subject key, action) -> sequence name
    subject_of: Callable[[str], str]  # subject key -> subject name
    convert_3d: Callable[[np.ndarray], np.ndarray]


def _load_pickled_dict(path: str, key: str) -> tuple[dict[str, Any], Any]:
    """`np.load(path, allow_pickle=True)[key].item()` (a dict) and the `metadata` entry (or None)."""
    try:
        z = np.load(io.BytesIO(_read_bytes(path)), allow_pickle=True)
        if key not in z.files:
            raise ValueError(f"{path}: field {key!r} missing (has {z.files}); is this a VideoPose3D file?")
        value = z[key].item()
        meta = z["metadata"].item() if "metadata" in z.files else None
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable VideoPose3D .npz ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(f"{path}: field {key!r} is not a dict of subject -> action -> arrays")
    return value, meta


def _skeleton_2d(meta: Any, layout: _Vp3dLayout, source: str) -> Skeleton:
    """The skeleton of the 2D file: the layout's own, or coco17 for detectron-style COCO 2D."""
    layout_name = (meta or {}).get("layout_name") if isinstance(meta, dict) else None
    if layout_name == "coco":
        return COCO17
    if layout_name not in layout.layout_names:
        raise ValueError(f"{source}: field 'metadata' layout_name {layout_name!r} is not supported "
                         f"(expected {layout.layout_names[-1]!r} or 'coco')")
    return layout.skeleton


def _view_arrays(views: Any, *, V: int, source: str) -> list[np.ndarray | None]:
    """The per-camera 2D arrays of one sequence, None for a missing/empty camera; length V."""
    if isinstance(views, np.ndarray) and views.dtype != object:
        views = list(views)
    if not isinstance(views, (list, tuple, np.ndarray)):
        raise ValueError(f"{source}: expected a list of per-camera arrays, got {type(views).__name__}")
    if len(views) > V:
        raise ValueError(f"{source}: {len(views)} camera entries, the rig has {V} cameras")
    out: list[np.ndarray | None] = []
    for v in range(V):
        a = None if v >= len(views) or views[v] is None else np.asarray(views[v])
        if a is not None and a.size == 0:
            a = None
        if a is not None and (a.ndim != 3 or a.shape[-1] not in (2, 3)):
            raise ValueError(f"{source}[{v}]: shape {list(a.shape)}, expected [T, J, 2] or [T, J, 3]")
        out.append(a)
    return out


def _vp3d_sequence(views: list[np.ndarray | None], pos_3d: np.ndarray | None, *, J: int, convert_2d: Callable,
                   source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """(keypoints [T, V, J, 2], scores [T, V, J], joints_3d [T, J, 3] | None, notes) of one sequence."""
    present = [a for a in views if a is not None]
    lengths = [len(a) for a in present] + ([len(pos_3d)] if pos_3d is not None else [])
    T = min(lengths)
    notes = []
    if len(set(lengths)) > 1:
        notes.append(f"{source}: cut to {T} frames (2D lengths {[len(a) for a in present]}"
                     + (f", 3D {len(pos_3d)})" if pos_3d is not None else ")"))
    missing = [v for v, a in enumerate(views) if a is None]
    if missing:
        notes.append(f"{source}: camera(s) {missing} missing, kept as NaN views with score 0")
    kp = np.full((T, len(views), J, 2), np.nan, np.float32)
    scores = np.zeros((T, len(views), J), np.float32)
    for v, a in enumerate(views):
        if a is None:
            continue
        a = convert_2d(np.asarray(a[:T], np.float32))
        if a.shape[1] != J:
            raise ValueError(f"{source}[{v}]: {a.shape[1]} joints, expected {J}")
        kp[:, v] = a[..., :2]
        finite = np.isfinite(a[..., :2]).all(-1)
        scores[:, v] = np.where(finite, a[..., 2] if a.shape[-1] == 3 else 1.0, 0.0)
    joints_3d = None if pos_3d is None else np.asarray(pos_3d[:T], np.float32)
    return kp, scores, joints_3d, notes


def _convert_h36m(a: np.ndarray) -> np.ndarray:
    return h36m32_to_h36m17(a) if a.shape[-2] == 32 else a


def _select_subjects(keys: list[str], subjects: list[str] | None, source: str) -> list[str]:
    if subjects is None:
        return sorted(keys)
    wanted = set(subjects)
    chosen = sorted(k for k in keys if k in wanted or k.rsplit("/", 1)[-1] in wanted)
    unmatched = sorted(s for s in wanted if not any(k == s or k.rsplit("/", 1)[-1] == s for k in keys))
    if unmatched:
        raise ValueError(f"{source}: subjects {unmatched} not in the file (has {sorted(keys)})")
    return chosen


def _load_rigs(layout: _Vp3dLayout, keys: set[str], rigs_dir: str) -> dict[str, Rig]:
    rigs = {}
    for k in sorted(keys):
        path = posixpath.join(str(rigs_dir), layout.rig_file(k))
        try:
            rigs[k] = load_rig(path)
        except FileNotFoundError:
            raise ValueError(f"{path}: no rig file for subject {k!r}; add it, or leave the subject out with "
                             "subjects=") from None
    return rigs


def _ingest_vp3d(layout: _Vp3dLayout, data_3d: str | None, data_2d: str, *, out: str, rigs_dir: str,
                 subjects: list[str] | None, replace: bool, max_bad_fraction: float, progress: bool) -> IngestSummary:
    positions_2d, meta = _load_pickled_dict(data_2d, "positions_2d")
    positions_3d = _load_pickled_dict(data_3d, "positions_3d")[0] if data_3d else None
    skel = _skeleton_2d(meta, layout, data_2d)
    keys = _select_subjects(list(positions_2d), subjects, data_2d)
    plan = [(k, a) for k in keys if layout.split_of(k) is not None for a in sorted(positions_2d[k])]
    rigs = _load_rigs(layout, {k for k, _ in plan}, rigs_dir)
    recipe = {"converter": layout.name, "data_2d": data_2d, "data_3d": data_3d, "rigs_dir": str(rigs_dir),
              "subjects": subjects}
    ing = _Ingest(out, skeleton=skel, command=f"ingest {layout.name}", recipe=recipe, replace=replace,
                  max_bad_fraction=max_bad_fraction)
    skipped = [k for k in keys if layout.split_of(k) is None]
    if skipped:
        ing.notes.append(f"{data_2d}: subjects {skipped} skipped (unlabeled; include them explicitly)")
    if positions_3d is not None and skel is not layout.skeleton:
        ing.notes.append(f"{data_2d}: 2D skeleton {skel.name} differs from the 3D's ({layout.skeleton.name}); "
                         "3D not ingested")
        positions_3d = None
    with ing, _progress(progress, f"ingest {layout.name}", len(plan)) as advance:
        for key, action in plan:
            _vp3d_add(ing, layout, skel, rigs[key], key, action, positions_2d, positions_3d,
                      source_2d=data_2d, source_3d=data_3d)
            advance(f"{key} {action}")
        _note_3d_only(ing, positions_3d, positions_2d, keys, data_3d)
        return ing.commit()


def _vp3d_add(ing: _Ingest, layout: _Vp3dLayout, skel: Skeleton, rig: Rig, key: str, action: str,
              positions_2d: dict, positions_3d: dict | None, *, source_2d: str, source_3d: str | None) -> None:
    """Convert and add one (subject, action) of a VideoPose3D file."""
    src = f"{source_2d}: positions_2d[{key!r}][{action!r}]"
    pos_3d = None
    if positions_3d is not None:
        pos_3d = positions_3d.get(key, {}).get(action)
        if pos_3d is None:
            ing.notes.append(f"{src}: no 3D in {source_3d}; 2D only")
        else:
            pos_3d = layout.convert_3d(np.asarray(pos_3d))
            if pos_3d.ndim != 3 or pos_3d.shape[1:] != (skel.num_joints, 3):
                raise ValueError(f"{source_3d}: positions_3d[{key!r}][{action!r}] has shape {list(pos_3d.shape)}, "
                                 f"expected [T, {skel.num_joints}, 3]")
    views = _view_arrays(positions_2d[key][action], V=len(rig.cameras), source=src)
    if all(a is None for a in views):
        ing.notes.append(f"{src}: no camera has 2D; sequence skipped")
        return
    convert_2d = _convert_h36m if skel is H36M17 else (lambda a: a)
    kp, scores, j3d, notes = _vp3d_sequence(views, pos_3d, J=skel.num_joints, convert_2d=convert_2d, source=src)
    ing.notes += notes
    frames = frames_for_rig(rig, sequence=layout.sequence_of(key, action), keypoints=kp, scores=scores,
                            subject=layout.subject_of(key), joints_3d=j3d)
    ing.add(frames, rig, split=layout.split_of(key) or "", source=src)


def _note_3d_only(ing: _Ingest, positions_3d: dict | None, positions_2d: dict, keys: list[str],
                  data_3d: str | None) -> None:
    if positions_3d is None:
        return
    for k in keys:
        only = sorted(set(positions_3d.get(k, {})) - set(positions_2d[k]))
        if only:
            ing.notes.append(f"{data_3d}: {k} actions {only} have 3D but no 2D; not ingested")


def _h36m_split(key: str) -> str | None:
    if key not in H36M_SPLITS:
        raise ValueError(f"Human3.6M subject {key!r} has no standard split (known: {', '.join(H36M_SPLITS)})")
    return H36M_SPLITS[key]


def ingest_h36m(
    data_3d: str | None,
    data_2d: str,
    *,
    out: str,
    rigs_dir: str = "datasets/rigs",
    subjects: list[str] | None = None,
    replace: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> IngestSummary:
    """Ingest VideoPose3D's Human3.6M files (3D optional) with the standard split (S9, S11 test)."""
    layout = _Vp3dLayout(
        name="h36m", skeleton=H36M17, layout_names=(None, "h36m"), rig_file=lambda k: f"h36m-{k.lower()}.json",
        split_of=_h36m_split, sequence_of=lambda k, a: a, subject_of=lambda k: k, convert_3d=_convert_h36m,
    )
    return _ingest_vp3d(layout, data_3d, data_2d, out=out, rigs_dir=rigs_dir, subjects=subjects, replace=replace,
                        max_bad_fraction=max_bad_fraction, progress=progress)


def _humaneva_split(key: str, include_unlabeled: bool) -> str | None:
    prefix = key.rsplit("/", 1)[0] if "/" in key else ""
    if prefix.split("/")[0] == "Unlabeled":
        return UNLABELED_SPLIT if include_unlabeled else None
    if prefix not in HUMANEVA_SPLITS:
        raise ValueError(f"HumanEva subject key {key!r}: expected Train/S<n>, Validate/S<n> or Unlabeled/...")
    return HUMANEVA_SPLITS[prefix]


def _humaneva_sequence(key: str, action: str) -> str:
    return f"{key.rsplit('/', 1)[0]}/{action}" if "/" in key else action


def ingest_humaneva(
    data_3d: str | None,
    data_2d: str,
    *,
    out: str,
    rigs_dir: str = "datasets/rigs",
    subjects: list[str] | None = None,
    include_unlabeled: bool = False,
    replace: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> IngestSummary:
    """Ingest VideoPose3D's HumanEva-I files (3D optional): Train/* -> train, Validate/* -> test."""
    layout = _Vp3dLayout(
        name="humaneva", skeleton=HUMANEVA15, layout_names=(None, "humaneva15"),
        rig_file=lambda k: f"humaneva-{k.rsplit('/', 1)[-1].lower()}.json",
        split_of=lambda k: _humaneva_split(k, include_unlabeled), sequence_of=_humaneva_sequence,
        subject_of=lambda k: k.rsplit("/", 1)[-1], convert_3d=lambda a: a,
    )
    return _ingest_vp3d(layout, data_3d, data_2d, out=out, rigs_dir=rigs_dir, subjects=subjects, replace=replace,
                        max_bad_fraction=max_bad_fraction, progress=progress)


# ---------------------------------------------------------------------------------------------- COCO


def _coco_entries(doc: Any, source: str) -> tuple[dict[Any, int], list[dict[str, Any]]]:
    """(image id -> frame index, annotations) of a COCO dataset file or results list."""
    if isinstance(doc, list):
        anns = doc
        images = {a.get("image_id"): a.get("image_id") for a in anns if isinstance(a, dict)}
        bad = [i for i in images if not isinstance(i, int)]
        if bad:
            raise ValueError(f"{source}: field 'image_id' must be an integer (frame index), got {bad[0]!r}")
        return {i: int(i) for i in images}, anns
    if not isinstance(doc, dict) or "annotations" not in doc or "images" not in doc:
        raise ValueError(f"{source}: expected a COCO keypoints file with 'images' and 'annotations', "
                         "or a results list")
    ids = [im.get("id") for im in doc["images"]]
    names = [str(im.get("file_name", "")) for im in doc["images"]]
    numbers = [re.findall(r"\d+", _stem(n)) for n in names]
    if all(numbers) and len({int(n[-1]) for n in numbers}) == len(numbers):
        frames = [int(n[-1]) for n in numbers]
    else:
        frames = ids
    if any(not isinstance(f, int) for f in frames) or len(set(frames)) != len(frames):
        raise ValueError(f"{source}: field 'images' gives no unique integer frame index (file name or id)")
    return dict(zip(ids, frames, strict=True)), list(doc["annotations"])


def _best_person(anns: list[dict[str, Any]], J: int, source: str) -> dict[Any, np.ndarray]:
    """image id -> the kept person's keypoints [J, 3] (+ its score appended as row J) ."""
    best: dict[Any, tuple[tuple[float, float, float], np.ndarray]] = {}
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or "keypoints" not in a or a.get("category_id", 1) != 1:
            continue
        kp = np.asarray(a["keypoints"], dtype=np.float64)
        if kp.shape != (3 * J,):
            raise ValueError(f"{source}: field 'annotations[{i}].keypoints' has {kp.size} values, expected {3 * J}")
        score = a.get("score")
        if score is not None and not 0 <= float(score) <= 1:
            raise ValueError(f"{source}: field 'annotations[{i}].score' {score} outside [0, 1]")
        kp = kp.reshape(J, 3)
        rank = (float(score) if score is not None else -1.0, float((kp[:, 2] > 0).sum()), float(a.get("area", 0)))
        row = np.vstack([kp, [np.nan if score is None else float(score), 0.0, 0.0]])
        if a.get("image_id") not in best or rank > best[a["image_id"]][0]:
            best[a["image_id"]] = (rank, row)
    return {k: v for k, (_, v) in best.items()}


def read_coco_keypoints(path: str, *, num_joints: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame [F], keypoints [F, J, 2], scores [F, J]) of one camera's COCO-keypoints JSON, one person per image
    (see the module docstring for the frame index, person choice and the meaning of the third value)."""
    try:
        doc = json.loads(_read_bytes(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    frame_of, anns = _coco_entries(doc, path)
    people = _best_person(anns, num_joints, path)
    unknown = sorted(set(people) - set(frame_of), key=str)
    if unknown:
        raise ValueError(f"{path}: field 'annotations' refers to image ids {unknown[:5]} not in 'images'")
    ids = sorted(people, key=lambda i: frame_of[i])
    rows = np.stack([people[i] for i in ids]) if ids else np.zeros((0, num_joints + 1, 3))
    third, person_score = rows[:, :num_joints, 2], rows[:, num_joints, 0]
    if np.isin(third, (0, 1, 2)).all():  # COCO visibility flags
        score = np.where(third > 0, np.where(np.isnan(person_score), 1.0, person_score)[:, None], 0.0)
    else:
        bad = (third < 0) | (third > 1) | ~np.isfinite(third)
        if bad.any():
            f, j = np.argwhere(bad)[0]
            raise ValueError(f"{path}: field 'keypoints' third value {third[f, j]} (image {ids[f]}, joint {j}) is "
                             "neither a visibility flag 0/1/2 nor a confidence in [0, 1]")
        score = third
    kp = np.where((score > 0)[..., None], rows[:, :num_joints, :2], np.nan)
    return (np.array([frame_of[i] for i in ids], np.int64), kp.astype(np.float32), score.astype(np.float32))


def _align_views(per_view: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Per-camera (frame, kp, scores) -> (frame [T], kp [T, V, J, 2], scores [T, V, J]) on the union of frames."""
    frame = np.unique(np.concatenate([f for f, _, _ in per_view]))
    J = per_view[0][1].shape[1]
    kp = np.full((len(frame), len(per_view), J, 2), np.nan, np.float32)
    scores = np.zeros((len(frame), len(per_view), J), np.float32)
    for v, (f, k, s) in enumerate(per_view):
        rows = np.searchsorted(frame, f)
        kp[rows, v], scores[rows, v] = k, s
    return frame, kp, scores


def ingest_coco(
    json_files: list[str],
    *,
    out: str,
    rig: Rig | str,
    sequence: str,
    subject: str = "unknown",
    split: str | None = None,
    split_by: str | None = None,
    replace: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> IngestSummary:
    """Ingest one sequence given as one COCO-keypoints JSON per camera (the i-th file = the rig's i-th camera)."""
    rig = _as_rig(rig)
    split_of = _split_rule(split, split_by)
    if len(json_files) != len(rig.cameras):
        raise ValueError(f"{len(json_files)} COCO files for rig {rig.rig_id!r} with {len(rig.cameras)} cameras "
                         f"{list(rig.camera_names)}: give one file per camera, in that order")
    per_view = []
    with _progress(progress, "read COCO", len(json_files)) as advance:
        for path in json_files:
            per_view.append(read_coco_keypoints(str(path), num_joints=COCO17.num_joints))
            advance(_stem(str(path)))
    frame, kp, scores = _align_views(per_view)
    seen = (scores > 0).any((1, 2))
    recipe = {"converter": "coco", "inputs": [str(p) for p in json_files], "rig": rig.rig_id, "sequence": sequence,
              "subject": subject, "split": split, "split_by": split_by}
    ing = _Ingest(out, skeleton=COCO17, command="ingest coco", recipe=recipe, replace=replace,
                  max_bad_fraction=max_bad_fraction)
    with ing:
        if not seen.any():
            raise ValueError(f"{json_files[0]}: no person keypoints in any of the {len(json_files)} files")
        if not seen.all():
            ing.notes.append(f"{sequence}: {int((~seen).sum())} of {len(frame)} frames have no person in any "
                             "camera; left out")
        frames = frames_for_rig(rig, sequence=sequence, keypoints=kp[seen], scores=scores[seen], frame=frame[seen],
                                subject=subject)
        ing.add(frames, rig, split=split_of(sequence, subject), source=", ".join(str(p) for p in json_files))
        return ing.commit()
