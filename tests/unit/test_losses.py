"""Loss terms against hand-built cases: zero for the truth, positive and correctly weighted otherwise."""

from __future__ import annotations

import numpy as np
import torch
from rigpose_testing import synthetic_batch, to_torch

from rigpose.model import losses
from rigpose.model.objective import batch_cameras
from rigpose.skeleton import DEEPMIMIC16


def _true_rel(b: dict) -> torch.Tensor:
    """Ground-truth root-relative camera-frame poses [B, V, J, 3] (what a perfect lifter outputs)."""
    X = losses.to_camera(b["joints_3d"], b["R"], b["t"])
    return X - X[:, :, :1]


def test_cross_view_reprojection_is_zero_for_perfect_lifts_and_grows_with_error() -> None:
    b = to_torch(synthetic_batch())
    cams = batch_cameras(b)
    rel = _true_rel(b)
    s, c = losses.cross_view_reprojection(rel, b["root_world"], b["root_ok"], b["kp"], b["w"], cams, huber_px=None)
    assert c == b["w"].sum() * 3  # every target seen from the 3 other views
    assert s / c < 1e-3  # pixels
    bent = rel.clone()
    bent[:, :, 9] += 0.1  # a wrist 10 cm off in every view
    s2, _ = losses.cross_view_reprojection(bent, b["root_world"], b["root_ok"], b["kp"], b["w"], cams,
                                           huber_px=None)
    assert s2 / c > 1.0


def test_cross_view_reprojection_ignores_the_source_view_itself() -> None:
    b = to_torch(synthetic_batch(num_frames=4))
    cams = batch_cameras(b)
    rel = _true_rel(b)
    # an error purely along view 0's viewing rays is invisible to view 0 but not to the others
    ray = losses.to_camera(b["joints_3d"], b["R"], b["t"])[:, 0]
    bent = rel.clone()
    bent[:, 0] = rel[:, 0] + 0.3 * ray / ray.norm(dim=-1, keepdim=True)
    w_only0 = torch.zeros_like(b["w"])
    w_only0[:, 0] = 1.0
    _, c = losses.cross_view_reprojection(bent, b["root_world"], b["root_ok"], b["kp"], w_only0, cams)
    assert c == 0  # view 0 is the only source and the only target: nothing crosses views
    _, c = losses.cross_view_reprojection(bent, b["root_world"], b["root_ok"], b["kp"], w_only0, cams,
                                          include_self=True)
    assert c == b["w"][:, 0].sum()
    s, c = losses.cross_view_reprojection(bent, b["root_world"], b["root_ok"], b["kp"], b["w"], cams)
    assert s / c > 1.0


def test_cross_view_weights_follow_scores_and_untriangulated_roots() -> None:
    b = to_torch(synthetic_batch(num_frames=4))
    cams = batch_cameras(b)
    rel = _true_rel(b) + 0.05
    root_ok = b["root_ok"].clone()
    root_ok[0] = 0
    _, c_all = losses.cross_view_reprojection(rel, b["root_world"], b["root_ok"], b["kp"], b["w"], cams)
    _, c_less = losses.cross_view_reprojection(rel, b["root_world"], root_ok, b["kp"], b["w"], cams)
    torch.testing.assert_close(c_all - c_less, b["w"][0].sum() * 3)


def test_huber_is_quadratic_then_linear() -> None:
    x = torch.tensor([0.0, 1.0, 10.0, 20.0])
    torch.testing.assert_close(losses.huber(x, 10.0), torch.tensor([0.0, 0.05, 5.0, 15.0]))


def test_root_depth_is_zero_for_the_true_root_depth() -> None:
    b = to_torch(synthetic_batch(num_frames=4))
    root_cam = losses.to_camera(b["joints_3d"], b["R"], b["t"])[:, :, 0]
    ok = torch.ones(4, 4)
    s, c = losses.root_depth(root_cam, b["joints_3d"][:, 0], b["root_ok"], ok, batch_cameras(b))
    assert s < 1e-6 and c == 16
    s, _ = losses.root_depth(root_cam + torch.tensor([0, 0, 0.5]), b["joints_3d"][:, 0], b["root_ok"], ok,
                             batch_cameras(b))
    assert s / 16 > 0.4


def test_bone_symmetry_is_zero_for_a_symmetric_pose_only() -> None:
    from rigpose_testing import rest_pose_deepmimic16

    pose = torch.tensor(rest_pose_deepmimic16(), dtype=torch.float32)[None]
    s, c = losses.bone_symmetry(pose, DEEPMIMIC16.bones, DEEPMIMIC16.symmetric_bones)
    assert s < 1e-6 and c == len(DEEPMIMIC16.symmetric_bones)
    longer = pose.clone()
    longer[0, 12, 2] -= 0.1  # left shin 10 cm longer
    s, _ = losses.bone_symmetry(longer, DEEPMIMIC16.bones, DEEPMIMIC16.symmetric_bones)
    np.testing.assert_allclose(float(s), 0.1, atol=1e-5)


def test_pseudo_3d_and_supervised_3d_are_zero_for_the_truth() -> None:
    b = to_torch(synthetic_batch(num_frames=4))
    cams = batch_cameras(b)
    rel = _true_rel(b)
    ok = torch.ones(4, 4)
    s, c = losses.pseudo_3d(rel, b["pseudo_world"], b["pseudo_ok"], (0,), ok, cams)
    assert s / c < 1e-4  # noise-free 2D: pseudo-3D is the truth
    root_cam = losses.to_camera(b["joints_3d"], b["R"], b["t"])[:, :, 0]
    s, c = losses.supervised_3d(rel, root_cam, b["joints_3d"], (0,), ok, cams)
    assert s / c < 1e-5


def test_inpainting_counts_only_hidden_joints_in_focal_scaled_pixels() -> None:
    xy_obs = torch.zeros(2, 16, 2)
    xy_pred = xy_obs.clone()
    xy_pred[:, 3] += torch.tensor([0.01, 0.0])  # 0.01 normalised units off
    xy_pred[:, 4] += 1.0  # far off, but visible to the lifter: not this loss's business
    hidden = torch.zeros(2, 16)
    hidden[:, 3] = 1.0
    K = torch.eye(3).expand(2, 3, 3).clone()
    K[:, 0, 0] = 1000.0
    s, c = losses.inpainting_2d(xy_pred, xy_obs, hidden, K)
    assert c == 2
    torch.testing.assert_close(s / c, torch.tensor(10.0))  # 0.01 x 1000 px


def test_a_lift_behind_another_camera_gets_no_weight_and_a_finite_gradient() -> None:
    """A source's pose placed behind a target camera (easy with cameras all around, e.g. studio-8) has no pixel
    there: it must count for nothing, and its gradient must stay finite (a NaN gradient ruined whole training runs:
    x / NaN and |NaN| send NaN back even with a zero upstream gradient)."""
    b = to_torch(synthetic_batch(8))
    cams = batch_cameras(b)
    rel = _true_rel(b).clone().requires_grad_(True)
    offset = torch.zeros_like(rel)
    offset[0, 1] = 20.0  # view 1's lift of frame 0 thrown 20 m away: behind some of the other cameras
    s, c = losses.cross_view_reprojection(rel + offset, b["root_world"], b["root_ok"], b["kp"], b["w"], cams)
    s.backward()
    assert torch.isfinite(s) and torch.isfinite(rel.grad).all()
    world = losses.to_world((rel + offset).detach(), cams.R, b["root_world"])
    behind = (losses.to_camera(world[:1, 1], cams.R[:1], cams.t[:1])[0, ..., 2] <= 0).any(-1)  # [T]
    assert behind.any(), "the test pose is not behind any camera"
    full = b["w"].sum() * 3
    assert c < full  # those pairs carry no weight


def test_projection_is_nan_behind_the_camera_with_a_zero_gradient_there() -> None:
    from rigpose.geometry import project_camera

    pts = torch.tensor([[0.1, 0.2, 2.0], [0.1, 0.2, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    K = torch.tensor([[1000.0, 0, 500], [0, 1000, 500], [0, 0, 1]])
    pix = project_camera(pts, K, torch.zeros(5))
    assert torch.isfinite(pix[0]).all() and torch.isnan(pix[1:]).all()
    torch.where(torch.isfinite(pix), pix, torch.zeros_like(pix)).sum().backward()
    assert torch.isfinite(pts.grad).all() and (pts.grad[1:] == 0).all()


def test_a_projection_far_from_the_2d_gets_no_weight_and_no_gradient() -> None:
    """A source's pose placed just in front of a target camera's plane (a miscalibrated rig's triangulated root can
    land there) projects thousands of px away with a huge d pixel / d point: beyond FAR_PX it counts for nothing and
    sends no gradient (such frames diverged warm-started training on a miscalibrated rig), while every other pair
    keeps its weight."""
    b = to_torch(synthetic_batch(8))
    cams = batch_cameras(b)
    rel = _true_rel(b)
    # view 1's lift of frame 0 moved into camera 0's plane: 1 mm in front of it, 1 m to the side
    world = losses.to_world(rel, cams.R, b["root_world"])
    R0, t0 = cams.R[0, 0], cams.t[0, 0]
    near = (torch.tensor([1.0, 0.0, 0.001], dtype=rel.dtype) - t0) @ R0  # camera 0 -> world: R^T (x - t)
    moved = world.clone()
    moved[0, 1] = world[0, 1] - world[0, 1, :1] + near  # the whole pose there, its root at `near`
    back = torch.einsum("bvik,bvjk->bvji", cams.R, moved - b["root_world"][:, None, None])  # world -> view frames
    lifted = back.clone().requires_grad_(True)
    s, c = losses.cross_view_reprojection(lifted, b["root_world"], b["root_ok"], b["kp"], b["w"], cams)
    s.backward()
    assert torch.isfinite(s) and torch.isfinite(lifted.grad).all()
    _, c_off = losses.cross_view_reprojection(back, b["root_world"], b["root_ok"], b["kp"], b["w"], cams, far_px=None)
    assert c < c_off  # some of frame 0 / view 1's pairs are past FAR_PX and weigh 0
    assert lifted.grad[0, 1].abs().max() < 1e3  # what is left of that pose's gradient is ordinary
    s_uncapped, _ = losses.cross_view_reprojection(back.clone().requires_grad_(True), b["root_world"], b["root_ok"],
                                                   b["kp"], b["w"], cams, far_px=None)
    assert s_uncapped > s
