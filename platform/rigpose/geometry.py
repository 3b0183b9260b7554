"""Camera geometry: OpenCV pinhole + Brown-Conrady projection, undistortion, weighted/robust DLT, Procrustes.

Every function is pure, batched over any leading dimensions, and accepts NumPy arrays or torch tensors (the
result has the input's type, so training can differentiate through `project`). Conventions (../DESIGN.md):

- world -> camera: ``x_cam = R @ X_world + t``; metres.
- pinhole ``K`` (3x3, pixels) and distortion ``dist = [k1, k2, p1, p2, k3]`` with OpenCV's meaning, so
  ``project`` agrees with ``cv2.projectPoints`` and ``undistort`` with ``cv2.undistortPoints``.
- missing 2D = NaN keypoint and/or score 0; triangulation ignores such views instead of dropping them silently.

Shape letters: V views (cameras), J joints, N points; ``...`` any leading batch dimensions.
"""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
else:
    class _Torch:
        """`torch`, imported on first use: NumPy callers (the data path's read tasks, the CLI) never pay its
        import (about 0.7 s in every new Ray worker process); a tensor argument means it is imported already."""

        def __getattr__(self, name: str) -> Any:
            import torch

            return getattr(torch, name)

    torch = _Torch()

Array = Any  # np.ndarray | torch.Tensor; kept loose because both flow through the same code

MAX_EIGEN_STEPS = 12  # Newton steps for the DLT's smallest eigenvalue (`_dlt_solve`); 2-4 on consistent views


class CameraLike(Protocol):
    """Anything with world->camera ``R`` [..., 3, 3], ``t`` [..., 3] (m), ``K`` [..., 3, 3] (px), ``dist`` [..., 5]."""

    K: Array
    dist: Array
    R: Array
    t: Array


class CameraArrays(NamedTuple):
    """Stacked camera parameters; leading dims broadcast against the points' leading dims.

    K [..., 3, 3] pixels; dist [..., 5] = [k1, k2, p1, p2, k3]; R [..., 3, 3]; t [..., 3] metres.
    """

    K: Array
    dist: Array
    R: Array
    t: Array

    def to_torch(self, *, dtype: torch.dtype | None = None, device: Any = None) -> CameraArrays:
        """The same cameras as torch tensors (float32 unless `dtype`)."""
        dtype = torch.float32 if dtype is None else dtype
        return CameraArrays(*(torch.as_tensor(a, dtype=dtype, device=device) for a in self))


def stack_cameras(cameras: Any) -> CameraArrays:
    """Stack a sequence of camera-like objects into `CameraArrays` with a leading V dimension (NumPy float64)."""
    cams = list(cameras)
    if not cams:
        raise ValueError("stack_cameras: need at least one camera")
    return CameraArrays(
        K=np.stack([np.asarray(c.K, dtype=np.float64) for c in cams]),
        dist=np.stack([np.asarray(c.dist, dtype=np.float64) for c in cams]),
        R=np.stack([np.asarray(c.R, dtype=np.float64) for c in cams]),
        t=np.stack([np.asarray(c.t, dtype=np.float64) for c in cams]),
    )


# ---------------------------------------------------------------------------------------------- helpers


def _is_torch(x: Array) -> bool:
    loaded = sys.modules.get("torch")  # a tensor exists only once torch is imported
    return loaded is not None and isinstance(x, loaded.Tensor)


def _like(value: Array, ref: Array) -> Array:
    """`value` converted to the array type, dtype and device of `ref`."""
    if _is_torch(ref):
        return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    return np.asarray(value, dtype=np.result_type(ref, np.float64) if ref.dtype.kind != "f" else ref.dtype)


def _float(x: Array) -> Array:
    if _is_torch(x):
        return x if x.is_floating_point() else x.double()
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _params(camera: CameraLike, ref: Array) -> tuple[Array, Array, Array, Array]:
    return tuple(_like(getattr(camera, k), ref) for k in ("K", "dist", "R", "t"))  # type: ignore[return-value]


def _check_last(name: str, x: Array, size: int) -> None:
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name}: expected shape [..., {size}], got {tuple(x.shape)}")


def _where(cond: Array, a: Array, b: Array) -> Array:
    if _is_torch(cond):
        return torch.where(cond, a, _like(b, a) if not _is_torch(b) else b)
    return np.where(cond, a, b)


# ---------------------------------------------------------------------------------------------- frames


def world_to_camera(points_world: Array, R: Array, t: Array) -> Array:
    """World points [..., N, 3] (m) -> camera frame [..., N, 3] (m); R [..., 3, 3], t [..., 3] broadcast over N."""
    _check_last("points_world", points_world, 3)
    return (R[..., None, :, :] @ points_world[..., :, :, None])[..., 0] + t[..., None, :]


def camera_to_world(points_cam: Array, R: Array, t: Array) -> Array:
    """Camera-frame points [..., N, 3] (m) -> world [..., N, 3] (m); the inverse of `world_to_camera`."""
    _check_last("points_cam", points_cam, 3)
    Rt = R.transpose(-1, -2) if _is_torch(R) else np.swapaxes(R, -1, -2)
    return (Rt[..., None, :, :] @ (points_cam - t[..., None, :])[..., :, :, None])[..., 0]


# ---------------------------------------------------------------------------------------------- distortion


def distort(xy: Array, dist: Array) -> Array:
    """Normalised undistorted coordinates [..., N, 2] -> distorted normalised coordinates [..., N, 2].

    OpenCV's model: r2 = x^2 + y^2, radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3,
    x' = x radial + 2 p1 x y + p2 (r2 + 2 x^2), y' = y radial + p1 (r2 + 2 y^2) + 2 p2 x y.
    `dist` [..., 5] broadcasts over N.
    """
    x, y = xy[..., 0], xy[..., 1]
    k1, k2, p1, p2, k3 = (dist[..., i, None] for i in range(5))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    stack = torch.stack if _is_torch(xy) else np.stack
    return stack([xd, yd], -1)


def undistort_normalized(xy_distorted: Array, dist: Array, *, max_iters: int = 20, tol: float | None = None
                         ) -> Array:
    """Invert `distort`: distorted normalised coordinates [..., N, 2] -> undistorted [..., N, 2] (`dist` [..., 5]
    broadcasts over N). NaN in, NaN out; the result has the input's dtype (float32 is accurate to ~1e-4 px).

    Newton's method on the 2x2 system from the distorted point itself, each point until its step is at most `tol`
    (normalised units; default 64 eps of the dtype: 1.4e-14 in float64, 7.6e-6 in float32; the error left after
    such a step is of the order of its square), at most `max_iters` steps. Converges quadratically for real lenses
    anywhere inside the image: 3-4 steps on the shipped rigs' lenses. When few points are still moving, the rest
    iterate on those alone, so one wild point (far outside the image) does not keep the whole batch iterating.
    """
    _check_last("xy_distorted", xy_distorted, 2)
    xd, yd = xy_distorted[..., 0], xy_distorted[..., 1]
    if not bool(dist.any()):
        return _stack2(xd, yd)
    if tol is None:
        tol = 64 * float(torch.finfo(xd.dtype).eps if _is_torch(xd) else np.finfo(xd.dtype).eps)
    lens = _lens_terms(_like(dist, xd))
    x, y = xd, yd
    for it in range(max_iters):
        dx, dy = _newton_step(x, y, xd, yd, lens)
        x, y = x - dx, y - dy
        moving = (abs(dx) + abs(dy)) > tol  # NaN: False (a NaN point is never waited for)
        num_moving = int(moving.sum())
        if num_moving == 0:
            break
        if 8 * num_moving <= (moving.numel() if _is_torch(moving) else moving.size):
            if it + 1 < max_iters:  # few left: finish them alone, on [M] arrays
                idx = moving.nonzero(as_tuple=True) if _is_torch(moving) else np.nonzero(moving)
                lens_m = tuple(_broadcast(c, x)[idx] for c in lens)
                xm, ym, xdm, ydm = x[idx], y[idx], _broadcast(xd, x)[idx], _broadcast(yd, x)[idx]
                for _ in range(max_iters - it - 1):
                    dx, dy = _newton_step(xm, ym, xdm, ydm, lens_m)
                    xm, ym = xm - dx, ym - dy
                    if not bool(((abs(dx) + abs(dy)) > tol).any()):
                        break
                x, y = _copy(x), _copy(y)
                x[idx], y[idx] = xm, ym
            break
    return _stack2(x, y)


def _lens_terms(dist: Array) -> tuple[Array, ...]:
    """dist [..., 5] -> (k1, k2, k3, p1, p2), each [..., 1] (broadcast over the points)."""
    k1, k2, p1, p2, k3 = (dist[..., i, None] for i in range(5))
    return k1, k2, k3, p1, p2


def _newton_step(x: Array, y: Array, xd: Array, yd: Array, lens: tuple[Array, ...]) -> tuple[Array, Array]:
    """One Newton step (dx, dy), each [...], of distort(x, y) = (xd, yd): `distort` and its Jacobian in one pass."""
    k1, k2, k3, p1, p2 = lens
    x2, y2, xy = x * x, y * y, x * y
    r2 = x2 + y2
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
    ex = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x2) - xd
    ey = y * radial + p1 * (r2 + 2 * y2) + 2 * p2 * xy - yd
    a = radial + 2 * x2 * dradial + 2 * p1 * y + 6 * p2 * x  # d xd / dx
    b = 2 * xy * dradial + 2 * p1 * x + 2 * p2 * y  # d xd / dy = d yd / dx
    d = radial + 2 * y2 * dradial + 6 * p1 * y + 2 * p2 * x  # d yd / dy
    det = a * d - b * b
    return (d * ex - b * ey) / det, (a * ey - b * ex) / det


def _broadcast(a: Array, ref: Array) -> Array:
    return a.expand(ref.shape) if _is_torch(a) else np.broadcast_to(a, ref.shape)


def _copy(a: Array) -> Array:
    return a.clone() if _is_torch(a) else a.copy()


def _stack2(x: Array, y: Array) -> Array:
    return torch.stack([x, y], -1) if _is_torch(x) else np.stack([x, y], -1)


# ---------------------------------------------------------------------------------------------- projection


def project(points_world: Array, camera: CameraLike) -> Array:
    """World points [..., N, 3] (m) -> pixels [..., N, 2] through `camera` (leading dims broadcast).

    Same model as ``cv2.projectPoints`` (pinhole K with skew, dist = [k1, k2, p1, p2, k3]). Points at or behind
    the camera (z <= 0) give NaN rather than a mirrored pixel.
    """
    points_world = _float(points_world)
    K, dist, R, t = _params(camera, points_world)
    X_cam = world_to_camera(points_world, R, t)
    return project_camera(X_cam, K, dist)


def project_camera(points_cam: Array, K: Array, dist: Array) -> Array:
    """Camera-frame points [..., N, 3] (m) -> pixels [..., N, 2]; K [..., 3, 3], dist [..., 5] broadcast over N."""
    _check_last("points_cam", points_cam, 3)
    z = points_cam[..., 2]
    front = z > 0
    # divide by a finite stand-in, then mask: NaN in the forward pass only, never in a gradient (x / NaN would
    # send NaN back to the points even where nothing downstream uses the pixel)
    xy = points_cam[..., :2] / _where(front, z, 1.0)[..., None]
    xy = _where(front[..., None], xy, float("nan"))
    return normalized_to_pixels(distort(xy, dist), K)


def normalized_to_pixels(xy: Array, K: Array) -> Array:
    """Normalised image coordinates [..., N, 2] -> pixels [..., N, 2] with K [..., 3, 3] (skew honoured)."""
    fx, s, cx = K[..., 0, 0, None], K[..., 0, 1, None], K[..., 0, 2, None]
    fy, cy = K[..., 1, 1, None], K[..., 1, 2, None]
    u = fx * xy[..., 0] + s * xy[..., 1] + cx
    v = fy * xy[..., 1] + cy
    return _stack2(u, v)


def pixels_to_normalized(pixels: Array, K: Array) -> Array:
    """Pixels [..., N, 2] -> (still distorted) normalised coordinates [..., N, 2]: the inverse of K."""
    fx, s, cx = K[..., 0, 0, None], K[..., 0, 1, None], K[..., 0, 2, None]
    fy, cy = K[..., 1, 1, None], K[..., 1, 2, None]
    y = (pixels[..., 1] - cy) / fy
    x = (pixels[..., 0] - cx - s * y) / fx
    return _stack2(x, y)


def undistort(pixels: Array, camera: CameraLike, *, max_iters: int = 20, tol: float | None = None) -> Array:
    """Pixels [..., N, 2] -> undistorted normalised image coordinates [..., N, 2] (``K^-1`` applied).

    Equivalent to ``cv2.undistortPoints(pixels, K, dist)`` run to convergence (`undistort_normalized`: `max_iters`,
    `tol`). The lifter's input normalisation. Computed in the pixels' dtype: float32 pixels give float32 results
    within 1e-3 px (x the focal length) of float64 on the shipped rigs' lenses, corners included.
    """
    pixels = _float(pixels)
    _check_last("pixels", pixels, 2)
    K, dist, _, _ = _params(camera, pixels)
    return undistort_normalized(pixels_to_normalized(pixels, K), dist, max_iters=max_iters, tol=tol)


# ---------------------------------------------------------------------------------------------- triangulation


def _view_weights(pixels: Array, scores: Array | None) -> Array:
    """Per-view weights [..., V, J]: score (default 1), 0 where the keypoint is NaN or the score is not positive."""
    finite = pixels[..., 0].isfinite() & pixels[..., 1].isfinite() if _is_torch(pixels) else (
        np.isfinite(pixels[..., 0]) & np.isfinite(pixels[..., 1])
    )
    if scores is None:
        w = finite * 1.0
    else:
        scores = _like(scores, pixels)
        if tuple(scores.shape) != tuple(pixels.shape[:-1]):
            raise ValueError(f"scores: expected shape {tuple(pixels.shape[:-1])}, got {tuple(scores.shape)}")
        s_ok = _where(scores == scores, scores, 0.0)  # NaN scores count as 0
        w = _where(finite & (s_ok > 0), s_ok, 0.0)
    return _like(w, pixels)


def _dlt(xy_VJ2: Array, P_V34: Array, w_VJ: Array) -> Array:
    """Weighted DLT from undistorted normalised coordinates. xy [..., V, J, 2], P [..., V, 3, 4], w [..., V, J].

    Returns [..., J, 3]; NaN where fewer than two views have positive weight.
    """
    torch_mode = _is_torch(xy_VJ2)
    xy = _where(w_VJ[..., None] > 0, xy_VJ2, 0.0)
    P = P_V34[..., :, None, :, :]  # [..., V, 1, 3, 4]
    rows_x = xy[..., 0, None] * P[..., 2, :] - P[..., 0, :]  # [..., V, J, 4]
    rows_y = xy[..., 1, None] * P[..., 2, :] - P[..., 1, :]
    stack = torch.stack if torch_mode else np.stack
    A = stack([rows_x, rows_y], -2)  # [..., V, J, 2, 4]
    # unit rows first, so that a far camera does not outweigh a near one merely by scale; then the score weight
    A = A / (((A * A).sum(-1)[..., None]) ** 0.5 + 1e-12) * w_VJ[..., None, None]
    V = A.shape[-4]
    # [..., V, J, 2, 4] -> [..., J, 2V, 4]
    A = A.movedim(-4, -3) if torch_mode else np.moveaxis(A, -4, -3)
    A = A.reshape(*A.shape[:-3], 2 * V, 4)
    # The null vector of A is the eigenvector of A^T A with the smallest eigenvalue.
    if torch_mode:
        _, vecs = torch.linalg.eigh(A.transpose(-1, -2) @ A)
    else:
        _, vecs = np.linalg.eigh(np.swapaxes(A, -1, -2) @ A)
    Xh = vecs[..., :, 0]
    if torch_mode:
        X = Xh[..., :3] / Xh[..., 3:4]
    else:
        with np.errstate(divide="ignore", invalid="ignore"):  # unusable joints: NaN below, not a warning
            X = Xh[..., :3] / Xh[..., 3:4]
    num_views = (w_VJ > 0).sum(-2)  # [..., J]
    return _where(num_views[..., None] >= 2, X, float("nan"))


def _projection_matrices(R: Array, t: Array) -> Array:
    """[R | t] for normalised coordinates: R [..., V, 3, 3], t [..., V, 3] -> [..., V, 3, 4]."""
    if _is_torch(R):
        return torch.cat([R, t[..., None]], -1)
    return np.concatenate([R, t[..., None]], -1)


def triangulate(pixels: Array, cameras: CameraLike, scores: Array | None = None) -> Array:
    """Weighted DLT: pixels [..., V, J, 2] seen by `cameras` (fields [..., V, ...]) -> world points [..., J, 3] (m).

    Each view's two equations are weighted by its score; views whose keypoint is NaN or whose score is 0 are
    ignored. A joint seen by fewer than two views comes back NaN. Solved on undistorted normalised coordinates,
    so lens distortion is handled exactly. Use float64 inputs for sub-micrometre accuracy.
    """
    pixels = _float(pixels)
    _check_last("pixels", pixels, 2)
    if pixels.ndim < 3:
        raise ValueError(f"pixels: expected shape [..., V, J, 2], got {tuple(pixels.shape)}")
    K, dist, R, t = _params(cameras, pixels)
    w = _view_weights(pixels, scores)
    xy = undistort_normalized(pixels_to_normalized(pixels, K), dist)
    return _dlt(xy, _projection_matrices(R, t), w)


def triangulate_normalized(xy: Array, R: Array, t: Array, weights: Array) -> Array:
    """Weighted DLT from undistorted normalised coordinates xy [..., V, J, 2] of cameras R [..., V, 3, 3],
    t [..., V, 3] with weights [..., V, J] (0 = not seen) -> world points [..., J, 3] metres; NaN where fewer than
    two views have positive weight. `triangulate` without the undistortion (for callers that hold xy already)."""
    return _dlt(xy, _projection_matrices(R, t), weights)


def reprojection_error(points_world: Array, pixels: Array, cameras: CameraLike) -> Array:
    """Pixel distance [..., V, J] between `points_world` [..., J, 3] projected into each view and `pixels`."""
    pts = points_world[..., None, :, :]
    K, dist, R, t = _params(cameras, _float(pixels))
    proj = project_camera(world_to_camera(pts, R, t), K, dist)
    d = proj - pixels
    return (d[..., 0] ** 2 + d[..., 1] ** 2) ** 0.5


def triangulate_robust(
    pixels: Array,
    cameras: CameraLike,
    scores: Array | None = None,
    *,
    inlier_px: float = 20.0,
) -> Array:
    """Outlier-robust triangulation: pixels [..., V, J, 2] -> [..., J, 3] (m). NumPy or torch (no gradient use).

    Exhaustive RANSAC over view pairs: every pair of usable views proposes a point; the proposal with the lowest
    truncated squared reprojection error over all usable views (MSAC, truncated at `inlier_px`) wins, and a
    weighted DLT over the views within `inlier_px` of it, refitted twice, gives the answer. With 4+ views this
    survives any one grossly wrong view (a left/right swap, a detection of another person). With 2-3 views it
    reduces to the weighted DLT. `triangulate_robust_normalized` is the same for callers that hold the
    undistorted points already.
    """
    pixels = _float(pixels)
    _check_last("pixels", pixels, 2)
    if pixels.ndim < 3:
        raise ValueError(f"pixels: expected shape [..., V, J, 2], got {tuple(pixels.shape)}")
    K, dist, R, t = _params(cameras, pixels)
    w = _view_weights(pixels, scores)
    xy = undistort_normalized(pixels_to_normalized(pixels, K), dist)
    return triangulate_robust_normalized(xy, pixels, CameraArrays(K, dist, R, t), w, inlier_px=inlier_px)


def triangulate_robust_normalized(xy: Array, pixels: Array, cameras: CameraLike, weights: Array, *,
                                  inlier_px: float = 20.0) -> Array:
    """`triangulate_robust` from points already undistorted: xy [..., V, J, 2] undistorted normalised coordinates
    (`undistort` of `pixels`), pixels [..., V, J, 2] (the reprojection errors are measured in pixels, through the
    lens), weights [..., V, J] (0 = not seen: that view's xy and pixels are ignored and may be NaN) ->
    [..., J, 3] world metres, NaN where fewer than two views have positive weight. Computed in xy's dtype.

    Every pair proposal, inlier set and refit is a closed-form solve of the same score-weighted DLT as
    `triangulate` (`_dlt_terms`, `_dlt_solve`), batched over all view pairs at once: no eigendecomposition.
    """
    if inlier_px <= 0:
        raise ValueError(f"inlier_px must be positive, got {inlier_px}")
    _check_last("xy", xy, 2)
    if xy.ndim < 3 or tuple(pixels.shape) != tuple(xy.shape) or tuple(weights.shape) != tuple(xy.shape[:-1]):
        raise ValueError(f"triangulate_robust_normalized: xy {tuple(xy.shape)} must be [..., V, J, 2], with pixels "
                         f"{tuple(pixels.shape)} the same and weights {tuple(weights.shape)} [..., V, J]")
    K, dist, R, t = _params(cameras, xy)
    w = _like(weights, xy)
    usable = w > 0  # [..., V, J]
    terms = _dlt_terms(xy, R, t, w)  # [..., V, J, 10]
    V = xy.shape[-3]
    if V < 4:
        return _dlt_solve(terms.sum(-3), usable.sum(-2))
    first, second = (list(v) for v in zip(*itertools.combinations(range(V), 2), strict=True))
    pair_X = _dlt_solve(terms[..., first, :, :] + terms[..., second, :, :],  # [..., P, J, 3]
                        usable[..., first, :] * 1 + usable[..., second, :] * 1)
    inl2 = float(inlier_px) ** 2
    seen = (K, dist, R, t, pixels)
    # MSAC: truncated squared error, so a compromise point that is "near" every view loses to an exact fit of the
    # consistent views that ignores the outlier entirely. NaN errors (behind a camera) count as outliers.
    err2 = _sq_reprojection(pair_X, *seen, pair_axis=True)  # [..., P, V, J]; NaN for a pair lacking a view
    cost = _where(usable[..., None, :, :], _where(err2 < inl2, err2, inl2), 0.0).sum(-2)  # [..., P, J]
    # the first of equal costs wins, as in a loop over the pairs keeping strictly better ones: when no pair has
    # an inlier, pair (0, 1) (its point, or if it lacks a view, NaN and the plain DLT below)
    best = cost.argmin(-2)[..., None, :, None]  # [..., 1, J, 1]
    if _is_torch(pair_X):
        X = torch.take_along_dim(pair_X, best, dim=-3)[..., 0, :, :]
    else:
        X = np.take_along_axis(pair_X, best, axis=-3)[..., 0, :, :]
    for _ in range(2):  # refit on the inliers of the current estimate
        inliers = usable & (_sq_reprojection(X, *seen) < inl2)  # [..., V, J]
        X_in = _dlt_solve((terms * inliers[..., None]).sum(-3), inliers.sum(-2))
        X = _where(X_in == X_in, X_in, X)  # fewer than two inliers: keep the estimate
    # nothing consistent at all (e.g. extreme noise): fall back to the plain weighted DLT
    lost = X != X
    return _where(lost, _dlt_solve(terms.sum(-3), usable.sum(-2)), X) if bool(lost.any()) else X


def _all_finite(X: Array) -> Array:
    """[..., 3] -> [...]: every coordinate finite."""
    ok = X.isfinite() if _is_torch(X) else np.isfinite(X)
    return ok[..., 0] & ok[..., 1] & ok[..., 2]  # NumPy reduces a short last axis slowly


def _dlt_terms(xy: Array, R: Array, t: Array, w: Array) -> Array:
    """The normal equations of each view's two DLT rows, per view and joint: [..., V, J, 10].

    Rows as in `_dlt` (x P3 - P1 and y P3 - P2 for P = [R | t], each scaled to unit length, then by the score w),
    split as [a | c] (a the 3 coefficients of X, c the constant): the 6 entries of sum a a^T (00 01 02 11 12 22),
    the 3 of sum a c, and sum c^2. Sums over views are the normal equations of that set of views. xy [..., V, J, 2],
    R [..., V, 3, 3], t [..., V, 3], w [..., V, J] (0: the view adds nothing, its xy may be NaN).
    """
    seen = w > 0
    x = _where(seen, xy[..., 0], 0.0)
    y = _where(seen, xy[..., 1], 0.0)
    w = _where(seen, w, 0.0)
    Rv, tv = R[..., None, :, :], t[..., None, :]  # [..., V, 1, 3, 3]: broadcast over J
    rows = []
    for img, k in ((x, 0), (y, 1)):
        r = [img * Rv[..., 2, i] - Rv[..., k, i] for i in range(3)] + [img * tv[..., 2] - tv[..., k]]
        scale = w / (r[0] * r[0] + r[1] * r[1] + r[2] * r[2] + r[3] * r[3]) ** 0.5
        rows.append([ri * scale for ri in r])
    (a0, a1, a2, c), (b0, b1, b2, d) = rows
    stack = torch.stack if _is_torch(xy) else np.stack
    return stack([a0 * a0 + b0 * b0, a0 * a1 + b0 * b1, a0 * a2 + b0 * b2, a1 * a1 + b1 * b1, a1 * a2 + b1 * b2,
                  a2 * a2 + b2 * b2, a0 * c + b0 * d, a1 * c + b1 * d, a2 * c + b2 * d, c * c + d * d], -1)


def _dlt_solve(terms: Array, num_views: Array) -> Array:
    """The weighted DLT's point from summed `_dlt_terms` [..., 10] -> [..., 3] (m); NaN where num_views [...] < 2
    or the views do not fix a point (parallel rays).

    The DLT's answer is the eigenvector (X, 1) of the normal matrix N = [[M, q], [q^T, s]] (4x4) with the smallest
    eigenvalue lam; then (M - lam I) X = -q. Closed form instead of an eigendecomposition: lam by Newton's method
    on N's characteristic polynomial from 0 (N is positive semi-definite, so its polynomial has real roots only
    and Newton's steps from the left of the smallest rise monotonically to it; 2-4 steps for consistent views,
    whose lam is near 0), then one 3x3 solve. Agrees with `_dlt` (numpy.linalg.eigh) to ~1e-11 m.
    """
    m00, m01, m02, m11, m12, m22, q0, q1, q2, s = (terms[..., i] for i in range(10))
    # det(N - lam I) = lam^4 - c1 lam^3 + c2 lam^2 - c3 lam + c4: sums of N's principal minors
    M_minors = (m00 * m11 - m01 * m01, m00 * m22 - m02 * m02, m11 * m22 - m12 * m12)  # 2x2, of M
    c00, c01, c02 = m11 * m22 - m12 * m12, m02 * m12 - m01 * m22, m01 * m12 - m02 * m11  # cofactors of M
    c11, c12, c22 = m00 * m22 - m02 * m02, m01 * m02 - m00 * m12, m00 * m11 - m01 * m01
    det_M = m00 * c00 + m01 * c01 + m02 * c02
    adj_q = (c00 * q0 + c01 * q1 + c02 * q2, c01 * q0 + c11 * q1 + c12 * q2, c02 * q0 + c12 * q1 + c22 * q2)
    q_adj_q = q0 * adj_q[0] + q1 * adj_q[1] + q2 * adj_q[2]  # q^T adj(M) q
    c1 = m00 + m11 + m22 + s
    c2 = M_minors[0] + M_minors[1] + M_minors[2] + (m00 + m11 + m22) * s - (q0 * q0 + q1 * q1 + q2 * q2)
    # 3x3 principal minors: det M, and the three with s: s * (2x2 minor of M) - (its q-bordered part)
    c3 = det_M + s * (M_minors[0] + M_minors[1] + M_minors[2]) - (
        q0 * q0 * (m11 + m22) + q1 * q1 * (m00 + m22) + q2 * q2 * (m00 + m11)
        - 2 * (q0 * q1 * m01 + q0 * q2 * m02 + q1 * q2 * m12))
    c4 = s * det_M - q_adj_q  # det N (Schur complement on s)
    lam = c4 * 0.0
    tol = 64 * float(torch.finfo(terms.dtype).eps if _is_torch(terms) else np.finfo(terms.dtype).eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(MAX_EIGEN_STEPS):
            p = (((lam - c1) * lam + c2) * lam - c3) * lam + c4
            dp = ((4 * lam - 3 * c1) * lam + 2 * c2) * lam - c3
            step = p / dp
            step = _where(step == step, step, 0.0)  # singular N (< 2 views): left NaN below
            lam = lam - step
            if not bool((abs(step) > tol * abs(c1)).any()):
                break
        X = _solve_sym3(m00 - lam, m01, m02, m11 - lam, m12, m22 - lam, q0, q1, q2)
    out = (torch.stack if _is_torch(terms) else np.stack)(X, -1)
    return _where(((num_views >= 2) & _all_finite(out))[..., None], out, float("nan"))


def _solve_sym3(m00: Array, m01: Array, m02: Array, m11: Array, m12: Array, m22: Array,
                q0: Array, q1: Array, q2: Array) -> tuple[Array, Array, Array]:
    """X = -M^-1 q for the symmetric 3x3 M (its 6 entries) by cofactors; each argument and result [...].
    Singular M (fewer than two views, parallel rays) gives inf or NaN."""
    c00, c01, c02 = m11 * m22 - m12 * m12, m02 * m12 - m01 * m22, m01 * m12 - m02 * m11
    c11, c12, c22 = m00 * m22 - m02 * m02, m01 * m02 - m00 * m12, m00 * m11 - m01 * m01
    det = m00 * c00 + m01 * c01 + m02 * c02
    neg_inv = -1 / det
    return ((c00 * q0 + c01 * q1 + c02 * q2) * neg_inv, (c01 * q0 + c11 * q1 + c12 * q2) * neg_inv,
            (c02 * q0 + c12 * q1 + c22 * q2) * neg_inv)


def _sq_reprojection(X: Array, K: Array, dist: Array, R: Array, t: Array, pixels: Array, *,
                     pair_axis: bool = False) -> Array:
    """Squared pixel distance between world points X and `pixels` [..., V, J, 2] of cameras [..., V, ...]:
    X [..., J, 3] -> [..., V, J], or with `pair_axis` X [..., P, J, 3] -> [..., P, V, J]. NaN behind a camera.
    `reprojection_error` squared, without the matrix products."""
    X = X[..., None, :, :] if not pair_axis else X[..., :, None, :, :]  # [..., (P,) 1, J, 3]
    sel = (lambda a: a[..., None, :, None]) if pair_axis else (lambda a: a[..., :, None])  # camera [..., V] ->
    pix = pixels[..., None, :, :, :] if pair_axis else pixels
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # wild points: inf/NaN, outliers
        Xc = [sel(R[..., k, 0]) * X[..., 0] + sel(R[..., k, 1]) * X[..., 1] + sel(R[..., k, 2]) * X[..., 2]
              + sel(t[..., k]) for k in range(3)]
        inv_z = _where(Xc[2] > 0, 1 / Xc[2], float("nan"))
        x, y = Xc[0] * inv_z, Xc[1] * inv_z
        k1, k2, p1, p2, k3 = (sel(dist[..., i]) for i in range(5))
        x2, y2, xy = x * x, y * y, x * y
        r2 = x2 + y2
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x2)
        yd = y * radial + p1 * (r2 + 2 * y2) + 2 * p2 * xy
        du = sel(K[..., 0, 0]) * xd + sel(K[..., 0, 1]) * yd + sel(K[..., 0, 2]) - pix[..., 0]
        dv = sel(K[..., 1, 1]) * yd + sel(K[..., 1, 2]) - pix[..., 1]
        return du * du + dv * dv


# ---------------------------------------------------------------------------------------------- alignment


def procrustes_align(pred: Array, target: Array) -> tuple[Array, Array, Array, Array]:
    """Similarity alignment of `pred` [..., J, 3] onto `target` [..., J, 3] (least squares, Umeyama).

    Returns ``(aligned, scale [...], R [..., 3, 3], t [..., 3])`` with ``aligned = scale * pred @ R.T + t``;
    R is a proper rotation (det +1). NaN joints in either input are ignored in the fit.
    """
    _check_last("pred", pred, 3)
    _check_last("target", target, 3)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"procrustes_align: shapes differ, pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    torch_mode = _is_torch(pred)
    pred, target = _float(pred), _like(_float(target), _float(pred))
    if torch_mode:
        ok = (pred.isfinite().all(-1) & target.isfinite().all(-1))[..., None]
    else:
        ok = (np.isfinite(pred).all(-1) & np.isfinite(target).all(-1))[..., None]
    m = ok * 1.0
    p = _where(ok, pred, 0.0)
    q = _where(ok, target, 0.0)
    n = m.sum(-2)  # [..., 1]
    mu_p = p.sum(-2) / n
    mu_q = q.sum(-2) / n
    pc = (p - mu_p[..., None, :]) * m
    qc = (q - mu_q[..., None, :]) * m
    if torch_mode:
        cov = qc.transpose(-1, -2) @ pc / n[..., None]
        U, S, Vh = torch.linalg.svd(cov)
        d = torch.sign(torch.linalg.det(U @ Vh))
        D = torch.ones_like(S)
        D = torch.cat([D[..., :2], d[..., None]], -1)
        R = U @ torch.diag_embed(D) @ Vh
        var_p = (pc * pc).sum((-1, -2)) / n[..., 0]
    else:
        cov = np.swapaxes(qc, -1, -2) @ pc / n[..., None]
        U, S, Vh = np.linalg.svd(cov)
        d = np.sign(np.linalg.det(U @ Vh))
        D = np.concatenate([np.ones_like(S[..., :2]), d[..., None]], -1)
        R = U @ (D[..., :, None] * Vh)
        var_p = (pc * pc).sum((-1, -2)) / n[..., 0]
    scale = (S * D).sum(-1) / var_p
    t = mu_q - scale[..., None] * (R @ mu_p[..., :, None])[..., 0]
    Rt = R.transpose(-1, -2) if torch_mode else np.swapaxes(R, -1, -2)
    aligned = scale[..., None, None] * (pred @ Rt) + t[..., None, :]
    return aligned, scale, R, t


def closest_point_to_rays(origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Least-squares point nearest to V rays: origins [V, 3], directions [V, 3] (any length) -> [3].

    With camera centres and viewing directions this is the point the rig looks at: its capture centre.
    """
    origins = np.asarray(origins, dtype=np.float64)
    d = np.asarray(directions, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # projectors orthogonal to each ray
    A = P.sum(0)
    if np.linalg.cond(A) > 1e12:
        raise ValueError("closest_point_to_rays: rays are (nearly) parallel; no unique closest point")
    return np.linalg.solve(A, (P @ origins[:, :, None]).sum(0)[:, 0])


def look_at(center: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World->camera (R [3, 3], t [3]) of a level camera at `center` aimed at `target` (m; world z up, image y down)."""
    center = np.asarray(center, dtype=np.float64)
    forward = (np.asarray(target, dtype=np.float64) - center)
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: the viewing direction is vertical; 'level' is undefined")
    right /= np.linalg.norm(right)
    R = np.stack([right, np.cross(forward, right), forward])
    return R, -R @ center
