"""One training step's math, rank-agnostic and free of Ray: lift every view, evaluate the weighted loss terms.

The caller supplies `reduce` (identity on one process, an all-reduce under DDP) so each term is normalised by the
global count of visible keypoints: missing views/joints and uneven shards do not bias the mean (STYLE habit 6).
Shape letters: B frames, V views, J joints.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rigpose.config import LossConfig
from rigpose.geometry import CameraArrays
from rigpose.model import losses
from rigpose.model.lifter import lift_views
from rigpose.skeleton import Skeleton


def batch_cameras(batch: dict[str, torch.Tensor]) -> CameraArrays:
    """The camera fields of a prepared batch as `CameraArrays` ([B, V, ...] tensors)."""
    return CameraArrays(K=batch["K"], dist=batch["dist"], R=batch["R"], t=batch["t"])


def loss_terms(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    skeleton: Skeleton,
    *,
    loss_cfg: LossConfig,
    supervision: str = "2d",
    step: int = 0,
    train: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, losses.Loss]:
    """(sum, count) per active loss term of `loss_cfg` (weight > 0) for one batch; `supervision="2d"` never touches
    batch["joints_3d"]."""
    cams = batch_cameras(batch)
    w = batch["w"]
    inp_w = w
    hidden = torch.zeros_like(w)
    if train and loss_cfg.hide_joint_prob > 0:
        r = torch.rand(w.shape, generator=generator, device=w.device)
        hidden = ((r < loss_cfg.hide_joint_prob) & (w > 0)).to(w.dtype)
        inp_w = w * (1 - hidden)
    out = lift_views(model, batch["xy"], inp_w)
    view_ok = batch["view_mask"] * (inp_w.sum(-1) > 0).to(w.dtype)
    roots = tuple(skeleton.root_joints)
    terms: dict[str, losses.Loss] = {}
    if supervision == "3d":
        terms["supervised_3d"] = losses.supervised_3d(out.rel, out.root, batch["joints_3d"], roots, view_ok, cams)
        return terms
    if supervision != "2d":
        raise ValueError(f"supervision must be '2d' or '3d', got {supervision!r}")
    if loss_cfg.cross_view:
        terms["cross_view"] = losses.cross_view_reprojection(
            out.rel, batch["root_world"], batch["root_ok"], batch["kp"], w, cams, huber_px=loss_cfg.huber_px)
    if loss_cfg.root_depth:
        terms["root_depth"] = losses.root_depth(out.root, batch["root_world"], batch["root_ok"], view_ok, cams)
    if loss_cfg.pseudo_3d and (loss_cfg.pseudo_3d_steps == 0 or step < loss_cfg.pseudo_3d_steps):
        terms["pseudo_3d"] = losses.pseudo_3d(out.rel, batch["pseudo_world"], batch["pseudo_ok"], roots, view_ok, cams)
    if loss_cfg.inpainting and train:
        B, V, J, _ = out.xy_pred.shape
        terms["inpainting"] = losses.inpainting_2d(out.xy_pred.reshape(B * V, J, 2), batch["xy"].reshape(B * V, J, 2),
                                              hidden.reshape(B * V, J), batch["K"].reshape(B * V, 3, 3))
    if loss_cfg.bone_symmetry:
        B, V, J, _ = out.rel.shape
        sel = view_ok.reshape(-1) > 0
        terms["bone_symmetry"] = losses.bone_symmetry(out.rel.reshape(B * V, J, 3)[sel], skeleton.bones,
                                                 skeleton.symmetric_bones)
    return terms


def total_loss(
    terms: dict[str, losses.Loss],
    loss_cfg: LossConfig,
    *,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of sum/count per term, counts reduced across workers. Returns (loss, per-term means)."""
    names = sorted(terms)
    counts = reduce(torch.stack([terms[n][1].detach().to(torch.float32) for n in names])) if names else None
    loss = torch.zeros((), device=next(iter(terms.values()))[0].device) if names else torch.zeros(())
    means: dict[str, torch.Tensor] = {}
    for i, n in enumerate(names):
        mean = terms[n][0] / counts[i].clamp_min(1.0)
        means[n] = mean.detach()
        weight = 1.0 if n == "supervised_3d" else getattr(loss_cfg, n)
        loss = loss + weight * mean
    return loss, means
