"""Multi-view inference: lift every view, fuse in the world frame, refine against all views' 2D, adapt at test time.

Pure PyTorch (no Ray, MLflow or storage). Batches are dicts of tensors built by `rigpose.model.inputs.prepare_arrays`
(kp, w, xy, K, dist, R, t, view_mask, root_world, root_ok, pseudo_world, pseudo_ok); nothing here reads
`joints_3d`, so every stage is label-free and may run on any test sequence.

Shape letters: B frames, V views, J joints, N bones, G groups (sequences: frames sharing one skeleton).
Units: metres for 3D, pixels for `kp` and reprojection residuals, undistorted normalised coordinates for `xy`.

Stages (`MultiViewMode`):
- fusion: each view's root-relative lift is scaled to the triangulated root's depth, rotated to the world (R^T),
  placed at the triangulated root, and the views are averaged joint by joint with confidence weights
  (`fusion_weights`).
- refinement: the fused poses are optimised against every view's 2D (robust, score-weighted reprojection) while
  keeping the fused pose's shape (the learned prior), bone lengths constant within a sequence and left/right
  symmetric. The prior's weight is the MAP balance (sigma_2d / sigma_prior)^2, both estimated from the batch
  (`estimate_noise`): it rises with the 2D noise, as the prior should.
- adaptation: a copy of the lifter fine-tuned a few steps on the test sequence's own multi-view 2D with the
  2D-supervised training losses, then fusion and refinement with it.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from torch import nn

from rigpose.geometry import CameraArrays, project_camera, triangulate
from rigpose.model.losses import huber, to_camera
from rigpose.model.objective import LossWeights, lift_views, loss_terms, total_loss
from rigpose.skeleton import Skeleton

Batch = Mapping[str, torch.Tensor]
WEIGHTINGS = ("confidence", "uniform")
FUSE_KEYS = ("xy", "w", "R", "t", "view_mask", "root_world", "root_ok")
REFINE_KEYS = ("kp", "w", "K", "dist", "R", "t", "view_mask")
MISSING_JOINT_WEIGHT = 0.05  # confidence of a joint the view did not see (the lifter filled it in)
_RAYLEIGH_MEDIAN_SQ = 2.0 * math.log(2.0)  # median of |e|^2 / sigma^2 for e ~ N(0, sigma^2 I_2)


class MultiViewMode(StrEnum):
    """What multi-view inference does beyond lifting each view."""

    FUSION = "fusion"
    REFINEMENT = "refinement"
    ADAPTATION = "adaptation"


@dataclass
class MultiViewConfig:
    """Settings of multi-view inference (`rigpose lift --mode multi`, the evaluator)."""

    mode: MultiViewMode = MultiViewMode.REFINEMENT
    weighting: str = "confidence"  # fusion weights: "confidence" (scores) or "uniform" (one per available view)
    refine_steps: int = 100  # L-BFGS iterations of the refinement (refinement and adaptation modes); 0 = none
    prior_weight: float | None = None  # weight of the fused-pose prior vs the 2D; None = from the 2D noise
    bone_weight: float = 3.0  # bone lengths constant within a sequence
    symmetry_weight: float = 0.1  # left/right bone lengths equal
    adapt_steps: int = 100  # adaptation mode: fine-tuning steps on the test 2D
    adapt_lr: float = 1e-4  # adaptation mode: Adam learning rate
    adapt_batch_size: int | None = 1024  # frames per adaptation step (None = the whole batch)

    def __post_init__(self) -> None:
        try:
            self.mode = MultiViewMode(self.mode)
        except ValueError:
            raise ValueError(f"mode must be one of {[m.value for m in MultiViewMode]}, got {self.mode!r}") from None
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        for name in ("refine_steps", "adapt_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("bone_weight", "symmetry_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.prior_weight is not None and self.prior_weight <= 0:
            raise ValueError(f"prior_weight must be positive or None (from the data), got {self.prior_weight}")
        if self.adapt_lr <= 0:
            raise ValueError(f"adapt_lr must be positive, got {self.adapt_lr}")
        if self.adapt_batch_size is not None and self.adapt_batch_size < 1:
            raise ValueError(f"adapt_batch_size must be >= 1 or None, got {self.adapt_batch_size}")


# ---------------------------------------------------------------------------------------------- checks


def _check_batch(batch: Batch, keys: tuple[str, ...], where: str) -> tuple[int, int, int]:
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


def _check_poses(poses_BJ3: torch.Tensor, B: int, J: int, where: str) -> None:
    if tuple(poses_BJ3.shape) != (B, J, 3):
        raise ValueError(f"{where}: poses must be [B={B}, J={J}, 3], got {tuple(poses_BJ3.shape)}")


def view_ok(batch: Batch) -> torch.Tensor:
    """[B, V] bool: a real view (view_mask) with at least one valid joint (weight > 0)."""
    return (batch["view_mask"] > 0) & (batch["w"] > 0).any(-1)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off (eval) for the block, the model's own mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------- fusion


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


def fusion_weights(w_BVJ: torch.Tensor, ok_BV: torch.Tensor, weighting: str = "confidence") -> torch.Tensor:
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


def fuse(model: nn.Module, batch: Batch, skeleton: Skeleton, *, weighting: str = "confidence",
         rescale: bool = True) -> torch.Tensor:
    """Fused world poses [B, J, 3] (metres) from every available view's lift (see `lift_to_world`).

    Joint j of frame b is the `fusion_weights`-weighted mean over views of the views' world-frame estimates.
    Padding views (view_mask 0) and views with no valid joint are ignored; one view suffices. Frames with no
    usable view come back NaN. Runs without gradients, dropout off; the model's mode is restored.
    """
    num_joints = _check_batch(batch, FUSE_KEYS, "fuse")[2]
    if num_joints != skeleton.num_joints:
        raise ValueError(f"fuse: batch has {num_joints} joints, skeleton {skeleton.name!r} has {skeleton.num_joints}")
    with torch.no_grad(), _eval_mode(model):
        world_BVJ3, ok_BV = lift_to_world(model, batch, rescale=rescale)
    wts_BVJ = fusion_weights(batch["w"], ok_BV, weighting)
    den_BJ = wts_BVJ.sum(1)
    world_BVJ3 = torch.where(ok_BV[..., None, None], world_BVJ3, torch.zeros_like(world_BVJ3))
    fused = (wts_BVJ[..., None] * world_BVJ3).sum(1) / den_BJ.clamp_min(1e-12)[..., None]
    return torch.where(ok_BV.any(1)[:, None, None], fused, torch.full_like(fused, float("nan")))


# ---------------------------------------------------------------------------------------------- refinement


def reprojection_residuals(poses_BJ3: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel distance [B, V, J] of the poses projected into every view vs `kp`, observed [B, V, J] bool).

    Residuals are 0 where not observed (missing joint, padding view) or not projectable (behind the camera).
    """
    X_cam = to_camera(poses_BJ3, batch["R"], batch["t"])  # [B, V, J, 3]
    pix = project_camera(X_cam, batch["K"], batch["dist"])
    obs = (batch["w"] > 0) & (batch["view_mask"][..., None] > 0) & torch.isfinite(pix).all(-1)
    err = (torch.nan_to_num(pix) - batch["kp"]).norm(dim=-1)
    return torch.where(obs, err, torch.zeros_like(err)), obs


@dataclass(frozen=True)
class NoiseEstimate:
    """Label-free noise levels of one batch, pixels per image axis.

    sigma_2d_px: the 2D keypoints' noise; sigma_prior_px: the fused poses' shape error as seen in the images.
    `prior_weight` = (sigma_2d / sigma_prior)^2 is the MAP balance of the fused-pose prior against the 2D.
    """

    sigma_2d_px: float
    sigma_prior_px: float
    num_obs: int

    @property
    def prior_weight(self) -> float:
        return (self.sigma_2d_px / self.sigma_prior_px) ** 2


def _pixels_per_metre(poses_BJ3: torch.Tensor, batch: Batch, ok_BV: torch.Tensor) -> torch.Tensor:
    """[B] mean focal length / body depth over the frame's usable views: converts metres near the body to px."""
    X_cam = to_camera(torch.nan_to_num(poses_BJ3).mean(1, keepdim=True), batch["R"], batch["t"])[:, :, 0]
    k_BV = batch["K"][..., 0, 0] / X_cam[..., 2].clamp_min(0.1)
    okf = ok_BV.to(k_BV.dtype)
    mean_all = (k_BV * batch["view_mask"]).sum(1) / batch["view_mask"].sum(1).clamp_min(1)
    return torch.where(okf.sum(1) > 0, (k_BV * okf).sum(1) / okf.sum(1).clamp_min(1), mean_all)


def _weighted_dlt(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(score-weighted DLT of every joint [B, J, 3] world metres, NaN where < 2 views; views used [B, J])."""
    w = batch["w"] * (batch["view_mask"][..., None] > 0)
    kp = torch.where(w[..., None] > 0, batch["kp"], torch.full_like(batch["kp"], float("nan"))).double()
    cams = CameraArrays(*(batch[k].double() for k in ("K", "dist", "R", "t")))
    return triangulate(kp, cams, w.double()).to(batch["kp"].dtype), (w > 0).sum(1)


def estimate_noise(poses_BJ3: torch.Tensor, batch: Batch, *, min_ratio: float = 0.5, min_sigma_px: float = 0.5,
                   max_error_m: float = 1.0) -> NoiseEstimate:
    """Noise of the 2D and of the fused poses' shape [B, J, 3], from the data alone (no labels).

    Reference: the score-weighted DLT of every joint seen by n >= 2 views (plain least squares, so its residual
    keeps the noise's scale; an inlier-gated robust fit truncates it once the noise nears its gate).
    2D: the DLT's reprojection residual, its squared median divided by the Rayleigh median 2 ln 2 and by the
    least-squares residual share 1 - 3/(2n) (3 of the 2n coordinates are absorbed by the fit); the median makes
    outliers and swaps harmless. Floored at `min_sigma_px` (exact synthetic 2D).
    Prior: the mean squared distance (px, via the frame's px per metre, per axis) between the fused and the DLT
    pose, both centred on their mean joint (refinement's prior leaves the translation free), minus the DLT's own
    share 1.5 sigma_2d^2 / n. A mean, not a median: the lifter's errors are heavy-tailed and MAP wants their
    variance; distances over `max_error_m` count as `max_error_m` (a failed DLT). Floored at `min_ratio` sigma_2d,
    so the prior never outweighs the 2D by more than 1/min_ratio^2. No joint seen twice (one view): prior weight 1.
    """
    X_BJ3 = poses_BJ3.detach()
    ref_BJ3, n_BJ = _weighted_dlt(batch)
    err, obs = reprojection_residuals(torch.nan_to_num(ref_BJ3), batch)
    ok_BJ = torch.isfinite(ref_BJ3).all(-1) & torch.isfinite(X_BJ3).all(-1) & (n_BJ >= 2)
    sel = obs & ok_BJ[:, None]
    if not sel.any():
        return NoiseEstimate(sigma_2d_px=1.0, sigma_prior_px=1.0, num_obs=0)
    share = (1.0 - 1.5 / n_BJ.clamp_min(2).to(err.dtype))[:, None].expand_as(err)
    sigma_2d = max(float(((err[sel].square() / share[sel]).median() / _RAYLEIGH_MEDIAN_SQ).sqrt()), min_sigma_px)
    okf = ok_BJ.to(X_BJ3.dtype)[..., None]
    num = okf.sum(1, keepdim=True).clamp_min(1)
    d = (torch.nan_to_num(X_BJ3) - torch.nan_to_num(ref_BJ3)) * okf
    d = (d - d.sum(1, keepdim=True) / num).norm(dim=-1).clamp_max(max_error_m)  # shape only, [B, J] metres
    k_B = _pixels_per_metre(X_BJ3, batch, view_ok(batch))
    use = ok_BJ & (ok_BJ.sum(1, keepdim=True) >= 4)  # a centre from >= 4 joints
    if not use.any():
        return NoiseEstimate(sigma_2d_px=sigma_2d, sigma_prior_px=sigma_2d, num_obs=int(sel.sum()))
    d2_px = (d * k_B[:, None])[use].square()
    prior_sq = float(d2_px.mean()) / 3 - 1.5 * sigma_2d**2 / float(n_BJ[use].double().mean())
    sigma_prior = math.sqrt(max(prior_sq, (min_ratio * sigma_2d) ** 2))
    return NoiseEstimate(sigma_2d_px=sigma_2d, sigma_prior_px=sigma_prior, num_obs=int(sel.sum()))


def _group_index(groups: torch.Tensor | None, B: int, device: torch.device) -> torch.Tensor:
    if groups is None:
        return torch.zeros(B, dtype=torch.long, device=device)
    groups = torch.as_tensor(groups, device=device)
    if groups.shape != (B,):
        raise ValueError(f"refine: groups must be [B={B}] (one sequence id per frame), got {tuple(groups.shape)}")
    return torch.unique(groups, return_inverse=True)[1]


def _bone_lengths(X_BJ3: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    child, parent = zip(*skeleton.bones, strict=True)
    return (X_BJ3[:, list(child)] - X_BJ3[:, list(parent)]).norm(dim=-1)  # [B, N]


def _initial_bone_lengths(X0_BJ3: torch.Tensor, g_B: torch.Tensor, finite_B: torch.Tensor,
                          skeleton: Skeleton) -> torch.Tensor:
    """[G, N] median bone lengths of each group's finite fused poses (the starting estimate of its skeleton)."""
    lengths = _bone_lengths(X0_BJ3, skeleton)
    overall = lengths[finite_B].median(0).values
    groups = [lengths[(g_B == g) & finite_B] for g in range(int(g_B.max()) + 1)]
    return torch.stack([x.median(0).values if len(x) else overall for x in groups])


def refine(
    poses_BJ3: torch.Tensor,
    batch: Batch,
    skeleton: Skeleton,
    *,
    steps: int = 100,
    prior_weight: float | torch.Tensor | None = None,
    bone_weight: float = 3.0,
    symmetry_weight: float = 0.1,
    groups: torch.Tensor | None = None,
    huber_sigmas: float = 2.5,
) -> torch.Tensor:
    """Refined world poses [B, J, 3] (metres): the fused `poses_BJ3` optimised (L-BFGS, `steps` iterations).

    Minimises, per frame and in units of the 2D noise sigma (px, `estimate_noise`), with k = px per metre and
    c(.) centring on the mean joint:
      sum_{v,j} w_vj rho(|proj_v(X_j) - kp_vj| / sigma)                robust 2D term (Huber at `huber_sigmas`)
      + prior_weight * sum_j (k |c(X - X0)_j| / sigma)^2 / 2          keep the fused pose's shape (learned prior)
      + bone_weight * sum_n (k (len_n(X) - L_gn) / sigma)^2 / 2       bone lengths L_g shared by the group g
      + symmetry_weight * sum_pairs (k (L_g,left - L_g,right) / sigma)^2 / 2.
    The prior leaves the translation free: the fused pose's errors are largely a whole-body offset (the
    triangulated root's error) shared by all joints, which a per-joint prior would weigh J times over, while the
    2D of every joint and view pins it down. `prior_weight=None` takes the MAP balance (sigma_2d / sigma_prior)^2
    from `estimate_noise`; a float or a [J] tensor sets it. `groups` [B]
    names each frame's sequence (frames of one sequence share a skeleton; None = one group). NaN frames stay NaN.
    """
    B, _, J = _check_batch(batch, REFINE_KEYS, "refine")
    _check_poses(poses_BJ3, B, J, "refine")
    if steps < 0 or bone_weight < 0 or symmetry_weight < 0 or huber_sigmas <= 0:
        raise ValueError("refine: steps, bone_weight, symmetry_weight must be >= 0 and huber_sigmas > 0, got "
                         f"{steps}, {bone_weight}, {symmetry_weight}, {huber_sigmas}")
    if prior_weight is not None and bool((torch.as_tensor(prior_weight) <= 0).any()):
        raise ValueError(f"refine: prior_weight must be positive or None, got {prior_weight}")
    finite_B = torch.isfinite(poses_BJ3).all(-1).all(-1)
    if steps == 0 or not finite_B.any():
        return poses_BJ3.detach().clone()
    X0 = torch.where(finite_B[:, None, None], poses_BJ3.detach(), torch.zeros_like(poses_BJ3))
    noise = estimate_noise(poses_BJ3, batch)
    lam = noise.prior_weight if prior_weight is None else prior_weight
    g_B = _group_index(groups, B, X0.device)
    k_B = (_pixels_per_metre(X0, batch, view_ok(batch)) / noise.sigma_2d_px) * finite_B
    fb = finite_B.to(X0.dtype)
    X = X0.clone().requires_grad_(True)
    L_GN = _initial_bone_lengths(X0, g_B, finite_B, skeleton).requires_grad_(True)
    left, right = zip(*skeleton.symmetric_bones, strict=True) if skeleton.symmetric_bones else ((), ())
    opt = torch.optim.LBFGS([X, L_GN], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        err, obs = reprojection_residuals(X, batch)
        data = (batch["w"] * obs * huber(err / noise.sigma_2d_px, huber_sigmas) * huber_sigmas).sum()
        d = X - X0
        d = d - d.mean(1, keepdim=True)  # the prior holds the shape; the 2D alone places the body
        prior = 0.5 * (lam * (k_B[:, None] * d.norm(dim=-1)) ** 2).sum()
        L_BN = L_GN[g_B]
        bone = 0.5 * bone_weight * ((k_B[:, None] * (_bone_lengths(X, skeleton) - L_BN)) ** 2).sum()
        sym = 0.5 * symmetry_weight * ((k_B[:, None] * (L_BN[:, list(left)] - L_BN[:, list(right)])) ** 2 * fb[:, None]
                                       ).sum()
        loss = (data + prior + bone + sym) / fb.sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = X.detach()
    return torch.where(finite_B[:, None, None], out, torch.full_like(out, float("nan")))


# ---------------------------------------------------------------------------------------------- adaptation


def _label_free(batch: Batch) -> dict[str, torch.Tensor]:
    """The batch without its 3D labels: adaptation must never see `joints_3d`."""
    return {k: v for k, v in batch.items() if k != "joints_3d"}


def _batches(data: Batch | Iterable[Batch]) -> Iterator[Batch]:
    """Endless stream of batches: one batch repeated, or an iterable of batches cycled."""
    if isinstance(data, Mapping):
        return itertools.repeat(data)
    return itertools.cycle(data)


def adapt(
    model: nn.Module,
    data: Batch | Iterable[Batch],
    skeleton: Skeleton,
    *,
    steps: int = 100,
    lr: float = 1e-4,
    weights: LossWeights | None = None,
    batch_size: int | None = 1024,
    seed: int = 0,
) -> nn.Module:
    """Test-time adaptation: a deep copy of `model` fine-tuned on the test frames' own multi-view 2D; eval mode.

    `data` is one prepared batch (dict of [B, ...] tensors; `batch_size` frames drawn from it per step, None = all)
    or an iterable of them (cycled). Each step minimises the 2D-supervised training losses (`loss_terms(...,
    supervision="2d")`, default `LossWeights`) with Adam at `lr`, dropout 0. `joints_3d` is removed from every
    batch before use. The original model is left untouched.
    """
    if steps < 0 or lr <= 0:
        raise ValueError(f"adapt: steps must be >= 0 and lr > 0, got {steps}, {lr}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"adapt: batch_size must be >= 1 or None, got {batch_size}")
    weights = weights or LossWeights()
    tuned = copy.deepcopy(model)
    tuned.train()
    if hasattr(tuned, "set_dropout"):
        tuned.set_dropout(0.0)
    for p in tuned.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    stream = _batches(data)
    gen: torch.Generator | None = None
    for step in range(steps):
        batch = _label_free(next(stream))
        num_frames = _check_batch(batch, FUSE_KEYS + REFINE_KEYS, "adapt")[0]
        if gen is None:
            gen = torch.Generator(device=batch["w"].device).manual_seed(seed)
        if batch_size is not None and num_frames > batch_size:
            idx = torch.randperm(num_frames, generator=gen, device=batch["w"].device)[:batch_size]
            batch = {k: v[idx] for k, v in batch.items()}
        terms = loss_terms(tuned, batch, skeleton, weights=weights, supervision="2d", step=step, train=True,
                           generator=gen)
        loss, _ = total_loss(terms, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


# ---------------------------------------------------------------------------------------------- all stages


def lift_multiview(model: nn.Module, batch: Batch, skeleton: Skeleton, config: MultiViewConfig | None = None, *,
                   groups: torch.Tensor | None = None) -> torch.Tensor:
    """World poses [B, J, 3] (metres) by `config.mode`: fusion; + refinement; or adaptation, fusion, refinement."""
    config = config or MultiViewConfig()
    if config.mode is MultiViewMode.ADAPTATION and config.adapt_steps > 0:
        model = adapt(model, batch, skeleton, steps=config.adapt_steps, lr=config.adapt_lr,
                      batch_size=config.adapt_batch_size)
    poses = fuse(model, batch, skeleton, weighting=config.weighting)
    if config.mode is MultiViewMode.FUSION or config.refine_steps == 0:
        return poses
    return refine(poses, batch, skeleton, steps=config.refine_steps, prior_weight=config.prior_weight,
                  bone_weight=config.bone_weight, symmetry_weight=config.symmetry_weight, groups=groups)


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
