"""Metric single-view lift from a known floor: the scale along the camera rays that stands the lifted body on it.

Pure PyTorch (no Ray, MLflow or storage). Shape letters: B frames (batch rows), V views, J joints, F foot joints,
N flattened rows, S segments (sequence x view).

Why: one view cannot tell a body s times bigger at depth Z from a standard body at depth Z / s, so the lifter
predicts a standard-size body and the true camera-frame pose is ``s * X_cam_pred`` (every joint scaled along its own
ray, self-view reprojection unchanged). A calibrated camera knows where the floor is, and a foot on the floor fixes
s. With the camera centre ``c = -R^T t`` and ``d_j = R^T X_cam_j`` (world-frame offset of joint j from the camera
at s = 1), joint j scaled by s lies at world height ``c_z + s * d_jz``. For s > 0 the lowest foot is the one with the
smallest ``d_jz`` whatever s is, so ``min_j (c_z + s * d_jz) = floor_z + foot_height`` solves exactly to
``s = (floor_z + foot_height - c_z) / min_j d_jz``. The height error of the contact foot maps to a relative scale
error of (error / camera height above the foot), so cameras less than `MIN_CAMERA_HEIGHT_M` above the feet give no
estimate.

Frames where no foot touches the floor (jumps, flight phases of a run) would overestimate s from a camera above
the body, so a sequence's body scale is a robust statistic of its frames' estimates: a weighted median whose
weights drop for frames whose contact foot, at the sequence's plain median scale, would float more than
`CONTACT_TOL_M` above the floor. (Stillness of the contact foot is not used: batch rows need not be in time order.)
Each view is scaled from its own estimates only; no view reads another.

The body's size is one per sequence, but the lifter's depth error is not: its root depth (from the pose's apparent
size) is off by a few percent that change with the pose from frame to frame. So the root of each frame whose
contact foot is on the floor at the sequence's scale (within `CONTACT_TOL_M`, or below it) takes the geometric
mean, weighted `FRAME_WEIGHT`, of the sequence's scale and the frame's own (`MetricLift.depth_scale`); the
root-relative pose keeps the sequence's (`MetricLift.scale`), and frames in the air keep the sequence's for both.

Calling it from a prepared batch (`rigpose.model.inputs.prepare_arrays` as tensors) and `lift_views`' output:

    out = lift_views(model, batch["xy"], batch["w"])
    metric = metric_single_view(out.rel, out.root, batch["R"], batch["t"], batch["view_mask"] > 0, skeleton,
                                floor_z=rig.floor_z, groups=sequence_ids, w_BVJ=batch["w"])
    # metric.world [B, V, J, 3] world metres per view, metric.scale [B, V], metric.ok [B, V]

or `metric_lift_batch(out, batch, skeleton, floor_z=..., groups=...)`, which does exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from rigpose.skeleton import Skeleton

# Ankle joint above the floor when the foot is on it, metres, per skeleton. deepmimic16: the flat-foot rest pose has
# 0.05 m (rigpose.data.synth.motion_bank.FOOT_CLEARANCE), but in the DeepMimic clips the synthetic data is built
# from, the median height of the lowest ankle is 0.054-0.073 m over the clips on their feet (walk 0.058, dance_a
# 0.054, punch 0.069, spin 0.070, run 0.071, kick 0.073; measured with mocap.clip_joints at 30 fps): 0.06 m.
# Real-person skeletons: an adult's ankle-joint centre stands about 0.07-0.09 m above the ground (anthropometric
# ankle height, shod): 0.08 m; not measured on H36M / HumanEva / COCO data.
FOOT_HEIGHT_M: dict[str, float] = {"deepmimic16": 0.06, "h36m17": 0.08, "humaneva15": 0.08, "coco17": 0.08}
DEFAULT_FOOT_HEIGHT_M = 0.08  # for skeletons not listed above
SCALE_RANGE = (0.5, 2.0)  # body scales outside this are not a person of another size but a failed estimate
MIN_CAMERA_HEIGHT_M = 0.3  # camera centre above the foot plane; lower: 1 cm of foot error > 3% of scale
CONTACT_TOL_M = 0.05  # contact foot this far above the floor (at the sequence's scale) still counts as on it
# Weight of a contact frame's own floor scale in its root's depth scale (log-linear with the sequence's). Measured on
# the demo recipe's test split (h36m-s1, 5 px, the 3000-step default lifter): the frame's estimate and the sequence's
# are off from the true per-frame depth scale by about the same spread (MAD 2.8% and 2.5%), and 0.5-0.7 took the
# world-frame root error from 184 to 162-165 mm (mean); 0.5 is the even split of two comparable estimates.
FRAME_WEIGHT = 0.5
_FOOT_WORDS = ("ankle", "foot")


class FloorScale(NamedTuple):
    """Per-frame floor estimate. scale [B] (1 where not ok; clamped to the range); ok [B] bool (a trustworthy
    estimate: well posed, finite, inside the range, contact foot seen); contact [B] long, the contact foot's joint
    index; lever [B] metres, how far the contact foot is below the camera at s = 1 (``-min_j d_jz``; 0 where not
    ok)."""

    scale: torch.Tensor
    ok: torch.Tensor
    contact: torch.Tensor
    lever: torch.Tensor


class MetricLift(NamedTuple):
    """world [B, V, J, 3] world metres (each view's own metric pose, ``c + R^T (depth_scale * root + scale * rel)``;
    s = 1 where its sequence has no estimate); scale [B, V] the sequence body scale, applied to the root-relative
    pose; ok [B, V] bool, whether that scale came from the floor; frame_scale [B, V] and frame_ok [B, V] each frame's
    own estimate (`floor_scale`); depth_scale [B, V] the scale applied to the root (see the module docstring:
    `scale`, or its blend with `frame_scale` on contact frames)."""

    world: torch.Tensor
    scale: torch.Tensor
    ok: torch.Tensor
    frame_scale: torch.Tensor
    frame_ok: torch.Tensor
    depth_scale: torch.Tensor


# ---------------------------------------------------------------------------------------------- skeleton


def foot_joints(skeleton: Skeleton) -> tuple[int, ...]:
    """Indices of the skeleton's ankle / foot joints (names containing "ankle" or "foot", any case).

    h36m17: RFoot, LFoot (the ankles); coco17, humaneva15, deepmimic16: left_ankle, right_ankle. ValueError naming
    the skeleton if it has none.
    """
    feet = tuple(j for j, n in enumerate(skeleton.joint_names) if any(w in n.lower() for w in _FOOT_WORDS))
    if not feet:
        raise ValueError(f"skeleton {skeleton.name!r} has no ankle or foot joint (joints: "
                         f"{', '.join(skeleton.joint_names)}); the floor cannot fix its scale")
    return feet


def default_foot_height(skeleton: Skeleton) -> float:
    """Height (metres) of the skeleton's foot joints above the floor when standing (`FOOT_HEIGHT_M`)."""
    return FOOT_HEIGHT_M.get(skeleton.name, DEFAULT_FOOT_HEIGHT_M)


# ---------------------------------------------------------------------------------------------- checks


def _tensor(name: str, x: Any, shape: tuple[int | None, ...], *, dtype: torch.dtype | None = None,
            device: torch.device | None = None) -> torch.Tensor:
    """`x` as a tensor (NumPy arrays accepted) of `shape` (None: any size); ValueError naming `name` otherwise."""
    t = torch.as_tensor(x, device=device)
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape, strict=True)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(t.shape)}")
    return t if dtype is None else t.to(dtype)


def _finite_number(name: str, value: Any) -> float:
    if value is None:
        raise ValueError(f"{name}: the floor is not known (None); a metric lift needs the rig's floor_z")
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number (metres), got {value!r}")
    return float(value)


def _scale_range(scale_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(x) for x in scale_range)
    if not 0 < lo <= hi < math.inf:
        raise ValueError(f"scale_range: expected 0 < low <= high < inf, got {scale_range!r}")
    return lo, hi


def _group_ids(groups: Any, num_rows: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """groups [B] of any hashable ids (None: one sequence) -> dense ids [B] long in [0, G) and G."""
    if groups is None:
        return torch.zeros(num_rows, dtype=torch.long, device=device), 1
    arr = groups.detach().cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    if arr.shape != (num_rows,):
        raise ValueError(f"groups: expected one id per frame, shape [{num_rows}], got {list(arr.shape)}")
    uniq, inverse = np.unique(arr, return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device), len(uniq)


# ---------------------------------------------------------------------------------------------- per frame


def floor_scale(
    X_cam_BJ3: torch.Tensor,
    R_B33: torch.Tensor,
    t_B3: torch.Tensor,
    foot_joints: Sequence[int],
    *,
    floor_z: float = 0.0,
    foot_height: float = DEFAULT_FOOT_HEIGHT_M,
    w_BJ: torch.Tensor | None = None,
    min_camera_height: float = MIN_CAMERA_HEIGHT_M,
    scale_range: tuple[float, float] = SCALE_RANGE,
) -> FloorScale:
    """Per frame, the scale s along the camera rays that puts the lowest foot joint at ``floor_z + foot_height``.

    X_cam_BJ3 [B, J, 3] camera-frame metres (a standard-size prediction); R_B33 [B, 3, 3], t_B3 [B, 3] metres
    (``x_cam = R X_world + t``); foot_joints: indices into J; floor_z: world z of the floor (m); foot_height: foot
    joint above the floor when on it (m); w_BJ [B, J] optional joint weights (a frame whose contact foot has weight
    0 gives no estimate). ``s = (floor_z + foot_height - c_z) / min_f d_fz`` with ``c = -R^T t``, ``d = R^T X``
    (see the module docstring). Not ok, s = 1: non-finite input, camera less than `min_camera_height` above the
    foot plane, contact foot predicted above the camera, or its weight 0. Not ok, s clamped: s outside
    `scale_range`. Returns `FloorScale` with fields [B].
    """
    X = _tensor("X_cam_BJ3", X_cam_BJ3, (None, None, 3))
    B, J = X.shape[:2]
    if not torch.is_floating_point(X):
        X = X.double()
    R = _tensor("R_B33", R_B33, (B, 3, 3), dtype=X.dtype, device=X.device)
    t = _tensor("t_B3", t_B3, (B, 3), dtype=X.dtype, device=X.device)
    feet = [int(f) for f in foot_joints]
    if not feet or any(not 0 <= f < J for f in feet):
        raise ValueError(f"foot_joints: expected indices in [0, {J}), got {list(foot_joints)}")
    target = _finite_number("floor_z", floor_z) + _finite_number("foot_height", foot_height)
    min_height = _finite_number("min_camera_height", min_camera_height)
    lo, hi = _scale_range(scale_range)

    c_z = -(t[:, None, :] @ R)[:, 0, 2]  # [B] camera centre height: (-R^T t)_z
    dz_BF = (X[:, feet] @ R)[..., 2]  # [B, F] world z offset of each foot from the camera at s = 1
    dz_BF = torch.where(torch.isfinite(dz_BF), dz_BF, torch.full_like(dz_BF, math.inf))
    dz_min, arg = dz_BF.min(-1)
    contact = torch.as_tensor(feet, device=X.device)[arg]
    drop = c_z - target  # [B] camera above the foot plane (m)
    posed = torch.isfinite(drop) & (drop >= min_height) & torch.isfinite(dz_min) & (dz_min < 0)
    posed &= torch.isfinite(R).flatten(1).all(-1)
    if w_BJ is not None:
        w = _tensor("w_BJ", w_BJ, (B, J), device=X.device)
        posed &= w.gather(1, contact[:, None])[:, 0] > 0
    lever = torch.where(posed, -dz_min, torch.zeros_like(dz_min))
    raw = torch.where(posed, drop / torch.where(posed, lever, torch.ones_like(lever)), torch.ones_like(drop))
    ok = posed & (raw >= lo) & (raw <= hi)
    return FloorScale(scale=raw.clamp(lo, hi), ok=ok, contact=contact, lever=lever)


# ---------------------------------------------------------------------------------------------- per sequence


def _segment_weighted_median(values_N: torch.Tensor, weights_N: torch.Tensor, seg_N: torch.Tensor,
                             num_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower weighted median [S] of `values_N` within each segment id in [0, S), and has [S] bool (weight > 0).

    Rows with weight 0 are ignored; a segment with none gets NaN and has False.
    """
    N, S = values_N.shape[0], num_segments
    if N == 0:
        return values_N.new_full((S,), math.nan), torch.zeros(S, dtype=torch.bool, device=values_N.device)
    w64 = weights_N.to(torch.float64)
    order = torch.argsort(values_N, stable=True)
    order = order[torch.argsort(seg_N[order], stable=True)]  # by segment, then value
    v, w, sg = values_N[order], w64[order], seg_N[order]
    total = torch.zeros(S, dtype=torch.float64, device=v.device).index_add_(0, sg, w)
    before = torch.cumsum(total, 0) - total  # weight of all earlier segments
    cum = torch.cumsum(w, 0) - before[sg]
    reached = (cum >= 0.5 * total[sg]) & (w > 0)
    pos = torch.where(reached, torch.arange(N, device=v.device), torch.full_like(sg, N))
    first = torch.full((S,), N, dtype=torch.long, device=v.device).scatter_reduce(0, sg, pos, "amin")
    has = total > 0
    med = torch.where(has, v[first.clamp(max=N - 1)], torch.full_like(v[first.clamp(max=N - 1)], math.nan))
    return med, has


def contact_height(lever: torch.Tensor, frame_scale: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Metres above the floor of a frame's contact foot when its lift is scaled by `scale` instead of its own
    `frame_scale` (which stands that foot on the floor); `lever` metres per unit of scale (`FloorScale.lever`).
    Shapes broadcast."""
    return lever * (frame_scale - scale)


def sequence_scale(
    scale_N: torch.Tensor,
    ok_N: torch.Tensor,
    lever_N: torch.Tensor,
    seg_N: torch.Tensor,
    num_segments: int,
    *,
    weight_N: torch.Tensor | None = None,
    contact_tol: float = CONTACT_TOL_M,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust body scale [S] per segment (a sequence seen by one view) from per-frame `floor_scale` results, and
    ok [S] bool (False, scale 1: no usable frame).

    scale_N, ok_N, lever_N [N] (`FloorScale` fields, metres for lever); seg_N [N] long in [0, S); weight_N [N]
    optional confidence (e.g. the contact foot's score). Step 1: s0 = weighted median of the ok frames. Step 2: a
    frame's contact foot at s0 would be ``lever * (s - s0)`` metres above the floor; frames more than
    `contact_tol` above it (jumps) are down-weighted by ``exp(-(height - tol) / tol)``; the result is the weighted
    median of the frames with those weights.
    """
    tol = _finite_number("contact_tol", contact_tol)
    if tol <= 0:
        raise ValueError(f"contact_tol: expected > 0 metres, got {contact_tol!r}")
    base = ok_N.to(torch.float64)
    if weight_N is not None:
        base = base * torch.nan_to_num(weight_N.to(torch.float64)).clamp_min(0.0)
    s0, has0 = _segment_weighted_median(scale_N, base, seg_N, num_segments)
    height = contact_height(lever_N.to(torch.float64), scale_N.to(torch.float64), s0.to(torch.float64)[seg_N])
    contact_w = torch.exp(-torch.nan_to_num((height - tol).clamp_min(0.0) / tol, nan=math.inf))
    s, has = _segment_weighted_median(scale_N, base * contact_w, seg_N, num_segments)
    s = torch.where(has, s, s0)  # every contact weight underflowed: keep the plain median
    ok = has | has0
    return torch.where(ok, s, torch.ones_like(s)), ok


# ---------------------------------------------------------------------------------------------- per view


def metric_single_view(
    rel_BVJ3: torch.Tensor,
    root_BV3: torch.Tensor,
    R_BV33: torch.Tensor,
    t_BV3: torch.Tensor,
    view_ok_BV: torch.Tensor,
    skeleton: Skeleton,
    *,
    floor_z: float = 0.0,
    groups: Any = None,
    w_BVJ: torch.Tensor | None = None,
    foot_height: float | None = None,
    min_camera_height: float = MIN_CAMERA_HEIGHT_M,
    scale_range: tuple[float, float] = SCALE_RANGE,
    contact_tol: float = CONTACT_TOL_M,
    frame_weight: float = FRAME_WEIGHT,
) -> MetricLift:
    """Each view's metric world pose from its own single-view lift and the known floor.

    rel_BVJ3 [B, V, J, 3] root-relative camera-frame metres and root_BV3 [B, V, 3] camera-frame root (`lift_views`
    output ``rel`` / ``root``); R_BV33 [B, V, 3, 3], t_BV3 [B, V, 3] metres; view_ok_BV [B, V] (bool, or > 0 =
    ok; other views contribute nothing); skeleton: names the foot joints; floor_z: world z of the floor (m; None
    raises); groups [B] sequence ids (None: one sequence); w_BVJ [B, V, J] optional joint scores (a contact foot
    with score 0 gives no estimate; scores weight the median); foot_height (m) defaults to
    `default_foot_height(skeleton)`.
    Per view and sequence, the body scale s is `sequence_scale` of the frames' `floor_scale`; the root's scale is
    ``s^(1 - a) * s_frame^a`` with a = `frame_weight` on frames whose contact foot at s is at most `contact_tol`
    above the floor (s elsewhere; a = 0: s everywhere), and ``world = c + R^T (s_root * root + s * rel)`` with
    ``c = -R^T t``. Returns `MetricLift`.
    """
    rel = _tensor("rel_BVJ3", rel_BVJ3, (None, None, skeleton.num_joints, 3))
    if not torch.is_floating_point(rel):
        rel = rel.double()
    B, V, J = rel.shape[:3]
    dev, dt = rel.device, rel.dtype
    root = _tensor("root_BV3", root_BV3, (B, V, 3), dtype=dt, device=dev)
    R = _tensor("R_BV33", R_BV33, (B, V, 3, 3), dtype=dt, device=dev)
    t = _tensor("t_BV3", t_BV3, (B, V, 3), dtype=dt, device=dev)
    view_ok = _tensor("view_ok_BV", view_ok_BV, (B, V), device=dev) > 0
    w = None if w_BVJ is None else _tensor("w_BVJ", w_BVJ, (B, V, J), device=dev).to(dt)
    h = foot_height if foot_height is not None else default_foot_height(skeleton)
    gid, G = _group_ids(groups, B, dev)
    a = _finite_number("frame_weight", frame_weight)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"frame_weight: expected a weight in [0, 1], got {frame_weight!r}")

    X_cam = root[:, :, None] + rel  # [B, V, J, 3]
    per = floor_scale(X_cam.reshape(B * V, J, 3), R.reshape(B * V, 3, 3), t.reshape(B * V, 3),
                      foot_joints(skeleton), floor_z=floor_z, foot_height=h,
                      w_BJ=None if w is None else w.reshape(B * V, J), min_camera_height=min_camera_height,
                      scale_range=scale_range)
    frame_ok = per.ok.reshape(B, V) & view_ok
    conf = None if w is None else w.reshape(B * V, J).gather(1, per.contact[:, None])[:, 0]
    seg = (gid[:, None] * V + torch.arange(V, device=dev)[None]).reshape(-1)  # [B * V] segment = (group, view)
    s_S, ok_S = sequence_scale(per.scale, frame_ok.reshape(-1), per.lever, seg, G * V, weight_N=conf,
                               contact_tol=contact_tol)
    scale = s_S[seg].reshape(B, V).to(dt)
    frame_s = per.scale.reshape(B, V).to(dt)
    above = contact_height(per.lever.reshape(B, V).to(dt), frame_s, scale)  # at the body scale, metres
    on_floor = frame_ok & ok_S[seg].reshape(B, V) & (above <= contact_tol)
    depth_scale = torch.where(on_floor, scale ** (1.0 - a) * frame_s ** a, scale)
    c = -(t[..., None, :] @ R)[..., 0, :]  # [B, V, 3] camera centre, world metres
    X_metric = depth_scale[..., None, None] * root[:, :, None] + scale[..., None, None] * rel
    world = c[:, :, None] + X_metric @ R  # R^T X as row vectors: X @ R
    return MetricLift(world=world, scale=scale, ok=ok_S[seg].reshape(B, V), frame_scale=frame_s, frame_ok=frame_ok,
                      depth_scale=depth_scale)


def metric_lift_batch(lift: Any, batch: Mapping[str, torch.Tensor], skeleton: Skeleton, *, floor_z: float,
                      groups: Any = None, **kwargs: Any) -> MetricLift:
    """`metric_single_view` on a `lift_views` output (``.rel``, ``.root``) and a prepared batch (``R``, ``t``,
    ``view_mask``, ``w`` as from `rigpose.model.inputs.model_inputs`); `kwargs` go to `metric_single_view`."""
    missing = [k for k in ("R", "t", "view_mask", "w") if k not in batch]
    if missing:
        raise ValueError(f"batch: missing key(s) {missing} (expected prepare_arrays' R, t, view_mask, w)")
    return metric_single_view(lift.rel, lift.root, batch["R"], batch["t"], batch["view_mask"] > 0, skeleton,
                              floor_z=floor_z, groups=groups, w_BVJ=batch["w"], **kwargs)
