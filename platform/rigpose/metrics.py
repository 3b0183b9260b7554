"""Pose metrics as small pure NumPy functions: MPJPE, PA-MPJPE, N-MPJPE, PCK, held-out-view reprojection error.

Units: 3D inputs in metres, 3D errors reported in millimetres, PCK as a fraction in [0, 1], reprojection errors in
pixels. Every 3D metric returns one value per pose (shape [...]) and ignores joints that are NaN in either input;
a pose with no usable joint gives NaN (callers average with `nanmean` or count finite values).
Shape letters: B frames, V views (S source, T target), J joints.

The label-free metric (`heldout_view_errors`) needs no 3D labels: lift from view s, place the lift at the root
triangulated from the *other* views' 2D (never s's own), project into those other views and compare with their
2D. Unlike the training loss it never lets view s's 2D decide where its own lift sits. Each error counts at most
`HELDOUT_MAX_PX`, so that one wild root cannot set the mean. `heldout_view_px` is the one definition of that
figure: training validation (`val/reprojection_px`), `rigpose evaluate`'s single-view `heldout_px`, the champion
gate and the registered version's tags all report `finite_mean` of it.

`evaluate(...)` (the whole-dataset evaluator) lives in `rigpose.inference.evaluate`; it is re-exported here.
"""

from __future__ import annotations

import numpy as np

from rigpose import geometry as g

MM_PER_M = 1000.0
#: a held-out-view error beyond this counts as this, pixels. Past the image the lens polynomial no longer models the
#: lens and grows as r^5: one root triangulated 4 m off by a 2D outlier (two views left on a 3-camera rig) gave a
#: 2e8 px joint that set a 200-row mean on its own and flipped the retrain gate. Capped, such a joint still counts
#: (a lift cannot gain by landing off the image) and weighs the same for every model on the same rows.
HELDOUT_MAX_PX = 1000.0


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.ndim < 2 or pred.shape[-1] != 3:
        raise ValueError(f"pred: expected shape [..., J, 3], got {pred.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"gt: expected shape {pred.shape} (same as pred), got {gt.shape}")
    return pred, gt


def _mean_joint_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pose mean Euclidean distance [...] (same units), NaN joints ignored, NaN for an empty pose."""
    d = np.linalg.norm(pred - gt, axis=-1)  # [..., J]
    ok = np.isfinite(d)
    n = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, d, 0.0).sum(-1) / n, np.nan)


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mean per-joint position error, mm [...]: pred, gt [..., J, 3] metres, compared as given (no alignment)."""
    pred, gt = _check_pair(pred, gt)
    return MM_PER_M * _mean_joint_error(pred, gt)


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """MPJPE after a per-pose similarity (rotation, translation, scale) Procrustes alignment of pred onto gt, mm."""
    pred, gt = _check_pair(pred, gt)
    ok = np.isfinite(pred).all(-1) & np.isfinite(gt).all(-1)  # [..., J]
    fit = ok.sum(-1) >= 3  # a similarity needs three points; fewer gives NaN rather than a degenerate fit
    aligned = np.full_like(pred, np.nan)
    if fit.any():  # only fittable poses reach the SVD (it refuses NaN input)
        mask = ok[fit][..., None]
        aligned[fit], *_ = g.procrustes_align(np.where(mask, pred[fit], np.nan), np.where(mask, gt[fit], np.nan))
    return MM_PER_M * _mean_joint_error(aligned, gt)


def n_mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """MPJPE after a per-pose scale-only alignment (Rhodin et al. CVPR'18), mm [...].

    s = <pred, gt> / <pred, pred> over the usable joints (the least-squares scale); pred and gt are compared as
    given, so pass root-relative poses for the usual root-relative N-MPJPE.
    """
    pred, gt = _check_pair(pred, gt)
    ok = (np.isfinite(pred).all(-1) & np.isfinite(gt).all(-1))[..., None]
    p = np.where(ok, pred, 0.0)
    q = np.where(ok, gt, 0.0)
    num = (p * q).sum((-1, -2))
    den = (p * p).sum((-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(den > 0, num / den, np.nan)
    return MM_PER_M * _mean_joint_error(s[..., None, None] * pred, gt)


def pck(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.150) -> np.ndarray:
    """Fraction [...] of a pose's usable joints within `threshold` metres of the truth (PCK@150mm by default)."""
    if not threshold > 0:
        raise ValueError(f"threshold must be a positive distance in metres, got {threshold}")
    pred, gt = _check_pair(pred, gt)
    d = np.linalg.norm(pred - gt, axis=-1)
    ok = np.isfinite(d)
    n = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (ok & (d <= threshold)).sum(-1) / n, np.nan)


def pose_metrics(pred: np.ndarray, gt: np.ndarray, *, threshold: float = 0.150) -> dict[str, np.ndarray]:
    """The four 3D metrics per pose [...]: mpjpe_mm, pa_mpjpe_mm, n_mpjpe_mm, pck150 (inputs as given, metres)."""
    return {"mpjpe_mm": mpjpe(pred, gt), "pa_mpjpe_mm": pa_mpjpe(pred, gt), "n_mpjpe_mm": n_mpjpe(pred, gt),
            "pck150": pck(pred, gt, threshold)}


def root_relative(X: np.ndarray, root_joints: tuple[int, ...]) -> np.ndarray:
    """X [..., J, 3] minus the mean of its `root_joints` (the skeleton's root)."""
    X = np.asarray(X, dtype=np.float64)
    return X - X[..., list(root_joints), :].mean(-2, keepdims=True)


# ---------------------------------------------------------------------------------------------- label-free


def leave_one_out_roots(kp_BVJ2: np.ndarray, w_BVJ: np.ndarray, cams: g.CameraArrays,
                        root_joints: tuple[int, ...]) -> np.ndarray:
    """Root [B, S, 3] world metres triangulated (weighted DLT) from every view except s; NaN where < 2 views remain.

    kp [B, V, J, 2] px, w [B, V, J] (0 = missing), cameras fields [B, V, ...].
    """
    kp = np.asarray(kp_BVJ2, np.float64)[:, :, list(root_joints)]
    w = np.asarray(w_BVJ, np.float64)[:, :, list(root_joints)]
    V = kp.shape[1]
    keep = 1.0 - np.eye(V)  # [S, V]: view v is used when holding out s
    w_BSVJ = w[:, None] * keep[None, :, :, None]
    kp_BSVJ2 = np.broadcast_to(kp[:, None], (kp.shape[0], V, *kp.shape[1:]))
    sub = g.CameraArrays(*(np.asarray(a, np.float64)[:, None] for a in cams))
    with np.errstate(invalid="ignore", divide="ignore"):  # too few views -> NaN, by design
        X = g.triangulate(kp_BSVJ2, sub, w_BSVJ)  # [B, S, Jr, 3]
    return X.mean(-2)


def heldout_view_errors(rel_cam_BSJ3: np.ndarray, root_world_BS3: np.ndarray, kp_BVJ2: np.ndarray,
                        w_BVJ: np.ndarray, cams: g.CameraArrays) -> np.ndarray:
    """Pixel errors [B, S, T, J] of each source view's lift reprojected into every other view, at most
    `HELDOUT_MAX_PX`; NaN where undefined.

    rel_cam [B, S=V, J, 3]: view s's root-relative lift in s's camera frame (metres); root_world [B, S, 3]: where
    to place it (the root triangulated without view s, see `leave_one_out_roots`). Entries are NaN for t == s,
    unobserved target keypoints (w == 0), unknown roots and points behind the target camera.
    """
    rel = np.asarray(rel_cam_BSJ3, np.float64)
    R = np.asarray(cams.R, np.float64)
    world = np.einsum("bsji,bsik->bsjk", rel, R) + np.asarray(root_world_BS3, np.float64)[:, :, None]  # R^T rel
    # every source's world pose in every target camera: [B, S, T, J, 3]
    X = np.einsum("btik,bsjk->bstji", R, world) + np.asarray(cams.t, np.float64)[:, None, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        pix = g.project_camera(X, np.asarray(cams.K, np.float64)[:, None], np.asarray(cams.dist, np.float64)[:, None])
    err = np.minimum(np.linalg.norm(pix - np.asarray(kp_BVJ2, np.float64)[:, None], axis=-1), HELDOUT_MAX_PX)
    V = rel.shape[1]
    ok = (np.asarray(w_BVJ)[:, None] > 0) & (X[..., 2] > 0) & ~np.eye(V, dtype=bool)[None, :, :, None]
    return np.where(ok, err, np.nan)


def reprojection_errors(X_world_BJ3: np.ndarray, kp_BJ2: np.ndarray, w_BJ: np.ndarray,
                        cam: g.CameraArrays) -> np.ndarray:
    """Pixel errors [B, J] of world points [B, J, 3] projected into one camera (fields [B, ...]) vs its 2D [B, J, 2];
    NaN where the 2D is missing (w == 0), the point is NaN or behind the camera."""
    X = np.asarray(X_world_BJ3, np.float64)
    R, t = np.asarray(cam.R, np.float64), np.asarray(cam.t, np.float64)
    Xc = g.world_to_camera(X, R, t)
    with np.errstate(invalid="ignore", divide="ignore"):
        pix = g.project_camera(Xc, np.asarray(cam.K, np.float64), np.asarray(cam.dist, np.float64))
    err = np.linalg.norm(pix - np.asarray(kp_BJ2, np.float64), axis=-1)
    return np.where((np.asarray(w_BJ) > 0) & (Xc[..., 2] > 0), err, np.nan)


def heldout_view_px(rel_cam_BSJ3: np.ndarray, kp_BVJ2: np.ndarray, w_BVJ: np.ndarray, cams: g.CameraArrays,
                    root_joints: tuple[int, ...]) -> np.ndarray:
    """The held-out-view reprojection error, pixels [B, S, T, J]: NaN where undefined (see `heldout_view_errors`).

    rel_cam [B, S=V, J, 3]: every view's root-relative lift in its own camera frame, metres, NaN for views that
    were not lifted (no 2D, padding); each is placed at the root triangulated from the other views
    (`leave_one_out_roots`) and projected into them. The reported figure is `finite_mean` of this array: every
    observed (frame, source, target, joint) counts once, whatever its detector score.
    """
    root_BS3 = leave_one_out_roots(kp_BVJ2, w_BVJ, cams, root_joints)
    return heldout_view_errors(rel_cam_BSJ3, root_BS3, kp_BVJ2, w_BVJ, cams)


def finite_sum_count(values: np.ndarray) -> tuple[float, int]:
    """(sum, count) of the finite entries of `values`: what streaming and all-reduced means add up."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    return float(v[ok].sum()), int(ok.sum())


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries of `values`; NaN when there are none."""
    s, n = finite_sum_count(values)
    return s / n if n else float("nan")
