"""A trained lifter's errors on a sample of frames, per joint and per camera (what `rigpose.inference.plots` draws).

Shape letters: B frames, V views, S source views, T target views, J joints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rigpose import geometry as g
from rigpose import metrics as ev
from rigpose.data.schema import Frames
from rigpose.inference.lift import model_batch
from rigpose.model.fusion import lift_single
from rigpose.skeleton import Skeleton


@dataclass(frozen=True)
class LifterErrors:
    """What `run_figures` draws, as numbers (means over the finite values only).

    joint_error [J]: single-view MPJPE per joint, mm (root-relative, each view's camera frame) when the frames
    carry 3D labels, else the held-out-view reprojection error per joint, px; joint_count [J]: values averaged.
    camera_labels [C] "<rig_id>/<camera>" (sorted, as `rigpose.inference.evaluate` keys them); camera_px [C]: held-out-
    view reprojection error of each source camera's lifts, px; camera_mm [C]: single-view MPJPE (mean over poses
    of the per-pose mean), mm, or None without 3D labels. Both per-camera numbers match `evaluate_run.evaluate`'s
    "single" per_camera `heldout_px` / `mpjpe_mm` on the same frames.
    """

    joint_names: tuple[str, ...]
    joint_error: np.ndarray
    joint_count: np.ndarray
    joint_unit: str
    camera_labels: tuple[str, ...]
    camera_px: np.ndarray
    camera_mm: np.ndarray | None
    num_frames: int


@dataclass(frozen=True)
class Lifted:
    """One sample's lifts and what the metrics need: frames, rel [B, V, J, 3] m, kp [B, V, J, 2] px, w [B, V, J],
    cameras [B, V, ...], keys [B, V] camera labels, truth [B, V, J, 3] m root-relative camera frame or None."""

    frames: Frames
    rel: np.ndarray
    kp: np.ndarray
    w: np.ndarray
    cams: g.CameraArrays
    keys: np.ndarray
    truth: np.ndarray | None


def sample_frames(frames: Frames, max_frames: int) -> Frames:
    """At most `max_frames` rows spread evenly over `frames` (all of them when there are fewer)."""
    if len(frames) <= max_frames:
        return frames
    return frames.take(np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(np.int64)))


def lift_sample(model: torch.nn.Module, frames: Frames, skeleton: Skeleton) -> Lifted:
    param = next(model.parameters(), None)
    device = "cpu" if param is None else str(param.device)
    batch = model_batch(frames, skeleton, device=device)  # 2D only: joints_3d stays in `frames`
    was_training = model.training
    try:
        rel, _root = lift_single(model, batch)  # [B, V, J, 3]; NaN for views without 2D
    finally:
        model.train(was_training)  # lift_single switches to eval; a training loop must not notice
    np_ = {k: batch[k].detach().cpu().double().numpy() for k in ("kp", "w", "K", "dist", "R", "t")}
    cams = g.CameraArrays(np_["K"], np_["dist"], np_["R"], np_["t"])
    keys = np.char.add(np.char.add(frames.rig_id.astype(str)[:, None], "/"), frames.camera_names.astype(str))
    truth = None
    if frames.joints_3d is not None and np.isfinite(frames.joints_3d).all(-1).any():
        gt_cam = g.world_to_camera(frames.joints_3d.astype(np.float64)[:, None], cams.R, cams.t)  # [B, V, J, 3]
        truth = ev.root_relative(gt_cam, tuple(skeleton.root_joints))
    return Lifted(frames, rel, np_["kp"], np_["w"], cams, keys, truth)


def _group_means(values: np.ndarray, groups: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Mean [C] of the finite `values` whose `groups` (same shape) entry is labels[c]; NaN for an empty group."""
    ok = np.isfinite(values)
    out = np.full(len(labels), np.nan)
    for c, key in enumerate(labels):
        sel = ok & (groups == key)
        if sel.any():
            out[c] = values[sel].mean()
    return out


def _mean_per_joint(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [J] of the finite values [..., J] over every leading axis, NaN where none; their count [J])."""
    flat = values.reshape(-1, values.shape[-1])
    ok = np.isfinite(flat)
    count = ok.sum(0)
    total = np.where(ok, flat, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def errors_of(lifted: Lifted, skeleton: Skeleton) -> LifterErrors:
    roots = tuple(skeleton.root_joints)
    px = ev.heldout_view_px(lifted.rel, lifted.kp, lifted.w, lifted.cams, roots)  # [B, S, T, J]
    real = lifted.frames.view_mask
    labels = tuple(sorted(set(lifted.keys[real].tolist())))
    camera_px = _group_means(px, np.broadcast_to(lifted.keys[:, :, None, None], px.shape), labels)
    camera_mm = None
    if lifted.truth is not None:
        per_joint_mm = ev.mpjpe(lifted.rel[..., None, :], lifted.truth[..., None, :])  # [B, V, J]: one joint each
        joint_error, joint_count = _mean_per_joint(per_joint_mm)
        camera_mm = _group_means(ev.mpjpe(lifted.rel, lifted.truth), lifted.keys, labels)
        unit = "mm"
    else:
        joint_error, joint_count = _mean_per_joint(px)
        unit = "px"
    return LifterErrors(tuple(skeleton.joint_names), joint_error, joint_count, unit, labels, camera_px, camera_mm,
                        len(lifted.frames))


def check_sample(frames: Frames, skeleton: Skeleton, max_frames: int) -> None:
    if len(frames) == 0:
        raise ValueError("frames: no rows to draw from")
    if frames.num_joints != skeleton.num_joints:
        raise ValueError(f"frames have {frames.num_joints} joints, skeleton {skeleton.name!r} has "
                         f"{skeleton.num_joints}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")


def lifter_errors(model: torch.nn.Module, frames: Frames, skeleton: Skeleton, *,
                  max_frames: int = 512) -> LifterErrors:
    """The per-joint and per-camera errors of `model` on at most `max_frames` rows of `frames` (see `LifterErrors`).

    The model sees 2D only (`rigpose.inference.lift.model_batch`); `frames.joints_3d` (world metres) is read for the
    metrics alone. The model's train/eval mode is left as it was.
    """
    check_sample(frames, skeleton, max_frames)
    return errors_of(lift_sample(model, sample_frames(frames, max_frames), skeleton), skeleton)


def example_views(lifted: Lifted, num: int) -> list[tuple[int, int]]:
    """Up to `num` (frame, view) pairs spread over the sample, each frame's best-seen view with a finite lift."""
    lifted_ok = np.isfinite(lifted.rel).all((-1, -2)) & lifted.frames.view_mask  # [B, V]
    rows = np.flatnonzero(lifted_ok.any(-1))
    if len(rows) == 0 or num == 0:
        return []
    rows = rows[np.unique(np.linspace(0, len(rows) - 1, min(num, len(rows))).round().astype(np.int64))]
    seen = np.where(lifted_ok, (lifted.w > 0).sum(-1), -1)  # [B, V] visible joints
    return [(int(b), int(seen[b].argmax())) for b in rows]
