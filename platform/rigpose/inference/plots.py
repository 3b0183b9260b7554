"""Pictures of a trained lifter logged to MLflow as PNG bytes: per-joint and per-camera errors, 2D-vs-3D skeletons.

Every picture is drawn on a bare `matplotlib.figure.Figure` with the Agg canvas: no pyplot, so no global figure
registry, no backend switch, nothing shown and no file written. Each `*_figure` function returns the Figure (for
tests and callers that want to inspect or restyle it); its `*_png` twin renders it and clears it.

Units: 3D in metres (camera frame: x right, y down, z forward), 3D errors in mm, 2D and reprojection errors in
pixels. NaN anywhere means "missing": drawn as absent (a zero-length bar labelled "n/a", an undrawn joint), never
an error. Shape letters: N examples, B frames, V views (S source, T target), J joints, C cameras.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rigpose.data.schema import Frames
from rigpose.inference.errors import check_sample, errors_of, example_views, lift_sample, sample_frames
from rigpose.skeleton import Skeleton

DPI = 100
MAX_EXAMPLES = 6  # skeleton rows in one picture; more become unreadable
LEFT, RIGHT, CENTRE, TRUTH = "tab:blue", "tab:red", "0.35", "black"


class Bars(NamedTuple):
    """One bar series: values [n] (NaN = missing, drawn as "n/a"), their unit ("mm", "px") and what they measure."""

    values: np.ndarray
    unit: str
    label: str


def figure_png(fig: Figure) -> bytes:
    """`fig` rendered as PNG bytes at its own size and dpi (width x height = figsize * dpi pixels)."""
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering needs no pyplot backend
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})  # no version stamp: stable bytes
    return buf.getvalue()


def _png(fig: Figure) -> bytes:
    try:
        return figure_png(fig)
    finally:
        fig.clear()  # drop the artists now; the figure itself is not registered anywhere


# ---------------------------------------------------------------------------------------------- bars


def _check_bars(labels: Sequence[str], series: Sequence[Bars]) -> list[Bars]:
    if isinstance(labels, str) or len(labels) == 0:
        raise ValueError(f"labels: expected a non-empty sequence of names, got {labels!r}")
    if not series:
        raise ValueError("series: expected at least one Bars")
    out = []
    for i, s in enumerate(series):
        values = np.asarray(s.values, dtype=np.float64)
        if values.shape != (len(labels),):
            raise ValueError(f"series[{i}] ({s.label!r}): expected shape [{len(labels)}] (one value per label), "
                             f"got {values.shape}")
        if np.isinf(values).any() or (values < 0).any():
            raise ValueError(f"series[{i}] ({s.label!r}): errors must be >= 0 or NaN (missing), got "
                             f"{values[np.isinf(values) | (values < 0)][:3].tolist()}")
        if not isinstance(s.unit, str) or not s.unit:
            raise ValueError(f"series[{i}]: unit must be a non-empty string, got {s.unit!r}")
        out.append(Bars(values, s.unit, s.label))
    return out


def bars_figure(labels: Sequence[str], series: Sequence[Bars], *, title: str) -> Figure:
    """Horizontal bars, one panel per series side by side sharing the `labels` axis (first label at the top).

    Each panel holds one bar per label (its `containers[0]`); a NaN value is a zero-length bar labelled "n/a".
    """
    series = _check_bars(labels, series)
    n = len(labels)
    fig = Figure(figsize=(1.5 + 4.5 * len(series), max(2.5, 1.2 + 0.28 * n)), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    for ax, s in zip(axes, series, strict=True):
        ok = np.isfinite(s.values)
        bars = ax.barh(np.arange(n), np.where(ok, s.values, 0.0), color=np.where(ok, "tab:blue", "0.7"))
        ax.bar_label(bars, labels=[f"{v:.1f}" if np.isfinite(v) else "n/a" for v in s.values], padding=2,
                     fontsize=8)
        top = float(np.nanmax(s.values)) if ok.any() else 0.0
        ax.set_xlim(0.0, 1.2 * top if top > 0 else 1.0)  # room for the value labels
        ax.set_xlabel(f"{s.label} ({s.unit})")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(n), [str(x) for x in labels], fontsize=8)
    axes[0].invert_yaxis()  # shared: inverts every panel
    fig.suptitle(title)
    return fig


def per_joint_error_figure(joint_names: Sequence[str], errors: np.ndarray, *, unit: str, title: str) -> Figure:
    """One bar per joint of errors [J] in `unit` (NaN = no value for that joint, shown as "n/a")."""
    return bars_figure(joint_names, [Bars(np.asarray(errors), unit, "error")], title=title)


def per_joint_error_png(joint_names: Sequence[str], errors: np.ndarray, *, unit: str, title: str) -> bytes:
    """`per_joint_error_figure` as PNG bytes."""
    return _png(per_joint_error_figure(joint_names, errors, unit=unit, title=title))


def per_camera_error_figure(labels: Sequence[str], errors: np.ndarray, *, unit: str, title: str) -> Figure:
    """One bar per camera ("<rig_id>/<camera>" labels) of errors [C] in `unit` (NaN shown as "n/a")."""
    return bars_figure(labels, [Bars(np.asarray(errors), unit, "error")], title=title)


def per_camera_error_png(labels: Sequence[str], errors: np.ndarray, *, unit: str, title: str) -> bytes:
    """`per_camera_error_figure` as PNG bytes."""
    return _png(per_camera_error_figure(labels, errors, unit=unit, title=title))


# ---------------------------------------------------------------------------------------------- skeletons


def _side_colour(joint: int, skeleton: Skeleton) -> str:
    return LEFT if joint in skeleton.left else RIGHT if joint in skeleton.right else CENTRE


def _draw_2d(ax: Axes, kp_J2: np.ndarray, score_J: np.ndarray, skeleton: Skeleton) -> None:
    """Image coordinates (y down); joints with score 0 or NaN are neither drawn nor joined."""
    seen = np.isfinite(kp_J2).all(-1) & (score_J > 0)
    for c, p in skeleton.bones:
        if seen[c] and seen[p]:
            ax.plot(kp_J2[[c, p], 0], kp_J2[[c, p], 1], color=_side_colour(c, skeleton), lw=2, gid="bone")
    if seen.any():
        ax.scatter(kp_J2[seen, 0], kp_J2[seen, 1], s=10, c=[_side_colour(j, skeleton) for j in np.flatnonzero(seen)])
    else:
        ax.text(0.5, 0.5, "no 2D", ha="center", va="center", transform=ax.transAxes)
    ax.set_aspect("equal", adjustable="datalim")
    ax.invert_yaxis()
    ax.set_xlabel("u (px)")
    ax.set_ylabel("v (px)")


def _to_plot(X_J3: np.ndarray) -> np.ndarray:
    """Camera frame (x right, y down, z forward) -> plot axes (x, depth z, up = -y), so the body stands upright."""
    return np.stack([X_J3[..., 0], X_J3[..., 2], -X_J3[..., 1]], -1)


def _draw_3d(ax: Any, pred_J3: np.ndarray, truth_J3: np.ndarray | None, skeleton: Skeleton) -> None:
    P = _to_plot(pred_J3)
    for c, p in skeleton.bones:
        if np.isfinite(P[[c, p]]).all():
            ax.plot(*P[[c, p]].T, color=_side_colour(c, skeleton), lw=2, gid="pred")
    points = [P]
    if truth_J3 is not None:
        T = _to_plot(truth_J3)
        points.append(T)
        for c, p in skeleton.bones:
            if np.isfinite(T[[c, p]]).all():
                ax.plot(*T[[c, p]].T, color=TRUTH, lw=1, ls="--", alpha=0.7, gid="truth")
        ax.plot([], [], [], color=TRUTH, ls="--", label="truth")
        ax.plot([], [], [], color=CENTRE, label="prediction (left blue, right red)")
        ax.legend(loc="upper right", fontsize=7)
    allp = np.concatenate(points)
    allp = allp[np.isfinite(allp).all(-1)]
    if len(allp) == 0:
        ax.text2D(0.5, 0.5, "no lift", ha="center", va="center", transform=ax.transAxes)
        return
    centre = (allp.min(0) + allp.max(0)) / 2
    half = max(0.55 * float((allp.max(0) - allp.min(0)).max()), 0.1)  # a cube: equal metres on every axis
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=12, azim=-70)  # azim -90 would be the camera's own view; turned a little to show depth
    ax.set_xlabel("x (m)", fontsize=7)
    ax.set_ylabel("z depth (m)", fontsize=7)
    ax.set_zlabel("-y up (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(4))  # the foreshortened depth axis cannot fit more labels


def _check_skeletons(kp_2d: np.ndarray, scores: np.ndarray, joints_3d: np.ndarray, skeleton: Skeleton,
                     titles: Sequence[str] | None, truth_3d: np.ndarray | None) -> None:
    J = skeleton.num_joints
    if kp_2d.ndim != 3 or kp_2d.shape[1:] != (J, 2):
        raise ValueError(f"kp_2d: expected shape [N, {J}, 2] ({skeleton.name!r}), got {kp_2d.shape}")
    N = kp_2d.shape[0]
    if not 1 <= N <= MAX_EXAMPLES:
        raise ValueError(f"kp_2d: expected 1 to {MAX_EXAMPLES} examples, got {N}")
    if scores.shape != (N, J):
        raise ValueError(f"scores: expected shape [{N}, {J}], got {scores.shape}")
    if joints_3d.shape != (N, J, 3):
        raise ValueError(f"joints_3d: expected shape [{N}, {J}, 3], got {joints_3d.shape}")
    if truth_3d is not None and truth_3d.shape != (N, J, 3):
        raise ValueError(f"truth_3d: expected shape [{N}, {J}, 3] (same as joints_3d), got {truth_3d.shape}")
    if titles is not None and (isinstance(titles, str) or len(titles) != N):
        raise ValueError(f"titles: expected {N} titles (one per example), got {titles!r}")


def skeletons_figure(kp_2d: np.ndarray, scores: np.ndarray, joints_3d: np.ndarray, skeleton: Skeleton, *,
                     titles: Sequence[str] | None = None, truth_3d: np.ndarray | None = None) -> Figure:
    """One row per example: its input 2D skeleton (left) beside the lifted 3D skeleton (right).

    kp_2d [N, J, 2] pixels (NaN = missing), scores [N, J] (0 = hidden: not drawn), joints_3d [N, J, 3] metres,
    root-relative in the camera frame (NaN joints not drawn), truth_3d the same frame's ground truth, drawn
    dashed in black over the prediction when given. Bones are coloured by side (left blue, right red). The figure's
    axes are [2D_0, 3D_0, 2D_1, 3D_1, ...]; bones are the axes' lines with gid "bone" / "pred" / "truth".
    """
    kp_2d, scores = np.asarray(kp_2d, np.float64), np.asarray(scores, np.float64)
    joints_3d = np.asarray(joints_3d, np.float64)
    truth_3d = None if truth_3d is None else np.asarray(truth_3d, np.float64)
    _check_skeletons(kp_2d, scores, joints_3d, skeleton, titles, truth_3d)
    N = kp_2d.shape[0]
    fig = Figure(figsize=(9.0, 4.0 * N), dpi=DPI)
    # fixed margins (inches): constrained layout doubles the render time with 3D axes
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.5 / (4.0 * N), top=1 - 0.35 / (4.0 * N), wspace=0.12,
                        hspace=0.25)
    for i in range(N):
        ax2 = fig.add_subplot(N, 2, 2 * i + 1)
        ax3 = fig.add_subplot(N, 2, 2 * i + 2, projection="3d")
        _draw_2d(ax2, kp_2d[i], scores[i], skeleton)
        _draw_3d(ax3, joints_3d[i], None if truth_3d is None else truth_3d[i], skeleton)
        name = titles[i] if titles is not None else f"example {i}"
        ax2.set_title(f"{name}: input 2D", fontsize=9)
        ax3.set_title(f"{name}: lift (camera frame)", fontsize=9)
    return fig


def skeletons_png(kp_2d: np.ndarray, scores: np.ndarray, joints_3d: np.ndarray, skeleton: Skeleton, *,
                  titles: Sequence[str] | None = None, truth_3d: np.ndarray | None = None) -> bytes:
    """`skeletons_figure` as PNG bytes."""
    return _png(skeletons_figure(kp_2d, scores, joints_3d, skeleton, titles=titles, truth_3d=truth_3d))


# ---------------------------------------------------------------------------------------------- one run






















def run_figures(model: torch.nn.Module, frames: Frames, skeleton: Skeleton, *, max_frames: int = 512,
                examples: int = 3) -> dict[str, bytes]:
    """Pictures of one trained lifter on a sample of a split: file name -> PNG bytes (nothing is written).

    - "per_joint_error.png": per-joint single-view MPJPE (mm) when `frames` carry 3D labels, else per-joint
      held-out-view reprojection error (px, from 2D only);
    - "per_camera_error.png": per "<rig_id>/<camera>" held-out-view reprojection error (px), with a second panel
      of single-view MPJPE (mm) when 3D labels exist;
    - "skeletons.png": `examples` frames (at most MAX_EXAMPLES), each one view's input 2D beside its lift (and
      the truth when known); left out when `examples` is 0 or no view of the sample could be lifted.

    At most `max_frames` rows, spread evenly over `frames`, are used (a few hundred keep it to seconds on CPU).
    """
    check_sample(frames, skeleton, max_frames)
    if not 0 <= examples <= MAX_EXAMPLES:
        raise ValueError(f"examples must be in [0, {MAX_EXAMPLES}], got {examples}")
    lifted = lift_sample(model, sample_frames(frames, max_frames), skeleton)
    errs = errors_of(lifted, skeleton)
    n = f"{errs.num_frames} frames"
    what = "single-view MPJPE" if errs.joint_unit == "mm" else "held-out-view reprojection error"
    out = {"per_joint_error.png": per_joint_error_png(errs.joint_names, errs.joint_error, unit=errs.joint_unit,
                                                      title=f"per-joint {what} ({n})")}
    series = [Bars(errs.camera_px, "px", "held-out-view reprojection")]
    if errs.camera_mm is not None:
        series.append(Bars(errs.camera_mm, "mm", "single-view MPJPE"))
    out["per_camera_error.png"] = _png(bars_figure(errs.camera_labels, series, title=f"per-camera errors ({n})"))
    picks = example_views(lifted, examples)
    if picks:
        b, v = (np.array(x) for x in zip(*picks, strict=True))
        f = lifted.frames
        titles = [f"{lifted.keys[i, j]} {f.sequence[i]} #{f.frame[i]}" for i, j in picks]
        out["skeletons.png"] = skeletons_png(f.keypoints[b, v], f.scores[b, v],
                                             lifted.rel[b, v], skeleton, titles=titles,
                                             truth_3d=None if lifted.truth is None else lifted.truth[b, v])
    return out

