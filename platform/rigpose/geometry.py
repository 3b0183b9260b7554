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
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

Array = Any  # np.ndarray | torch.Tensor; kept loose because both flow through the same code


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

    def to_torch(self, *, dtype: torch.dtype = torch.float32, device: Any = None) -> CameraArrays:
        """The same cameras as torch tensors."""
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
    return isinstance(x, torch.Tensor)


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


def _distort_jacobian(x: Array, y: Array, dist: Array) -> tuple[Array, Array, Array, Array]:
    """d(x', y') / d(x, y) of `distort`, each [..., N]."""
    k1, k2, p1, p2, k3 = (dist[..., i, None] for i in range(5))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial_dr2 = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    dxx = radial + 2 * x * x * dradial_dr2 + 2 * p1 * y + 6 * p2 * x
    dxy = 2 * x * y * dradial_dr2 + 2 * p1 * x + 2 * p2 * y
    dyx = 2 * x * y * dradial_dr2 + 2 * p1 * x + 2 * p2 * y
    dyy = radial + 2 * y * y * dradial_dr2 + 6 * p1 * y + 2 * p2 * x
    return dxx, dxy, dyx, dyy


def undistort_normalized(xy_distorted: Array, dist: Array, *, num_iters: int = 20) -> Array:
    """Invert `distort`: distorted normalised coordinates [..., N, 2] -> undistorted [..., N, 2].

    Newton's method on the 2x2 system from the distorted point itself; converges in a few steps for real lenses
    anywhere inside the image (quadratically near the solution). NaN in, NaN out.
    """
    xd, yd = xy_distorted[..., 0], xy_distorted[..., 1]
    x, y = xd, yd
    for _ in range(num_iters):
        fxy = distort(_stack2(x, y), dist)
        ex, ey = fxy[..., 0] - xd, fxy[..., 1] - yd
        a, b, c, d = _distort_jacobian(x, y, dist)
        det = a * d - b * c
        x = x - (d * ex - b * ey) / det
        y = y - (-c * ex + a * ey) / det
    return _stack2(x, y)


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


def undistort(pixels: Array, camera: CameraLike, *, num_iters: int = 20) -> Array:
    """Pixels [..., N, 2] -> undistorted normalised image coordinates [..., N, 2] (``K^-1`` applied).

    Equivalent to ``cv2.undistortPoints(pixels, K, dist)`` run to convergence. The lifter's input normalisation.
    """
    pixels = _float(pixels)
    _check_last("pixels", pixels, 2)
    K, dist, _, _ = _params(camera, pixels)
    return undistort_normalized(pixels_to_normalized(pixels, K), dist, num_iters=num_iters)


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
    reduces to the weighted DLT.
    """
    if inlier_px <= 0:
        raise ValueError(f"inlier_px must be positive, got {inlier_px}")
    pixels = _float(pixels)
    _check_last("pixels", pixels, 2)
    K, dist, R, t = _params(cameras, pixels)
    w = _view_weights(pixels, scores)
    V = pixels.shape[-3]
    xy = undistort_normalized(pixels_to_normalized(pixels, K), dist)
    P = _projection_matrices(R, t)
    if V < 4:
        return _dlt(xy, P, w)
    cams = CameraArrays(K, dist, R, t)
    usable = w > 0
    best_cost = best_X = None
    for i, j in itertools.combinations(range(V), 2):
        pair = _like(np.zeros(V), w)
        pair[i] = 1.0
        pair[j] = 1.0
        X = _dlt(xy, P, w * pair[:, None])  # [..., J, 3]
        err = reprojection_error(X, pixels, cams)  # [..., V, J]
        # MSAC: truncated squared error, so a compromise point that is "near" every view loses to an exact fit
        # of the consistent views that ignores the outlier entirely
        trunc = _where(err < inlier_px, err * err, inlier_px**2)
        cost = _where(usable, trunc, 0.0).sum(-2)
        cost = _where(cost == cost, cost, float("inf"))  # pairs with a missing view propose nothing
        if best_cost is None:
            best_cost, best_X = cost, X
            continue
        better = cost < best_cost
        best_cost = _where(better, cost, best_cost)
        best_X = _where(better[..., None], X, best_X)
    for _ in range(2):  # refit on the inliers of the current estimate
        err = reprojection_error(best_X, pixels, cams)
        w_in = _where(usable & (err < inlier_px), w, 0.0)
        X_in = _dlt(xy, P, w_in)
        best_X = _where(X_in == X_in, X_in, best_X)
    # nothing consistent at all (e.g. extreme noise): fall back to the plain weighted DLT
    return _where(best_X == best_X, best_X, _dlt(xy, P, w))


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
