"""The default multi-view estimator (rigpose.model.posterior): exact where the 2D is, better than triangulation
where the 2D is noisy, the triangulation where the prior is wrong, calibrated uncertainty, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rigpose import geometry as g
from rigpose.config import ModelConfig, MultiViewConfig
from rigpose.model.inputs import model_inputs
from rigpose.model.lifter import Lifter
from rigpose.model.multiview import estimate, lift_multiview
from rigpose.model.posterior import camera_ids, combine, posterior, robust_triangulation
from rigpose.resources import rig_path
from rigpose.rig import load_rig
from rigpose.skeleton import get_skeleton

J = 16


def _scene(noise_px: float, *, frames: int = 300, outliers: float = 0.0, seed: int = 0, rig: str = "h36m-s1"):
    """(true world joints [B, J, 3], batch, keypoints, cameras) seen by a shipped rig with Gaussian 2D noise."""
    rng = np.random.default_rng(seed)
    cams = g.stack_cameras(load_rig(rig_path(rig)).cameras)
    V = cams.K.shape[0]
    X = rng.normal(0, 0.3, (frames, J, 3)) + np.array([0.0, 0.0, 1.0])
    X[:, :, :2] += rng.uniform(-1, 1, (frames, 1, 2))
    kp = np.stack([g.project(X, g.CameraArrays(cams.K[v], cams.dist[v], cams.R[v], cams.t[v])) for v in range(V)], 1)
    kp = kp + rng.normal(0, noise_px, kp.shape)
    bad = rng.random((frames, V, J)) < outliers
    kp[bad] += rng.uniform(30, 100, (int(bad.sum()), 2)) * rng.choice([-1, 1], (int(bad.sum()), 2))
    cams_B = g.CameraArrays(*(np.broadcast_to(a, (frames, *a.shape)).copy() for a in cams))
    batch = model_inputs(kp, np.ones((frames, V, J)), cams_B, np.ones((frames, V), bool), root_joints=(0,))
    return X, batch, kp, cams_B


def _prior(X: np.ndarray, *, shape_m: float = 0.03, offset_m: float = 0.1, seed: int = 1) -> torch.Tensor:
    """A learned prior's stand-in: the truth with per-joint shape error and a whole-body offset."""
    rng = np.random.default_rng(seed)
    return torch.tensor(X + rng.normal(0, shape_m, X.shape) + rng.normal(0, offset_m, (len(X), 1, 3)),
                        dtype=torch.float32)


def _err_mm(A: np.ndarray | torch.Tensor, X: np.ndarray) -> np.ndarray:
    return 1000 * np.linalg.norm(np.asarray(A, np.float64) - X, axis=-1)


def test_clean_2d_gives_the_triangulation_within_a_millimetre_despite_a_poor_prior():
    X, batch, _, _ = _scene(0.0)
    out = combine(_prior(X, shape_m=0.08, offset_m=0.3), batch)
    tri = robust_triangulation(batch)[0].numpy()
    assert np.nanmax(_err_mm(out.poses, tri)) < 1.0
    assert _err_mm(out.poses, X).mean() < 0.5


@pytest.mark.parametrize("noise_px", [5.0, 12.0])
def test_noisy_2d_with_outliers_beats_robust_triangulation(noise_px):
    X, batch, kp, cams = _scene(noise_px, outliers=0.02)
    out = combine(_prior(X), batch)
    post = _err_mm(out.poses, X).mean()
    robust = _err_mm(batch["pseudo_world"], X).mean()
    dlt = _err_mm(g.triangulate(kp, cams), X).mean()
    assert post < 0.85 * min(robust, dlt), (post, robust, dlt)


def test_a_frame_whose_prior_is_wrong_gets_the_triangulation():
    X, batch, _, _ = _scene(5.0)
    prior = _prior(X)
    prior[7] = prior[7, torch.randperm(J, generator=torch.Generator().manual_seed(0))]  # joints scrambled
    out = combine(prior, batch)
    assert not out.prior_used[7].any()
    assert out.prior_used[np.arange(len(X)) != 7].float().mean() > 0.9
    tri = _err_mm(batch["pseudo_world"][7], X[7]).mean()
    assert _err_mm(out.poses[7], X[7]).mean() < 1.1 * tri + 1.0
    # the scrambled prior is ~0.4 m off: had it been used, the frame would be far worse than triangulation
    assert _err_mm(prior[7], X[7]).mean() > 10 * tri


def test_one_wrong_joint_of_the_prior_falls_back_alone():
    X, batch, _, _ = _scene(5.0)
    prior = _prior(X)
    prior[3, 5] += torch.tensor([0.5, 0.0, 0.0])
    out = combine(prior, batch)
    assert not out.prior_used[3, 5]
    assert out.prior_used[3].sum() >= J - 2
    assert _err_mm(out.poses[3, 5], X[3, 5]) < 60


def test_a_joint_seen_by_one_view_keeps_the_prior_on_that_views_ray():
    X, batch, _, _ = _scene(2.0)
    batch = dict(batch)
    w = batch["w"].clone()
    w[:, 1:, 4] = 0  # joint 4 seen by view 0 only
    batch["w"] = w
    out = combine(_prior(X), batch)
    assert out.prior_used[:, 4].all()
    assert torch.isfinite(out.poses[:, 4]).all()
    # placed by the prior's shape and the 2D of view 0: far better than the prior's own error there
    assert _err_mm(out.poses[:, 4], X[:, 4]).mean() < 0.8 * _err_mm(_prior(X)[:, 4] - _prior(X).mean(1, keepdim=True)
                                                                    + torch.tensor(X).mean(1, keepdim=True).float(),
                                                                    X[:, 4]).mean()


def test_stated_uncertainty_is_calibrated_on_gaussian_noise():
    X, batch, _, _ = _scene(8.0, frames=600)
    out = combine(_prior(X), batch)
    err = _err_mm(out.poses, X) / 1000
    share = float((err < out.sigma_m.double().numpy()).mean())
    assert 0.45 < share < 0.85, share  # a calibrated RMS radius holds ~0.6-0.7 of Gaussian errors
    assert float(out.sigma_m.mean()) > 0


def test_frames_with_no_view_come_back_nan():
    X, batch, _, _ = _scene(5.0, frames=20)
    prior = _prior(X)
    prior[2] = float("nan")
    out = combine(prior, batch)
    assert torch.isnan(out.poses[2]).all() and torch.isnan(out.sigma_m[2]).all()
    assert torch.isfinite(out.poses[np.arange(20) != 2]).all()


def test_cameras_of_different_rigs_in_one_batch_get_their_own_noise_ids():
    _, a, _, _ = _scene(1.0, frames=3)
    _, b, _, _ = _scene(1.0, frames=3, rig="h36m-s9")
    batch = {k: torch.cat([a[k], b[k]]) for k in a}
    ids = camera_ids(batch)
    assert len(torch.unique(ids[:3])) == 4 and len(torch.unique(ids[3:])) == 4
    assert not set(ids[:3].flatten().tolist()) & set(ids[3:].flatten().tolist())


def test_bad_prior_shape_and_missing_pixels_are_named():
    X, batch, _, _ = _scene(1.0, frames=5)
    with pytest.raises(ValueError, match="prior must be"):
        combine(_prior(X)[:, :4], batch)
    no_kp = {k: v for k, v in batch.items() if k != "kp"}
    with pytest.raises(ValueError, match="kp"):
        combine(_prior(X), no_kp)


def test_the_robust_reference_matches_ransac_triangulation_everywhere():
    X, batch, kp, cams = _scene(5.0, outliers=0.05)
    tri, n_views = robust_triangulation(batch)
    assert (n_views == 4).all()
    ransac = g.triangulate_robust(kp, cams, np.ones(kp.shape[:-1]))
    assert np.median(_err_mm(tri, ransac)) < 0.01
    assert _err_mm(tri, X).mean() < 1.02 * _err_mm(ransac, X).mean()
    assert _err_mm(tri, X).mean() < 0.8 * _err_mm(g.triangulate(kp, cams), X).mean()


def test_posterior_is_the_default_multiview_answer_and_states_uncertainty():
    skeleton = get_skeleton("deepmimic16")
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=skeleton.num_joints)
    _, batch, _, _ = _scene(3.0, frames=8)
    assert MultiViewConfig().method == "posterior"
    poses, sigma = estimate(model, batch, skeleton, MultiViewConfig())
    assert poses.shape == (8, J, 3) and sigma is not None and sigma.shape == (8, J)
    torch.testing.assert_close(lift_multiview(model, batch, skeleton), poses)
    torch.testing.assert_close(posterior(model, batch, skeleton).poses, poses)
    # an untrained prior disagrees with the clean-ish 2D nearly everywhere: the answer is the triangulation
    tri = batch["pseudo_world"].double().numpy()
    assert np.median(_err_mm(poses, tri)) < 15
