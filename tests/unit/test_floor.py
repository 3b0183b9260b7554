"""rigpose.model.floor: the floor fixes a single-view lift's scale along the rays; jumps and bad cameras do not."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch

from rigpose.data.synth.motion_bank import REST_OFFSETS_J3
from rigpose.geometry import look_at, world_to_camera
from rigpose.model.floor import (
    default_foot_height,
    floor_scale,
    foot_joints,
    metric_lift_batch,
    metric_single_view,
)
from rigpose.skeleton import COCO17, DEEPMIMIC16, H36M17, HUMANEVA15, Skeleton

SKEL = DEEPMIMIC16
FOOT_H = default_foot_height(SKEL)
# (camera centre, aim point) pairs, metres: 2-4 m from the body, 1.5-3 m high, looking down at it
CAMERAS = [((3.0, 0.0, 1.5), (0.0, 0.0, 1.0)), ((0.0, -2.0, 3.0), (0.0, 0.0, 0.8)),
           ((-2.5, 2.5, 2.2), (0.0, 0.0, 1.0)), ((4.0, 1.0, 2.0), (0.0, 0.0, 0.5))]


def standing_pose(scale: float = 1.0, at: tuple[float, float] = (0.0, 0.0), lift: float = 0.0) -> np.ndarray:
    """deepmimic16 rest pose [J, 3] world metres, ankles at FOOT_H (+ lift), `scale` x standard size about the
    point between the feet at ankle height (so the feet stay at FOOT_H whatever the scale)."""
    X = np.zeros((SKEL.num_joints, 3))
    for j, p in enumerate(SKEL.parents):
        X[j] = REST_OFFSETS_J3[j] + (X[p] if p >= 0 else 0.0)
    ankles = list(foot_joints(SKEL))
    X[:, 2] += FOOT_H - X[ankles, 2].min()
    pivot = np.array([0.0, 0.0, FOOT_H])
    X = pivot + scale * (X - pivot)
    X[:, :2] += np.asarray(at)
    X[:, 2] += lift
    return X


def camera(i: int) -> tuple[np.ndarray, np.ndarray]:
    centre, aim = CAMERAS[i]
    return look_at(np.array(centre), np.array(aim))


def predicted(X_world_BJ3: np.ndarray, R: np.ndarray, t: np.ndarray, scale: float) -> torch.Tensor:
    """What a standard-size lifter sees: the true camera-frame points divided by `scale` (along their rays)."""
    return torch.from_numpy(world_to_camera(X_world_BJ3, R, t) / scale)


def batch_of(X_BJ3: torch.Tensor, R: np.ndarray, t: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    B = X_BJ3.shape[0]
    return torch.from_numpy(np.broadcast_to(R, (B, 3, 3)).copy()), torch.from_numpy(np.broadcast_to(t, (B, 3)).copy())


def views_of(X_world_BJ3: np.ndarray, scale: float, cams: list[int]) -> tuple[torch.Tensor, ...]:
    """Per-view lifter outputs rel [B, V, J, 3], root [B, V, 3] and cameras R [B, V, 3, 3], t [B, V, 3]."""
    B = X_world_BJ3.shape[0]
    X, Rs, ts = [], [], []
    for i in cams:
        R, t = camera(i)
        X.append(predicted(X_world_BJ3, R, t, scale))
        Rs.append(np.broadcast_to(R, (B, 3, 3)))
        ts.append(np.broadcast_to(t, (B, 3)))
    X_BVJ3 = torch.stack(X, 1)
    root = X_BVJ3[:, :, 0]
    return (X_BVJ3 - root[:, :, None], root, torch.from_numpy(np.stack(Rs, 1).copy()),
            torch.from_numpy(np.stack(ts, 1).copy()))


# ---------------------------------------------------------------------------------------------- skeletons


@pytest.mark.parametrize(("skeleton", "names"), [
    (H36M17, {"RFoot", "LFoot"}), (COCO17, {"left_ankle", "right_ankle"}),
    (HUMANEVA15, {"left_ankle", "right_ankle"}), (DEEPMIMIC16, {"left_ankle", "right_ankle"}),
], ids=lambda x: getattr(x, "name", ""))
def test_foot_joints_are_the_ankles_of_every_known_skeleton(skeleton: Skeleton, names: set[str]) -> None:
    assert {skeleton.joint_names[j] for j in foot_joints(skeleton)} == names
    assert 0.03 < default_foot_height(skeleton) < 0.12


def test_foot_joints_reject_a_skeleton_without_feet() -> None:
    torso = Skeleton(name="torso3", joint_names=("pelvis", "chest", "head"), parents=(-1, 0, 1), left=(), right=())
    with pytest.raises(ValueError, match="skeleton 'torso3' has no ankle or foot joint"):
        foot_joints(torso)


# ---------------------------------------------------------------------------------------------- per frame


def test_floor_scale_matches_a_hand_computed_case() -> None:
    # level camera 2 m high at x = -3 looking +x; the predicted ankle 1.5 m below it, 3 m ahead
    R, t = look_at(np.array([-3.0, 0.0, 2.0]), np.array([0.0, 0.0, 2.0]))
    X_cam = torch.from_numpy(world_to_camera(np.array([[[0.0, 0.0, 0.5], [0.0, 0.2, 0.9]]]), R, t))
    out = floor_scale(X_cam, *batch_of(X_cam, R, t), [0, 1], floor_z=0.0, foot_height=0.06)
    torch.testing.assert_close(out.scale, torch.tensor([(2.0 - 0.06) / 1.5], dtype=torch.float64))
    assert out.ok.tolist() == [True] and out.contact.tolist() == [0]
    torch.testing.assert_close(out.lever, torch.tensor([1.5], dtype=torch.float64))


@pytest.mark.parametrize("cam", range(len(CAMERAS)))
@pytest.mark.parametrize("scale", [0.85, 1.0, 1.15])
def test_floor_scale_recovers_the_body_scale_along_the_rays(scale: float, cam: int) -> None:
    R, t = camera(cam)
    X_world = np.stack([standing_pose(scale, at) for at in [(0.0, 0.0), (0.4, -0.3), (-0.5, 0.6)]])
    X_pred = predicted(X_world, R, t, scale)
    out = floor_scale(X_pred, *batch_of(X_pred, R, t), foot_joints(SKEL), floor_z=0.0, foot_height=FOOT_H)
    assert out.ok.all()
    torch.testing.assert_close(out.scale, torch.full((3,), scale, dtype=torch.float64), rtol=0.01, atol=0)


def test_floor_scale_uses_the_rig_floor_height() -> None:
    R, t = camera(0)
    shift = np.array([0.0, 0.0, 0.25])  # the same scene on a floor at z = 0.25 m: camera and body move up
    X_world = standing_pose(1.1)[None] + shift
    t_up = t - R @ shift
    X_pred = predicted(X_world, R, t_up, 1.1)
    out = floor_scale(X_pred, *batch_of(X_pred, R, t_up), foot_joints(SKEL), floor_z=0.25, foot_height=FOOT_H)
    torch.testing.assert_close(out.scale, torch.tensor([1.1], dtype=torch.float64))


def test_a_camera_at_foot_level_gives_no_scale_and_falls_back_to_one() -> None:
    R, t = look_at(np.array([3.0, 0.0, FOOT_H]), np.array([0.0, 0.0, 1.0]))
    X_pred = predicted(standing_pose(1.15)[None], R, t, 1.15)
    out = floor_scale(X_pred, *batch_of(X_pred, R, t), foot_joints(SKEL), foot_height=FOOT_H)
    assert out.ok.tolist() == [False] and out.scale.tolist() == [1.0]
    rel, root, Rv, tv = (x[:, None] for x in (X_pred - X_pred[:, :1], X_pred[:, 0], *batch_of(X_pred, R, t)))
    metric = metric_single_view(rel, root, Rv, tv, torch.ones(1, 1, dtype=torch.bool), SKEL)
    assert metric.ok.tolist() == [[False]] and metric.scale.tolist() == [[1.0]]
    assert torch.isfinite(metric.world).all()


def test_non_finite_or_unseen_feet_give_no_frame_estimate() -> None:
    R, t = camera(1)
    X_pred = predicted(np.stack([standing_pose()] * 3), R, t, 1.0)
    X_pred[0, 6] = float("nan")  # right ankle lost: the left one still stands on the floor
    X_pred[1] = float("nan")
    w = torch.ones(3, SKEL.num_joints)
    w[2, list(foot_joints(SKEL))] = 0.0  # neither foot seen
    out = floor_scale(X_pred, *batch_of(X_pred, R, t), foot_joints(SKEL), foot_height=FOOT_H, w_BJ=w)
    assert out.ok.tolist() == [True, False, False]
    assert torch.isfinite(out.scale).all() and out.scale[1:].tolist() == [1.0, 1.0]


def test_floor_scale_rejects_bad_input_naming_it() -> None:
    R, t = camera(0)
    X_pred = predicted(standing_pose()[None], R, t, 1.0)
    Rb, tb = batch_of(X_pred, R, t)
    with pytest.raises(ValueError, match="R_B33: expected shape"):
        floor_scale(X_pred, Rb[:, :2], tb, [6, 12])
    with pytest.raises(ValueError, match="foot_joints"):
        floor_scale(X_pred, Rb, tb, [99])
    with pytest.raises(ValueError, match="floor_z: the floor is not known"):
        floor_scale(X_pred, Rb, tb, [6, 12], floor_z=None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- per view


@pytest.mark.parametrize("scale", [0.85, 1.0, 1.15])
def test_metric_single_view_puts_the_root_within_a_centimetre_of_the_truth(scale: float) -> None:
    X_world = np.stack([standing_pose(scale, at) for at in [(0.0, 0.0), (0.3, 0.2), (-0.4, -0.1), (0.1, 0.5)]])
    metric = metric_single_view(*views_of(X_world, scale, [0, 1, 2, 3]), torch.ones(4, 4, dtype=torch.bool), SKEL)
    assert metric.ok.all()
    torch.testing.assert_close(metric.scale, torch.full((4, 4), scale, dtype=torch.float64), rtol=0.01, atol=0)
    truth = torch.from_numpy(X_world)[:, None].expand(-1, 4, -1, -1)
    assert (metric.world[:, :, 0] - truth[:, :, 0]).norm(dim=-1).max() < 0.01
    assert (metric.world - truth).norm(dim=-1).max() < 0.02


def test_a_jump_frame_keeps_the_sequence_scale_and_lands_at_its_true_height() -> None:
    scale = 1.12
    frames = [standing_pose(scale, (0.1 * i, 0.0), lift=0.3 if i == 3 else 0.0) for i in range(7)]
    X_world = np.stack(frames)
    metric = metric_single_view(*views_of(X_world, scale, [0, 2]), torch.ones(7, 2, dtype=torch.bool), SKEL,
                                floor_z=0.0)
    assert abs(metric.frame_scale[3, 0].item() / scale - 1) > 0.05  # alone, the jump frame misjudges the scale
    torch.testing.assert_close(metric.scale, torch.full((7, 2), scale, dtype=torch.float64), rtol=0.01, atol=0)
    root_err = (metric.world[:, :, 0] - torch.from_numpy(X_world[:, None, 0])).norm(dim=-1)
    assert root_err.max() < 0.01  # the jump frame too: 0.3 m up, as it truly was


def test_the_root_follows_each_contact_frames_own_floor_where_the_lifters_depth_wobbles() -> None:
    scale = 1.05
    X_world = np.stack([standing_pose(scale, (0.1 * i, 0.0)) for i in range(8)])
    rel, root, R, t = views_of(X_world, scale, [0, 3])  # cameras 1.5 and 2 m high
    # the lifter's depth off by +-2% frame to frame: at the sequence's scale a foot floats <= 4 cm, still "on" it
    wobble = torch.tensor([1.0, 1.02, 0.98, 1.0, 1.02, 0.98, 1.0, 1.0], dtype=torch.float64)
    rel, root = rel * wobble[:, None, None, None], root * wobble[:, None, None]
    truth = torch.from_numpy(X_world[:, None, 0])
    ok = torch.ones(8, 2, dtype=torch.bool)
    errors = {}
    for a in (0.0, 0.5, 1.0):
        metric = metric_single_view(rel, root, R, t, ok, SKEL, frame_weight=a)
        errors[a] = (metric.world[:, :, 0] - truth).norm(dim=-1).mean().item()
        # the body keeps one size per sequence and view whatever the root does
        assert torch.allclose(metric.scale, metric.scale[:1].expand(8, 2))
    assert errors[1.0] < 0.01  # every frame's own floor contact: the true depth
    assert errors[0.5] < 0.6 * errors[0.0] and errors[0.0] > 0.02  # the sequence scale alone: 3 frames off 6-8 cm
    with pytest.raises(ValueError, match="frame_weight"):
        metric_single_view(rel, root, R, t, ok, SKEL, frame_weight=1.5)


def test_each_sequence_and_view_gets_its_own_scale() -> None:
    X_world = np.stack([standing_pose(0.9, (0.1 * i, 0.0)) for i in range(3)]
                       + [standing_pose(1.1, (0.0, 0.1 * i)) for i in range(3)])
    rel, root, R, t = views_of(X_world, 1.0, [0, 1])
    scale_true = torch.tensor([0.9] * 3 + [1.1] * 3, dtype=torch.float64)
    rel, root = rel / scale_true[:, None, None, None], root / scale_true[:, None, None]  # standard-size predictions
    view_ok = torch.tensor([[True, True]] * 6)
    view_ok[:, 1] = torch.tensor([True, True, True, False, False, False])  # view 1 misses the second sequence
    metric = metric_single_view(rel, root, R, t, view_ok, SKEL, groups=np.array(["a", "a", "a", "b", "b", "b"]))
    torch.testing.assert_close(metric.scale[:, 0], scale_true, rtol=0.01, atol=0)
    torch.testing.assert_close(metric.scale[:3, 1], scale_true[:3], rtol=0.01, atol=0)
    assert metric.ok[:, 0].all() and metric.ok[:3, 1].all() and not metric.ok[3:, 1].any()
    assert metric.scale[3:, 1].tolist() == [1.0] * 3  # no estimate from another view's frames


class _Lift(NamedTuple):
    rel: torch.Tensor
    root: torch.Tensor


def test_metric_lift_batch_reads_a_prepared_batch() -> None:
    X_world = np.stack([standing_pose(1.05, (0.2 * i, 0.0)) for i in range(4)])
    rel, root, R, t = (x.float() for x in views_of(X_world, 1.05, [1, 3]))
    batch = {"R": R, "t": t, "view_mask": torch.ones(4, 2), "w": torch.ones(4, 2, SKEL.num_joints)}
    metric = metric_lift_batch(_Lift(rel, root), batch, SKEL, floor_z=0.0, groups=torch.zeros(4))
    direct = metric_single_view(rel, root, R, t, torch.ones(4, 2, dtype=torch.bool), SKEL, w_BVJ=batch["w"])
    torch.testing.assert_close(metric.world, direct.world)
    assert metric.world.dtype == torch.float32
    torch.testing.assert_close(metric.scale, torch.full((4, 2), 1.05), rtol=0.01, atol=0)
    with pytest.raises(ValueError, match="missing key"):
        metric_lift_batch(_Lift(rel, root), {"R": R}, SKEL, floor_z=0.0)
    with pytest.raises(ValueError, match="floor is not known"):
        metric_lift_batch(_Lift(rel, root), batch, SKEL, floor_z=None)  # type: ignore[arg-type]
