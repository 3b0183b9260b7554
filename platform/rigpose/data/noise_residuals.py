"""Leave-one-view-out residuals of multi-view 2D and the detector noise they reveal, per camera and joint (no 3D).

`measure_noise(frames, skeleton)` is the estimator behind rigpose.data.noise_profile (the file format, the
`rigpose datasets noise-profile` command and recipes' `noise: {profile: FILE}`).

Method, for every row, held-out view s and joint j at once (units: px, per image coordinate):

1. Leave one view out: the joint is triangulated robustly from every view but s (`triangulate_robust_normalized`:
   score weights; MSAC over view pairs with 4+ views) and projected into s. The residual r (observed minus
   projected) is s's own detector error plus the projected error of the fit from the others; none of s's error is
   fitted away, as in an all-view fit (which shrinks it by the view's leverage, about 3 / (2V) of the variance).
   With 4+ views the others exclude the views that the all-view robust fit rejects, so an outlier among three
   other views is not taken for one in s.
2. Used entries: a valid keypoint (finite, score > 0) whose point has two or more other views within `inlier_px`
   and a fit that adds at most `MAX_GAIN` x the detector's variance (step 4, with equal noise in every view):
   nearly parallel rays (two opposite cameras left) place the point too loosely to check s, and outside the first
   order. With 3 cameras the two others cannot outvote an outlier among them: it shows as one in s.
3. `pixel_std_loo`: 1.4826 x the median absolute deviation of both residual components (each about its median),
   per camera and joint: the residual's robust std, before any correction.
4. Triangulation correction: to first order the weighted DLT is a least-squares fit of the other views'
   normalised coordinates (each view's two rows scaled as the DLT scales them; its pixel noise enters times the
   point's depth over the focal length), so the projected fit error in s has the 2x2 covariance
   sum_v G[s, v] sigma_v^2, G from each row's geometry and weights. `pixel_std` (sigma per camera and joint) is
   solved for so that every residual, whitened by its own covariance sigma_s^2 I + sum_v G[s, v] sigma_v^2,
   has a robust std of 1: a fixed-point iteration over all cameras at once (`_solve_noise`). Left out of G: lens
   distortion (a few percent of a correction that is itself 20-40% of the variance) and the link between a
   detector's score and its error (scores weight the fit; where low scores mark large errors the fit is better
   than modelled and sigma slightly low). Measured on synthetic 2D with a known std per camera and joint, 4
   cameras: within ~10% per camera and joint (2,500 rows), where the uncorrected residual is ~30% high.
5. Swaps: view s's limb (a left chain and its mirror, `detector.limb_pairs`) is swapped when two or more of its
   (joint, mirror) pairs are used, one of those joints is an outlier (step 6) and exchanging left and right more
   than halves the pairs' summed squared residual. Swapped limbs stay out of steps 3, 4 and 6. A swap whose sides
   project close together (a side view) goes unseen; the same test on the unswapped limbs with their sides
   exchanged gives the share that would be seen, and `swap_rate` (per camera and limb) = swaps seen / (limbs
   checked x that share).
6. Outliers: a residual whose whitened length (step 4) passes `outlier_k` (a Gaussian one does so with probability
   exp(-k^2 / 2): 0.03% at 4). Outliers nearer than that go uncounted (moved 20-100 px under 5-10 px noise: 5-25%
   of them); `outlier_px` is the 5-95% range of the counted ones' residual lengths.
7. Missing: of the joints whose point from the other views projects inside view s's image, in views with any
   valid joint, the share reported missing (`missing_rate`); of the views where half the joints or more project
   inside, the share with no valid joint at all (`missing_view_rate`). Joints outside the image are not counted:
   a synthetic build loses those by itself.

Shape letters: N rows, S held-out views (= V), V views, J joints, K the two pixel coordinates, C cameras, L limbs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from rigpose import geometry as g
from rigpose.data.schema import Frames
from rigpose.data.synth.detector import limb_pairs
from rigpose.skeleton import Skeleton

MAD_TO_STD = 1.4826  # a Gaussian's std over its median absolute deviation
FLOOR_PX = 0.01  # px: a residual std floor (float32 keypoints of exact projections carry ~1e-4 px)
MIN_RESIDUALS = 10  # fewer used residuals for a camera and joint: no estimate (NaN)
ELEMENT_BUDGET = 2_000_000  # entries of the largest per-chunk array, rows x views^2 x view pairs x joints
MAX_GAIN = 2.0  # entries whose fit from the other views adds more than 2x their noise's variance are not used
SWAP_GAIN = 0.5  # a limb is swapped when exchanging its sides leaves less than this share of its squared residual

__all__ = ["CameraNoise", "Measurement", "camera_offsets", "measure_noise"]


@dataclass(frozen=True)
class CameraNoise:
    """One camera's (or all cameras' pooled) measured noise; NaN where not measured. [J] arrays in skeleton order."""

    pixel_std: np.ndarray  # [J] px per coordinate, corrected for the fit from the other views (step 4)
    pixel_std_loo: np.ndarray  # [J] px, the residual's robust std before that correction (step 3)
    outlier_rate: np.ndarray  # [J] share of used residuals (step 6)
    missing_rate: np.ndarray  # [J] share of joints inside the image reported missing (step 7)
    residuals: np.ndarray  # [J] int, residuals used
    swap_rate: float  # per limb (step 5)
    missing_view_rate: float  # per view (step 7)
    outlier_px: tuple[float, float] | None  # 5-95% range of outlier residual lengths (px); None: under 20 outliers


@dataclass(frozen=True)
class Measurement:
    """What `measure_noise` found: per camera name (in order of first appearance) and pooled, and the rows used."""

    cameras: dict[str, CameraNoise]
    overall: CameraNoise
    rows: int


def measure_noise(frames: Frames | Iterable[Frames], skeleton: Skeleton, *, outlier_k: float = 4.0,
                  inlier_px: float = 20.0) -> Measurement:
    """The detector noise of `frames` (one block or an iterable of them; rows of rigs with fewer than 3 cameras
    are left out) with the skeleton `skeleton`, as the module docstring describes. No 3D labels are read.

    keypoints [N, V, J, 2] px (NaN missing), scores [N, V, J]; cameras per row. `outlier_k`: outlier threshold,
    in stds of the residual; `inlier_px`: the robust triangulation's inlier threshold (px). ValueError when no
    row has a usable residual (every rig under 3 cameras, or no joint seen in 3 views).
    """
    if outlier_k <= 0 or inlier_px <= 0:
        raise ValueError(f"outlier_k and inlier_px must be positive, got {outlier_k} and {inlier_px}")
    blocks = [frames] if isinstance(frames, Frames) else frames
    limbs = limb_pairs(skeleton)
    rows = [0]

    def chunks() -> Iterator[_Block]:
        for block in blocks:
            if block.num_joints != skeleton.num_joints:
                raise ValueError(f"frames have {block.num_joints} joints, skeleton {skeleton.name!r} has "
                                 f"{skeleton.num_joints}")
            for part in _rig_chunks(block):
                rows[0] += len(part)
                yield _leave_one_out(part, limbs, inlier_px=inlier_px)

    cams = _collect(chunks())
    if not cams or all(not np.isfinite(c.residual).any() for c in cams.values()):
        raise ValueError("no usable residuals: a noise profile needs rows of a rig with at least 3 cameras whose "
                         "joints are seen in 3 views or more")
    per_camera, overall = _summaries(cams, limbs, outlier_k=outlier_k)
    return Measurement(cameras=per_camera, overall=overall, rows=rows[0])


def camera_offsets(frames: Frames | Iterable[Frames], *, inlier_px: float = 20.0) -> dict[str, float]:
    """How far each camera's 2D sits, steadily, from where the other cameras place the joints: {camera name: px}.

    Per camera and joint, the median of its leave-one-view-out residuals (step 1 of the module docstring: the
    joint triangulated from the other views, projected into this one), per image coordinate; the figure is the
    median over joints of that median's length. Detector noise averages out of a median (synthetic 2D with 5-15 px
    noise and 2-6% outliers: under 3 px on the shipped rigs), a calibration that does not fit the images does not:
    a camera turned by 1 degree and moved 2 cm shows 4-35 px, by 2 degrees and 3 cm up to 80 px, on those rigs.
    Rows of rigs with fewer than 3 cameras are left out; a camera with under `MIN_RESIDUALS` residuals for every
    joint is absent. No 3D labels are read.
    """
    if inlier_px <= 0:
        raise ValueError(f"inlier_px must be positive, got {inlier_px}")
    blocks = [frames] if isinstance(frames, Frames) else frames
    cams = _collect(_leave_one_out(part, [], inlier_px=inlier_px) for block in blocks for part in _rig_chunks(block))
    out = {}
    for name, cam in cams.items():
        enough = np.isfinite(cam.residual[..., 0]).sum(0) >= MIN_RESIDUALS  # [J]
        if not enough.any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # joints never used: NaN, left out by `enough`
            median_J2 = np.nanmedian(cam.residual[:, enough], axis=0)
        out[name] = float(np.median(np.sqrt((median_J2 ** 2).sum(-1))))
    return out


# ---------------------------------------------------------------------------------------------- per chunk


@dataclass
class _Block:
    """One chunk of one rig: leave-one-view-out residuals and what the aggregation needs of them."""

    cameras: list[str]  # [V] names
    residual: np.ndarray  # [N, V, J, 2] px, float32; NaN where not used
    gain: np.ndarray  # [N, S, V, J, 3] G, float32 (0 where not used): covariance per unit noise in v (xx, xy, yy)
    mirrored: np.ndarray  # [N, V, J, 2] residual of the mirror joint's keypoint (both used), else NaN
    expected: np.ndarray  # [V, J] joints projecting inside the image, in views with a valid joint
    missing: np.ndarray  # [V, J] of those, reported missing
    views_expected: np.ndarray  # [V] views with half the joints or more projecting inside
    views_missing: np.ndarray  # [V] of those, with no valid joint


def _triangulation_gain(xy_NVJ2: np.ndarray, Xc_NSVJ3: np.ndarray, omega_NSVJ: np.ndarray,
                        cams: g.CameraArrays, ok_NSJ: np.ndarray) -> np.ndarray:
    """G [N, S, V, J, 3] (px^2 per px^2): the covariance (xx, xy, yy) that unit pixel noise in view v adds to the
    point triangulated without s, projected into s; first order of the weighted DLT with weights omega [N, S, V, J].

    xy: undistorted normalised observations [N, V, J, 2] (any value where omega is 0); Xc: the points in every
    camera [N, S, V, J, 3] (m); ok [N, S, J]: entries to compute (others 0).
    """
    K, _, R, t = cams  # [N, V, ...]
    x_NVJK = np.where(np.isfinite(xy_NVJ2), xy_NVJ2, 0.0)  # missing views: weight 0, any finite value
    # DLT rows of view v, coordinate k: a = x_k R[2] - R[k] (of X), c = x_k t[2] - t[k], scaled by omega / |(a, c)|
    a_NVJK3 = x_NVJK[..., None] * R[:, :, None, None, 2, :] - R[:, :, None, :2, :]
    c_NVJK = x_NVJK * t[:, :, None, None, 2] - t[:, :, None, :2]
    scale_NSVJK = omega_NSVJ[..., None] / np.sqrt((a_NVJK3 ** 2).sum(-1) + c_NVJK ** 2)[:, None]
    A_NSVJK3 = a_NVJK3[:, None] * scale_NSVJK[..., None]
    # a row's noise per px of pixel noise: the point's depth (d row / d x_k) over the focal length (d x_k / d px)
    f_NVK = np.stack([K[:, :, 0, 0], K[:, :, 1, 1]], -1)
    noise_NSVJK = scale_NSVJK * Xc_NSVJ3[..., 2, None] / f_NVK[:, None, :, None, :]
    M_NSJ33 = np.einsum("nsvjki,nsvjkl->nsjil", A_NSVJK3, A_NSVJK3)
    # unused entries: a harmless solve; a tiny ridge keeps parallel rays (singular M) from failing the batch
    M_NSJ33 = np.where(ok_NSJ[..., None, None], M_NSJ33, np.eye(3))
    M_NSJ33 = M_NSJ33 + 1e-12 * np.trace(M_NSJ33, axis1=-2, axis2=-1)[..., None, None] * np.eye(3)
    # pixel Jacobian of the projection into s (pinhole): f_k (R_s[k] - x_k R_s[2]) / z
    s = np.arange(Xc_NSVJ3.shape[1])
    Xs_NSJ3 = Xc_NSVJ3[:, s, s]
    z_NSJ = np.where(ok_NSJ, Xs_NSJ3[..., 2], 1.0)
    x_NSJK = Xs_NSJ3[..., :2] / z_NSJ[..., None]
    Rs_NS33 = R[:, s]
    jac_NSJK3 = (Rs_NS33[:, :, None, :2, :] - x_NSJK[..., None] * Rs_NS33[:, :, None, None, 2, :]) * (
        f_NVK[:, :, None, :, None] / z_NSJ[..., None, None])
    jac_NSJK3 = np.where(ok_NSJ[..., None, None], jac_NSJK3, 0.0)
    u_NSJ3K = np.linalg.solve(M_NSJ33, np.swapaxes(jac_NSJK3, -1, -2))  # M^-1 J^T
    dot_NSVJKL = np.einsum("nsvjki,nsjil->nsvjkl", A_NSVJK3, u_NSJ3K)
    with np.errstate(invalid="ignore"):
        G_NSVJ3 = np.stack([np.einsum("nsvjk,nsvjk->nsvj", noise_NSVJK ** 2, dot_NSVJKL[..., a] * dot_NSVJKL[..., b])
                            for a, b in ((0, 0), (0, 1), (1, 1))], -1)
    return np.where((ok_NSJ[:, :, None, :] & (omega_NSVJ > 0))[..., None], G_NSVJ3, 0.0)


def _inside(pix_NVJ2: np.ndarray, image_size_NV2: np.ndarray) -> np.ndarray:
    """[N, V, J]: finite and within (0, width) x (0, height)."""
    size = image_size_NV2[:, :, None, :].astype(np.float64)
    with np.errstate(invalid="ignore"):
        ok = (pix_NVJ2 > 0) & (pix_NVJ2 < size)
    return ok[..., 0] & ok[..., 1]


def _held_out_fits(kp_NVJ2: np.ndarray, xy_NVJ2: np.ndarray, w_NVJ: np.ndarray, cams: g.CameraArrays, *,
                   inlier_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every joint triangulated without each view s: (points in every camera Xc [N, S, V, J, 3] m, their pixels
    [N, S, V, J, 2], the fits' weights omega [N, S, V, J], usable [N, S, J]: finite with 2+ inlier views)."""
    N, V, J, _ = kp_NVJ2.shape
    K, dist, R, t = cams
    if V >= 4:  # views the all-view robust fit rejects do not help place the point for another view
        X_NJ3 = g.triangulate_robust_normalized(xy_NVJ2, kp_NVJ2, cams, w_NVJ, inlier_px=inlier_px)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            d_NVJ2 = kp_NVJ2 - g.project_camera(np.einsum("nvik,njk->nvji", R, X_NJ3) + t[:, :, None], K, dist)
            w_NVJ = np.where(d_NVJ2[..., 0] ** 2 + d_NVJ2[..., 1] ** 2 < inlier_px ** 2, w_NVJ, 0.0)
    w_NSVJ = w_NVJ[:, None] * ~np.eye(V, dtype=bool)[None, :, :, None]
    shape = (N, V, V, J, 2)
    X_NSJ3 = g.triangulate_robust_normalized(
        np.broadcast_to(xy_NVJ2[:, None], shape), np.broadcast_to(kp_NVJ2[:, None], shape),
        g.CameraArrays(K[:, None], dist[:, None], R[:, None], t[:, None]), w_NSVJ, inlier_px=inlier_px)
    Xc_NSVJ3 = np.einsum("nvik,nsjk->nsvji", R, X_NSJ3) + t[:, None, :, None, :]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        pix_NSVJ2 = g.project_camera(Xc_NSVJ3, K[:, None], dist[:, None])
        d_NSVJ2 = kp_NVJ2[:, None] - pix_NSVJ2
        inl_NSVJ = (w_NSVJ > 0) & (d_NSVJ2[..., 0] ** 2 + d_NSVJ2[..., 1] ** 2 < inlier_px ** 2)
    usable_NSJ = np.isfinite(X_NSJ3).all(-1) & (inl_NSVJ.sum(2) >= 2)
    # the fit's weights: its refit keeps the inliers when the rig has 4+ views (MSAC), every view otherwise
    return Xc_NSVJ3, pix_NSVJ2, w_NSVJ * inl_NSVJ if V >= 4 else w_NSVJ, usable_NSJ


def _leave_one_out(frames: Frames, limbs: list[tuple[np.ndarray, np.ndarray]], *, inlier_px: float) -> _Block:
    """The `_Block` of one rig's rows without padding views (V >= 3)."""
    kp = frames.keypoints.astype(np.float64)
    N, V, J, _ = kp.shape
    valid_NVJ = frames.valid()
    w_NVJ = np.where(valid_NVJ, frames.scores, 0.0).astype(np.float64)
    cams = g.CameraArrays(*(np.asarray(a, np.float64) for a in frames.cameras))
    with np.errstate(invalid="ignore"):
        xy = g.undistort_normalized(g.pixels_to_normalized(kp, cams.K), cams.dist)
    Xc_NSVJ3, pix_NSVJ2, omega_NSVJ, point_NSJ = _held_out_fits(kp, xy, w_NVJ, cams, inlier_px=inlier_px)
    gain_NSVJ = _triangulation_gain(xy, Xc_NSVJ3, omega_NSVJ, cams, point_NSJ)
    # a weak fit cannot check view s (and leaves the first order)
    point_NSJ &= 0.5 * (gain_NSVJ[..., 0] + gain_NSVJ[..., 2]).sum(2) <= MAX_GAIN
    used_NVJ = valid_NVJ & point_NSJ
    s = np.arange(V)
    pix_NVJ2 = pix_NSVJ2[:, s, s]
    res_NVJ2 = kp - pix_NVJ2
    mirrored_NVJ2 = np.full((N, V, J, 2), np.nan, np.float32)
    for left, right in limbs:
        joints, mirror = np.r_[left, right], np.r_[right, left]
        pair_NVJ = used_NVJ[:, :, joints] & used_NVJ[:, :, mirror]
        mirrored_NVJ2[:, :, joints] = np.where(pair_NVJ[..., None], kp[:, :, mirror] - pix_NVJ2[:, :, joints], np.nan)
    inside_NVJ = point_NSJ & _inside(pix_NVJ2, frames.image_size)
    present_NV = valid_NVJ.any(-1)
    expected_NVJ = inside_NVJ & present_NV[..., None]
    views_NV = inside_NVJ.sum(-1) >= J / 2
    return _Block(
        cameras=[str(c) for c in frames.camera_names[0]],
        residual=np.where(used_NVJ[..., None], res_NVJ2, np.nan).astype(np.float32),
        gain=np.where(used_NVJ[:, :, None, :, None], gain_NSVJ, 0.0).astype(np.float32), mirrored=mirrored_NVJ2,
        expected=expected_NVJ.sum(0), missing=(expected_NVJ & ~valid_NVJ).sum(0),
        views_expected=views_NV.sum(0), views_missing=(views_NV & ~present_NV).sum(0))


def _rig_chunks(frames: Frames) -> Iterator[Frames]:
    """`frames` split by rig (padding views dropped) and into chunks that keep `_leave_one_out` within budget."""
    rigs, inverse = np.unique(frames.rig_id.astype(str), return_inverse=True)
    for r in range(len(rigs)):
        rows = np.flatnonzero(inverse == r)
        views = np.flatnonzero(frames.view_mask[rows[0]])
        V, J = len(views), frames.num_joints
        if V < 3:
            continue
        part = frames.take(rows)
        part = Frames(rig_id=part.rig_id, sequence=part.sequence, subject=part.subject, frame=part.frame,
                      keypoints=part.keypoints[:, views], scores=part.scores[:, views],
                      cameras=g.CameraArrays(*(a[:, views] for a in part.cameras)),
                      image_size=part.image_size[:, views], camera_names=part.camera_names[:, views],
                      split=part.split, view_mask=part.view_mask[:, views])
        size = max(1, ELEMENT_BUDGET // (V * V * max(V * (V - 1) // 2, 1) * J))
        for i in range(0, len(part), size):
            yield part.take(slice(i, i + size))


# ---------------------------------------------------------------------------------------------- aggregation


@dataclass
class _Camera:
    """Everything collected for one camera name over the blocks (M entries: rows in which it is a view), rows
    grouped by the cameras they were seen with."""

    residual: np.ndarray  # [M, J, 2] px, NaN where not used
    gain: list[tuple[np.ndarray, np.ndarray]]  # per group: (camera indices [V], G [n, J, V, 3]); n's sum to M
    mirrored: np.ndarray  # [M, J, 2]
    expected: np.ndarray  # [J]
    missing: np.ndarray  # [J]
    views_expected: int
    views_missing: int


def _collect(blocks: Iterable[_Block]) -> dict[str, _Camera]:
    """Camera name -> its `_Camera`, in order of first appearance."""
    parts: dict[str, list[tuple[_Block, int]]] = {}
    for b in blocks:
        for v, name in enumerate(b.cameras):
            parts.setdefault(name, []).append((b, v))
    index = {name: i for i, name in enumerate(parts)}
    cams = {}
    for name, seen in parts.items():
        groups: dict[tuple[int, ...], list[tuple[_Block, int]]] = {}
        for b, v in seen:  # a rig's rows together, so that its G stays [n, J, V, 3], not [n, J, C, 3]
            groups.setdefault(tuple(index[c] for c in b.cameras), []).append((b, v))
        seen = [bv for group in groups.values() for bv in group]
        cams[name] = _Camera(
            residual=np.concatenate([b.residual[:, v] for b, v in seen]),
            gain=[(np.array(key), np.concatenate([np.swapaxes(b.gain[:, v], 1, 2) for b, v in group]))
                  for key, group in groups.items()],
            mirrored=np.concatenate([b.mirrored[:, v] for b, v in seen]),
            expected=sum(b.expected[v] for b, v in seen), missing=sum(b.missing[v] for b, v in seen),
            views_expected=int(sum(b.views_expected[v] for b, v in seen)),
            views_missing=int(sum(b.views_missing[v] for b, v in seen)))
    return cams


def _robust_std(r_MJ2: np.ndarray) -> np.ndarray:
    """[J] 1.4826 x the median absolute deviation of both components (each about its median); NaN when fewer
    than `MIN_RESIDUALS` finite residuals."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN joints: NaN, as documented
        dev = np.abs(r_MJ2 - np.nanmedian(r_MJ2, axis=0))
        std = MAD_TO_STD * np.nanmedian(np.swapaxes(dev, 0, 1).reshape(r_MJ2.shape[1], -1), axis=1)
    return np.where(np.isfinite(r_MJ2[..., 0]).sum(0) >= MIN_RESIDUALS, std, np.nan)


def _covariance(cam: _Camera, var_CJ: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xx, xy, yy) [M, J] px^2: the covariance each of camera i's residuals should have with detector noise
    variances var [C, J]: its own, isotropic, plus the projected triangulation error (step 4), plus `FLOOR_PX`^2."""
    var = np.nan_to_num(var_CJ)
    D_MJ3 = np.concatenate([np.einsum("njvq,vj->njq", G, var[idx]) for idx, G in cam.gain])
    own_J = np.nan_to_num(var_CJ[i]) + FLOOR_PX ** 2
    return own_J + D_MJ3[..., 0], D_MJ3[..., 1], own_J + D_MJ3[..., 2]


def _whiten(r_MJ2: np.ndarray, cov: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """r [M, J, 2] -> L^-1 r with L L^T the 2x2 covariance `cov` (Cholesky): N(0, I) where r ~ N(0, cov)."""
    xx, xy, yy = cov
    u0 = r_MJ2[..., 0] / np.sqrt(xx)
    u1 = (r_MJ2[..., 1] - xy / xx * r_MJ2[..., 0]) / np.sqrt(np.maximum(yy - xy * xy / xx, FLOOR_PX ** 2))
    return np.stack([u0, u1], -1)


def _centred(r_MJ2: np.ndarray) -> np.ndarray:
    """Residuals minus their median per joint and coordinate (a detector's steady offset is not noise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN joints stay NaN
        return r_MJ2 - np.nan_to_num(np.nanmedian(r_MJ2, axis=0))


def _solve_noise(cams: list[_Camera], residuals: list[np.ndarray], *, max_iters: int = 50,
                 rtol: float = 1e-4) -> np.ndarray:
    """sigma^2 [C, J] (px^2) such that every camera's residuals, whitened by the covariance each should have
    (`_covariance`), have a robust std of 1 (module docstring, step 4).

    Fixed-point iteration from the uncorrected robust variance: with m that robust std and d the median
    triangulation share (per coordinate), sigma^2 <- m^2 (sigma^2 + d) - d (exact when d is the same for every
    entry and isotropic); every camera at once, until no sigma^2 moves by more than `rtol` of the largest.
    Unmeasured cameras and joints: NaN.
    """
    var_CJ = np.stack([_robust_std(r) for r in residuals]) ** 2
    known_CJ = np.isfinite(var_CJ)
    var_CJ = np.where(known_CJ, var_CJ, 0.0)
    centred = [_centred(r) for r in residuals]
    for _ in range(max_iters):
        new_CJ = var_CJ.copy()
        for i, (cam, r) in enumerate(zip(cams, centred, strict=True)):
            xx, xy, yy = _covariance(cam, var_CJ, i)
            u = np.abs(_whiten(r, (xx, xy, yy)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                m_J = MAD_TO_STD * np.nanmedian(np.swapaxes(u, 0, 1).reshape(u.shape[1], -1), axis=1)
                d_J = np.nanmedian(np.where(np.isfinite(r[..., 0]), (xx + yy) / 2, np.nan), axis=0) - var_CJ[i]
            new_CJ[i] = np.where(known_CJ[i], np.maximum(m_J ** 2 * (var_CJ[i] + d_J) - d_J, 0.0), 0.0)
        done = np.abs(new_CJ - var_CJ).max() <= rtol * max(float(new_CJ.max()), 1e-12)
        var_CJ = new_CJ
        if done:
            break
    return np.where(known_CJ, var_CJ, np.nan)


def _distance2(r_MJ2: np.ndarray, cov: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """[M, J] squared Mahalanobis length of each residual; NaN where missing."""
    u = _whiten(r_MJ2, cov)
    return u[..., 0] ** 2 + u[..., 1] ** 2


@dataclass
class _Swaps:
    residual: np.ndarray  # [M, J, 2] with the joints of swapped limbs NaN
    seen: int  # limbs seen swapped
    checked: float  # limbs checked x the share of swaps that would be seen


def _swaps(cam: _Camera, cov: tuple[np.ndarray, np.ndarray, np.ndarray], limbs: list[tuple[np.ndarray, np.ndarray]],
           *, outlier_k: float) -> _Swaps:
    """Swapped limbs and the swap rate's denominator: module docstring, step 5."""
    r_MJ2 = cam.residual
    len2, mir2 = (a[..., 0] ** 2 + a[..., 1] ** 2 for a in (r_MJ2, cam.mirrored))
    offset = r_MJ2 - _centred(r_MJ2)  # the median, per joint and coordinate
    with np.errstate(invalid="ignore"):
        far, far_mirrored = (_distance2(a - offset, cov) > outlier_k ** 2 for a in (r_MJ2, cam.mirrored))
    out, seen, checked, visible = r_MJ2.copy(), 0, 0, 0
    for left, right in limbs:
        joints = np.r_[left, right]
        pair = np.isfinite(mir2[:, joints])  # joint and mirror both used (the same for both of a pair)
        r, m = np.where(pair, len2[:, joints], 0.0), np.where(pair, mir2[:, joints], 0.0)
        whole = pair.sum(-1) >= 4  # two pairs or more
        with np.errstate(invalid="ignore"):
            swapped = whole & (far[:, joints] & pair).any(-1) & (m.sum(-1) < SWAP_GAIN * r.sum(-1))
            would_see = whole & ~swapped & (far_mirrored[:, joints] & pair).any(-1) & (
                r.sum(-1) < SWAP_GAIN * m.sum(-1))
        out[np.ix_(swapped, joints)] = np.nan
        seen, checked, visible = seen + int(swapped.sum()), checked + int(whole.sum()), visible + int(would_see.sum())
    share = visible / max(checked - seen, 1)
    return _Swaps(residual=out, seen=seen, checked=checked * share)


def _rate(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.asarray(den) > 0, np.asarray(num, np.float64) / np.asarray(den), np.nan)


def _outlier_range(lengths: np.ndarray) -> tuple[float, float] | None:
    if len(lengths) < 20:
        return None
    lo, hi = np.quantile(lengths, [0.05, 0.95])
    return float(lo), float(hi)


def _summaries(cams: dict[str, _Camera], limbs: list[tuple[np.ndarray, np.ndarray]], *,
               outlier_k: float) -> tuple[dict[str, CameraNoise], CameraNoise]:
    """Per camera and pooled `CameraNoise` from what `_collect` gathered (module docstring, steps 3-7)."""
    names, cam_list = list(cams), list(cams.values())
    raw = [c.residual for c in cam_list]
    var = _solve_noise(cam_list, raw)  # swaps are outliers to it; solved again without them below
    swaps = [_swaps(c, _covariance(c, var, i), limbs, outlier_k=outlier_k) for i, c in enumerate(cam_list)]
    var = _solve_noise(cam_list, [sw.residual for sw in swaps])
    parts = []
    for i, (c, sw) in enumerate(zip(cam_list, swaps, strict=True)):
        r = sw.residual
        with np.errstate(invalid="ignore"):
            length = np.sqrt(r[..., 0] ** 2 + r[..., 1] ** 2)
            out = _distance2(_centred(r), _covariance(c, var, i)) > outlier_k ** 2
        parts.append({"n": np.isfinite(length).sum(0), "out": out.sum(0), "lengths": length[out],
                      "swaps": sw.seen, "checked": sw.checked,
                      "std_loo": _robust_std(r)})
    per_camera = {name: _camera_noise(np.sqrt(var[i]), p, c.missing, c.expected, c.views_missing, c.views_expected)
                  for i, (name, c, p) in enumerate(zip(names, cam_list, parts, strict=True))}
    n_CJ = np.stack([p["n"] for p in parts]).astype(np.float64)

    def pooled_std(var_CJ: np.ndarray) -> np.ndarray:  # residual-weighted mean variance
        ok = np.isfinite(var_CJ)
        return np.sqrt(_rate(np.where(ok, var_CJ * n_CJ, 0).sum(0), np.where(ok, n_CJ, 0).sum(0)))

    pooled = {"n": n_CJ.sum(0), "out": sum(p["out"] for p in parts),
              "lengths": np.concatenate([p["lengths"] for p in parts]),
              "swaps": sum(p["swaps"] for p in parts), "checked": sum(p["checked"] for p in parts),
              "std_loo": pooled_std(np.stack([p["std_loo"] for p in parts]) ** 2)}
    overall = _camera_noise(pooled_std(var), pooled, sum(c.missing for c in cam_list),
                           sum(c.expected for c in cam_list), sum(c.views_missing for c in cam_list),
                           sum(c.views_expected for c in cam_list))
    return per_camera, overall


def _camera_noise(std_J: np.ndarray, p: dict[str, Any], missing_J: np.ndarray, expected_J: np.ndarray,
                  views_missing: int, views_expected: int) -> CameraNoise:
    return CameraNoise(pixel_std=std_J, pixel_std_loo=p["std_loo"], outlier_rate=_rate(p["out"], p["n"]),
                       missing_rate=_rate(missing_J, expected_J), residuals=np.asarray(p["n"], np.int64),
                       swap_rate=float(_rate(p["swaps"], p["checked"])),
                       missing_view_rate=float(_rate(views_missing, views_expected)),
                       outlier_px=_outlier_range(p["lengths"]))
