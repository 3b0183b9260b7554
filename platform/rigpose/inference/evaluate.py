"""Evaluate a saved lifter on a dataset split in bounded-memory batches: single-view, multi-view and DLT baselines.

What is measured (metric functions in `rigpose.metrics`; 3D metrics only where the rows carry `joints_3d`, which
is read for metrics and nothing else: the model, the fusion and the baselines see a batch built without it):

- "single": every view lifted alone; root-relative, in that camera's frame: mpjpe_mm, pa_mpjpe_mm, n_mpjpe_mm,
  pck150; mpjpe_abs_mm uses the lifter's own metric root. On rigs whose floor is known (the rig file's floor_z),
  the lift made metric by the feet on the floor (`rigpose.model.floor`): floor_mpjpe_mm (root-relative at the
  estimated body scale), floor_root_mm (world-frame root error), floor_scale (the body scale estimated).
  heldout_px: the lift from view s placed at the root
  triangulated from the other views, projected into the other views, vs their 2D (per source camera).
- "multi": world frame, root-relative (mpjpe_mm, pa_mpjpe_mm, n_mpjpe_mm, pck150) and absolute (mpjpe_abs_mm),
  for the lifter's multi-view answer (`MultiViewConfig.method`) and, as baselines, weighted DLT ("dlt") and robust
  triangulation ("robust"). heldout_px: leave view t out entirely (the batch is rebuilt without it, so even the
  triangulated anchors never see it), answer from the rest, project into t, compare with t's 2D (per camera t).
  coverage: the fraction of labelled joints the method gave a finite answer for (DLT needs two views per joint).
  For a method that states a per-joint uncertainty (the default "posterior"): uncertainty_mm, its mean, and
  within_uncertainty, the share of labelled joints whose world-frame error is under it (calibration: about 0.6-0.7
  for a calibrated Gaussian RMS radius).

Dropped cameras (`drop_cameras`, `rigpose evaluate --drop-camera NAME`): the method, the baselines and the
triangulated anchors never see their 2D (`rigpose.inference.drop.mask_cameras`), but every reprojection metric
still scores against it: a dropped camera is a held-out view the answers were computed without. Besides the
metrics above, each section then reports dropped_px (and num_dropped), the MEDIAN reprojection error, pixels,
into the dropped camera(s) vs their own 2D, of the 3D estimated without them: "multi", each method's world answer
from the kept cameras; "single", each kept view's lift placed at the root triangulated from the kept cameras
(per_camera: keyed by the dropped camera). Its errors are kept (float32) to take the median: memory grows with
frames x joints x dropped cameras (x kept views for "single").

With adaptation (`MultiViewConfig.steps_to_adapt` > 0) the lifter is fine-tuned per batch on that batch's own
multi-view 2D (test-time adaptation) before lifting; for the multi-view held-out metric it is adapted again
without the held-out view.

JSON layout: {"model", "data", "split", "rig_ids" (when given), "dropped_cameras" (when given), "skeleton",
"num_frames", "has_3d", "modes", "multi_mode" (the method), "adapt_steps" (as run), "multi_view" (the
rigpose.config.MultiViewConfig settings, null ones left out), "single": {"overall": {metric: value}, "per_camera":
{"<rig_id>/<camera>": {metric: value}}}, "multi": {"<multi_mode>" | "dlt" | "robust": {"overall": {...},
"per_camera": {...}}}}; a metric with nothing to average is null; `num_poses`, `num_heldout` and `num_dropped`
count what was averaged (or, for dropped_px, what the median was taken of). Shape letters: B frames, V views, J joints.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from rigpose import geometry as g
from rigpose import metrics as ev
from rigpose.config import VIEW_MODES, MultiViewConfig
from rigpose.data.schema import Frames
from rigpose.inference.drop import check_dataset_drop, dropped_views, mask_cameras
from rigpose.inference.lift import (
    DEFAULT_BATCH_SIZE,
    Floors,
    dataset_floors,
    iter_frames,
    lift_multi_uncertain,
    lift_single,
    metric_scale,
    model_batch,
    open_inputs,
    sequence_groups,
)
from rigpose.model.lifter import Lifter
from rigpose.model.multiview import adapt_for
from rigpose.skeleton import Skeleton
from rigpose.storage import url_to_fs, write_bytes_atomic

MODES = VIEW_MODES
OVERALL = "overall"


class _Means:
    """Streaming means: section -> group ("overall" or a camera key) -> metric -> [sum, count]; and the medians
    of the metrics given to `add_median`, whose finite values are kept (float32)."""

    def __init__(self) -> None:
        self.acc: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(lambda: [0.0, 0.0])))
        self.kept: dict[str, dict[str, dict[str, list[np.ndarray]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list)))

    def add_median(self, section: str, metric: str, values: np.ndarray, groups: np.ndarray | None = None) -> None:
        """Keep the finite `values` for the overall median and, when `groups` (same shape, str keys), per group."""
        values = np.asarray(values, np.float64)
        ok = np.isfinite(values)
        self.kept[section][OVERALL][metric].append(values[ok].astype(np.float32))
        if groups is not None:
            groups = np.broadcast_to(groups, values.shape)
            for key in np.unique(groups[ok]):
                self.kept[section][str(key)][metric].append(values[ok & (groups == key)].astype(np.float32))

    def add(self, section: str, metric: str, values: np.ndarray, groups: np.ndarray | None = None) -> None:
        """Add the finite `values` to the overall mean and, when `groups` (same shape, str keys), per group."""
        values = np.asarray(values, np.float64)
        ok = np.isfinite(values)
        self._add(section, OVERALL, metric, values[ok])
        if groups is not None:
            groups = np.broadcast_to(groups, values.shape)
            for key in np.unique(groups[ok]):
                self._add(section, str(key), metric, values[ok & (groups == key)])

    def _add(self, section: str, group: str, metric: str, v: np.ndarray) -> None:
        cell = self.acc[section][group][metric]
        cell[0] += float(v.sum())
        cell[1] += float(v.size)

    def result(self) -> dict[str, Any]:
        """{section: {"overall": {metric: mean or median}, "per_camera": {key: {...}}}} with num_* counts (a
        median metric's count: num_ + its name without "_px")."""
        out: dict[str, Any] = {}
        for section in dict.fromkeys([*self.acc, *self.kept]):
            groups, kept = self.acc.get(section, {}), self.kept.get(section, {})
            res: dict[str, Any] = {OVERALL: {}, "per_camera": {}}
            for group in sorted(set(groups) | set(kept)):
                metrics = groups.get(group, {})
                d: dict[str, Any] = {m: (s / n if n else None) for m, (s, n) in sorted(metrics.items())}
                for count_name, source in (("num_poses", "mpjpe_mm"), ("num_heldout", "heldout_px")):
                    if source in metrics:
                        d[count_name] = int(metrics[source][1])
                for metric, parts in sorted(kept.get(group, {}).items()):
                    v = np.concatenate(parts)
                    d[metric] = float(np.median(v)) if v.size else None
                    d[f"num_{metric.removesuffix('_px')}"] = int(v.size)
                if group == OVERALL:
                    res[OVERALL] = d
                else:
                    res["per_camera"][group] = d
            out[section] = res
        return out


@dataclasses.dataclass(frozen=True)
class _Reference:
    """The 2D a batch's answers are scored against: kp [B, V, J, 2] px and w [B, V, J] of every real view, the
    dropped cameras' included; dropped [B, V] bool: the views whose 2D the method was not given."""

    kp: np.ndarray
    w: np.ndarray
    dropped: np.ndarray


def _np(batch: dict[str, torch.Tensor], key: str) -> np.ndarray:
    return batch[key].detach().cpu().double().numpy()


def _reference(frames: Frames, batch: dict[str, torch.Tensor], skeleton: Skeleton, dropped: tuple[str, ...], *,
               device: str) -> _Reference:
    """The unmasked 2D of `frames` (`batch`'s own when nothing is dropped: the method's input is the reference)."""
    views = dropped_views(frames, dropped)
    if views.any():
        batch = model_batch(frames, skeleton, device=device, pseudo_3d=False)
    return _Reference(_np(batch, "kp"), _np(batch, "w"), views)


def _cams(batch: dict[str, torch.Tensor]) -> g.CameraArrays:
    return g.CameraArrays(*(_np(batch, k) for k in ("K", "dist", "R", "t")))


def _camera_keys(frames: Frames) -> np.ndarray:
    """[B, V] "<rig_id>/<camera name>" (what per-camera results are keyed by)."""
    return np.char.add(np.char.add(frames.rig_id.astype(str)[:, None], "/"), frames.camera_names.astype(str))


def _floor_metrics(acc: _Means, frames: Frames, batch: dict[str, torch.Tensor], rel: np.ndarray, root: np.ndarray,
                   gt_cam: np.ndarray, skeleton: Skeleton, floors: Floors, keys: np.ndarray) -> None:
    """The single view made metric by the known floor (`rigpose.inference.lift.metric_scale`), on the rows of rigs
    whose floor is known: floor_mpjpe_mm (root-relative, camera frame, at the estimated body scale), floor_root_mm
    (the root's error, camera frame = world frame distance), floor_scale (the estimated body scale)."""
    roots = tuple(skeleton.root_joints)
    scale, depth = metric_scale(frames, batch, rel, root, skeleton, floors)  # [B, V], NaN where unknown
    gt_rel = ev.root_relative(gt_cam, roots)
    acc.add("single", "floor_mpjpe_mm", ev.mpjpe(rel * scale[..., None, None], gt_rel), keys)
    gt_root = gt_cam[:, :, list(roots)].mean(2)  # [B, V, 3]
    acc.add("single", "floor_root_mm", 1000 * np.linalg.norm(root * depth[..., None] - gt_root, axis=-1), keys)
    acc.add("single", "floor_scale", scale, keys)


def _single_batch(acc: _Means, frames: Frames, batch: dict[str, torch.Tensor], model: torch.nn.Module,
                  skeleton: Skeleton, floors: Floors | None = None, ref: _Reference | None = None) -> None:
    roots = tuple(skeleton.root_joints)
    rel, root = lift_single(model, batch)  # [B, V, J, 3], [B, V, 3]
    keys = _camera_keys(frames)
    kp, w, cams = _np(batch, "kp"), _np(batch, "w"), _cams(batch)
    if ref is None or not ref.dropped.any():
        err = ev.heldout_view_px(rel, kp, w, cams, roots)  # [B, S, T, J]: the one definition (rigpose.metrics)
    else:  # the same, with the roots from the kept cameras and every camera's 2D (the dropped ones' too) as targets
        err = ev.heldout_view_errors(rel, ev.leave_one_out_roots(kp, w, cams, roots), ref.kp, ref.w, cams)
    acc.add("single", "heldout_px", err, keys[:, :, None, None])
    if ref is not None and ref.dropped.any():
        # each kept view's lift at the root triangulated from the kept cameras, into the dropped ones: [B, S, T, J]
        root_B3 = np.where(_np(batch, "root_ok")[:, None] > 0, _np(batch, "root_world"), np.nan)
        err = ev.heldout_view_errors(rel, np.broadcast_to(root_B3[:, None], (*rel.shape[:2], 3)), ref.kp, ref.w,
                                     cams)
        err = np.where(ref.dropped[:, None, :, None], err, np.nan)
        acc.add_median("single", "dropped_px", err, keys[:, None, :, None])
    if frames.joints_3d is None:
        return
    gt_cam = g.world_to_camera(frames.joints_3d.astype(np.float64)[:, None], cams.R, cams.t)  # [B, V, J, 3]
    for name, values in ev.pose_metrics(rel, ev.root_relative(gt_cam, roots)).items():
        acc.add("single", name, values, keys)
    acc.add("single", "mpjpe_abs_mm", ev.mpjpe(rel + root[:, :, None], gt_cam), keys)
    if floors and any(v is not None for v in floors.values()):
        _floor_metrics(acc, frames, batch, rel, root, gt_cam, skeleton, floors, keys)


def _answers(method: str, batch: dict[str, torch.Tensor], model: Lifter, skeleton: Skeleton,
             groups: torch.Tensor, multi_view: MultiViewConfig
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(world poses [B, J, 3] metres, NaN = no answer; root known [B] bool; per-joint uncertainty [B, J] metres
    or None) of one multi-view method, computed from a 2D-only batch (`model` already adapted to it where
    adaptation is on); `method` is "dlt", "robust" or `multi_view.method`."""
    roots = list(skeleton.root_joints)
    if method in ("dlt", "robust"):
        if method == "dlt":
            with np.errstate(invalid="ignore", divide="ignore"):  # too few views -> NaN, by design
                X = g.triangulate(_np(batch, "kp"), _cams(batch), _np(batch, "w"))
        else:
            X = np.where(_np(batch, "pseudo_ok")[..., None] > 0, _np(batch, "pseudo_world"), np.nan)
        return X, np.isfinite(X[:, roots]).all((-1, -2)), None
    X, sigma = lift_multi_uncertain(model, batch, skeleton, multi_view, groups=groups)
    seen = (_np(batch, "w").sum(-1) > 0).any(-1)  # a frame with no 2D at all has no answer
    return np.where(seen[:, None, None], X, np.nan), _np(batch, "root_ok") > 0, sigma


def _multi_3d(acc: _Means, section: str, X: np.ndarray, root_ok: np.ndarray, gt: np.ndarray,
              roots: tuple[int, ...], sigma: np.ndarray | None = None) -> None:
    for name, values in ev.pose_metrics(ev.root_relative(X, roots), ev.root_relative(gt, roots)).items():
        acc.add(section, name, values)
    acc.add(section, "mpjpe_abs_mm", ev.mpjpe(np.where(root_ok[:, None, None], X, np.nan), gt))
    labelled = np.isfinite(gt).all(-1)
    acc.add(section, "coverage", np.isfinite(X).all(-1)[labelled].astype(np.float64))
    if sigma is not None:
        err = np.linalg.norm(X - gt, axis=-1)  # [B, J] metres
        ok = labelled & np.isfinite(err) & np.isfinite(sigma)
        acc.add(section, "uncertainty_mm", 1000.0 * sigma[ok])
        acc.add(section, "within_uncertainty", (err[ok] < sigma[ok]).astype(np.float64))


def _multi_batch(acc: _Means, frames: Frames, batch: dict[str, torch.Tensor], model: Lifter, skeleton: Skeleton,
                 *, model_adapted: Lifter, multi_view: MultiViewConfig, device: str, heldout: bool = True,
                 ref: _Reference | None = None) -> None:
    """`frames` and `batch`: the method's input (dropped cameras masked); `ref`: the 2D scored against."""
    roots = tuple(skeleton.root_joints)
    groups = sequence_groups(frames)
    methods = (multi_view.method, "dlt", "robust")
    keys, cams = _camera_keys(frames), _cams(batch)
    ref = ref or _Reference(_np(batch, "kp"), _np(batch, "w"), np.zeros(frames.view_mask.shape, bool))
    dropped = np.flatnonzero(ref.dropped.any(0))
    if frames.joints_3d is not None or dropped.size:
        for method in methods:
            X, root_ok, sigma = _answers(method, batch, model_adapted, skeleton, groups, multi_view)
            if frames.joints_3d is not None:
                _multi_3d(acc, method, X, root_ok, frames.joints_3d.astype(np.float64), roots, sigma)
            for v in dropped:  # the answer without the dropped cameras, into each of them
                err = ev.reprojection_errors(X, ref.kp[:, v], ref.w[:, v], g.CameraArrays(*(a[:, v] for a in cams)))
                err[~ref.dropped[:, v]] = np.nan
                acc.add_median(method, "dropped_px", err, np.broadcast_to(keys[:, v, None], err.shape))
    if not heldout:
        return
    kp, w = ref.kp, ref.w  # a dropped camera is scored against its own 2D, which no answer saw
    for v in range(frames.num_views):
        real = frames.view_mask[:, v]
        if not real.any():
            continue
        # rebuild the batch without view v, so that nothing (not even the triangulated anchors) sees its 2D
        without = dataclasses.replace(frames, view_mask=frames.view_mask & (np.arange(frames.num_views) != v))
        batch_v = model_batch(without, skeleton, device=device)
        cam_v = g.CameraArrays(*(a[:, v] for a in cams))
        model_v = adapt_for(model, batch_v, skeleton, multi_view)
        for method in methods:
            X, _, _ = _answers(method, batch_v, model_v, skeleton, groups, multi_view)
            err = ev.reprojection_errors(X, kp[:, v], w[:, v], cam_v)  # [B, J]
            err[~real] = np.nan
            acc.add(method, "heldout_px", err, np.broadcast_to(keys[:, v, None], err.shape))


def _clean(x: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def evaluate(model_path: str, data_url: str, *, split: str, modes: tuple[str, ...] = MODES,
             multi_view: MultiViewConfig | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
             max_rows: int | None = None, json_path: str | None = None, device: str = "cpu",
             multi_heldout: bool = True, rig_ids: list[str] | None = None, drop_cameras: Iterable[str] = ()
             ) -> dict[str, Any]:
    """Evaluate the lifter at `model_path` on `split` of the dataset at `data_url`; see the module docstring.

    modes: any of "single", "multi"; multi_view: the lifter's multi-view answer (default `MultiViewConfig()`; DLT
    and robust triangulation are always reported beside it); its test-time adaptation
    (`MultiViewConfig.steps_to_adapt`) runs per batch, and the adapted lifter serves every lift, single-view too;
    max_rows: evaluate only the first rows; rig_ids: only the rows of these rigs; json_path: also write the
    result there;
    multi_heldout=False skips the multi-view held-out-view metric (it re-runs every method once per view);
    drop_cameras: cameras (rig file names) whose 2D no method sees, scored as held-out views (dropped_px; see the
    module docstring); ValueError for a name no rig of the split has, or one that leaves a rig too few cameras for
    `modes` (`rigpose.inference.drop.check_dataset_drop`).
    """
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes!r}")
    multi_view = multi_view or MultiViewConfig()
    model, skeleton, ds = open_inputs(model_path, data_url, split=split)
    if rig_ids is not None and (unknown := sorted(set(rig_ids) - set(ds.manifest.rigs))):
        raise ValueError(f"{data_url}: no rig {unknown}; has {sorted(ds.manifest.rigs)}")
    dropped = check_dataset_drop(ds, drop_cameras, split=split, modes=modes, rig_ids=rig_ids)
    model.to(device)
    floors = dataset_floors(ds) if "single" in modes else {}
    acc = _Means()
    num_frames, has_3d = 0, False
    for frames in iter_frames(ds, split=split, batch_size=batch_size, max_rows=max_rows, with_3d=True,
                              rig_ids=rig_ids):
        if frames.joints_3d is not None and not np.isfinite(frames.joints_3d).all(-1).any():
            frames = dataclasses.replace(frames, joints_3d=None)  # rows without labels: label-free metrics only
        has_3d |= frames.joints_3d is not None
        seen = mask_cameras(frames, dropped)  # what the methods are given: no 2D of the dropped cameras
        batch = model_batch(seen, skeleton, device=device)  # 2D only: joints_3d stays in `frames`
        ref = _reference(frames, batch, skeleton, dropped, device=device)
        model_adapted = adapt_for(model, batch, skeleton, multi_view)
        if "single" in modes:
            _single_batch(acc, seen, batch, model_adapted, skeleton, floors, ref)
        if "multi" in modes:
            _multi_batch(acc, seen, batch, model, skeleton, model_adapted=model_adapted, multi_view=multi_view,
                         device=device, heldout=multi_heldout, ref=ref)
        num_frames += len(frames)
    sections = acc.result()
    result: dict[str, Any] = {
        "model": str(model_path), "data": str(data_url), "split": split,
        **({"rig_ids": list(rig_ids)} if rig_ids is not None else {}),
        **({"dropped_cameras": list(dropped)} if dropped else {}), "skeleton": skeleton.name,
        "num_frames": num_frames, "has_3d": has_3d, "modes": list(modes), "multi_mode": multi_view.method,
        "adapt_steps": multi_view.steps_to_adapt(), "multi_view": multi_view.model_dump(exclude_none=True),
    }
    if "single" in modes:
        result["single"] = sections.get("single", {OVERALL: {}, "per_camera": {}})
    if "multi" in modes:
        methods = (multi_view.method, "dlt", "robust")
        result["multi"] = {m: sections.get(m, {OVERALL: {}, "per_camera": {}}) for m in methods}
    result = _clean(result)
    if json_path is not None:
        fs, path = url_to_fs(json_path)
        write_bytes_atomic(fs, path, (json.dumps(result, indent=1) + "\n").encode())
    return result
