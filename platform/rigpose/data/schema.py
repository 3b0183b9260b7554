"""Schema v1 of a RigPose dataset: one Parquet row per synchronized multi-view frame, and its in-memory form.

Columns (every shard of a dataset has exactly this Arrow schema; V = the row's number of views, J = the
dataset's number of joints, fixed by its skeleton):

| column          | Arrow type              | meaning                                                          |
|-----------------|-------------------------|------------------------------------------------------------------|
| rig_id          | string                  | the rig (also the hive partition `rig_id=`)                      |
| split           | string                  | train / val / test / ... (also the hive partition `split=`)      |
| sequence        | string                  | sequence (clip, take) name; unique within a rig                  |
| subject         | string                  | subject (actor) name, "unknown" if not known                     |
| frame           | int64                   | frame index within the sequence, strictly increasing             |
| num_views       | int8                    | V, the number of cameras of this row's rig                       |
| num_valid_views | int8                    | views with at least one valid keypoint (score > 0)               |
| camera_names    | list<string> [V]        | camera names, in rig order                                       |
| image_size      | list<int32> [V*2]       | (width, height) per view, pixels                                 |
| K               | list<float64> [V*9]     | intrinsics per view, row-major 3x3, pixels                       |
| dist            | list<float64> [V*5]     | OpenCV [k1, k2, p1, p2, k3] per view                             |
| R               | list<float64> [V*9]     | world->camera rotation per view, row-major                       |
| t               | list<float64> [V*3]     | world->camera translation per view, metres                       |
| keypoints       | list<float32> [V*J*2]   | detected 2D keypoints, pixels; NaN = missing                     |
| scores          | list<float32> [V*J]     | detector confidence in [0, 1]; 0 where missing                   |
| joints_3d       | list<float32> [J*3]     | world metres, null when unknown; EVALUATION ONLY                 |

Lists are flattened row-major (view, joint, coordinate). Rigs with different camera counts share one dataset:
each row carries its own V, and `Frames.from_table(..., num_views=V_max)` pads to a rectangular batch with a
view mask (padded views: NaN keypoints, score 0, identity cameras). Cameras are copied into every row
(Parquet's dictionary/RLE encoding makes this nearly free) so rows are self-contained and moving or
re-calibrated cameras need no special case.

Shape letters: N rows (frames), V views, J joints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from rigpose.geometry import CameraArrays

SCHEMA_VERSION = 1

KEY_COLUMNS = ("rig_id", "split", "sequence", "subject", "frame")
CAMERA_COLUMNS = ("camera_names", "image_size", "K", "dist", "R", "t")
OBSERVATION_COLUMNS = ("keypoints", "scores")
# Columns the 2D-supervised path may read: everything but joints_3d.
TRAINING_COLUMNS = (*KEY_COLUMNS, "num_views", "num_valid_views", *CAMERA_COLUMNS, *OBSERVATION_COLUMNS)
EVAL_ONLY_COLUMNS = ("joints_3d",)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("rig_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("sequence", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("frame", pa.int64(), nullable=False),
        pa.field("num_views", pa.int8(), nullable=False),
        pa.field("num_valid_views", pa.int8(), nullable=False),
        pa.field("camera_names", pa.list_(pa.string()), nullable=False),
        pa.field("image_size", pa.list_(pa.int32()), nullable=False),
        pa.field("K", pa.list_(pa.float64()), nullable=False),
        pa.field("dist", pa.list_(pa.float64()), nullable=False),
        pa.field("R", pa.list_(pa.float64()), nullable=False),
        pa.field("t", pa.list_(pa.float64()), nullable=False),
        pa.field("keypoints", pa.list_(pa.float32()), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
        pa.field("joints_3d", pa.list_(pa.float32()), nullable=True),
    ],
    metadata={b"rigpose.schema_version": str(SCHEMA_VERSION).encode()},
)


def _finite_xy(kp_2: np.ndarray) -> np.ndarray:
    """[..., 2] points -> [...] bool, both coordinates finite.

    Same as `np.isfinite(kp_2).all(-1)`, ~10x faster: NumPy reduces a size-2 last axis one row at a time.
    """
    return np.isfinite(kp_2[..., 0]) & np.isfinite(kp_2[..., 1])


@dataclass
class Frames:
    """A block of multi-view frames in memory (NumPy). All per-row arrays share the leading N.

    keypoints [N, V, J, 2] float32 pixels (NaN missing); scores [N, V, J] float32 in [0, 1];
    cameras: `CameraArrays` with K [N, V, 3, 3], dist [N, V, 5], R [N, V, 3, 3], t [N, V, 3] (float64);
    image_size [N, V, 2] int32; view_mask [N, V] bool (False = padding, no such camera);
    joints_3d [N, J, 3] float32 world metres or None (evaluation only); key arrays [N].
    """

    rig_id: np.ndarray
    sequence: np.ndarray
    subject: np.ndarray
    frame: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    cameras: CameraArrays
    image_size: np.ndarray
    camera_names: np.ndarray  # [N, V] str ("" for padding)
    split: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))
    view_mask: np.ndarray | None = None
    joints_3d: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.view_mask is None:
            self.view_mask = np.ones(self.keypoints.shape[:2], dtype=bool)
        if len(self.split) != len(self):
            self.split = np.full(len(self), "", dtype=object)

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.keypoints.shape[1])

    @property
    def num_joints(self) -> int:
        return int(self.keypoints.shape[2])

    def valid(self) -> np.ndarray:
        """[N, V, J] bool: keypoint present (finite) with a positive score on a real view."""
        return _finite_xy(self.keypoints) & (self.scores > 0) & self.view_mask[..., None]

    def take(self, index: Any) -> Frames:
        """Rows `index` (a slice, mask or index array) as a new `Frames`."""
        return Frames(
            rig_id=self.rig_id[index], sequence=self.sequence[index], subject=self.subject[index],
            frame=self.frame[index], keypoints=self.keypoints[index], scores=self.scores[index],
            cameras=CameraArrays(*(a[index] for a in self.cameras)), image_size=self.image_size[index],
            camera_names=self.camera_names[index], split=self.split[index], view_mask=self.view_mask[index],
            joints_3d=None if self.joints_3d is None else self.joints_3d[index],
        )

    def with_split(self, split: str | np.ndarray) -> Frames:
        """The same rows labelled with `split` (one name, or one per row)."""
        arr = np.full(len(self), split, dtype=object) if isinstance(split, str) else np.asarray(split, object)
        return replace(self, split=arr)

    @staticmethod
    def concat(parts: list[Frames]) -> Frames:
        """Row-wise concatenation; all parts must have the same V and J (pad first)."""
        if not parts:
            raise ValueError("Frames.concat: nothing to concatenate")
        j3 = [p.joints_3d for p in parts]
        has3d = all(x is not None for x in j3)
        return Frames(
            rig_id=_concat_rows([p.rig_id for p in parts]),
            sequence=_concat_rows([p.sequence for p in parts]),
            subject=_concat_rows([p.subject for p in parts]),
            frame=_concat_rows([p.frame for p in parts]),
            keypoints=_concat_rows([p.keypoints for p in parts]),
            scores=_concat_rows([p.scores for p in parts]),
            cameras=CameraArrays(*(_concat_rows([p.cameras[i] for p in parts]) for i in range(4))),
            image_size=_concat_rows([p.image_size for p in parts]),
            camera_names=_concat_rows([p.camera_names for p in parts]),
            split=_concat_rows([p.split for p in parts]),
            view_mask=_concat_rows([p.view_mask for p in parts]),
            joints_3d=_concat_rows(j3) if has3d else None,
        )


def _concat_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """`np.concatenate(arrays)`, always C-contiguous.

    NumPy keeps the inputs' memory order: broadcast rows (a static rig's cameras) or transposed views would give
    a strided result that every later row-wise read, and the Arrow conversion, has to copy again.
    """
    if any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays)  # NumPy's own error
    dtype = np.result_type(*{a.dtype for a in arrays})
    out = np.empty((sum(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=dtype)
    return np.concatenate(arrays, out=out)


def frames_for_rig(
    rig: Any,
    *,
    sequence: str,
    keypoints: np.ndarray,
    scores: np.ndarray | None = None,
    frame: np.ndarray | None = None,
    subject: str = "unknown",
    joints_3d: np.ndarray | None = None,
) -> Frames:
    """`Frames` of one sequence seen by a static `rig` (a `rigpose.rig.Rig`): cameras repeated per row.

    keypoints [T, V, J, 2] pixels; scores [T, V, J] (default 1, and 0 where the keypoint is NaN);
    frame [T] (default arange); joints_3d [T, J, 3] metres or None.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 4 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints: expected shape [T, V, J, 2], got {keypoints.shape}")
    T, V, J, _ = keypoints.shape
    if len(rig.cameras) != V:
        raise ValueError(f"keypoints have {V} views but rig {rig.rig_id!r} has {len(rig.cameras)} cameras")
    if scores is None:
        scores = _finite_xy(keypoints).astype(np.float32)  # 1, and 0 where the keypoint is missing
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (T, V, J):
        raise ValueError(f"scores: expected shape {(T, V, J)}, got {scores.shape}")
    frame = np.arange(T, dtype=np.int64) if frame is None else np.asarray(frame, dtype=np.int64)
    if frame.shape != (T,):
        raise ValueError(f"frame: expected shape {(T,)}, got {frame.shape}")
    if joints_3d is not None:
        joints_3d = np.asarray(joints_3d, dtype=np.float32)
        if joints_3d.shape != (T, J, 3):
            raise ValueError(f"joints_3d: expected shape {(T, J, 3)}, got {joints_3d.shape}")
    cams = rig.arrays()
    return Frames(
        rig_id=np.full(T, rig.rig_id, dtype=object),
        sequence=np.full(T, sequence, dtype=object),
        subject=np.full(T, subject, dtype=object),
        frame=frame,
        keypoints=keypoints,
        scores=scores,
        cameras=CameraArrays(*(np.broadcast_to(a, (T, *a.shape)) for a in cams)),
        image_size=np.broadcast_to(
            np.array([[c.width, c.height] for c in rig.cameras], dtype=np.int32), (T, V, 2)
        ),
        camera_names=np.broadcast_to(np.array([c.name for c in rig.cameras], dtype=object), (T, V)),
        joints_3d=joints_3d,
    )


# ---------------------------------------------------------------------------------------------- Arrow


def _list_column(values_NX: np.ndarray, arrow_type: pa.DataType) -> pa.ListArray:
    """[N, X] array -> list column of N lists of X values (zero-copy for the values)."""
    N = values_NX.shape[0]
    flat = np.ascontiguousarray(values_NX).reshape(-1)
    width = flat.size // max(N, 1)
    offsets = pa.array(np.arange(N + 1, dtype=np.int32) * width, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(flat, type=arrow_type))


def _string_column(values: np.ndarray) -> pa.Array:
    """[N] str -> Arrow strings, each run of equal values converted once (keys repeat for a sequence's rows)."""
    values = np.asarray(values, dtype=object)
    starts = np.flatnonzero(values[1:] != values[:-1]) + 1
    if len(values) < 2 or len(starts) > len(values) // 8:
        return pa.array(values, type=pa.string())
    lengths = np.diff(np.concatenate([[0], starts, [len(values)]]))
    run_of_row = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    return pa.array(values[np.concatenate([[0], starts])], type=pa.string()).take(run_of_row)


def _camera_names_column(names_NV: np.ndarray) -> pa.ListArray:
    """[N, V] camera names -> list column; a static rig's names (the same every row) converted once."""
    N, V = names_NV.shape
    if N > 1 and (names_NV == names_NV[0]).all():
        values = pa.array(names_NV[0], type=pa.string()).take(np.tile(np.arange(V, dtype=np.int32), N))
        return pa.ListArray.from_arrays(pa.array(np.arange(N + 1, dtype=np.int32) * V), values)
    return _list_column(names_NV, pa.string())


def frames_to_table(frames: Frames) -> pa.Table:
    """`Frames` of one rig (no padding views) -> an Arrow table with `ARROW_SCHEMA`."""
    if not frames.view_mask.all():
        raise ValueError("frames_to_table: rows with padding views cannot be written; write each rig's rows unpadded")
    N, V, J = len(frames), frames.num_views, frames.num_joints
    num_valid = frames.valid().any(-1).sum(-1).astype(np.int8)
    columns: dict[str, pa.Array] = {
        "rig_id": _string_column(frames.rig_id),
        "split": _string_column(frames.split),
        "sequence": _string_column(frames.sequence),
        "subject": _string_column(frames.subject),
        "frame": pa.array(np.asarray(frames.frame, dtype=np.int64)),
        "num_views": pa.array(np.full(N, V, dtype=np.int8)),
        "num_valid_views": pa.array(num_valid),
        "camera_names": _camera_names_column(np.asarray(frames.camera_names, dtype=object).reshape(N, V)),
        "image_size": _list_column(np.asarray(frames.image_size, np.int32).reshape(N, V * 2), pa.int32()),
        "K": _list_column(np.asarray(frames.cameras.K, np.float64).reshape(N, V * 9), pa.float64()),
        "dist": _list_column(np.asarray(frames.cameras.dist, np.float64).reshape(N, V * 5), pa.float64()),
        "R": _list_column(np.asarray(frames.cameras.R, np.float64).reshape(N, V * 9), pa.float64()),
        "t": _list_column(np.asarray(frames.cameras.t, np.float64).reshape(N, V * 3), pa.float64()),
        "keypoints": _list_column(np.asarray(frames.keypoints, np.float32).reshape(N, V * J * 2), pa.float32()),
        "scores": _list_column(np.asarray(frames.scores, np.float32).reshape(N, V * J), pa.float32()),
    }
    if frames.joints_3d is None:
        columns["joints_3d"] = pa.nulls(N, type=pa.list_(pa.float32()))
    else:
        columns["joints_3d"] = _list_column(np.asarray(frames.joints_3d, np.float32).reshape(N, J * 3), pa.float32())
    return pa.Table.from_arrays([columns[f.name] for f in ARROW_SCHEMA], schema=ARROW_SCHEMA)


def _to_numpy(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """`array.to_numpy(zero_copy_only=False)`; strings without nulls go through a dictionary, so each distinct
    string becomes one Python object (the rows share it) instead of one object per row (~3x faster)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if not pa.types.is_string(array.type) or array.null_count:
        return array.to_numpy(zero_copy_only=False)
    encoded = array.dictionary_encode()
    return encoded.dictionary.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy()]


def _padded(column: pa.ChunkedArray | pa.Array, per_view: int, V: int, fill: Any, dtype: Any) -> np.ndarray:
    """List column of k*per_view values per row (k <= V; null = 0) -> [N, V, per_view] padded with `fill`."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    N = len(column)
    if N == 0:
        return np.full((0, V, per_view), fill, dtype=dtype)
    flat = _to_numpy(column.flatten()).astype(dtype, copy=False)
    offsets = np.asarray(column.offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if column.null_count:
        lengths = np.where(np.asarray(column.is_valid()), lengths, 0)
    if (lengths == V * per_view).all():
        return flat.reshape(N, V, per_view)
    if (lengths % per_view).any() or lengths.max() > V * per_view:
        raise ValueError(f"list column has rows of {sorted(set(lengths.tolist()))} values, not k*{per_view}, k<={V}")
    out = np.full((N, V, per_view), fill, dtype=dtype)
    starts = offsets[:-1] - offsets[0]
    for length in np.unique(lengths):  # few distinct camera counts: vectorised per count
        if length == 0:
            continue
        rows = np.flatnonzero(lengths == length)
        idx = starts[rows][:, None] + np.arange(length)[None, :]
        out[rows, : length // per_view] = flat[idx].reshape(len(rows), length // per_view, per_view)
    return out


def observations_from_table(table: pa.Table, *, num_joints: int, num_views: int | None = None
                            ) -> tuple[np.ndarray, np.ndarray, CameraArrays, np.ndarray]:
    """(keypoints [N, V, J, 2] px, scores [N, V, J], cameras [N, V, ...], view_mask [N, V]) padded to V views.

    Reads only `num_views`, the camera columns K, dist, R, t and `keypoints`, `scores`: what a model needs
    (the training pipeline selects just these columns). `num_views` default: the largest in the table.
    """
    N = table.num_rows
    nv = table.column("num_views").to_numpy().astype(np.int64) if N else np.zeros(0, np.int64)
    V = int(num_views if num_views is not None else (nv.max() if N else 0))
    if N and nv.max() > V:
        raise ValueError(f"rows have up to {nv.max()} views, more than num_views={V}")
    J = num_joints
    eye = np.eye(3).reshape(9)
    K = _padded(table.column("K"), 9, V, np.nan, np.float64)
    R = _padded(table.column("R"), 9, V, np.nan, np.float64)
    mask = np.arange(V)[None, :] < nv[:, None]
    dist = _padded(table.column("dist"), 5, V, 0.0, np.float64)
    t = _padded(table.column("t"), 3, V, 0.0, np.float64)
    if not mask.all():  # padding views get a harmless identity camera 1 m in front of the origin
        K[~mask] = eye
        R[~mask] = eye
        t[~mask] = [0.0, 0.0, 1.0]
    keypoints = _padded(table.column("keypoints"), J * 2, V, np.nan, np.float32).reshape(N, V, J, 2)
    scores = _padded(table.column("scores"), J, V, 0.0, np.float32)
    cameras = CameraArrays(K=K.reshape(N, V, 3, 3), dist=dist, R=R.reshape(N, V, 3, 3), t=t)
    return keypoints, scores, cameras, mask


def joints_3d_from_table(table: pa.Table, *, num_joints: int) -> np.ndarray | None:
    """joints_3d [N, J, 3] world metres (NaN rows where unknown), or None when the column is absent or all null."""
    N = table.num_rows
    if "joints_3d" not in table.column_names or table.column("joints_3d").null_count >= N:
        return None
    return _padded(table.column("joints_3d"), num_joints * 3, 1, np.nan, np.float32).reshape(N, num_joints, 3)


def frames_from_table(table: pa.Table, *, num_joints: int, num_views: int | None = None,
                      with_3d: bool = True) -> Frames:
    """Arrow table with (a subset including the needed columns of) `ARROW_SCHEMA` -> padded `Frames`.

    `num_views`: pad every row to this many views (default: the largest in the table).
    `with_3d=False` never touches `joints_3d` (the 2D-supervised path), even if the column is present.
    """
    keypoints, scores, cameras, mask = observations_from_table(table, num_joints=num_joints, num_views=num_views)
    N, V = mask.shape
    joints_3d = joints_3d_from_table(table, num_joints=num_joints) if with_3d else None
    return Frames(
        rig_id=np.asarray(_to_numpy(table.column("rig_id")), dtype=object),
        sequence=np.asarray(_to_numpy(table.column("sequence")), dtype=object),
        subject=np.asarray(_to_numpy(table.column("subject")), dtype=object),
        frame=table.column("frame").to_numpy().astype(np.int64),
        split=np.asarray(_to_numpy(table.column("split")), dtype=object),
        keypoints=keypoints,
        scores=scores,
        cameras=cameras,
        image_size=_padded(table.column("image_size"), 2, V, 0, np.int32),
        camera_names=_padded(table.column("camera_names"), 1, V, "", object).reshape(N, V),
        view_mask=mask,
        joints_3d=joints_3d,
    )
