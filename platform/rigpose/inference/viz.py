"""A page a person can check a lift with (`rigpose viz`): the 3D skeleton over time, a frame slider, and every
camera's 2D detections beside the reprojection of the 3D through that camera, with its error.

`page_html(joints, skeleton, rig, observed)` is pure: it projects the 3D through the rig's cameras here
(`rigpose.geometry.project`, lens distortion included), so the page's script only draws (`rigpose.inference
.viz_page`: one self-contained HTML file, inline script, no external URL). `page_data` is what the page embeds, as
one JSON blob in `<script type="application/json" id="rigpose-data">`:

{"version": 1, "skeleton": name, "joint_names": [J], "bones": [[child, parent], ...], "left": [...], "right":
[...], "frames": [B] frame indices, "num_source_frames": frames of the sequence before the cap, "floor_z": world z
of the floor (m) or null, "joints": [B][J] [x, y, z] world metres (1 mm) or null, "cameras": [V] {"name", "width",
"height" (px), "observed": [B][J] [u, v] px (0.1 px) or null, "reprojected": the same for the 3D projected,
"error_px": [B] mean pixel distance over the joints with both or null, "mean_error_px": the same over every
frame}}.

A page holds at most `MAX_FRAMES` frames by default, evenly spaced over the sequence (the page says so), which
keeps it to about a megabyte for four cameras. `frames_page` lifts `Frames` of one sequence with a model
(`rigpose.inference.lift.lift_frames`, as `rigpose lift` does) and draws them; `dataset_page` reads the sequence
from a dataset first. Shape letters: B frames, V views (cameras), J joints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rigpose import geometry as g
from rigpose.config import MultiViewConfig
from rigpose.data.reader import Dataset, iter_frames
from rigpose.data.schema import Frames
from rigpose.inference.errors import sample_frames
from rigpose.inference.lift import DEFAULT_BATCH_SIZE, check_mode, lift_frames, open_inputs
from rigpose.inference.viz_page import render_page
from rigpose.model.lifter import Lifter
from rigpose.rig import Rig
from rigpose.skeleton import Skeleton

PAGE_VERSION = 1
MAX_FRAMES = 300  # frames on one page (`rigpose viz --max-frames`): ~650 kB at 4 cameras and 16 joints
RUN_FRAMES = 60  # frames on a training run's viz.html (`rigpose.train.publish`)
MM, TENTH_PX = 3, 1  # decimals kept: 3D metres to 1 mm, pixels to 0.1 px
MAX_LISTED = 20  # sequences an error message lists


def _check(joints_BJ3: np.ndarray, observed_BVJ2: np.ndarray, skeleton: Skeleton, rig: Rig,
           frame_ids: np.ndarray | None, max_frames: int) -> None:
    J, V = skeleton.num_joints, len(rig)
    if joints_BJ3.ndim != 3 or joints_BJ3.shape[1:] != (J, 3) or joints_BJ3.shape[0] == 0:
        raise ValueError(f"joints_BJ3: expected shape [B >= 1, {J}, 3] (skeleton {skeleton.name!r}), got "
                         f"{joints_BJ3.shape}")
    B = joints_BJ3.shape[0]
    if observed_BVJ2.shape != (B, V, J, 2):
        raise ValueError(f"observed_BVJ2: expected shape [{B}, {V}, {J}, 2] (frames of joints_BJ3, cameras of rig "
                         f"{rig.rig_id!r}, joints), got {observed_BVJ2.shape}")
    for name, x in (("joints_BJ3", joints_BJ3), ("observed_BVJ2", observed_BVJ2)):
        if np.isinf(x).any():
            raise ValueError(f"{name}: infinite values (missing is NaN)")
    if frame_ids is not None and frame_ids.shape != (B,):
        raise ValueError(f"frame_ids: expected shape [{B}] (one per frame of joints_BJ3), got {frame_ids.shape}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")


def _points(x: np.ndarray, decimals: int) -> list[Any]:
    """[B, J, k] -> [B][J] lists of k rounded floats, None for a point with any NaN."""
    rounded = np.round(x, decimals)
    known = np.isfinite(rounded).all(-1)
    return [[p if ok else None for p, ok in zip(row, oks, strict=True)]
            for row, oks in zip(rounded.tolist(), known.tolist(), strict=True)]


def _numbers(x: np.ndarray, decimals: int) -> list[float | None]:
    """[B] -> rounded floats, None for NaN."""
    return [None if not np.isfinite(v) else round(float(v), decimals) for v in x]


def reprojections(joints_BJ3: np.ndarray, rig: Rig) -> np.ndarray:
    """Pixels [B, V, J, 2] of world joints [B, J, 3] (m) through each camera of `rig`; NaN for NaN joints and
    joints at or behind a camera."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(g.project(np.asarray(joints_BJ3, np.float64)[:, None], rig.arrays()))


def page_data(joints_BJ3: np.ndarray, skeleton: Skeleton, rig: Rig, observed_BVJ2: np.ndarray, *,
              frame_ids: Sequence[int] | None = None, num_source_frames: int | None = None,
              max_frames: int = MAX_FRAMES) -> dict[str, Any]:
    """What the page embeds (layout: the module docstring), from world joints [B, J, 3] metres (NaN = unknown) and
    the detections observed_BVJ2 [B, V, J, 2] pixels (NaN = missing; V = `rig`'s cameras, in its order).

    `frame_ids` [B]: the frames' indices (default 0..B-1); `num_source_frames`: frames of the sequence these B were
    taken from (default B). More than `max_frames` frames: that many, evenly spaced. ValueError naming the
    argument for a shape that does not fit `skeleton` and `rig`, or infinite values.
    """
    X = np.asarray(joints_BJ3, np.float64)
    obs = np.asarray(observed_BVJ2, np.float64)
    ids = None if frame_ids is None else np.asarray(frame_ids, np.int64)
    _check(X, obs, skeleton, rig, ids, max_frames)
    B = X.shape[0]
    ids = np.arange(B) if ids is None else ids
    if len(X) > max_frames:
        keep = np.unique(np.linspace(0, B - 1, max_frames).round().astype(np.int64))
        X, obs, ids = X[keep], obs[keep], ids[keep]
    proj = reprojections(X, rig)  # [B, V, J, 2]
    err = np.linalg.norm(proj - obs, axis=-1)  # [B, V, J], NaN where either is missing
    known = np.isfinite(err)
    with np.errstate(invalid="ignore"):
        frame_err = np.where(known, err, 0.0).sum(-1) / known.sum(-1)  # [B, V]; 0/0 -> NaN
    cameras = []
    for v, cam in enumerate(rig.cameras):
        total = known[:, v].sum()
        cameras.append({
            "name": cam.name, "width": int(cam.width), "height": int(cam.height),
            "observed": _points(obs[:, v], TENTH_PX), "reprojected": _points(proj[:, v], TENTH_PX),
            "error_px": _numbers(frame_err[:, v], TENTH_PX),
            "mean_error_px": round(float(err[:, v][known[:, v]].sum() / total), TENTH_PX) if total else None,
        })
    return {
        "version": PAGE_VERSION, "skeleton": skeleton.name, "joint_names": list(skeleton.joint_names),
        "bones": [list(b) for b in skeleton.bones], "left": list(skeleton.left), "right": list(skeleton.right),
        "frames": [int(i) for i in ids], "num_source_frames": int(num_source_frames or B),
        "floor_z": None if rig.floor_z is None else float(rig.floor_z),
        "joints": _points(X, MM), "cameras": cameras,
    }


def page_html(joints_BJ3: np.ndarray, skeleton: Skeleton, rig: Rig, observed_BVJ2: np.ndarray, *,
              frame_ids: Sequence[int] | None = None, num_source_frames: int | None = None,
              max_frames: int = MAX_FRAMES, title: str = "RigPose lift", info: Mapping[str, str] | None = None
              ) -> str:
    """The page (HTML str) of `page_data(...)` (same arguments), headed by `title` and the `info` {label: value}
    lines (model, data, ...); it says how many frames of how many it shows."""
    data = page_data(joints_BJ3, skeleton, rig, observed_BVJ2, frame_ids=frame_ids,
                     num_source_frames=num_source_frames, max_frames=max_frames)
    shown, total = len(data["frames"]), data["num_source_frames"]
    note = (f"{shown} of {total} frames of the sequence, evenly spaced (at most {max_frames} a page)."
            if shown < total else "")
    facts = {"rig": rig.rig_id, **(info or {}), "frames": f"{shown} of {total}"}
    return render_page(data, title=title, info=facts, note=note)


def page_bytes(joints_BJ3: np.ndarray, skeleton: Skeleton, rig: Rig, observed_BVJ2: np.ndarray,
               **options: Any) -> bytes:
    """`page_html(joints_BJ3, skeleton, rig, observed_BVJ2, **options)` as UTF-8 bytes, for an MLflow artifact
    (`rigpose.tracking.runs.RunLogger.log_artifact_bytes`)."""
    return page_html(joints_BJ3, skeleton, rig, observed_BVJ2, **options).encode("utf-8")


# ---------------------------------------------------------------------------------------------- lifting


def _lists(table: pa.Table, name: str, width: int) -> np.ndarray:
    """A list<float32> column as [N, width] float64, NaN for null rows."""
    col = table.column(name).combine_chunks()
    out = np.full((len(col), width), np.nan)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    out[valid] = col.drop_null().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return out


def camera_view(rig: Rig, camera: str | None) -> int:
    """Index of `camera` in `rig` (its first camera when None); ValueError naming it and the rig's cameras."""
    if camera is None:
        return 0
    if camera not in rig.camera_names:
        raise ValueError(f"camera {camera!r}: rig {rig.rig_id!r} has no such camera (cameras: "
                         f"{', '.join(rig.camera_names)})")
    return rig.camera_names.index(camera)


def world_poses(model: Lifter, skeleton: Skeleton, frames: Frames, rig: Rig, *, mode: str = "multi",
                camera: str | None = None, multi_view: MultiViewConfig | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """World joints [B, J, 3] metres (NaN where there is no answer) of `frames`, rows of the static `rig`, lifted as
    `rigpose lift --mode` does (`lift_frames`): "multi", the fused world pose; "single", the lift of `camera`'s
    view alone (default the rig's first camera) at its own root, metric where the rig's floor is known."""
    check_mode(mode)
    view = camera_view(rig, camera)
    J = skeleton.num_joints
    parts = []
    for i in range(0, len(frames), batch_size):
        batch = frames.take(slice(i, i + batch_size))
        table = lift_frames(model, skeleton, batch, mode=mode, multi_view=multi_view,
                            floors={rig.rig_id: rig.floor_z})
        if mode == "multi":
            parts.append(_lists(table, "joints_world", J * 3).reshape(-1, J, 3))
            continue
        rows = table.filter(pc.equal(table.column("view"), view))
        assert rows.num_rows == len(batch), "one single-view row per frame and real view"
        X_cam = _lists(rows, "joints_cam", J * 3).reshape(-1, J, 3) + _lists(rows, "root_cam", 3)[:, None]
        cam = rig.cameras[view]
        parts.append(g.camera_to_world(X_cam, cam.R, cam.t))
    return np.concatenate(parts)


def frames_page(model: Lifter, skeleton: Skeleton, frames: Frames, rig: Rig, *, mode: str = "multi",
                camera: str | None = None, multi_view: MultiViewConfig | None = None,
                max_frames: int = MAX_FRAMES, batch_size: int = DEFAULT_BATCH_SIZE,
                info: Mapping[str, str] | None = None) -> str:
    """The page of one sequence's `frames` (rows of `rig`, in frame order) lifted by `model` (`world_poses`): at
    most `max_frames` of them, evenly spaced, are lifted and drawn. ValueError for frames of several sequences."""
    if len(frames) == 0:
        raise ValueError("frames: no rows to draw")
    keys = set(zip(frames.rig_id.tolist(), frames.sequence.tolist(), strict=True))
    if len(keys) != 1 or next(iter(keys))[0] != rig.rig_id:
        raise ValueError(f"frames: expected the rows of one sequence of rig {rig.rig_id!r}, got {sorted(keys)[:4]}")
    shown = sample_frames(frames, max_frames)
    X = world_poses(model, skeleton, shown, rig, mode=mode, camera=camera, multi_view=multi_view,
                    batch_size=batch_size)
    V = len(rig)
    observed = np.where(shown.valid()[..., None], shown.keypoints, np.nan)[:, :V]
    how = (f"multi-view ({(multi_view or MultiViewConfig()).method})" if mode == "multi" else
           f"single view {rig.camera_names[camera_view(rig, camera)]}")
    sequence = str(frames.sequence[0])
    return page_html(X, skeleton, rig, observed, frame_ids=shown.frame, num_source_frames=len(frames),
                     max_frames=max_frames, title=f"RigPose: {rig.rig_id}/{sequence}",
                     info={"sequence": sequence, "3D": how, **(info or {})})


def first_sequence_page(model: Lifter, skeleton: Skeleton, frames: Frames, rig_of: Callable[[str], Rig], *,
                        max_frames: int = RUN_FRAMES, info: Mapping[str, str] | None = None) -> bytes:
    """The page (bytes) of the first sequence of `frames` (multi-view), its rig from `rig_of(rig_id)`; for a
    training run's artifacts (`rigpose.train.publish`)."""
    first = (frames.rig_id == frames.rig_id[0]) & (frames.sequence == frames.sequence[0])
    return frames_page(model, skeleton, frames.take(first), rig_of(str(frames.rig_id[0])), max_frames=max_frames,
                       info=info).encode("utf-8")


# ---------------------------------------------------------------------------------------------- datasets


def _choices(pairs: Sequence[tuple[str, str]]) -> str:
    names = [s for _, s in pairs]
    labels = [s if names.count(s) == 1 else f"{r}/{s}" for r, s in pairs]
    more = f", ... ({len(labels)} in all)" if len(labels) > MAX_LISTED else ""
    return ", ".join(labels[:MAX_LISTED]) + more


def pick_sequence(pairs: Sequence[tuple[str, str]], sequence: str | None, *, where: str) -> tuple[str, str]:
    """(rig_id, sequence) of `pairs` (sorted) that `sequence` names, "NAME" or "RIG/NAME"; the first when None.
    ValueError listing the choices for a name none has, or one several rigs have."""
    if not pairs:
        raise ValueError(f"{where}: no rows")
    if sequence is None:
        return pairs[0]
    hits = [p for p in pairs if p[1] == sequence] or [p for p in pairs if f"{p[0]}/{p[1]}" == sequence]
    if len(hits) > 1:
        raise ValueError(f"sequence {sequence!r}: {where} has it in rigs {', '.join(r for r, _ in hits)}; name one "
                         f"as RIG/{sequence}")
    if not hits:
        raise ValueError(f"sequence {sequence!r}: {where} has no such sequence (sequences: {_choices(pairs)})")
    return hits[0]


def sequence_frames(ds: Dataset, *, split: str, sequence: str | None = None,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> Frames:
    """The rows of one sequence of `split` (`pick_sequence`: "NAME", "RIG/NAME" or None for the first), in frame
    order, without 3D labels."""
    keys = ds.read_table(columns=["rig_id", "sequence"], splits=split)
    pairs = sorted(set(zip(keys.column("rig_id").to_pylist(), keys.column("sequence").to_pylist(), strict=True)))
    rig_id, name = pick_sequence(pairs, sequence, where=f"{ds.root} split {split!r}")
    parts = [f.take(f.sequence == name) for f in iter_frames(ds, split=split, batch_size=batch_size,
                                                             rig_ids=[rig_id])]
    frames = Frames.concat([p for p in parts if len(p)])
    return frames.take(np.argsort(frames.frame, kind="stable"))


def dataset_page(model_path: str, data_url: str, *, split: str, sequence: str | None = None, mode: str = "multi",
                 camera: str | None = None, multi_view: MultiViewConfig | None = None, max_frames: int = MAX_FRAMES,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[str, dict[str, Any]]:
    """(page, facts) of one sequence of `split` of the dataset at `data_url` lifted by the model at `model_path`
    (a model file, run folder or MLflow model URI): `rigpose viz`. facts: {"rig_id", "sequence", "frames" shown,
    "num_source_frames", "cameras"}. ValueError for an unknown split, sequence or camera, naming the choices."""
    check_mode(mode)
    model, skeleton, ds = open_inputs(model_path, data_url, split=split)
    frames = sequence_frames(ds, split=split, sequence=sequence, batch_size=batch_size)
    rig = ds.rig(str(frames.rig_id[0]))
    camera_view(rig, camera)  # before any lifting
    page = frames_page(model, skeleton, frames, rig, mode=mode, camera=camera, multi_view=multi_view,
                       max_frames=max_frames, batch_size=batch_size,
                       info={"model": str(model_path), "data": str(data_url), "split": split})
    facts = {"rig_id": rig.rig_id, "sequence": str(frames.sequence[0]), "frames": min(len(frames), max_frames),
             "num_source_frames": len(frames), "cameras": len(rig)}
    return page, facts
