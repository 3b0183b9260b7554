"""Model inputs from multi-view observations: undistort + K^-1, weights, and label-free triangulated anchors.

Pure NumPy (vectorised over rows), run once per batch in the data pipeline, not in the training step.
Shape letters: N rows (frames), V views, J joints.

Everything here is computed from the 2D observations and the calibration only: the triangulated root
(`root_world`) and pseudo-3D (`pseudo_world`) are allowed inputs of the 2D-supervised loss (../DESIGN.md).
`joints_3d` is copied only when asked for (evaluation and the 3D-supervised baseline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rigpose import geometry as g

if TYPE_CHECKING:
    import torch

# Agreement of the float32 data path with float64 (tests/unit/test_geometry.py, test_pipeline.py hold it to these):
UNDISTORT_BUDGET_PX = 1e-3  # xy x focal length, over the whole image of the shipped rigs' lenses, corners too
ROOT_BUDGET_M = 1e-5  # root_world / pseudo_world within 5 m of the rig, metres (0.01 mm); 1e-5 relative beyond

BATCH_KEYS_2D = ("kp", "w", "xy", "K", "dist", "R", "t", "view_mask", "root_world", "root_ok", "pseudo_world",
                 "pseudo_ok")


def prepare_arrays(
    keypoints: np.ndarray,
    scores: np.ndarray,
    cameras: g.CameraArrays,
    view_mask: np.ndarray,
    *,
    root_joints: tuple[int, ...],
    joints_3d: np.ndarray | None = None,
    inlier_px: float = 20.0,
    pseudo_3d: bool = True,
) -> dict[str, np.ndarray]:
    """Arrays the training step and the evaluators consume (float32 unless noted).

    keypoints [N, V, J, 2] px (NaN missing), scores [N, V, J], cameras fields [N, V, ...], view_mask [N, V] bool.
    Returns kp [N, V, J, 2] px (0 where missing), w [N, V, J] weight (score where valid, else 0), xy [N, V, J, 2]
    undistorted normalised coordinates (0 where missing), K, dist, R, t, view_mask; pseudo_world [N, J, 3] robust
    triangulation of every joint (0 where impossible) with pseudo_ok [N, J]; root_world [N, 3] (mean of the root
    joints' triangulation) with root_ok [N]; and joints_3d [N, J, 3] if given.

    `pseudo_3d=False` triangulates the root joints only and leaves pseudo_world / pseudo_ok out (the same
    root_world: joints are triangulated independently): ~6x faster, for training without the pseudo-3D term.

    Precision against the same computed in float64 (`UNDISTORT_BUDGET_PX`, `ROOT_BUDGET_M`): the undistortion
    runs in float32, the keypoints' own precision, within 1e-3 px; the triangulation runs in float64 on those
    float32 points (in float32 a DLT of poorly separated views is off by cm), within 0.01 mm for points within 5 m
    of the rig, 1e-5 relative beyond (nearly parallel rays). Each point is undistorted once: the triangulation
    reuses `xy`.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    vm = np.asarray(view_mask, dtype=bool)
    sc = np.asarray(scores, dtype=np.float32)
    finite = np.isfinite(kp[..., 0]) & np.isfinite(kp[..., 1])  # NumPy reduces a size-2 axis slowly
    valid = finite & (sc > 0) & vm[..., None]
    w = np.where(valid, sc, np.float32(0))
    kp0 = np.where(valid[..., None], kp, np.float32(0))  # missing -> (0, 0): a harmless point to undistort
    cams32 = g.CameraArrays(*(np.asarray(a, np.float32) for a in cameras))
    xy = g.undistort(kp0, cams32)  # float32; cameras [N, V, ...] broadcast over the joints
    xy = np.where(valid[..., None], np.nan_to_num(xy, copy=False), np.float32(0))
    cams64 = g.CameraArrays(*(np.asarray(a, np.float64) for a in cameras))
    roots = list(root_joints)
    if pseudo_3d:
        pseudo = _triangulate(xy, kp0, cams64, w, inlier_px=inlier_px)  # [N, J, 3]
        root = pseudo[:, roots].mean(1)
    else:  # robust triangulation is most of the cost: do the root joints only
        root = _triangulate(xy[:, :, roots], kp0[:, :, roots], cams64, w[:, :, roots], inlier_px=inlier_px).mean(1)
    root_ok = np.isfinite(root).all(-1)
    out = {
        "kp": kp0,
        "w": w,
        "xy": xy,
        "K": cams32.K,
        "dist": cams32.dist,
        "R": cams32.R,
        "t": cams32.t,
        "view_mask": vm.astype(np.float32),
        "root_world": np.nan_to_num(root).astype(np.float32),
        "root_ok": root_ok.astype(np.float32),
    }
    if pseudo_3d:
        out["pseudo_world"] = np.nan_to_num(pseudo).astype(np.float32)
        out["pseudo_ok"] = np.isfinite(pseudo).all(-1).astype(np.float32)
    if joints_3d is not None:
        out["joints_3d"] = np.asarray(joints_3d, np.float32)
    return out


def _triangulate(xy: np.ndarray, kp: np.ndarray, cameras: g.CameraArrays, w: np.ndarray, *, inlier_px: float
                 ) -> np.ndarray:
    """`geometry.triangulate_robust_normalized` in float64 of float32 xy [N, V, J, 2], kp [N, V, J, 2] px and
    w [N, V, J] -> [N, J, 3] float64 metres, NaN where fewer than two views see the joint."""
    return g.triangulate_robust_normalized(xy.astype(np.float64), kp.astype(np.float64), cameras,
                                           w.astype(np.float64), inlier_px=inlier_px)


def model_inputs(keypoints: np.ndarray, scores: np.ndarray, cameras: g.CameraArrays, view_mask: np.ndarray, *,
                 root_joints: tuple[int, ...], device: str = "cpu", pseudo_3d: bool = True
                 ) -> dict[str, torch.Tensor]:
    """`prepare_arrays` as float32 tensors on `device`: the lifter's batch from raw 2D (pixels) and cameras.

    Joints seen by fewer than 2 views triangulate to NaN by design, so NumPy's warnings about them are silenced.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        arrays = prepare_arrays(keypoints, scores, cameras, view_mask, root_joints=root_joints, pseudo_3d=pseudo_3d)
    import torch  # here: the data path's read tasks use only `prepare_arrays` (NumPy)

    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
