"""Run a saved lifter over a dataset split in bounded-memory batches and write its 3D predictions as Parquet.

`lift_dataset(...)` writes one Parquet file (local path, file:// or s3://) published all at once: locally a temp
file in the same folder renamed into place, on object storage a single upload that becomes visible only when it
completes; a failure leaves no file at `out_url`. Columns (J = the skeleton's joints, lists flattened row-major
(joint, coordinate), float32 metres):

mode "single" (one row per real camera view of each frame; padding views of smaller rigs are not written):

| column      | type                   | meaning                                                                 |
|-------------|------------------------|-------------------------------------------------------------------------|
| rig_id      | string                 | the frame's rig                                                         |
| sequence    | string                 | sequence name                                                           |
| frame       | int64                  | frame index                                                             |
| view        | int8                   | view index within the rig (rig camera order)                            |
| camera_name | string                 | the camera's name                                                       |
| joints_cam  | list<float32> [J*3]    | root-relative pose in this camera's frame; null when the view has no 2D |
| root_cam    | list<float32> [3]      | the lifter's metric root in this camera's frame; null likewise          |
| body_scale  | float32                | on rigs whose floor is known (the rig file's floor_z): the body scale   |
|             |                        | the feet on the floor gave (`rigpose.model.floor`, one per sequence and |
|             |                        | view), already applied to joints_cam; root_cam is at that scale too, or |
|             |                        | nearer the frame's own floor contact (metric); null where the floor is  |
|             |                        | unknown                                                                 |

mode "multi" (one row per frame):

| column           | type                | meaning                                                                   |
|------------------|---------------------|---------------------------------------------------------------------------|
| rig_id, sequence, frame |              | as above                                                                  |
| num_views        | int8                | views that had at least one 2D keypoint                                   |
| joints_world_rel | list<float32> [J*3] | fused world-frame pose minus its root; null when no view has 2D           |
| joints_world     | list<float32> [J*3] | fused absolute world pose; null where the root cannot be triangulated     |
| uncertainty      | list<float32> [J]   | per-joint uncertainty, metres (RMS 3D error the method claims); null when  |
|                  |                     | the method states none (only "posterior", the default, does)              |

The file's schema metadata holds `rigpose.skeleton`, `rigpose.joint_names` (JSON), `rigpose.mode`,
`rigpose.model`, `rigpose.split` and `rigpose.dropped_cameras` (JSON list of the cameras left out, `[]` for none).

`drop_cameras` (`rigpose lift --drop-camera NAME`): the named cameras' 2D is removed before the method sees it
(`rigpose.inference.drop`). Their rows stay: in mode "single" a dropped camera's rows have null poses (no 2D),
in mode "multi" the answer is the other cameras' (num_views counts those).

The batch helpers here are shared with `rigpose.inference.evaluate`. Shape letters: B frames, V views, J joints.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from rigpose.config import VIEW_MODES, EvaluateJob, MultiViewConfig
from rigpose.data.reader import Dataset, iter_frames
from rigpose.data.schema import Frames
from rigpose.inference.drop import check_dataset_drop, mask_cameras
from rigpose.inference.models import load_model
from rigpose.model.fusion import lift_single
from rigpose.model.inputs import model_inputs
from rigpose.model.lifter import Lifter
from rigpose.model.multiview import adapt_for, estimate
from rigpose.skeleton import Skeleton
from rigpose.storage import published_parquet

DEFAULT_BATCH_SIZE: int = EvaluateJob.model_fields["batch_size"].default


def open_inputs(model_path: str, data_url: str, *, split: str) -> tuple[Lifter, Skeleton, Dataset]:
    """(model in eval mode, its skeleton, the dataset), checked to fit together and to hold `split`.

    `model_path`: a model file, a run folder, or an MLflow model URI (`rigpose.inference.models.load_model`)."""
    model, skeleton, _meta = load_model(model_path)
    return model, skeleton, open_dataset(data_url, skeleton, split=split, model=model_path)


def open_dataset(data_url: str, skeleton: Skeleton, *, split: str, model: str) -> Dataset:
    """The dataset at `data_url`, checked to have `skeleton` (that of `model`, named in the error) and `split`."""
    ds = Dataset(data_url)
    if ds.skeleton.name != skeleton.name:
        raise ValueError(f"{model}: model skeleton {skeleton.name!r} does not match dataset {data_url} "
                         f"skeleton {ds.skeleton.name!r}")
    if split not in ds.manifest.splits():
        raise ValueError(f"{data_url}: no split {split!r}; has {sorted(ds.manifest.splits())}")
    return ds




def model_batch(frames: Frames, skeleton: Skeleton, *, device: str = "cpu", pseudo_3d: bool = True
                ) -> dict[str, torch.Tensor]:
    """The 2D-only model inputs of `frames` (never joints_3d) as float32 tensors on `device`.

    `pseudo_3d=False` leaves out the per-joint triangulation (pseudo_world / pseudo_ok), which lifting never reads.
    """
    return model_inputs(frames.keypoints, frames.scores, frames.cameras, frames.view_mask,
                        root_joints=tuple(skeleton.root_joints), device=device, pseudo_3d=pseudo_3d)




def sequence_groups(frames: Frames) -> torch.Tensor:
    """[B] int64 id per (rig, sequence): frames of one sequence share a skeleton in the refinement."""
    keys = np.char.add(np.char.add(frames.rig_id.astype(str), "\x00"), frames.sequence.astype(str))
    return torch.from_numpy(np.unique(keys, return_inverse=True)[1].reshape(-1).astype(np.int64))


def lift_multi(model: Lifter, batch: dict[str, torch.Tensor], skeleton: Skeleton, multi_view: MultiViewConfig, *,
               groups: torch.Tensor | None = None) -> np.ndarray:
    """World poses [B, J, 3] metres (NaN for frames with no usable view) by `multi_view.method`; see
    `lift_multi_uncertain`."""
    return lift_multi_uncertain(model, batch, skeleton, multi_view, groups=groups)[0]


def lift_multi_uncertain(model: Lifter, batch: dict[str, torch.Tensor], skeleton: Skeleton,
                         multi_view: MultiViewConfig, *, groups: torch.Tensor | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """(world poses [B, J, 3] metres, NaN for frames with no usable view; per-joint uncertainty [B, J] metres or
    None) by `multi_view.method` (`rigpose.model.multiview.estimate`): "posterior" combines the fused lifts with
    every view's 2D; "fusion" fuses the per-view lifts; "refinement" and "adaptation" also refine them against every
    view's 2D. Adaptation itself is the caller's (`adapt_for`), so one adapted lifter serves the single- and
    multi-view lifts.
    """
    if groups is not None:
        groups = groups.to(batch["w"].device)
    X, sigma = estimate(model, batch, skeleton, multi_view, groups=groups)
    return X.detach().cpu().double().numpy(), None if sigma is None else sigma.detach().cpu().double().numpy()


_LIST_F32 = pa.list_(pa.float32())
_KEYS = [pa.field("rig_id", pa.string()), pa.field("sequence", pa.string()), pa.field("frame", pa.int64())]
SINGLE_SCHEMA = pa.schema([*_KEYS, pa.field("view", pa.int8()), pa.field("camera_name", pa.string()),
                           pa.field("joints_cam", _LIST_F32), pa.field("root_cam", _LIST_F32),
                           pa.field("body_scale", pa.float32())])
MULTI_SCHEMA = pa.schema([*_KEYS, pa.field("num_views", pa.int8()), pa.field("joints_world_rel", _LIST_F32),
                          pa.field("joints_world", _LIST_F32), pa.field("uncertainty", _LIST_F32)])


def _flat(X: np.ndarray) -> pa.Array:
    """[N, k, 3] (rows with any NaN = null) -> list<float32> [k*3] per row."""
    N = X.shape[0]
    flat = X.reshape(N, -1).astype(np.float32)
    valid = np.isfinite(flat).all(-1)
    values = pa.array(np.nan_to_num(flat).reshape(-1), pa.float32())
    offsets = pa.array(np.arange(N + 1, dtype=np.int32) * flat.shape[1])
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(~valid)).cast(_LIST_F32)


def _strings(x: np.ndarray) -> pa.Array:
    return pa.array([str(s) for s in x], pa.string())


def single_table(frames: Frames, rel: np.ndarray, root: np.ndarray, scale: np.ndarray | None = None) -> pa.Table:
    """Rows of mode "single" (see the module docstring) for one batch: rel [B, V, J, 3], root [B, V, 3] (metric
    already where `scale` [B, V], the body scale applied, is finite; None = all null)."""
    b, v = np.nonzero(frames.view_mask)
    if scale is None:
        scale = np.full(frames.view_mask.shape, np.nan)
    body = scale[b, v]
    return pa.Table.from_arrays([
        _strings(frames.rig_id[b]), _strings(frames.sequence[b]), pa.array(frames.frame[b], pa.int64()),
        pa.array(v.astype(np.int8), pa.int8()), _strings(frames.camera_names[b, v]),
        _flat(rel[b, v]), _flat(root[b, v][:, None]),
        pa.array(body.astype(np.float32), pa.float32(), mask=~np.isfinite(body)),
    ], schema=SINGLE_SCHEMA)


Floors = dict[str, float | None]  # rig_id -> world z of its floor (metres), None where unknown


def dataset_floors(ds: Dataset) -> Floors:
    """{rig_id: floor_z or None} of every rig of the dataset (its rig files)."""
    return {rig_id: ds.rig(rig_id).floor_z for rig_id in ds.manifest.rigs}


def metric_scale(frames: Frames, batch: dict[str, torch.Tensor], rel: np.ndarray, root: np.ndarray,
                 skeleton: Skeleton, floors: Floors | None) -> tuple[np.ndarray, np.ndarray]:
    """(body scale [B, V] of each view's root-relative lift, root scale [B, V] of its root) from the feet on its
    rig's known floor (`rigpose.model.floor`: the body scale is one per sequence and view, the root's also follows
    the frame's own floor contact); NaN on rigs whose floor is unknown and views without a lift."""
    from rigpose.model.floor import metric_single_view

    scale = np.full(frames.view_mask.shape, np.nan)
    depth = np.full(frames.view_mask.shape, np.nan)
    for floor_z in {z for z in (floors or {}).values() if z is not None}:
        rows = np.array([(floors or {}).get(str(r)) == floor_z for r in frames.rig_id])
        if not rows.any():
            continue
        ok = np.isfinite(rel[rows]).all((-1, -2)) & frames.view_mask[rows]
        m = metric_single_view(torch.from_numpy(np.nan_to_num(rel[rows])), torch.from_numpy(np.nan_to_num(root[rows])),
                               batch["R"][rows].cpu().double(), batch["t"][rows].cpu().double(), torch.from_numpy(ok),
                               skeleton, floor_z=float(floor_z), groups=sequence_groups(frames.take(rows)),
                               w_BVJ=batch["w"][rows].cpu().double())
        scale[rows] = np.where(ok, m.scale.numpy(), np.nan)
        depth[rows] = np.where(ok, m.depth_scale.numpy(), np.nan)
    return scale, depth


def multi_table(frames: Frames, X_world: np.ndarray, root_ok: np.ndarray, num_views: np.ndarray,
                root_joints: tuple[int, ...], uncertainty: np.ndarray | None = None) -> pa.Table:
    """Rows of mode "multi" (see the module docstring) for one batch; X_world [B, J, 3], root_ok [B] bool,
    uncertainty [B, J] metres or None (all null)."""
    rel = X_world - X_world[:, list(root_joints)].mean(1, keepdims=True)
    absolute = np.where(root_ok[:, None, None], X_world, np.nan)
    if uncertainty is None:
        uncertainty = np.full(X_world.shape[:2], np.nan)
    return pa.Table.from_arrays([
        _strings(frames.rig_id), _strings(frames.sequence), pa.array(frames.frame, pa.int64()),
        pa.array(num_views.astype(np.int8), pa.int8()), _flat(rel), _flat(absolute),
        _flat(uncertainty[..., None]),
    ], schema=MULTI_SCHEMA)




def check_mode(mode: str) -> None:
    """ValueError unless `mode` is one of rigpose.config.VIEW_MODES ("single", "multi")."""
    if mode not in VIEW_MODES:
        raise ValueError(f"mode must be one of {VIEW_MODES}, got {mode!r}")


def output_schema(mode: str, *, skeleton: Skeleton, model: str, split: str, drop_cameras: Collection[str] = ()
                  ) -> pa.Schema:
    """The Parquet schema of `mode` ("single" | "multi") with the file metadata of the module docstring."""
    check_mode(mode)
    meta = {"skeleton": skeleton.name, "joint_names": json.dumps(list(skeleton.joint_names)), "mode": mode,
            "model": str(model), "split": split, "dropped_cameras": json.dumps(list(drop_cameras))}
    return (SINGLE_SCHEMA if mode == "single" else MULTI_SCHEMA).with_metadata(
        {f"rigpose.{k}".encode(): v.encode() for k, v in meta.items()})


def lift_frames(model: Lifter, skeleton: Skeleton, frames: Frames, *, mode: str,
                multi_view: MultiViewConfig | None = None, device: str = "cpu", floors: Floors | None = None,
                drop_cameras: Collection[str] = ()) -> pa.Table:
    """One batch of `frames` lifted: rows of `mode` (see the module docstring), without the file metadata.

    The per-batch body of `lift_dataset`, shared with the Ray Data path (`rigpose.inference.lift_ray`). Adaptation
    (`MultiViewConfig.steps_to_adapt`) fine-tunes a copy of the model on this batch, and refinement groups frames
    by sequence within it, so those two depend on how the frames are batched; single-view lifts and fusion do not.
    `floors` ({rig_id: floor_z}, `dataset_floors`) makes single-view lifts metric on rigs whose floor is known (the
    body scale is one per sequence and view within the batch). `drop_cameras`: camera names whose 2D the method
    never sees (`rigpose.inference.drop.mask_cameras`; checked by the caller, `check_dataset_drop`).
    """
    check_mode(mode)
    frames = mask_cameras(frames, drop_cameras)
    multi_view = multi_view or MultiViewConfig()
    steps = multi_view.steps_to_adapt(multi=mode == "multi")
    batch = model_batch(frames, skeleton, device=device, pseudo_3d=steps > 0)  # only adaptation's losses may read it
    m = adapt_for(model, batch, skeleton, multi_view, multi=mode == "multi")
    if mode == "single":
        rel, root = lift_single(m, batch)
        scale, depth = metric_scale(frames, batch, rel, root, skeleton, floors)
        known = np.isfinite(scale)
        rel = np.where(known[..., None, None], rel * scale[..., None, None], rel)
        root = np.where(known[..., None], root * depth[..., None], root)
        return single_table(frames, rel, root, scale)
    X, sigma = lift_multi_uncertain(m, batch, skeleton, multi_view, groups=sequence_groups(frames))
    num_views = ((batch["w"].sum(-1) > 0) & (batch["view_mask"] > 0)).sum(-1).cpu().numpy()
    return multi_table(frames, X, batch["root_ok"].cpu().numpy() > 0, num_views, tuple(skeleton.root_joints), sigma)


def lift_dataset(model_path: str, data_url: str, *, split: str, out_url: str, mode: str = "single",
                 multi_view: MultiViewConfig | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_rows: int | None = None, device: str = "cpu", drop_cameras: Iterable[str] = ()
                 ) -> dict[str, Any]:
    """Lift `split` of the dataset at `data_url` with the model at `model_path`; write Parquet to `out_url`.

    mode "single": every view on its own (`multi_view.adapt_steps` > 0 first fine-tunes a copy of the model on each
    batch's own multi-view 2D), metric where the rig's floor is known; mode "multi": world poses by `multi_view`
    (default `MultiViewConfig()`). `drop_cameras`: cameras (rig file names) whose 2D is left out; ValueError for
    a name no rig of the split has, or one that leaves a rig too few cameras for `mode`
    (`rigpose.inference.drop.check_dataset_drop`). Returns {"out": out_url, "rows": rows written, "frames": frames
    read, "dropped_cameras": [names]}.
    """
    check_mode(mode)
    model, skeleton, ds = open_inputs(model_path, data_url, split=split)
    dropped = check_dataset_drop(ds, drop_cameras, split=split, modes=(mode,))
    floors = dataset_floors(ds)
    model.to(device)
    rows = frames_read = 0
    schema = output_schema(mode, skeleton=skeleton, model=str(model_path), split=split, drop_cameras=dropped)
    with published_parquet(out_url, schema) as writer:
        for frames in iter_frames(ds, split=split, batch_size=batch_size, max_rows=max_rows):
            table = lift_frames(model, skeleton, frames, mode=mode, multi_view=multi_view, device=device,
                                floors=floors, drop_cameras=dropped)
            writer.write_table(table.replace_schema_metadata(schema.metadata))
            rows += table.num_rows
            frames_read += len(frames)
    return {"out": out_url, "rows": rows, "frames": frames_read, "dropped_cameras": list(dropped)}
