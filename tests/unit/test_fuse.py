"""Multi-view inference (rigpose.model.fusion, .refine, .adapt, .multiview) on a synthetic 4-camera rig, with an
oracle lifter as the model double."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rigpose import geometry as g
from rigpose.config import MULTI_VIEW_METHODS, LossConfig, ModelConfig, MultiViewConfig
from rigpose.model.adapt import adapt
from rigpose.model.fusion import fuse
from rigpose.model.inputs import prepare_arrays
from rigpose.model.lifter import Lifter, LiftOutput
from rigpose.model.multiview import lift_multiview
from rigpose.model.objective import loss_terms, total_loss
from rigpose.model.refine import estimate_noise, refine, reprojection_residuals
from rigpose.skeleton import DEEPMIMIC16 as SK

NUM_FRAMES, NUM_VIEWS = 8, 4
# a symmetric standing pose (metres, z up): pelvis, chest, neck, head, right leg, right arm; left = mirrored x
_RIGHT = {"right_hip": (-0.1, 0.0, 0.95), "right_knee": (-0.1, 0.03, 0.5), "right_ankle": (-0.1, 0.0, 0.08),
          "right_shoulder": (-0.18, 0.0, 1.45), "right_elbow": (-0.2, 0.08, 1.2), "right_wrist": (-0.2, 0.25, 1.05)}
_TRUNK = {"pelvis": (0.0, 0.0, 1.0), "chest": (0.0, 0.0, 1.25), "neck": (0.0, 0.0, 1.5), "head": (0.0, 0.02, 1.65)}


def _template() -> np.ndarray:
    pts = {**_TRUNK, **_RIGHT, **{n.replace("right", "left"): (-x, y, z) for n, (x, y, z) in _RIGHT.items()}}
    return np.array([pts[n] for n in SK.joint_names])


def _poses(num: int, seed: int = 0) -> np.ndarray:
    """[num, J, 3] world metres: the template turned about z and moved on the floor (one rigid skeleton)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 2 * np.pi, num)
    Rz = np.zeros((num, 3, 3))
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a), 1
    shift = np.concatenate([rng.uniform(-0.8, 0.8, (num, 2)), np.zeros((num, 1))], -1)
    return _template() @ Rz.transpose(0, 2, 1) + shift[:, None]


def _cameras(num_frames: int) -> g.CameraArrays:
    Rs, ts = [], []
    for i in range(NUM_VIEWS):
        ang = 2 * np.pi * i / NUM_VIEWS + 0.3
        R, t = g.look_at(np.array([4.5 * np.cos(ang), 4.5 * np.sin(ang), 1.6]), np.array([0.0, 0.0, 1.0]))
        Rs.append(R)
        ts.append(t)
    K = np.array([[1000.0, 0, 500], [0, 1000, 500], [0, 0, 1]])
    dist = np.array([-0.1, 0.05, 0.0, 0.0, 0.0])

    def tile(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x, (num_frames, *x.shape)).copy()

    return g.CameraArrays(K=tile(np.stack([K] * NUM_VIEWS)), dist=tile(np.stack([dist] * NUM_VIEWS)),
                          R=tile(np.stack(Rs)), t=tile(np.stack(ts)))


class Scene:
    """Ground truth, cameras, 2D and the prepared batch of a small multi-view clip."""

    def __init__(self, num_frames: int = NUM_FRAMES, *, pixel_noise: float = 0.0, seed: int = 0) -> None:
        self.X = _poses(num_frames, seed)
        self.cams = _cameras(num_frames)
        kp = g.project(self.X[:, None], self.cams)  # [N, V, J, 2]
        self.kp = kp + np.random.default_rng(seed + 1).normal(0, pixel_noise, kp.shape) if pixel_noise else kp
        self.scores = np.ones(kp.shape[:-1])
        self.view_mask = np.ones(kp.shape[:2], dtype=bool)

    def batch(self, **extra: np.ndarray) -> dict[str, torch.Tensor]:
        a = prepare_arrays(self.kp, self.scores, self.cams, self.view_mask, root_joints=SK.root_joints, **extra)
        return {k: torch.from_numpy(v) for k, v in a.items()}

    def camera_poses(self) -> torch.Tensor:
        """[N, V, J, 3] the true pose in every camera's frame."""
        Xc = np.einsum("nvik,njk->nvji", self.cams.R, self.X) + self.cams.t[:, :, None]
        return torch.as_tensor(Xc, dtype=torch.float32)


class OracleLifter(nn.Module):
    """Test double of the lifter: returns given camera-frame poses [N, V, J, 3], whatever its input."""

    def __init__(self, X_cam_NVJ3: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("X", X_cam_NVJ3.reshape(-1, *X_cam_NVJ3.shape[2:]).clone())

    def forward(self, xy_BJ2: torch.Tensor, scores_BJ: torch.Tensor) -> LiftOutput:
        X = self.X
        root = X[:, 0]
        xy = X[..., :2] / X[..., 2:]
        return LiftOutput(X=X, rel=X - root[:, None], root=root, xy=xy, xy_pred=xy)


def _mpjpe(P: torch.Tensor, X: np.ndarray) -> float:
    return float((P - torch.as_tensor(X, dtype=P.dtype)).norm(dim=-1).mean())


# ---------------------------------------------------------------------------------------------- fusion


@pytest.mark.parametrize("weighting", ["confidence", "uniform"])
def test_fuse_with_oracle_lifter_returns_ground_truth(weighting: str) -> None:
    scene = Scene()
    fused = fuse(OracleLifter(scene.camera_poses()), scene.batch(), SK, MultiViewConfig(weighting=weighting))
    torch.testing.assert_close(fused, torch.as_tensor(scene.X, dtype=torch.float32), atol=1e-4, rtol=0)


@pytest.mark.parametrize("how", ["view_mask", "nan_keypoints"])
def test_fuse_ignores_a_missing_view(how: str) -> None:
    scene = Scene()
    if how == "view_mask":
        scene.view_mask[:, 1] = False  # a padding view
    else:
        scene.kp[:, 1] = np.nan  # a view the detector did not report
        scene.scores[:, 1] = 0
    X_cam = scene.camera_poses()
    X_cam[:, 1] += 5.0  # whatever the lifter says about the missing view must not matter
    fused = fuse(OracleLifter(X_cam), scene.batch(), SK)
    torch.testing.assert_close(fused, torch.as_tensor(scene.X, dtype=torch.float32), atol=1e-4, rtol=0)


def test_fuse_with_one_view_places_the_pose_at_the_views_own_root() -> None:
    scene = Scene()
    scene.view_mask[:, 1:] = False
    batch = scene.batch()
    assert not batch["root_ok"].any()  # one view: no triangulated root
    fused = fuse(OracleLifter(scene.camera_poses()), batch, SK)
    torch.testing.assert_close(fused, torch.as_tensor(scene.X, dtype=torch.float32), atol=1e-4, rtol=0)


def test_fuse_returns_nan_for_a_frame_without_any_view() -> None:
    scene = Scene()
    scene.view_mask[0] = False
    fused = fuse(OracleLifter(scene.camera_poses()), scene.batch(), SK)
    assert torch.isnan(fused[0]).all()
    assert torch.isfinite(fused[1:]).all()


def test_confidence_weighting_downweights_a_corrupted_low_score_view() -> None:
    scene = Scene()
    scene.scores[:, 2] = 0.1
    X_cam = scene.camera_poses()
    X_cam[:, 2, 1:] += torch.tensor([0.15, -0.1, 0.1])  # a bad lift of every joint but the root
    oracle, batch = OracleLifter(X_cam), scene.batch()
    err_conf = _mpjpe(fuse(oracle, batch, SK, MultiViewConfig(weighting="confidence")), scene.X)
    err_unif = _mpjpe(fuse(oracle, batch, SK, MultiViewConfig(weighting="uniform")), scene.X)
    assert err_conf < 0.1 * err_unif


def test_fuse_restores_the_models_training_mode() -> None:
    model = Lifter(ModelConfig(width=16, num_blocks=1), num_joints=SK.num_joints)
    model.train()
    fuse(model, Scene(2).batch(), SK)
    assert model.training


def test_fuse_rejects_bad_input() -> None:
    batch = Scene(2).batch()
    model = OracleLifter(Scene(2).camera_poses())
    with pytest.raises(ValueError, match="weighting"):
        fuse(model, batch, SK, MultiViewConfig(weighting="median"))
    with pytest.raises(ValueError, match="root_world"):
        fuse(model, {k: v for k, v in batch.items() if k != "root_world"}, SK)


# ---------------------------------------------------------------------------------------------- refinement


def test_estimate_noise_recovers_the_pixel_noise_of_the_2d() -> None:
    scene = Scene(64, pixel_noise=3.0)
    batch = scene.batch()
    noise = estimate_noise(torch.as_tensor(scene.X, dtype=torch.float32), batch)
    assert 2.4 < noise.sigma_2d_px < 3.6


def test_refine_reduces_reprojection_and_3d_error_of_noisy_fused_poses() -> None:
    scene = Scene()
    batch = scene.batch()
    noisy = torch.as_tensor(scene.X, dtype=torch.float32) + 0.03 * torch.randn(scene.X.shape,
                                                                                generator=torch.Generator().manual_seed(0))
    refined = refine(noisy, batch, SK, MultiViewConfig(refine_steps=30))
    before, obs = reprojection_residuals(noisy, batch)
    after, _ = reprojection_residuals(refined, batch)
    assert after[obs].mean() < 0.2 * before[obs].mean()
    assert _mpjpe(refined, scene.X) < 0.3 * _mpjpe(noisy, scene.X)


def test_refine_survives_a_fused_joint_at_a_cameras_centre() -> None:
    # a joint at (or behind) a camera cannot be projected into it: its residual there must drop out with a finite
    # gradient, or L-BFGS's line search overflows ("value cannot be converted to type float without overflow")
    scene = Scene()
    batch = scene.batch()
    poses = torch.as_tensor(scene.X, dtype=torch.float32).clone()
    R, t = scene.cams.R[0, 0], scene.cams.t[0, 0]
    poses[0, 3] = torch.as_tensor(-R.T @ t, dtype=torch.float32)  # camera 0's centre: depth 0 in view 0
    X = poses.clone().requires_grad_(True)
    err, obs = reprojection_residuals(X, batch)
    assert not obs[0, 0, 3] and obs[0, 1, 3]
    err.sum().backward()
    assert torch.isfinite(X.grad).all()
    refined = refine(poses, batch, SK, MultiViewConfig(refine_steps=30))
    assert torch.isfinite(refined).all()
    truth = torch.as_tensor(scene.X[0, 3], dtype=torch.float32)
    assert (refined[0, 3] - truth).norm() < 0.5 * (poses[0, 3] - truth).norm()  # the other views pull it back


def test_refine_keeps_nan_frames_nan_and_zero_steps_is_identity() -> None:
    scene = Scene()
    poses = torch.as_tensor(scene.X, dtype=torch.float32).clone()
    poses[0] = float("nan")
    refined = refine(poses, scene.batch(), SK, MultiViewConfig(refine_steps=5))
    assert torch.isnan(refined[0]).all() and torch.isfinite(refined[1:]).all()
    torch.testing.assert_close(refine(poses, scene.batch(), SK, MultiViewConfig(refine_steps=0)), poses, equal_nan=True)


def test_refine_optimises_even_when_called_under_no_grad() -> None:
    scene = Scene()
    noisy = torch.as_tensor(scene.X, dtype=torch.float32) + 0.03
    want = refine(noisy, scene.batch(), SK, MultiViewConfig(refine_steps=5))
    with torch.no_grad():
        torch.testing.assert_close(refine(noisy, scene.batch(), SK, MultiViewConfig(refine_steps=5)), want)


def test_refine_rejects_poses_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="poses"):
        refine(torch.zeros(3, SK.num_joints, 3), Scene(2).batch(), SK)


# ---------------------------------------------------------------------------------------------- adaptation


def _tiny_lifter() -> Lifter:
    torch.manual_seed(0)
    return Lifter(ModelConfig(width=32, num_blocks=1, dropout=0.0), num_joints=SK.num_joints)


def _loss_2d(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    weights = LossConfig()
    with torch.no_grad():
        return float(total_loss(loss_terms(model, batch, SK, loss_cfg=weights, train=False), weights)[0])


def test_adapt_reduces_the_2d_loss_and_leaves_the_original_model_untouched() -> None:
    model = _tiny_lifter()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = Scene(32, pixel_noise=1.0).batch()
    tuned = adapt(model, batch, SK, steps=40, lr=3e-3, batch_size=None)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
    assert tuned is not model and not tuned.training
    assert _loss_2d(tuned, batch) < 0.7 * _loss_2d(model, batch)


def test_adapt_never_reads_joints_3d() -> None:
    scene = Scene(16)
    labelled = scene.batch(joints_3d=np.full_like(scene.X, np.nan))  # poisoned labels: any use would show
    unlabelled = scene.batch()
    assert "joints_3d" not in unlabelled
    a = adapt(_tiny_lifter(), labelled, SK, steps=5, lr=1e-3, batch_size=None)
    b = adapt(_tiny_lifter(), unlabelled, SK, steps=5, lr=1e-3, batch_size=None)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.isfinite(va).all(), k
        torch.testing.assert_close(va, vb)


def test_adapt_accepts_an_iterable_of_batches() -> None:
    batches = [Scene(8, seed=s).batch() for s in range(2)]
    tuned = adapt(_tiny_lifter(), batches, SK, steps=3, lr=1e-3, batch_size=None)
    assert isinstance(tuned, Lifter)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("method", MULTI_VIEW_METHODS)
def test_lift_multiview_runs_every_method(method: str) -> None:
    scene = Scene(8)
    cfg = MultiViewConfig(method=method, refine_steps=3, adapt_steps=2)
    poses = lift_multiview(_tiny_lifter(), scene.batch(), SK, cfg)
    assert poses.shape == (8, SK.num_joints, 3) and torch.isfinite(poses).all()


@pytest.mark.parametrize("bad", [{"method": "triangulate"}, {"weighting": "max"}, {"refine_steps": -1},
                                 {"prior_weight": 0.0}, {"adapt_lr": 0.0}, {"adapt_batch_size": 0}])
def test_multiview_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        MultiViewConfig(**bad)
