"""Multi-view fusion: lift every view, take each lift to the world frame, average the views joint by joint.

Pure PyTorch (no Ray, MLflow or storage). Batches are dicts of tensors built by `rigpose.model.inputs.prepare_arrays`
(kp, w, xy, K, dist, R, t, view_mask, root_world, root_ok, pseudo_world, pseudo_ok); nothing here reads
`joints_3d`, so fusion is label-free and may run on any test sequence. The checks and helpers shared by the other
multi-view stages (`rigpose.model.refine`, `rigpose.model.adapt`, `rigpose.model.multiview`) live here too.

Shape letters: B frames, V views, J joints. Units: metres for 3D, undistorted normalised coordinates for `xy`.

Each view's root-relative lift is scaled to the triangulated root's depth, rotated to the world (R^T), placed at the
triangulated root, and the views are averaged joint by joint with confidence weights (`fusion_weights`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import get_args

import numpy as np
import torch
from torch import nn

from rigpose.config import FusionWeighting, MultiViewConfig
from rigpose.model.lifter import lift_views
from rigpose.model.losses import to_camera
from rigpose.skeleton import Skeleton

Batch = Mapping[str, torch.Tensor]
WEIGHTINGS: tuple[str, ...] = get_args(FusionWeighting)
FUSE_KEYS = ("xy", "w", "R", "t", "view_mask", "root_world", "root_ok")
MISSING_JOINT_WEIGHT = 0.05  # confidence of a joint the view did not see (the lifter filled it in)


def check_batch(batch: Batch, keys: tuple[str, ...], where: str) -> tuple[int, int, int]:
    """(B, V, J) of a prepared batch; ValueError naming a missing key or a field of the wrong shape."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{where}: batch must be a mapping of tensors, got {type(batch).__name__}")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{where}: batch lacks {missing} (build it with rigpose.model.inputs.prepare_arrays)")
    w = batch["w"]
    if w.ndim != 3:
        raise ValueError(f"{where}: batch['w'] must be [B, V, J], got {tuple(w.shape)}")
    B, V, J = w.shape
    expect = {"kp": (B, V, J, 2), "xy": (B, V, J, 2), "R": (B, V, 3, 3), "t": (B, V, 3), "K": (B, V, 3, 3),
              "dist": (B, V, 5), "view_mask": (B, V), "root_world": (B, 3), "root_ok": (B,)}
    for k, shape in expect.items():
        if k in keys and tuple(batch[k].shape) != shape:
            raise ValueError(f"{where}: batch[{k!r}] must have shape {shape}, got {tuple(batch[k].shape)}")
    return B, V, J


def view_ok(batch: Batch) -> torch.Tensor:
    """[B, V] bool: a real view (view_mask) with at least one valid joint (weight > 0)."""
    return (batch["view_mask"] > 0) & (batch["w"] > 0).any(-1)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off (eval) for the block, the model's own mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def lift_to_world(model: nn.Module, batch: Batch, *, rescale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view's lift in the world frame: (world [B, V, J, 3] metres, view_ok [B, V] bool).

    Where `root_ok`, the root-relative lift is scaled by (triangulated root depth / predicted root depth) in that
    camera when `rescale` (every joint stays on its own ray, so the view's self-reprojection is kept, and the
    metric scale comes from the calibrated rig instead of the single-view depth guess; the factor is clamped to
    [0.5, 2]), rotated by R^T and placed at the triangulated root. Elsewhere (e.g. one view) it is placed at the
    view's own predicted root taken to the world. Views that are not ok hold finite garbage: mask them.
    """
    ok_BV = view_ok(batch)
    w_BVJ = batch["w"] * ok_BV[..., None].to(batch["w"].dtype)
    out = lift_views(model, batch["xy"], w_BVJ)
    R, t = batch["R"], batch["t"]
    root_ok = batch["root_ok"][:, None] > 0  # [B, 1]
    rel = out.rel
    if rescale:
        z_tri = to_camera(batch["root_world"][:, None], R, t)[:, :, 0, 2]  # [B, V]
        scale = (z_tri / out.root[..., 2].clamp_min(1e-3)).clamp(0.5, 2.0)
        rel = rel * torch.where(root_ok, scale, torch.ones_like(scale))[..., None, None]
    own_root_BV3 = torch.einsum("bvi,bvik->bvk", out.root - t, R)  # R^T (root_cam - t)
    root_BV3 = torch.where(root_ok[..., None], batch["root_world"][:, None], own_root_BV3)
    rel_world = torch.einsum("bvji,bvik->bvjk", rel, R)  # R^T rel
    return rel_world + root_BV3[:, :, None], ok_BV


def fusion_weights(w_BVJ: torch.Tensor, ok_BV: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-view, per-joint fusion weights [B, V, J] (0 on views that are not ok).

    - "uniform": 1 for every joint of every available view (confidence-free).
    - "confidence": the joint's detector score in that view (MISSING_JOINT_WEIGHT where the view did not see the
      joint and the lifter filled it in), times the view's mean score over all joints (a view that saw little, or
      saw it badly, gives a worse lift of every joint, not only of the joints it missed).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    ok = ok_BV[..., None].to(w_BVJ.dtype)
    if weighting == "uniform":
        return ok.expand_as(w_BVJ)
    joint = torch.where(w_BVJ > 0, w_BVJ, torch.full_like(w_BVJ, MISSING_JOINT_WEIGHT))
    return joint * w_BVJ.mean(-1, keepdim=True) * ok


def fuse(model: nn.Module, batch: Batch, skeleton: Skeleton, config: MultiViewConfig | None = None, *,
         rescale: bool = True) -> torch.Tensor:
    """Fused world poses [B, J, 3] (metres) from every available view's lift (see `lift_to_world`).

    Joint j of frame b is the `fusion_weights`-weighted mean over views of the views' world-frame estimates.
    Padding views (view_mask 0) and views with no valid joint are ignored; one view suffices. Frames with no
    usable view come back NaN. Runs without gradients, dropout off; the model's mode is restored. Of `config`
    (default `MultiViewConfig()`) only `weighting` applies.
    """
    config = config or MultiViewConfig()
    num_joints = check_batch(batch, FUSE_KEYS, "fuse")[2]
    if num_joints != skeleton.num_joints:
        raise ValueError(f"fuse: batch has {num_joints} joints, skeleton {skeleton.name!r} has {skeleton.num_joints}")
    with torch.no_grad(), eval_mode(model):
        world_BVJ3, ok_BV = lift_to_world(model, batch, rescale=rescale)
    wts_BVJ = fusion_weights(batch["w"], ok_BV, config.weighting)
    den_BJ = wts_BVJ.sum(1)
    world_BVJ3 = torch.where(ok_BV[..., None, None], world_BVJ3, torch.zeros_like(world_BVJ3))
    fused = (wts_BVJ[..., None] * world_BVJ3).sum(1) / den_BJ.clamp_min(1e-12)[..., None]
    return torch.where(ok_BV.any(1)[:, None, None], fused, torch.full_like(fused, float("nan")))


@torch.no_grad()
def lift_single(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Every view lifted alone: (rel [B, V, J, 3] root-relative camera-frame metres, root [B, V, 3]); NaN for
    views with no 2D keypoint (or padding)."""
    model.eval()
    out = lift_views(model, batch["xy"], batch["w"])
    ok = ((batch["w"].sum(-1) > 0) & (batch["view_mask"] > 0)).cpu().numpy()
    rel = np.where(ok[..., None, None], out.rel.cpu().double().numpy(), np.nan)
    root = np.where(ok[..., None], out.root.cpu().double().numpy(), np.nan)
    return rel, root
