"""rigpose.geometry against OpenCV (projectPoints, undistortPoints, triangulatePoints) and hand-checked cases."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rigpose import geometry as g
from rigpose.model.inputs import UNDISTORT_BUDGET_PX
from rigpose.resources import rigs_dir
from rigpose.rig import load_rig

CV_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 500, 1e-15)

# Real lens distortions: Human3.6M's four cameras and HumanEva-I's strongest (C3, k2 = 1.28).
H36M_DISTORTIONS = [
    [-0.20709892, 0.24777518, -0.00097570, -0.00142447, -0.00307515],
    [-0.19421363, 0.24040854, -0.00161903, -0.00274089, 0.00681998],
    [-0.20833819, 0.25548801, 0.00148439, -0.00076000, -0.00246050],
    [-0.19838409, 0.21832368, -0.00089425, -0.00181465, -0.00894826],
]
HUMANEVA_C3 = [-0.327556, 1.277065, -0.006537, -0.00536, 0.0]


@dataclass
class Cam:
    K: np.ndarray
    dist: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int = 1000
    height: int = 1000


def ring_cameras(num: int, dists: list[list[float]] | None = None, *, radius: float = 4.5) -> list[Cam]:
    cams = []
    for i in range(num):
        a = 2 * np.pi * i / num + 0.3
        center = np.array([radius * np.cos(a), radius * np.sin(a), 1.2 + 0.8 * (i % 2)])
        R, t = g.look_at(center, np.array([0.0, 0.0, 1.0]))
        K = np.array([[1145.0 + 5 * i, 0.0, 512.5 - i], [0, 1143.8 - 3 * i, 515.4 + 2 * i], [0, 0, 1]])
        dist = np.array((dists or H36M_DISTORTIONS)[i % len(dists or H36M_DISTORTIONS)])
        cams.append(Cam(K=K, dist=dist, R=R, t=t))
    return cams


def cv_project(X: np.ndarray, cam: Cam) -> np.ndarray:
    rvec, _ = cv2.Rodrigues(cam.R)
    uv, _ = cv2.projectPoints(X.reshape(-1, 1, 3), rvec, cam.t, cam.K, cam.dist)
    return uv[:, 0]


def image_grid(cam: Cam, n: int = 41) -> np.ndarray:
    u, v = np.meshgrid(np.linspace(0, cam.width - 1, n), np.linspace(0, cam.height - 1, n))
    return np.stack([u, v], -1).reshape(-1, 2)


@pytest.fixture
def cams() -> list[Cam]:
    return ring_cameras(4)


@pytest.fixture
def points(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform([-1, -1, 0], [1, 1, 2], size=(200, 3))


def test_project_matches_cv2_project_points(cams: list[Cam], points: np.ndarray) -> None:
    for cam in cams:
        np.testing.assert_allclose(g.project(points, cam), cv_project(points, cam), atol=1e-6, rtol=0)


def test_project_batches_over_leading_dims_like_per_camera_calls(cams: list[Cam], points: np.ndarray) -> None:
    stacked = g.stack_cameras(cams)
    pix_VN2 = g.project(points[None], stacked)
    for v, cam in enumerate(cams):
        np.testing.assert_allclose(pix_VN2[v], cv_project(points, cam), atol=1e-6, rtol=0)


def test_project_gives_nan_for_points_behind_the_camera(cams: list[Cam]) -> None:
    cam = cams[0]
    behind = cam.R.T @ (np.array([0.1, 0.0, -2.0]) - cam.t)  # camera-frame z = -2 m
    assert np.isnan(g.project(behind[None], cam)).all()


def test_project_in_torch_matches_numpy_and_has_gradients(cams: list[Cam], points: np.ndarray) -> None:
    X = torch.tensor(points, requires_grad=True)
    pix = g.project(X, cams[1])
    torch.testing.assert_close(pix, torch.tensor(cv_project(points, cams[1])), atol=1e-6, rtol=0)
    pix.sum().backward()
    assert X.grad is not None and torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0


@pytest.mark.parametrize("dist", [*H36M_DISTORTIONS, HUMANEVA_C3])
def test_undistort_matches_cv2_undistort_points_over_the_whole_image(dist: list[float]) -> None:
    cam = Cam(K=np.array([[724.3, 0, 302.6], [0, 723.6, 204.9], [0, 0, 1]]), dist=np.array(dist),
              R=np.eye(3), t=np.zeros(3), width=640, height=480)
    uv = image_grid(cam)
    ours = g.undistort(uv, cam)
    ref = cv2.undistortPoints(uv[:, None], cam.K, cam.dist, None, cam.K, criteria=CV_CRITERIA)[:, 0]
    # "after re-projection": both undistorted points expressed in pixels of the ideal (distortion-free) camera
    np.testing.assert_allclose(g.normalized_to_pixels(ours, cam.K), ref, atol=1e-4, rtol=0)
    # and distorting our answer again lands on the input pixel
    np.testing.assert_allclose(g.normalized_to_pixels(g.distort(ours, cam.dist), cam.K), uv, atol=1e-4, rtol=0)


def _image_and_margin(cam) -> np.ndarray:
    """Pixels [N, 2] over a camera's whole image, its four corners exactly, and 5% beyond each corner, rounded to
    float32 (how keypoints are stored)."""
    W, H = cam.width, cam.height
    u, v = np.meshgrid(np.linspace(0, W - 1, 61), np.linspace(0, H - 1, 61))
    beyond = [[-0.05 * W, -0.05 * H], [1.05 * W, -0.05 * H], [-0.05 * W, 1.05 * H], [1.05 * W, 1.05 * H]]
    return np.concatenate([np.stack([u, v], -1).reshape(-1, 2), beyond]).astype(np.float32)


@pytest.mark.parametrize("rig_file", sorted(p.name for p in rigs_dir().glob("*.json")))
def test_float32_undistortion_agrees_with_float64_within_budget_on_every_shipped_lens(rig_file: str) -> None:
    rig = load_rig(rigs_dir() / rig_file)
    for cam in rig.cameras:
        uv = _image_and_margin(cam)
        f64 = g.undistort(uv.astype(np.float64), cam)
        f32 = g.undistort(uv, cam)
        assert f32.dtype == np.float32
        err_px = np.abs(f32 - f64).max(-1) * cam.K[0, 0]  # normalised -> pixels of the ideal camera
        assert err_px.max() < UNDISTORT_BUDGET_PX, (cam.name, err_px.max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_undistortion_stopping_at_convergence_equals_many_fixed_iterations(dtype: type) -> None:
    rig = load_rig(rigs_dir() / "humaneva-s1.json")  # the strongest shipped distortion
    for cam in rig.cameras:
        uv = _image_and_margin(cam).astype(dtype)
        xy = g.pixels_to_normalized(uv, cam.K.astype(dtype))
        stopped = g.undistort_normalized(xy, cam.dist)
        fixed = g.undistort_normalized(xy, cam.dist, max_iters=60, tol=0.0)  # every step taken
        assert stopped.dtype == dtype
        np.testing.assert_allclose(stopped, fixed, atol=1e-13 if dtype == np.float64 else 1e-6, rtol=0)
        # converged: distorting the answer again gives the input (to the dtype's precision)
        np.testing.assert_allclose(g.distort(stopped.astype(np.float64), cam.dist), xy,
                                   atol=1e-14 if dtype == np.float64 else 5e-7, rtol=0)


def test_four_newton_steps_suffice_on_the_shipped_lenses() -> None:
    for path in sorted(rigs_dir().glob("*.json")):
        for cam in load_rig(path).cameras:
            xy = g.pixels_to_normalized(_image_and_margin(cam).astype(np.float64), cam.K)
            np.testing.assert_allclose(g.undistort_normalized(xy, cam.dist, max_iters=4),
                                       g.undistort_normalized(xy, cam.dist, max_iters=60, tol=0.0),
                                       atol=1e-12, rtol=0, err_msg=f"{path.name} {cam.name}")


def test_a_point_that_never_converges_leaves_the_others_answers_unchanged() -> None:
    cam = load_rig(rigs_dir() / "h36m-s1.json").cameras[0]
    xy = g.pixels_to_normalized(_image_and_margin(cam).astype(np.float64), cam.K)
    wild = np.concatenate([xy, [[40.0, -30.0], [np.nan, 0.0]]])  # far outside the lens model's range; NaN
    ours = g.undistort_normalized(wild, cam.dist)
    np.testing.assert_array_equal(ours[:-2], g.undistort_normalized(xy, cam.dist))
    fixed = g.undistort_normalized(wild, cam.dist, max_iters=20, tol=0.0)  # what 20 fixed steps give
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(fixed))
    np.testing.assert_allclose(ours[:-2], fixed[:-2], atol=1e-13, rtol=0)
    assert np.isnan(ours[-1]).all()


def test_undistort_in_torch_matches_numpy() -> None:
    cam = load_rig(rigs_dir() / "humaneva-s1.json").cameras[1]
    uv = _image_and_margin(cam).astype(np.float64)
    cams = g.CameraArrays(*(np.array(a) for a in (cam.K, cam.dist, cam.R, cam.t))).to_torch(dtype=torch.float64)
    torch.testing.assert_close(g.undistort(torch.tensor(uv), cams), torch.tensor(g.undistort(uv, cam)), atol=1e-13,
                               rtol=0)


def test_triangulate_matches_cv2_triangulate_points_on_noise_free_data(cams: list[Cam], points: np.ndarray) -> None:
    a, b = cams[0], cams[2]
    pix = np.stack([cv_project(points, a), cv_project(points, b)])
    ideal = [cv2.undistortPoints(p[:, None], c.K, c.dist, None, c.K, criteria=CV_CRITERIA)[:, 0]
             for p, c in zip(pix, (a, b), strict=True)]
    Xh = cv2.triangulatePoints(a.K @ np.c_[a.R, a.t], b.K @ np.c_[b.R, b.t], ideal[0].T, ideal[1].T)
    ref = (Xh[:3] / Xh[3]).T
    ours = g.triangulate(pix, g.stack_cameras([a, b]))
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours, points, atol=1e-6, rtol=0)


def test_triangulate_ignores_nan_and_zero_score_views(cams: list[Cam], points: np.ndarray) -> None:
    stacked = g.stack_cameras(cams)
    pix = g.project(points[None], stacked)  # [V, N, 2]
    pix[0, :50] = np.nan  # missing in view 0
    pix[1, 50:100] += 300.0  # garbage in view 1 ...
    scores = np.ones(pix.shape[:-1])
    scores[1, 50:100] = 0.0  # ... that the detector scored 0
    np.testing.assert_allclose(g.triangulate(pix, stacked, scores), points, atol=1e-6, rtol=0)


def test_triangulate_returns_nan_for_joints_seen_in_fewer_than_two_views(cams: list[Cam], points: np.ndarray) -> None:
    stacked = g.stack_cameras(cams)
    pix = g.project(points[None], stacked)
    pix[1:, :10] = np.nan
    out = g.triangulate(pix, stacked)
    assert np.isnan(out[:10]).all()
    assert np.isfinite(out[10:]).all()


def test_triangulate_weights_views_by_score(cams: list[Cam], points: np.ndarray, rng: np.random.Generator) -> None:
    stacked = g.stack_cameras(cams)
    pix = g.project(points[None], stacked)
    noisy = pix.copy()
    noisy[3] += rng.normal(0, 15.0, noisy[3].shape)
    scores = np.ones(pix.shape[:-1])
    scores[3] = 0.05  # the noisy view is known to be unreliable
    err_weighted = np.linalg.norm(g.triangulate(noisy, stacked, scores) - points, axis=-1).mean()
    err_plain = np.linalg.norm(g.triangulate(noisy, stacked) - points, axis=-1).mean()
    assert err_weighted < 0.3 * err_plain


def test_triangulate_robust_survives_one_outlier_view_among_four(
    cams: list[Cam], points: np.ndarray, rng: np.random.Generator
) -> None:
    stacked = g.stack_cameras(cams)
    pix = g.project(points[None], stacked) + rng.normal(0, 1.0, (4, len(points), 2))
    bad_view = rng.integers(0, 4, len(points))  # a different outlier view per point
    offset = rng.normal(0, 1, (len(points), 2))
    offset *= rng.uniform(100, 400, (len(points), 1)) / np.linalg.norm(offset, axis=-1, keepdims=True)
    pix[bad_view, np.arange(len(points))] += offset
    robust = np.linalg.norm(g.triangulate_robust(pix, stacked) - points, axis=-1)
    plain = np.linalg.norm(g.triangulate(pix, stacked) - points, axis=-1)
    assert robust.max() < 0.02  # 1 px noise -> millimetres; the outlier view has no influence
    assert plain.mean() > 5 * robust.mean()


def _robust_reference(pixels: np.ndarray, cams: g.CameraArrays, scores: np.ndarray, inlier_px: float = 20.0
                      ) -> np.ndarray:
    """The per-pair loop `triangulate_robust` was until the batched closed form replaced it: one eigendecomposition
    DLT (`triangulate`) per view pair, the MSAC winner kept by strictly lower cost, two inlier refits."""
    w = np.where(np.isfinite(pixels).all(-1) & (scores > 0), scores, 0.0)
    if pixels.shape[-3] < 4:
        return g.triangulate(pixels, cams, w)
    usable = w > 0
    best_cost = best_X = None
    for i, j in itertools.combinations(range(pixels.shape[-3]), 2):
        pair = np.zeros(pixels.shape[-3])
        pair[[i, j]] = 1.0
        X = g.triangulate(pixels, cams, w * pair[:, None])
        err = g.reprojection_error(X, pixels, cams)
        cost = np.where(usable, np.where(err < inlier_px, err**2, inlier_px**2), 0.0).sum(-2)
        if best_cost is None:
            best_cost, best_X = cost, X
            continue
        better = cost < best_cost
        best_cost, best_X = np.where(better, cost, best_cost), np.where(better[..., None], X, best_X)
    for _ in range(2):
        err = g.reprojection_error(best_X, pixels, cams)
        X_in = g.triangulate(pixels, cams, np.where(usable & (err < inlier_px), w, 0.0))
        best_X = np.where(X_in == X_in, X_in, best_X)
    return np.where(best_X == best_X, best_X, g.triangulate(pixels, cams, w))


def _noisy_views(rig_name: str, rng: np.random.Generator, *, frames: int = 300, joints: int = 3
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, g.CameraArrays]:
    """(truth [N, J, 3], pixels [N, V, J, 2], scores [N, V, J], cameras [N, V, ...]) of a shipped rig: 5 px noise,
    10% of the keypoints 150 px off (outliers), 10% missing (NaN, score 0)."""
    rig = load_rig(rigs_dir() / f"{rig_name}.json")
    X = rig.capture_center() + rng.uniform(-1, 1, (frames, joints, 3)) * [1.0, 1.0, 0.8]
    cams = rig.arrays()
    pix = g.project(X[:, None], cams) + rng.normal(0, 5.0, (frames, len(rig.cameras), joints, 2))
    outlier = rng.random(pix.shape[:-1]) < 0.1
    pix[outlier] += rng.normal(0, 150.0, (int(outlier.sum()), 2))
    missing = rng.random(pix.shape[:-1]) < 0.1
    pix[missing] = np.nan
    scores = np.where(missing, 0.0, rng.uniform(0.3, 1.0, pix.shape[:-1]))
    return X, pix, scores, g.CameraArrays(*(np.broadcast_to(a, (frames, *a.shape)) for a in cams))


@pytest.mark.parametrize("rig_name", ["h36m-s1", "humaneva-s1", "studio-8"])  # 4, 3 and 8 views
def test_batched_robust_triangulation_equals_the_per_pair_reference(rig_name: str, rng: np.random.Generator
                                                                    ) -> None:
    _, pix, scores, cams = _noisy_views(rig_name, rng)
    ours = g.triangulate_robust(pix, cams, scores)
    ref = _robust_reference(pix, cams, scores)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)  # metres: the same choice and refit everywhere


def test_robust_triangulation_of_consistent_views_is_the_plain_dlt(cams: list[Cam], points: np.ndarray,
                                                                   rng: np.random.Generator) -> None:
    for num_views in (2, 3, 4):
        stacked = g.stack_cameras(cams[:num_views])
        pix = g.project(points[None], stacked) + rng.normal(0, 1.0, (num_views, len(points), 2))
        np.testing.assert_allclose(g.triangulate_robust(pix, stacked), g.triangulate(pix, stacked), atol=1e-9,
                                   rtol=0)


def test_triangulate_robust_normalized_reuses_undistorted_points(rng: np.random.Generator) -> None:
    _, pix, scores, cams = _noisy_views("h36m-s1", rng)
    w = np.where(np.isfinite(pix).all(-1), scores, 0.0)
    xy = g.undistort(pix, cams)
    np.testing.assert_array_equal(g.triangulate_robust_normalized(xy, pix, cams, w),
                                  g.triangulate_robust(pix, cams, scores))
    with pytest.raises(ValueError, match="weights"):
        g.triangulate_robust_normalized(xy, pix, cams, w[..., :2])


def test_triangulate_robust_in_torch_matches_numpy(rng: np.random.Generator) -> None:
    _, pix, scores, cams = _noisy_views("studio-8", rng, frames=50)
    cams_t = g.CameraArrays(*(np.array(a) for a in cams)).to_torch(dtype=torch.float64)  # writable copies
    ours = g.triangulate_robust(torch.tensor(pix), cams_t, torch.tensor(scores))
    torch.testing.assert_close(ours, torch.tensor(g.triangulate_robust(pix, cams, scores)), atol=1e-9, rtol=0,
                               equal_nan=True)


def test_triangulate_in_torch_matches_numpy(cams: list[Cam], points: np.ndarray) -> None:
    stacked = g.stack_cameras(cams)
    pix = g.project(points[None], stacked)
    ours = g.triangulate(torch.tensor(pix), stacked.to_torch(dtype=torch.float64))
    torch.testing.assert_close(ours, torch.tensor(points), atol=1e-6, rtol=0)


def test_triangulate_rejects_mismatched_scores(cams: list[Cam], points: np.ndarray) -> None:
    stacked = g.stack_cameras(cams)
    pix = g.project(points[None], stacked)
    with pytest.raises(ValueError, match="scores"):
        g.triangulate(pix, stacked, np.ones((4, 3)))


def test_procrustes_recovers_a_known_similarity(points: np.ndarray) -> None:
    R, _ = cv2.Rodrigues(np.array([0.4, -0.3, 1.1]))
    target = 1.7 * points @ R.T + np.array([0.5, -2.0, 1.0])
    aligned, scale, R_est, t_est = g.procrustes_align(points, target)
    np.testing.assert_allclose(t_est, [0.5, -2.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(aligned, target, atol=1e-9)
    np.testing.assert_allclose(scale, 1.7, atol=1e-9)
    np.testing.assert_allclose(R_est, R, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R_est), 1.0, atol=1e-9)


def test_procrustes_never_returns_a_reflection(points: np.ndarray) -> None:
    mirrored = points * np.array([-1.0, 1.0, 1.0])
    _, _, R, _ = g.procrustes_align(points, mirrored)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)


def test_procrustes_batched_in_torch_matches_numpy(rng: np.random.Generator) -> None:
    pred = rng.normal(size=(5, 17, 3))
    target = pred @ np.diag([1.0, -1.0, -1.0]) * 0.9 + rng.normal(0, 0.01, (5, 17, 3))
    np_out = g.procrustes_align(pred, target)[0]
    t_out = g.procrustes_align(torch.tensor(pred), torch.tensor(target))[0]
    np.testing.assert_allclose(t_out.numpy(), np_out, atol=1e-10)


# ---------------------------------------------------------------------------------------- properties

finite = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(x=finite, y=finite, z=st.floats(0.0, 2.0), num_views=st.integers(2, 8))
def test_property_project_then_triangulate_returns_the_point(x: float, y: float, z: float, num_views: int) -> None:
    cams = g.stack_cameras(ring_cameras(num_views))
    X = np.array([[x, y, z]])
    pix = g.project(X[None], cams)
    np.testing.assert_allclose(g.triangulate(pix, cams), X, atol=1e-6, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    u=st.floats(0, 639), v=st.floats(0, 479),
    k1=st.floats(-0.35, 0.1), k2=st.floats(-0.1, 1.3), p1=st.floats(-0.007, 0.007), p2=st.floats(-0.007, 0.007),
    k3=st.floats(-0.01, 0.01),
)
def test_property_undistort_inverts_distortion(
    u: float, v: float, k1: float, k2: float, p1: float, p2: float, k3: float
) -> None:
    cam = Cam(K=np.array([[700.0, 0, 320], [0, 700, 240], [0, 0, 1]]), dist=np.array([k1, k2, p1, p2, k3]),
              R=np.eye(3), t=np.zeros(3))
    uv = np.array([[u, v]])
    xy = g.undistort(uv, cam)
    np.testing.assert_allclose(g.normalized_to_pixels(g.distort(xy, cam.dist), cam.K), uv, atol=1e-4, rtol=0)


def test_world_to_camera_and_back_is_identity(cams: list[Cam], points: np.ndarray) -> None:
    cam = cams[2]
    Xc = g.world_to_camera(points, cam.R, cam.t)
    np.testing.assert_allclose(Xc, points @ cam.R.T + cam.t, atol=1e-12)
    np.testing.assert_allclose(g.camera_to_world(Xc, cam.R, cam.t), points, atol=1e-12)


def test_pixels_to_normalized_inverts_a_skewed_k() -> None:
    # OpenCV's projectPoints has no skew term; ours honours K[0, 1] so that K^-1 is exact for any pinhole K.
    K = np.array([[1000.0, 2.5, 500.0], [0.0, 990.0, 480.0], [0.0, 0.0, 1.0]])
    xy = np.array([[0.1, -0.2], [0.0, 0.0], [-0.3, 0.25]])
    uv = g.normalized_to_pixels(xy, K)
    np.testing.assert_allclose(uv, (np.c_[xy, np.ones(3)] @ K.T)[:, :2], atol=1e-12)
    np.testing.assert_allclose(g.pixels_to_normalized(uv, K), xy, atol=1e-12)


def test_closest_point_to_rays_finds_where_a_ring_of_cameras_looks(cams: list[Cam]) -> None:
    centers = np.stack([-c.R.T @ c.t for c in cams])
    directions = np.stack([c.R[2] for c in cams])
    np.testing.assert_allclose(g.closest_point_to_rays(centers, directions), [0.0, 0.0, 1.0], atol=1e-9)
    with pytest.raises(ValueError, match="parallel"):
        g.closest_point_to_rays(centers[:2], np.stack([directions[0], directions[0]]))
