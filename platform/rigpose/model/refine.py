"""Multi-view refinement: fused world poses optimised against every view's 2D, keeping the learned prior's shape.

The fused poses (`rigpose.model.fusion.fuse`) are optimised against every view's 2D (robust, score-weighted
reprojection) while keeping the fused pose's shape (the learned prior), bone lengths constant within a sequence and
left/right symmetric. The prior's weight is the MAP balance (sigma_2d / sigma_prior)^2, both estimated from the batch
(`estimate_noise`): it rises with the 2D noise, as the prior should. Label-free: nothing here reads `joints_3d`.

Shape letters: B frames, V views, J joints, N bones, G groups (sequences: frames sharing one skeleton).
Units: metres for 3D, pixels for `kp` and reprojection residuals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rigpose.config import MultiViewConfig
from rigpose.geometry import CameraArrays, project_camera, triangulate
from rigpose.model.fusion import Batch, check_batch, view_ok
from rigpose.model.losses import huber, to_camera
from rigpose.skeleton import Skeleton

REFINE_KEYS = ("kp", "w", "K", "dist", "R", "t", "view_mask")
_RAYLEIGH_MEDIAN_SQ = 2.0 * math.log(2.0)  # median of |e|^2 / sigma^2 for e ~ N(0, sigma^2 I_2)


def _check_poses(poses_BJ3: torch.Tensor, B: int, J: int, where: str) -> None:
    if tuple(poses_BJ3.shape) != (B, J, 3):
        raise ValueError(f"{where}: poses must be [B={B}, J={J}, 3], got {tuple(poses_BJ3.shape)}")


MIN_DEPTH_M = 1e-3  # nearest depth in front of a camera that a joint is projected from, metres


def reprojection_residuals(poses_BJ3: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel distance [B, V, J] of the poses projected into every view vs `kp`, observed [B, V, J] bool).

    Residuals are 0 where not observed (missing joint, padding view) or not projectable (behind the camera).
    """
    X_cam = to_camera(poses_BJ3, batch["R"], batch["t"])  # [B, V, J, 3]
    # points less than MIN_DEPTH_M in front of a camera are not projected at all: dividing by their depth gives
    # inf/NaN, and a NaN gradient that only torch.where hides would stop L-BFGS's line search (step overflow)
    in_front = X_cam[..., 2] > MIN_DEPTH_M
    safe = torch.where(in_front[..., None], X_cam, torch.ones_like(X_cam))
    pix = project_camera(safe, batch["K"], batch["dist"])
    obs = (batch["w"] > 0) & (batch["view_mask"][..., None] > 0) & in_front & torch.isfinite(pix).all(-1)
    err = (torch.where(obs[..., None], pix, batch["kp"]) - batch["kp"]).norm(dim=-1)
    return err, obs


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
    config: MultiViewConfig | None = None,
    *,
    groups: torch.Tensor | None = None,
    huber_sigmas: float = 2.5,
) -> torch.Tensor:
    """Refined world poses [B, J, 3] (metres): the fused `poses_BJ3` optimised (L-BFGS, `config.refine_steps`
    iterations; `config` defaults to `MultiViewConfig()`, whose prior_weight, bone_weight, symmetry_weight apply).

    Minimises, per frame and in units of the 2D noise sigma (px, `estimate_noise`), with k = px per metre and
    c(.) centring on the mean joint:
      sum_{v,j} w_vj rho(|proj_v(X_j) - kp_vj| / sigma)                robust 2D term (Huber at `huber_sigmas`)
      + prior_weight * sum_j (k |c(X - X0)_j| / sigma)^2 / 2          keep the fused pose's shape (learned prior)
      + bone_weight * sum_n (k (len_n(X) - L_gn) / sigma)^2 / 2       bone lengths L_g shared by the group g
      + symmetry_weight * sum_pairs (k (L_g,left - L_g,right) / sigma)^2 / 2.
    The prior leaves the translation free: the fused pose's errors are largely a whole-body offset (the
    triangulated root's error) shared by all joints, which a per-joint prior would weigh J times over, while the
    2D of every joint and view pins it down. `config.prior_weight` null takes the MAP balance (sigma_2d / sigma_prior)^2
    from `estimate_noise`; a float sets it. `groups` [B]
    names each frame's sequence (frames of one sequence share a skeleton; None = one group). NaN frames stay NaN.
    """
    config = config or MultiViewConfig()
    B, _, J = check_batch(batch, REFINE_KEYS, "refine")
    _check_poses(poses_BJ3, B, J, "refine")
    if huber_sigmas <= 0:
        raise ValueError(f"refine: huber_sigmas must be > 0, got {huber_sigmas}")
    steps, prior_weight = config.refine_steps, config.prior_weight
    bone_weight, symmetry_weight = config.bone_weight, config.symmetry_weight
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

    with torch.enable_grad():  # callers may run under no_grad (inference); the optimisation needs the graph
        opt.step(closure)
    out = X.detach()
    return torch.where(finite_B[:, None, None], out, torch.full_like(out, float("nan")))

