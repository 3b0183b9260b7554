"""The default multi-view estimator: each joint the posterior of every view's 2D and the learned prior, with its
uncertainty, falling back to robust triangulation where the two disagree.

Pure PyTorch (no Ray, MLflow or storage); label-free (nothing here reads `joints_3d`). Per frame it minimises, in
closed form (Gauss-Newton steps of small dense systems; no iterative optimiser over the whole batch):

    sum_{v,j} w_vj rho(e_vj / sigma_vj) + sum_j |X_j - (P_j + T)|^2 / (2 s_j^2) + sum_n (|X_n| - L_n)^2 / (2 b_n^2)

- e_vj: view v's reprojection error of joint j (pixels: undistorted normalised coordinates times the focal length);
  sigma_vj: that camera's and joint's 2D noise, from the robust triangulation's reprojection residuals over the
  batch (`estimate_view_noise`); rho: Tukey's biweight at TUKEY_C sigma (a gross outlier or a swap gets no weight);
  w_vj: the detector score.
- P: the fused per-view lifts (`rigpose.model.fusion.fuse`), the learned prior; T: a free translation of it (its
  error is largely a whole-body offset, which the 2D pins down); s_j: the prior's own uncertainty at joint j
  (`estimate_prior_noise`, inflated by PRIOR_INFLATION for the correlation of a lift's errors across joints).
- |X_n|: bone n's length in the estimate; L_n: its length in the frame's sequence (`groups`; the median over its
  frames, left and right averaged);
  b_n: how much that length truly varies (`bone_noise`: rigid bones are held tight, a detector's non-bones loose).

Stage 1 solves each joint alone (3x3 systems, T eliminated exactly); where the prior and the views disagree
(Mahalanobis distance of the robust triangulation from the prior over FALLBACK_CHI2) the joint drops the prior and
is the robust triangulation refitted on its inlier views, and a frame where most joints disagree drops the prior
entirely. Joints seen by fewer than two views keep the prior (nothing else places them). Stage 2 adds the bone
lengths and solves all joints of a frame together ((3J + 3)-square system).

The per-joint uncertainty is sqrt(trace) of the joint's marginal posterior covariance (metres): the RMS 3D error
the estimate claims. Shape letters: B frames, V views, J joints, N bones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rigpose import geometry as g
from rigpose.config import MultiViewConfig
from rigpose.model.fusion import FUSE_KEYS, Batch, check_batch, fuse
from rigpose.model.losses import to_camera
from rigpose.model.refine import _RAYLEIGH_MEDIAN_SQ
from rigpose.skeleton import Skeleton

POSTERIOR_KEYS = (*FUSE_KEYS, "kp", "K", "dist")
TUKEY_C = 4.685  # Tukey biweight cut-off, in noise sigmas (95% efficiency under Gaussian noise)
FALLBACK_CHI2 = 16.27  # chi-square, 3 degrees of freedom, 99.9%: prior and views disagree beyond this
FRAME_FALLBACK_SHARE = 0.5  # more than this share of a frame's triangulated joints disagree: the prior is off
SHRINK_OBS = 20.0  # observations worth of the pooled estimate mixed into each per-camera/joint noise estimate
MIN_SIGMA_PX = 0.25  # floor of the 2D noise (exact synthetic 2D has none)
MIN_PRIOR_M = 0.005  # floor of the prior's uncertainty, metres
# the J joints' errors of one lift are correlated (a wrong limb moves several joints), which a per-joint prior counts
# as independent evidence; its uncertainty is inflated by this factor (measured on 12 dev cells of 3 rigs x 5 and
# 12 px x all views / one dropped: 2-3 x gave the lowest error and the best-calibrated uncertainty)
PRIOR_INFLATION = 2.5
MAX_PRIOR_ERROR_M = 0.5  # prior-vs-triangulation distances count at most this much in its noise estimate
RANSAC_INLIER_PX = 20.0  # smallest inlier gate of the robust triangulation, pixels
GAUSS_NEWTON_STEPS = 1
MIN_BONE_SIGMA_M = 0.005  # floor of a bone length's variation within a sequence, metres
JOINT_STEPS = 1


@dataclass(frozen=True)
class PosteriorResult:
    """World poses [B, J, 3] metres (NaN: frame with no usable view), their per-joint uncertainty [B, J] metres
    (RMS 3D error claimed), and where the prior was used [B, J] bool (False: the joint is the triangulation)."""

    poses: torch.Tensor
    sigma_m: torch.Tensor
    prior_used: torch.Tensor


def camera_ids(batch: Batch) -> torch.Tensor:
    """[B, V] long: one id per distinct calibration (t, focal length) in the batch, so that the noise of view index v
    is kept apart per rig when a batch mixes rigs."""
    key = torch.cat([batch["t"], batch["K"][..., 0, :1]], -1)  # [B, V, 4]
    key = torch.round(key.double() * 1e4)
    return torch.unique(key.reshape(-1, 4), dim=0, return_inverse=True)[1].reshape(key.shape[:2])


def _pinhole(X_BJ3: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(residual [B, V, J, 2] px of undistorted normalised coordinates x focal, Jacobian [B, V, J, 2, 3] px/m,
    in front [B, V, J] bool) of world points X [B, J, 3] in every view."""
    R = batch["R"].to(X_BJ3.dtype)
    X_cam = to_camera(X_BJ3, R, batch["t"].to(X_BJ3.dtype))  # [B, V, J, 3]
    z = X_cam[..., 2]
    front = z > 1e-3
    zs = torch.where(front, z, torch.ones_like(z))
    u = X_cam[..., :2] / zs[..., None]
    f = batch["K"][..., [0, 1], [0, 1]].to(X_BJ3.dtype)[:, :, None]  # [B, V, 1, 2] fx, fy
    res = (f * (u - batch["xy"].to(X_BJ3.dtype))).contiguous()  # batch xy may be strided: norms over it are slow
    # d u / d X_cam = 1/z [[1, 0, -u_x], [0, 1, -u_y]], then d X_cam / d X_world = R
    zero, one = torch.zeros_like(z), torch.ones_like(z)
    du = torch.stack([torch.stack([one, zero, -u[..., 0]], -1), torch.stack([zero, one, -u[..., 1]], -1)], -2)
    du = du * (f[..., None] / zs[..., None, None])  # [B, V, J, 2, 3]
    jac = torch.einsum("bvjik,bvkl->bvjil", du, R)
    return res, jac, front


def _median_pooled(values: torch.Tensor, ids: torch.Tensor, num_ids: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(median of `values` [N] per id in [0, num_ids) (NaN where none), count per id)."""
    med = torch.full((num_ids,), float("nan"), dtype=values.dtype, device=values.device)
    count = torch.bincount(ids, minlength=num_ids).to(values.dtype)
    order = torch.argsort(ids, stable=True)
    ids_s, vals_s = ids[order], values[order]
    start = 0
    for i, n in enumerate(torch.bincount(ids_s, minlength=num_ids).tolist()):
        if n:
            med[i] = vals_s[start:start + n].median()
        start += n
    return med, count


def estimate_view_noise(batch: Batch, X_BJ3: torch.Tensor, n_views_BJ: torch.Tensor) -> torch.Tensor:
    """2D noise sigma [B, V, J] px per camera and joint, from the reprojection residuals of the triangulation
    X [B, J, 3] (joints seen by n >= 2 views; NaN elsewhere is ignored).

    Per (camera, joint): the median of |e|^2 / (1 - 3/(2n)) (3 of the 2n coordinates are absorbed by the fit)
    divided by the Rayleigh median 2 ln 2; shrunk towards the camera's pooled value, and that towards the batch's,
    by SHRINK_OBS observations, so that one frame (serving) still gets a sensible answer. Floored at MIN_SIGMA_PX.
    """
    B, V, J = batch["w"].shape
    res, _, front = _pinhole(torch.nan_to_num(X_BJ3), batch)
    ok_J = torch.isfinite(X_BJ3).all(-1) & (n_views_BJ >= 2)  # [B, J]
    obs = (batch["w"] > 0) & (batch["view_mask"][..., None] > 0) & front & ok_J[:, None]
    share = (1.0 - 1.5 / n_views_BJ.clamp_min(2).to(res.dtype))[:, None].expand(B, V, J)
    q = res.square().sum(-1) / share / _RAYLEIGH_MEDIAN_SQ  # [B, V, J], sigma^2 per observation (median-unbiased)
    cam = camera_ids(batch)  # [B, V]
    num_cams = int(cam.max()) + 1
    if not obs.any():
        return torch.full((B, V, J), 1.0, dtype=res.dtype, device=res.device)
    overall = float(q[obs].median())
    cam_BVJ = cam[..., None].expand(B, V, J)
    cam_med, cam_n = _median_pooled(q[obs], cam_BVJ[obs], num_cams)
    cam_sq = torch.where(cam_n > 0, (cam_n * torch.nan_to_num(cam_med) + SHRINK_OBS * overall) / (cam_n + SHRINK_OBS),
                         torch.full_like(cam_n, overall))
    joint_ids = cam_BVJ * J + torch.arange(J, device=res.device)
    cj_med, cj_n = _median_pooled(q[obs], joint_ids[obs], num_cams * J)
    prior_sq = cam_sq.repeat_interleave(J)
    cj_sq = (cj_n * torch.nan_to_num(cj_med) + SHRINK_OBS * prior_sq) / (cj_n + SHRINK_OBS)
    return cj_sq[joint_ids].sqrt().clamp_min(MIN_SIGMA_PX)


def robust_triangulation(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(robust triangulation of every joint [B, J, 3] world metres, NaN where < 2 views; views seen [B, J]).

    The score-weighted DLT of every joint; where one of its views is off by more than TUKEY_C x the batch's 2D noise
    (a gross outlier or a swap drags the DLT), `rigpose.geometry.triangulate_robust` (RANSAC over view pairs) on
    those joints only: the same answer as running it everywhere at a fraction of the cost.
    """
    w = batch["w"] * (batch["view_mask"][..., None] > 0)
    n_views = (w > 0).sum(1)
    dt = torch.float64
    X = g.triangulate_normalized(batch["xy"].to(dt), batch["R"].to(dt), batch["t"].to(dt), w.to(dt))
    res, _, front = _pinhole(torch.nan_to_num(X), batch)
    r = res.norm(dim=-1)  # [B, V, J] px
    obs = (w > 0) & front & torch.isfinite(X).all(-1)[:, None]
    share = (1.0 - 1.5 / n_views.clamp_min(2).to(dt))[:, None].expand_as(r)
    if not obs.any():
        return X, n_views
    sigma = float((r[obs].square() / share[obs]).median() / _RAYLEIGH_MEDIAN_SQ) ** 0.5
    suspect = ((r > TUKEY_C * max(sigma, MIN_SIGMA_PX)) & obs).any(1) & (n_views >= 3)  # [B, J]
    if suspect.any():
        b, j = torch.nonzero(suspect, as_tuple=True)
        kp = batch["kp"][b, :, j].to(dt)  # [M, V, 2]
        kp = torch.where(w[b, :, j, None] > 0, kp, torch.full_like(kp, float("nan")))
        cams = g.CameraArrays(*(batch[k][b].to(dt) for k in ("K", "dist", "R", "t")))
        gate = max(RANSAC_INLIER_PX, TUKEY_C * sigma)  # the fixed 20 px gate would cut inliers of noisy 2D
        X[b, j] = g.triangulate_robust(kp[:, :, None], cams, w[b, :, j, None].to(dt), inlier_px=gate)[:, 0]
    return X, n_views


def _tukey(r: torch.Tensor) -> torch.Tensor:
    """IRLS weight of Tukey's biweight for residuals in sigmas r >= 0: (1 - (r/c)^2)^2 below c, 0 above."""
    return (1.0 - (r / TUKEY_C).square()).clamp_min(0.0).square()


def _data_terms(X_BJ3: torch.Tensor, batch: Batch, sigma_BVJ: torch.Tensor, *, robust: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gauss-Newton terms of the 2D at X [B, J, 3]: (H [B, J, 3, 3] 1/m^2, gradient [B, J, 3] 1/m, inlier views
    [B, J])."""
    res, jac, front = _pinhole(X_BJ3, batch)
    obs = (batch["w"] > 0) & (batch["view_mask"][..., None] > 0) & front
    r = res.norm(dim=-1) / sigma_BVJ
    a = batch["w"].to(X_BJ3.dtype) * obs / sigma_BVJ.square()
    if robust:
        a = a * _tukey(r)
    H = torch.einsum("bvj,bvjik,bvjil->bjkl", a, jac, jac)
    grad = torch.einsum("bvj,bvjik,bvji->bjk", a, jac, res)
    return H, grad, ((a > 0) & obs).sum(1)


def estimate_prior_noise(prior_BJ3: torch.Tensor, tri_BJ3: torch.Tensor, tri_var_BJ: torch.Tensor,
                         use_BJ: torch.Tensor, *, iters: int = 8) -> torch.Tensor:
    """The prior's uncertainty s [J] metres (per axis), from its distance to the triangulation where `use_BJ`.

    Both poses are centred on their common joints (the prior's translation is free). Their distance d_bj (capped at
    MAX_PRIOR_ERROR_M) is modelled as N(0, (s_j^2 + v_bj) I_3) with v_bj = `tri_var_BJ` / 3 the triangulation's own
    variance per axis, and s_j is its maximum-likelihood value (the random-effects fixed point: frames where the
    triangulation is precise count most, so badly conditioned frames do not swamp the estimate). Shrunk towards
    all joints' pooled value by SHRINK_OBS frames; floored at MIN_PRIOR_M.
    """
    J = prior_BJ3.shape[1]
    okf = use_BJ.to(prior_BJ3.dtype)[..., None]
    n = okf.sum(1, keepdim=True).clamp_min(1)
    d = (torch.nan_to_num(prior_BJ3) - torch.nan_to_num(tri_BJ3)) * okf
    d = d - d.sum(1, keepdim=True) / n
    frame_ok = use_BJ.sum(1, keepdim=True) >= 4  # a centre from >= 4 joints
    sel = (use_BJ & frame_ok).to(d.dtype)  # [B, J]
    count = sel.sum(0)
    if float(count.sum()) == 0:
        return torch.full((J,), 0.05, dtype=prior_BJ3.dtype, device=prior_BJ3.device)
    q = d.norm(dim=-1).clamp_max(MAX_PRIOR_ERROR_M).square() / 3.0  # [B, J] per axis
    v = tri_var_BJ / 3.0

    def fixed_point(q: torch.Tensor, v: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:  # over dim 0
        s2 = ((q - v) * sel).sum(0) / sel.sum(0).clamp_min(1)
        s2 = s2.clamp_min(MIN_PRIOR_M**2)
        for _ in range(iters):
            w = sel / (s2 + v).square()
            s2 = (((q - v) * w).sum(0) / w.sum(0).clamp_min(1e-30)).clamp_min(MIN_PRIOR_M**2)
        return s2

    pooled = fixed_point(q.reshape(-1, 1), v.reshape(-1, 1), sel.reshape(-1, 1))[0]
    per_joint = fixed_point(q, v, sel)
    s2 = (count * per_joint + SHRINK_OBS * pooled) / (count + SHRINK_OBS)
    return s2.clamp_min(MIN_PRIOR_M**2).sqrt()


def _solve(H: torch.Tensor, grad: torch.Tensor, X: torch.Tensor, lam: torch.Tensor, P: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """One Gauss-Newton step of data (H, gradient at X) + prior lam_j |X_j - P_j - T|^2 / 2 with T free, solved exactly
    (block-arrowhead system: per joint 3x3, then T from its 3x3 Schur complement). Returns (X' [B, J, 3],
    posterior covariance [B, J, 3, 3])."""
    eye = torch.eye(3, dtype=X.dtype, device=X.device)
    ridge = 1e-9 * (H.diagonal(dim1=-2, dim2=-1).mean(-1) + lam)[..., None, None] + 1e-12
    M = H + (lam[..., None, None] + ridge) * eye  # [B, J, 3, 3]
    Minv = torch.linalg.inv(M)
    b = (H @ X[..., None])[..., 0] - grad + lam[..., None] * P  # [B, J, 3]
    Mb = (Minv @ b[..., None])[..., 0]
    S = (lam[..., None, None] * (eye - lam[..., None, None] * Minv)).sum(1)  # [B, 3, 3]
    S = S + (1e-9 * lam.sum(1) + 1e-12)[:, None, None] * eye
    rhs = (lam[..., None] * Mb).sum(1) - (lam[..., None] * P).sum(1)
    T = torch.linalg.solve(S, rhs[..., None])[..., 0]  # [B, 3]
    Xn = Mb + lam[..., None] * (Minv @ T[:, None, :, None].expand(*P.shape, 1))[..., 0]
    return Xn, Minv


def _bone_lengths(X_BJ3: torch.Tensor, bones: tuple[tuple[int, int], ...]) -> torch.Tensor:
    child, parent = zip(*bones, strict=True)
    return (X_BJ3[:, list(child)] - X_BJ3[:, list(parent)]).norm(dim=-1)  # [B, N]


def sequence_bone_lengths(X_BJ3: torch.Tensor, bones: tuple[tuple[int, int], ...],
                          symmetric: tuple[tuple[int, int], ...], groups: torch.Tensor) -> torch.Tensor:
    """[B, N] each frame's sequence's bone lengths (metres): the median over the sequence's frames of the estimates
    X [B, J, 3] (NaN frames ignored), left and right averaged."""
    lengths = _bone_lengths(X_BJ3, bones)
    gid = torch.unique(groups, return_inverse=True)[1]
    out = torch.empty_like(lengths)
    for k in range(int(gid.max()) + 1):
        sel = gid == k
        out[sel] = lengths[sel].nanmedian(0).values
    for a, b in symmetric:
        mean = 0.5 * (out[:, a] + out[:, b])
        out[:, a], out[:, b] = mean, mean
    return out


def bone_noise(X_BJ3: torch.Tensor, cov_BJ33: torch.Tensor, L_BN: torch.Tensor,
               bones: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """How much each bone's length truly varies within a sequence, sigma [N] metres: the robust spread (1.4826 MAD)
    of the per-frame lengths of the estimates X [B, J, 3] around their sequence's L_BN, less what the estimates' own
    covariance cov [B, J, 3, 3] explains; floored at MIN_BONE_SIGMA_M. Rigid bones (motion capture) get the floor,
    keypoints that are no bones (a detector's hips and shoulders move) a spread that turns the constraint off."""
    lengths = _bone_lengths(X_BJ3, bones)  # [B, N]
    child, parent = (list(x) for x in zip(*bones, strict=True))
    est_var = (cov_BJ33[:, child].diagonal(dim1=-2, dim2=-1).sum(-1)
               + cov_BJ33[:, parent].diagonal(dim1=-2, dim2=-1).sum(-1)) / 3.0  # [B, N], along the bone
    dev = lengths - L_BN
    ok = torch.isfinite(dev) & torch.isfinite(est_var)
    out = torch.full((len(bones),), MIN_BONE_SIGMA_M, dtype=X_BJ3.dtype, device=X_BJ3.device)
    for n in range(len(bones)):
        d = dev[ok[:, n], n]
        if d.numel() < 3:
            continue
        spread = (1.4826 * (d - d.median()).abs().median()).square() - est_var[ok[:, n], n].median()
        out[n] = max(float(spread.clamp_min(0).sqrt()), MIN_BONE_SIGMA_M)
    return out


def _joint_solve(X: torch.Tensor, T: torch.Tensor, P: torch.Tensor, lam: torch.Tensor, H: torch.Tensor,
                 grad: torch.Tensor, bones: tuple[tuple[int, int], ...], L_BN: torch.Tensor, beta: torch.Tensor, *,
                 with_cov: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One Gauss-Newton step of data (H, gradient at X) + prior + bone lengths L_BN (weights beta [N], 1/m^2), all
    joints and the prior's translation T together (a dense (3J + 3)-square system per frame). Returns (X', T', marginal
    covariance of each joint [B, J, 3, 3])."""
    B, J, _ = X.shape
    eye = torch.eye(3, dtype=X.dtype, device=X.device)
    A = torch.zeros(B, J + 1, J + 1, 3, 3, dtype=X.dtype, device=X.device)
    ar = torch.arange(J, device=X.device)
    lamI = lam[..., None, None] * eye
    A[:, ar, ar] = H + lamI
    A[:, ar, J] = -lamI
    A[:, J, ar] = -lamI
    A[:, J, J] = lamI.sum(1) + (1e-9 * lam.sum(1) + 1e-9)[:, None, None] * eye
    rho = X - P - T[:, None]
    b = torch.zeros(B, J + 1, 3, dtype=X.dtype, device=X.device)
    b[:, :J] = grad + lam[..., None] * rho
    b[:, J] = -(lam[..., None] * rho).sum(1)
    for n, (c, p) in enumerate(bones):
        d = X[:, c] - X[:, p]
        length = d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        u = d / length
        Bn = beta[n] * u[:, :, None] * u[:, None, :]
        A[:, c, c] += Bn
        A[:, p, p] += Bn
        A[:, c, p] -= Bn
        A[:, p, c] -= Bn
        r = beta[n] * (length[:, 0] - L_BN[:, n])[:, None] * u
        b[:, c] += r
        b[:, p] -= r
    n3 = 3 * (J + 1)
    A2 = A.permute(0, 1, 3, 2, 4).reshape(B, n3, n3)
    A2 = A2 + 1e-9 * A2.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(n3, dtype=X.dtype)
    L = torch.linalg.cholesky_ex(A2)[0]
    delta = -torch.cholesky_solve(b.reshape(B, n3, 1), L).reshape(B, J + 1, 3)
    if not with_cov:
        return X + delta[:, :J], T + delta[:, J], None
    Ainv = torch.cholesky_inverse(L)
    cov = Ainv.reshape(B, J + 1, 3, J + 1, 3)[:, ar, :, ar, :]  # [J, B, 3, 3] (advanced indices first)
    return X + delta[:, :J], T + delta[:, J], cov.permute(1, 0, 2, 3)


def posterior(model: nn.Module, batch: Batch, skeleton: Skeleton, config: MultiViewConfig | None = None, *,
              groups: torch.Tensor | None = None) -> PosteriorResult:
    """The default multi-view answer with uncertainty (see the module docstring). `batch` from
    `rigpose.model.inputs.prepare_arrays` (pseudo_world is its robust triangulation); of `config` only
    `weighting` applies (the prior's fusion)."""
    config = config or MultiViewConfig()
    num_joints = check_batch(batch, POSTERIOR_KEYS, "posterior")[2]
    if num_joints != skeleton.num_joints:
        raise ValueError(f"posterior: batch has {num_joints} joints, skeleton {skeleton.name!r} has "
                         f"{skeleton.num_joints}")
    return combine(fuse(model, batch, skeleton, config), batch, skeleton, groups=groups)


def combine(prior_BJ3: torch.Tensor, batch: Batch, skeleton: Skeleton | None = None, *,
            groups: torch.Tensor | None = None) -> PosteriorResult:
    """The posterior of the prior poses [B, J, 3] world metres (NaN rows: no prior, no answer) and the batch's 2D;
    `posterior` with the prior given (see the module docstring). With `skeleton`, bone lengths are shared by the
    frames of one sequence (`groups` [B] ids; None = one sequence)."""
    B, _, J = check_batch(batch, POSTERIOR_KEYS, "combine")
    if tuple(prior_BJ3.shape) != (B, J, 3):
        raise ValueError(f"combine: prior must be [B={B}, J={J}, 3], got {tuple(prior_BJ3.shape)}")
    dt = torch.float64
    with torch.no_grad():
        prior = prior_BJ3.to(dt)
        frame_ok = torch.isfinite(prior).all(-1).all(-1)
        P = torch.nan_to_num(prior)
        tri, n_views = robust_triangulation(batch)  # [B, J, 3], [B, J]
        tri_ok = torch.isfinite(tri).all(-1) & (n_views >= 2)
        sigma = estimate_view_noise(batch, tri, n_views).to(dt)
        # the triangulation's own covariance (data only, robust weights at the triangulation)
        X_tri = torch.where(tri_ok[..., None], tri.nan_to_num(), P)
        H_tri, _, n_in = _data_terms(X_tri, batch, sigma)
        well = tri_ok & (n_in >= 2)
        eye = torch.eye(3, dtype=dt)
        cov_tri = torch.linalg.inv(H_tri + eye * torch.where(well, 1e-9, 1.0)[..., None, None]
                                   * (H_tri.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)[..., None] + 1e-9))
        var_tri = torch.where(well, cov_tri.diagonal(dim1=-2, dim2=-1).sum(-1), torch.zeros_like(P[..., 0]))
        s = PRIOR_INFLATION * estimate_prior_noise(P, tri, var_tri, well & frame_ok[:, None])  # [J]
        lam = (1.0 / s.square())[None].expand(B, J) * frame_ok[:, None]
        # where the prior and the views disagree, the joint is the triangulation (first solve gives T)
        X, cov = X_tri, cov_tri
        for step in range(GAUSS_NEWTON_STEPS):
            H, grad, _ = _data_terms(X, batch, sigma)
            X, cov = _solve(H, grad, X, lam, P)
            if step == 0:
                T = (X - P).mul(lam[..., None]).sum(1) / lam.sum(1, keepdim=True).clamp_min(1e-12)  # [B, 3]
                d = tri.nan_to_num() - (P + T[:, None])
                C = cov_tri + (s.square()[None, :, None, None] * eye)
                m2 = (d[..., None, :] @ torch.linalg.solve(C, d[..., None]))[..., 0, 0]
                bad = well & (m2 > FALLBACK_CHI2)
                frame_bad = bad.sum(1) > FRAME_FALLBACK_SHARE * well.sum(1).clamp_min(1)
                drop = bad | (frame_bad[:, None] & well)
                lam = torch.where(drop, torch.zeros_like(lam), lam)
                X = torch.where(drop[..., None], X_tri, X)
        if skeleton is not None and skeleton.bones:
            grp = torch.zeros(B, dtype=torch.long) if groups is None else torch.as_tensor(groups)
            L_BN = sequence_bone_lengths(torch.where(frame_ok[:, None, None], X, torch.nan), skeleton.bones,
                                         skeleton.symmetric_bones, grp)
            L_BN = torch.nan_to_num(L_BN, nan=0.0)
            have_L = (L_BN > 0).all(-1, keepdim=True)
            T = (X - P).mul(lam[..., None]).sum(1) / lam.sum(1, keepdim=True).clamp_min(1e-12)
            beta = 1.0 / bone_noise(X, cov, L_BN, skeleton.bones).square()
            for step in range(JOINT_STEPS):
                H, grad, _ = _data_terms(X, batch, sigma)
                L_use = torch.where(have_L, L_BN, _bone_lengths(X, skeleton.bones))
                X, T, cov_j = _joint_solve(X, T, P, lam, H, grad, skeleton.bones, L_use, beta,
                                           with_cov=step == JOINT_STEPS - 1)
            cov = cov_j
        sigma_m = cov.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt()
        nan = torch.full_like(X, float("nan"))
        poses = torch.where(frame_ok[:, None, None], X, nan).to(batch["w"].dtype)
        sigma_m = torch.where(frame_ok[:, None], sigma_m, nan[..., 0]).to(batch["w"].dtype)
    return PosteriorResult(poses=poses, sigma_m=sigma_m, prior_used=(lam > 0) & frame_ok[:, None])
