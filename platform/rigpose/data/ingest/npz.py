"""The interchange npz converter: read, check and write the interchange npz, and `ingest_npz`.

`ingest_npz`: the interchange npz (../DESIGN.md table), one file per sequence; folders are searched for `*.npz`
(not recursively). Unknown keys are refused (a typo must not silently drop a field). `joint_names` must be a known
skeleton's names (any order: joints are reordered to the skeleton's; `skeleton=` forces one); `camera_names` must be
the rig's camera names (any order: views are reordered to the rig's order). `keypoints` float [T, V, J, 2];
`scores` [T, V, J] in [0, 1] (default 1, 0 where the keypoint is NaN); `frame` integer [T] strictly increasing
(default 0..T-1); `sequence` default = the file stem; `subject` default "unknown"; `joints_3d` [T, J, 3] metres,
evaluation only. All files of one ingest share the rig and the skeleton.

Shape letters: T frames, V views (cameras), J joints.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from rigpose.data.ingest.common import (
    IngestSummary,
    _as_rig,
    _Ingest,
    _progress,
    _read_bytes,
    _split_rule,
    _stem,
    expand_inputs,
    match_cameras,
    match_skeleton,
)
from rigpose.data.schema import Frames, frames_for_rig
from rigpose.data.writer import DEFAULT_MAX_BAD_FRACTION
from rigpose.rig import Rig
from rigpose.skeleton import Skeleton, get_skeleton

NPZ_FIELDS = ("keypoints", "scores", "joint_names", "camera_names", "frame", "sequence", "subject", "joints_3d")
NPZ_REQUIRED = ("keypoints", "joint_names", "camera_names")


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



def _npz_frames(seq: NpzSequence, rig: Rig, skeleton: Skeleton | None) -> tuple[Skeleton, Frames]:
    skel, jperm = match_skeleton(seq.joint_names, skeleton, source=seq.source)
    vperm = match_cameras(seq.camera_names, rig, source=seq.source)
    kp = seq.keypoints[:, vperm][:, :, jperm]
    scores = None if seq.scores is None else seq.scores[:, vperm][:, :, jperm]
    j3d = None if seq.joints_3d is None else seq.joints_3d[:, jperm]
    frames = frames_for_rig(rig, sequence=seq.sequence, keypoints=kp, scores=scores, frame=seq.frame,
                            subject=seq.subject, joints_3d=j3d)
    return skel, frames



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
