"""Training losses of the lifter. Each returns (sum, count) so callers normalise by the all-reduced count.

Shape letters: B frames, V views (S source, T target), J joints. Cameras: K [B, V, 3, 3], dist [B, V, 5],
R [B, V, 3, 3], t [B, V, 3] (world -> camera, metres). Weights w [B, V, J] are detector scores, 0 = missing.

2D-supervised terms use only 2D observations, calibration, and quantities triangulated from them:
- `cross_view_reprojection`: each view's lift, placed at the triangulated root in the world, projected into every
  *other* view and compared with that view's 2D in pixels (robust Huber, score-weighted). The term that fixes depth.
- `root_depth`: the lifter's root depth vs the triangulated root's depth in that camera (metric scale).
- `pseudo_3d`: the triangulated pseudo-3D as a warm-up target (root-relative, camera frame).
- `inpainting_2d`: the lifter's 2D estimate of joints hidden from its input vs their observed 2D.
- `bone_symmetry`: left/right bone lengths agree (a prior, no labels).
`supervised_3d` is the 3D-supervised baseline only; it reads `joints_3d`.
"""

from __future__ import annotations

import torch

from rigpose.geometry import CameraArrays, project_camera

Loss = tuple[torch.Tensor, torch.Tensor]
# px: a cross-view projection further than this from its target's 2D is no evidence (a point near a camera's plane,
# or beyond the lens model's valid field, where d pixel / d point is huge and one frame's gradient wrecks the step)
FAR_PX = 1000.0


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber of non-negative distances x (quadratic below `delta`, linear above); same units as x."""
    return torch.where(x < delta, 0.5 * x * x / delta, x - 0.5 * delta)


def to_world(rel_BVJ3: torch.Tensor, R_BV33: torch.Tensor, root_world_B3: torch.Tensor) -> torch.Tensor:
    """Root-relative camera-frame poses [B, V, J, 3] -> world [B, V, J, 3], placed at root_world [B, 3]."""
    return torch.einsum("bvji,bvik->bvjk", rel_BVJ3, R_BV33) + root_world_B3[:, None, None]  # rel @ R == R^T rel


def to_camera(X_world_BJ3: torch.Tensor, R_BV33: torch.Tensor, t_BV3: torch.Tensor) -> torch.Tensor:
    """World points [B, J, 3] -> each camera's frame [B, V, J, 3]."""
    return torch.einsum("bvik,bjk->bvji", R_BV33, X_world_BJ3) + t_BV3[:, :, None]


def cross_view_reprojection(
    rel_BSJ3: torch.Tensor,
    root_world_B3: torch.Tensor,
    root_ok_B: torch.Tensor,
    kp_BVJ2: torch.Tensor,
    w_BVJ: torch.Tensor,
    cams: CameraArrays,
    *,
    huber_px: float | None = 10.0,
    include_self: bool = False,
    far_px: float | None = FAR_PX,
) -> Loss:
    """Sum over sources s, targets t != s, joints j of w[t, j] * [s valid] * Huber(|proj_t(world_s,j) - kp[t, j]|).

    rel [B, S=V, J, 3] is each view's root-relative lift in its own camera frame. Count = sum of the weights.
    `huber_px=None` gives the plain pixel distance (the held-out-view metric itself, with each lift placed at the
    root triangulated from the other views, is `rigpose.metrics.heldout_view_px`). Projections behind the target
    camera, or further than `far_px` from its 2D (None: no limit), weigh 0 and send no gradient.
    """
    _B, V, _J, _ = rel_BSJ3.shape
    world = to_world(rel_BSJ3, cams.R, root_world_B3)  # [B, S, J, 3]
    # every source's world pose in every target camera: [B, S, T, J, 3]
    X_cam = torch.einsum("btik,bsjk->bstji", cams.R, world) + cams.t[:, None, :, None]
    pix = project_camera(X_cam, cams.K[:, None], cams.dist[:, None])  # [B, S, T, J, 2]
    kp = torch.nan_to_num(kp_BVJ2)[:, None].expand_as(pix)  # missing joints (weight 0): a finite stand-in
    bad = ~torch.isfinite(pix).all(-1)  # behind the target camera: no pixel, no weight, no gradient
    err = (torch.where(bad[..., None], kp, pix) - kp).norm(dim=-1)  # [B, S, T, J]; 0 where bad (finite)
    if far_px is not None:
        bad = bad | (err.detach() > far_px)
        err = torch.where(bad, torch.zeros_like(err), err)
    source_ok = (w_BVJ.sum(-1) > 0).to(err.dtype)  # [B, S] views that were lifted from something
    weight = w_BVJ[:, None] * source_ok[:, :, None, None] * root_ok_B[:, None, None, None]
    if not include_self:
        weight = weight * (1 - torch.eye(V, dtype=err.dtype, device=err.device))[None, :, :, None]
    weight = torch.where(bad, torch.zeros_like(weight), weight)
    penalty = err if huber_px is None else huber(err, huber_px)
    return (penalty * weight).sum(), weight.sum()


def root_depth(root_cam_BV3: torch.Tensor, root_world_B3: torch.Tensor, root_ok_B: torch.Tensor,
               view_ok_BV: torch.Tensor, cams: CameraArrays, *, huber_m: float = 0.1) -> Loss:
    """Huber (metres) between each view's predicted root depth and the triangulated root's depth in that camera."""
    target = to_camera(root_world_B3[:, None], cams.R, cams.t)[:, :, 0, 2]  # [B, V]
    weight = view_ok_BV * root_ok_B[:, None]
    err = (root_cam_BV3[..., 2] - target).abs()
    return (huber(err, huber_m) * weight).sum(), weight.sum()


def pseudo_3d(rel_BVJ3: torch.Tensor, pseudo_world_BJ3: torch.Tensor, pseudo_ok_BJ: torch.Tensor,
              root_joints: tuple[int, ...], view_ok_BV: torch.Tensor, cams: CameraArrays) -> Loss:
    """Euclidean error (metres) of each view's lift vs the triangulated pseudo-3D in that camera, root-relative."""
    target = to_camera(pseudo_world_BJ3, cams.R, cams.t)  # [B, V, J, 3]
    target = target - target[:, :, list(root_joints)].mean(2, keepdim=True)
    ok = pseudo_ok_BJ * pseudo_ok_BJ[:, list(root_joints)].prod(-1, keepdim=True)  # root must be known too
    weight = ok[:, None] * view_ok_BV[..., None]
    err = (rel_BVJ3 - target).norm(dim=-1)
    return (err * weight).sum(), weight.sum()


def inpainting_2d(xy_pred_BJ2: torch.Tensor, xy_obs_BJ2: torch.Tensor, hidden_BJ: torch.Tensor,
                  K_B33: torch.Tensor) -> Loss:
    """Pixel error (focal-scaled) of the lifter's 2D estimate for joints hidden from its input but observed."""
    f = K_B33[:, 0, 0, None]
    err = (xy_pred_BJ2 - xy_obs_BJ2).norm(dim=-1) * f
    return (err * hidden_BJ).sum(), hidden_BJ.sum()


def bone_symmetry(rel_BJ3: torch.Tensor, bones: tuple[tuple[int, int], ...],
                  symmetric_bones: tuple[tuple[int, int], ...]) -> Loss:
    """|length(left bone) - length(right bone)| in metres, summed over the skeleton's mirror pairs."""
    if not symmetric_bones:
        z = rel_BJ3.sum() * 0
        return z, z
    child = [c for c, _ in bones]
    parent = [p for _, p in bones]
    lengths = (rel_BJ3[:, child] - rel_BJ3[:, parent]).norm(dim=-1)  # [B, num_bones]
    a = [i for i, _ in symmetric_bones]
    b = [j for _, j in symmetric_bones]
    diff = (lengths[:, a] - lengths[:, b]).abs()
    return diff.sum(), torch.tensor(float(diff.numel()), device=diff.device)


def supervised_3d(rel_BVJ3: torch.Tensor, root_cam_BV3: torch.Tensor, joints_3d_BJ3: torch.Tensor,
                  root_joints: tuple[int, ...], view_ok_BV: torch.Tensor, cams: CameraArrays) -> Loss:
    """BASELINE ONLY (reads 3D labels): MPJPE of root-relative camera-frame poses + root depth error, metres."""
    target = to_camera(joints_3d_BJ3, cams.R, cams.t)  # [B, V, J, 3]
    root_t = target[:, :, list(root_joints)].mean(2)
    err = (rel_BVJ3 - (target - root_t[:, :, None])).norm(dim=-1).mean(-1)
    err = err + 0.1 * (root_cam_BV3[..., 2] - root_t[..., 2]).abs()
    return (err * view_ok_BV).sum(), view_ok_BV.sum()
