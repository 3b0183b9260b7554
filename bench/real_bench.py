"""Real-data benchmark (#14 item 8): Pose2Sim's Demo_MultiPerson videos through the whole user path, scored label-free.

What is measured. The four synchronised videos (1088x1920, 60 fps, 100 frames) and Qualisys calibration of Pose2Sim's
`Demo_MultiPerson` recording go through what a user runs: `rigpose detect` (MediaPipe, the bundled detector) ->
`rigpose rig import-qualisys` -> `rigpose datasets ingest mediapipe` (several people are in view: the converter keeps,
per frame, the person whose views triangulate most consistently: the "main person"; MediaPipe's people carry no
track ids across frames, so no other person is followed) with `--split train=0:0.6,val=0.6:0.7,test=0.7:1` ->
`rigpose datasets noise-profile` of the real train split -> `rigpose datasets build` of a synthetic prior (DeepMimic
motion, the detector's skeleton coco17, the imported rig, the measured noise profile). Three lifters are trained
with `rigpose.train.trainer.train` (what `rigpose train jobs/train.yaml --set ...` runs; jobs/train.yaml's model,
budgets below, tracking off, one local Ray for all three):

- `real`: trained on the real train split alone (2D only, 60 frames x 4 views);
- `prior`: the synthetic prior alone (zero-shot on the real rows);
- `prior+ft`: the prior fine-tuned on the real train split with the synthetic set mixed in (README "Fine-tuning":
  `model.init_from` the prior, `data.mix_url` the synthetic set, lr 1e-4).

No 3D ground truth exists, so every figure is label-free, on the real test split (and val), main person only:

- leave-one-camera-out reprojection px: each camera t in turn is removed from the frame (the batch is rebuilt
  without it, as `rigpose evaluate`'s held-out metric does), the 3D is estimated from the other cameras by
  (a) weighted DLT (`rigpose.geometry.triangulate`, detector scores as weights), (b) aniposelib's
  `CameraGroup.triangulate` (anipose's default path: keypoints with score < 0.5 dropped, no RANSAC/optimisation),
  (c) RigPose's default multi-view answer (`lift_multi_uncertain`, MultiViewConfig() = posterior), (d) RigPose single
  view from each other camera s (the lift of s alone, placed in the world at the root triangulated from the other
  cameras, as `rigpose evaluate --drop-camera` scores it; "own root": at the lifter's own metric root instead),
  projected into t and compared with t's own 2D (`rigpose.metrics.reprojection_errors` / `heldout_view_errors`).
  Median, mean and share under 10 px over (frame, held-out camera, joint) where t has that keypoint and (a), (b) and
  every model's (c) answer it (the common set; coverage of each method apart); (d) over the same entries x every
  other source camera s that has 2D.
- bone-length consistency: the std over the split's frames of each coco17 bone's length (mm), averaged over the
  14 bones, of the all-camera answers of (a), (b), (c) and of (d) each camera's single-view lift; taken per person
  (the frames where each of the recording's two people was the one kept: 2-means of the kept root on the floor),
  then averaged over the two.
- person selection: cameras holding the kept person per frame, which person it was, how often it switches.
- `--crosscheck`: the package's own `rigpose evaluate --drop-camera CAM` per camera and model (its dropped_px).

Budgets (defaults; about 13 minutes of training on 2 cores): prior 1,200 steps x 256 frames on 20,000 synthetic
frames; real 400 steps x 12 frames (80 epochs of the 60 real rows); prior+ft 400 steps x 12 frames at lr 1e-4,
mix_ratio 0.5. Results: bench/REAL_BENCH_RESULTS.md.

The t camera's own 2D is noisy (the noise profile: ~7-14 px median per camera), so no method can reach 0 px here.

    PYTHONPATH=platform .venv/bin/python bench/real_bench.py --demo /tmp/rb-dl/Pose2Sim/Demo_MultiPerson \\
        --aniposelib-path /tmp/rb-pkgs --work /tmp/rigpose-real-bench --crosscheck --json /tmp/real_bench.json

Inputs (nothing is downloaded at run time):
- the recording (measured: pose2sim 0.10.49): `pip download pose2sim --no-deps -d /tmp/rb-dl && unzip
  /tmp/rb-dl/pose2sim-*.whl 'Pose2Sim/Demo_MultiPerson/*' -d /tmp/rb-dl`; only that recording is used
  (Demo_SinglePerson / Demo_Batch are kept out of benchmarks for an independent check);
- MediaPipe's weights: `pip download mediapipe==0.10.21 --no-deps --only-binary=:all: --python-version 3.11
  -d ~/.cache/rigpose/weights`;
- aniposelib for (b), into a folder beside the venv: `pip install --no-deps --target DIR aniposelib==0.7.2 toml
  numba==0.68.1 llvmlite==0.50.0` (numba 0.68 supports numpy < 2.6), then `--aniposelib-path DIR`; without it (b) is
  left out (never approximated).

Stages are cached in `--work` (delete a stage's folder to redo it; `--fresh` redoes all): a trained model is reused
when `runs/<name>/model.pt` exists, so changed budgets need a new `--work` or `--fresh`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CAMERAS = ("cam01", "cam02", "cam03", "cam04")
SPLIT = "train=0:0.6,val=0.6:0.7,test=0.7:1"
SEQUENCE = "multiperson"
ANIPOSE_SCORE_THRESHOLD = 0.5  # anipose's default `triangulation.score_threshold`


def _say(msg: str) -> None:
    print(f"[real_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _rigpose(*args: str) -> None:
    """One `python -m rigpose ...` command, as a user runs it (output shown)."""
    cmd = [sys.executable, "-m", "rigpose", *args]
    _say("$ rigpose " + " ".join(args))
    subprocess.run(cmd, check=True)


# ---------------------------------------------------------------------------------------------------- data


def prepare_data(demo: Path, work: Path, *, synth_frames: int) -> dict[str, str]:
    """detect -> rig -> ingest -> noise profile -> synthetic prior; each stage skipped when its output exists."""
    videos = [demo / "videos" / f"{c}.mp4" for c in CAMERAS]
    calib = demo / "calibration" / "Calib.qca.txt"
    missing = [str(p) for p in [*videos, calib] if not p.exists()]
    if missing:
        raise SystemExit(f"--demo {demo}: missing {missing}; see this script's docstring for how to obtain it")
    pose, rig, real = work / "pose", work / "rig.json", work / "ds-real"
    noise, recipe, synth = work / "noise.json", work / "prior.yaml", work / "ds-synth"
    if not all((pose / f"{c}.json").exists() for c in CAMERAS):
        _rigpose("detect", *map(str, videos), "--out", str(pose), "--no-progress", "--overwrite")
    if not rig.exists():
        _rigpose("rig", "import-qualisys", str(calib), "--out", str(rig), "--rig-id", "demo-multiperson")
    if not real.exists():
        _rigpose("datasets", "ingest", "mediapipe", *(str(pose / f"{c}.json") for c in CAMERAS), "--rig", str(rig),
                 "--out", str(real), "--sequence", SEQUENCE, "--split", SPLIT)
    if not noise.exists():
        _rigpose("datasets", "noise-profile", str(real), "--split", "train", "--out", str(noise))
    if not synth.exists():
        recipe.write_text(yaml.safe_dump({
            "name": "demo-multiperson-prior", "seed": 0, "frames": synth_frames, "skeleton": "coco17",
            "motion": {"source": "deepmimic", "clips": "all", "fps": 30},
            "subjects": {"count": 5, "scale": [0.9, 1.1], "bone_jitter": 0.03},
            "placement": {"radius": 1.0, "yaw_deg": [0, 360]},
            "rigs": [str(rig)],
            "noise": {"profile": str(noise), "occlusion_rate": 0.04},
            "splits": {"by": "placement", "fractions": {"train": 0.9, "val": 0.1}},
        }, sort_keys=False))
        _rigpose("datasets", "build", str(recipe), "--out", str(synth))
    return {"pose": str(pose), "rig": str(rig), "real": str(real), "noise": str(noise), "recipe": str(recipe),
            "synth": str(synth)}


# ---------------------------------------------------------------------------------------------------- training


def train_models(paths: dict[str, str], work: Path, budgets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The three lifters (module docstring), in one local Ray; a run folder that holds model.pt is reused."""
    from rigpose.cluster.connect import init_ray, shutdown_ray
    from rigpose.config import TrainJob, load_config
    from rigpose.train.trainer import train

    runs = work / "runs"
    common = [f"run.output_dir={runs}", "tracking.enabled=false", "data.verify=footer"]
    jobs = {
        "real": [f"data.url={paths['real']}", *budgets["real"]["sets"]],
        "prior": [f"data.url={paths['synth']}", *budgets["prior"]["sets"]],
        "prior+ft": [f"data.url={paths['real']}", f"data.mix_url={paths['synth']}",
                     f"model.init_from={runs / 'prior' / 'model.pt'}", *budgets["prior+ft"]["sets"]],
    }
    out: dict[str, dict[str, Any]] = {}
    started = False
    try:
        for name, sets in jobs.items():
            run_name = name.replace("+", "-")
            model_pt = runs / run_name / "model.pt"
            history_file = runs / run_name / "history.json"
            if not model_pt.exists():
                if not started:
                    init_ray(None)
                    started = True
                job = load_config(TrainJob, REPO / "jobs" / "train.yaml", [*common, f"run.name={run_name}", *sets])
                _say(f"train {name}: " + " ".join(sets))
                t0 = time.time()
                train(job)
                (runs / run_name / "bench_wall_s.txt").write_text(f"{time.time() - t0:.1f}\n")
            history = json.loads(history_file.read_text())
            wall = runs / run_name / "bench_wall_s.txt"
            out[name] = {"model": str(model_pt), "sets": sets,
                         "steps": int(history[-1]["step"]), "epochs": len(history),
                         "train_s": float(sum(h.get("epoch_s", 0.0) for h in history)),
                         "wall_s": float(wall.read_text()) if wall.exists() else None,
                         "final_val_px": history[-1].get("val/reprojection_px")}
    finally:
        if started:
            shutdown_ray()
    return out


# ---------------------------------------------------------------------------------------------------- scoring


def _np(batch: dict[str, Any], key: str) -> np.ndarray:
    return batch[key].detach().cpu().double().numpy()


def _cams(batch: dict[str, Any]) -> Any:
    from rigpose import geometry as g

    return g.CameraArrays(*(_np(batch, k) for k in ("K", "dist", "R", "t")))


class Anipose:
    """aniposelib's CameraGroup of the rig (metres), triangulating a subset of cameras as anipose does."""

    def __init__(self, rig: Any) -> None:
        import cv2
        from aniposelib.cameras import Camera, CameraGroup

        self.names = [c.name for c in rig.cameras]
        self.group = CameraGroup([
            Camera(name=c.name, size=(c.width, c.height), matrix=np.asarray(c.K, np.float64),
                   dist=np.asarray(c.dist, np.float64), rvec=cv2.Rodrigues(np.asarray(c.R, np.float64))[0].ravel(),
                   tvec=np.asarray(c.t, np.float64))
            for c in rig.cameras])

    def triangulate(self, kp_BVJ2: np.ndarray, score_BVJ: np.ndarray, views: list[int]) -> np.ndarray:
        """World points [B, J, 3] (NaN: fewer than 2 cameras) from the pixel keypoints of `views`."""
        B, _, J, _ = kp_BVJ2.shape
        pts = np.where((score_BVJ >= ANIPOSE_SCORE_THRESHOLD)[..., None], kp_BVJ2, np.nan)[:, views]  # [B, C, J, 2]
        sub = self.group.subset_cameras_names([self.names[v] for v in views])
        X = sub.triangulate(pts.transpose(1, 0, 2, 3).reshape(len(views), B * J, 2), undistort=True, progress=False)
        return np.asarray(X, np.float64).reshape(B, J, 3)


def _stats(err: np.ndarray) -> dict[str, float | int | None]:
    e = np.asarray(err, np.float64)
    e = e[np.isfinite(e)]
    if not e.size:
        return {"median_px": None, "mean_px": None, "under_10px": None, "n": 0}
    return {"median_px": float(np.median(e)), "mean_px": float(e.mean()), "under_10px": float((e < 10).mean()),
            "n": int(e.size)}


def _bone_std(X: np.ndarray, skeleton: Any, *, min_frames: int = 5) -> dict[str, Any]:
    """Std over frames (axis 0) of each bone's length, mm; X [B, ..., J, 3] metres; mean over bones (and views)."""
    from rigpose.skeleton import bone_lengths

    L = 1000.0 * bone_lengths(X, skeleton)  # [B, ..., nb]
    n = np.isfinite(L).sum(0)
    with np.errstate(invalid="ignore"):
        sd = np.where(n >= min_frames, np.nanstd(np.where(np.isfinite(L), L, np.nan), axis=0), np.nan)
    names = [f"{skeleton.joint_names[p]}-{skeleton.joint_names[c]}" for c, p in skeleton.bones]
    per_bone = sd if sd.ndim == 1 else np.nanmean(sd, axis=tuple(range(sd.ndim - 1)))
    return {"mean_std_mm": float(np.nanmean(sd)) if np.isfinite(sd).any() else None,
            "per_bone_std_mm": {k: (float(v) if np.isfinite(v) else None)
                                for k, v in zip(names, per_bone, strict=True)}}


def score_split(real_url: str, split: str, models: dict[str, str], anipose: Anipose | None,
                person_of_frame: dict[int, int]) -> dict[str, Any]:
    """Leave-one-camera-out px and bone-length std on `split` (module docstring), overall and per person
    (`person_of_frame`: which of the recording's people the converter kept in each frame, `selection_report`)."""
    import torch

    from rigpose import geometry as g
    from rigpose import metrics as ev
    from rigpose.config import MultiViewConfig
    from rigpose.data.reader import Dataset, iter_frames
    from rigpose.inference.lift import lift_multi_uncertain, model_batch, sequence_groups
    from rigpose.inference.models import load_model
    from rigpose.model.fusion import lift_single

    ds = Dataset(real_url)
    frames = next(iter_frames(ds, split=split, batch_size=100_000))
    loaded = {name: load_model(path)[:2] for name, path in models.items()}
    skeleton = next(iter(loaded.values()))[1]
    assert ds.skeleton.name == skeleton.name
    mv = MultiViewConfig()
    V = frames.num_views
    full = model_batch(frames, skeleton)
    kp, w, cams = _np(full, "kp"), _np(full, "w"), _cams(full)
    raw_kp, raw_sc = frames.keypoints.astype(np.float64), frames.scores.astype(np.float64)
    groups = sequence_groups(frames)
    person = np.array([person_of_frame.get(int(f), -1) for f in frames.frame])
    errs: dict[str, list[np.ndarray]] = {}
    covered: dict[str, list[np.ndarray]] = {}
    observed_all: list[np.ndarray] = []

    def keep(key: str, e: np.ndarray, store: dict[str, list[np.ndarray]]) -> None:
        store.setdefault(key, []).append(e)

    with torch.no_grad():
        for t in range(V):
            without = dataclasses.replace(frames, view_mask=frames.view_mask & (np.arange(V) != t))
            bv = model_batch(without, skeleton)
            cams_v = _cams(bv)
            cam_t = g.CameraArrays(*(a[:, t] for a in cams))
            observed = (w[:, t] > 0) & frames.view_mask[:, t][:, None]  # [B, J]
            answers: dict[str, np.ndarray] = {}
            with np.errstate(invalid="ignore", divide="ignore"):
                answers["a_dlt"] = g.triangulate(_np(bv, "kp"), cams_v, _np(bv, "w"))
            if anipose is not None:
                answers["b_aniposelib"] = anipose.triangulate(raw_kp, raw_sc, [v for v in range(V) if v != t])
            single: dict[str, dict[str, np.ndarray]] = {}
            root_loo = np.where(_np(bv, "root_ok")[:, None] > 0, _np(bv, "root_world"), np.nan)  # [B, 3]
            for name, (model, _) in loaded.items():
                X, _sigma = lift_multi_uncertain(model, bv, skeleton, mv, groups=groups)
                answers[f"c_multi/{name}"] = X
                rel, root = lift_single(model, bv)  # [B, V, J, 3], [B, V, 3] camera frames
                at_loo = ev.heldout_view_errors(rel, np.broadcast_to(root_loo[:, None], (*rel.shape[:2], 3)),
                                                kp, w, cams)[:, :, t]  # [B, S, J]
                Rv, tv = _np(bv, "R"), _np(bv, "t")
                own_world = np.einsum("bsji,bsj->bsi", Rv, root - tv)  # R^T (root_cam - t)
                at_own = ev.heldout_view_errors(rel, own_world, kp, w, cams)[:, :, t]
                single[name] = {"d_single/" + name: at_loo, "d_single_ownroot/" + name: at_own}
            errt = {k: ev.reprojection_errors(X, kp[:, t], w[:, t], cam_t) for k, X in answers.items()}
            common = observed.copy()
            for e in errt.values():
                common &= np.isfinite(e)
            for k, e in errt.items():
                keep(k, np.where(common, e, np.nan), errs)
                keep(k, np.isfinite(e)[observed], covered)
            for name in loaded:
                for k, e in single[name].items():
                    keep(k, np.where(common[:, None], e, np.nan), errs)
            observed_all.append(observed)
        # bone-length consistency: every camera's 2D
        all_views: dict[str, np.ndarray] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            all_views["a_dlt"] = g.triangulate(kp, cams, w)
        if anipose is not None:
            all_views["b_aniposelib"] = anipose.triangulate(raw_kp, raw_sc, list(range(V)))
        for name, (model, _) in loaded.items():
            all_views[f"c_multi/{name}"] = lift_multi_uncertain(model, full, skeleton, mv, groups=groups)[0]
            all_views[f"d_single/{name}"] = lift_single(model, full)[0]
    people = sorted(p for p in set(person.tolist()) if p >= 0)
    bones: dict[str, Any] = {}
    for k, X in all_views.items():
        # bones differ between people: the std over the frames of each person, then the mean over people
        per = {p: _bone_std(X[person == p], skeleton) for p in people}
        vals = [b["mean_std_mm"] for b in per.values() if b["mean_std_mm"] is not None]
        bones[k] = {"mean_std_mm": float(np.mean(vals)) if vals else None,
                    "all_frames": _bone_std(X, skeleton), "per_person": {str(p): b for p, b in per.items()}}
    loo = {k: _stats(np.concatenate([e.ravel() for e in v])) for k, v in errs.items()}
    for k, v in errs.items():
        loo[k]["per_person"] = {str(p): _stats(np.concatenate([e[person == p].ravel() for e in v])) for p in people}
    for k, v in covered.items():
        loo[k]["coverage"] = float(np.concatenate(v).mean())
    per_camera = {k: {CAMERAS[t]: _stats(e)["median_px"] for t, e in enumerate(v)} for k, v in errs.items()}
    frames_per_person = {str(p): int((person == p).sum()) for p in people}
    return {"split": split, "frames": len(frames), "frames_per_person": frames_per_person,
            "observed_keypoints": int(sum(o.sum() for o in observed_all)),
            "loo": loo, "loo_median_per_heldout_camera": per_camera, "bones": bones}


def crosscheck(real_url: str, models: dict[str, str], split: str = "test") -> dict[str, Any]:
    """`rigpose evaluate --drop-camera CAM` (rigpose.inference.evaluate) per camera and model: its dropped_px, the
    median px into the dropped camera over every joint each method answers (not the common set above)."""
    from rigpose.inference.evaluate import evaluate

    out: dict[str, Any] = {}
    for name, path in models.items():
        for cam in CAMERAS:
            r = evaluate(path, real_url, split=split, drop_cameras=[cam], multi_heldout=False)
            out.setdefault(name, {})[cam] = {
                **{k: v["overall"].get("dropped_px") for k, v in r["multi"].items()},
                "single": r["single"]["overall"].get("dropped_px")}
    return out


def selection_report(real_url: str) -> dict[str, Any]:
    """How the converter's person selection went over the whole sequence: cameras holding the main person per
    frame, and jumps of its robustly triangulated root between consecutive frames (> 0.3 m: a likely switch)."""
    from rigpose.data.reader import Dataset, iter_frames
    from rigpose.inference.lift import model_batch
    from rigpose.skeleton import get_skeleton

    ds = Dataset(real_url)
    sk = get_skeleton(ds.skeleton.name)
    parts = [f for split in ("train", "val", "test") for f in iter_frames(ds, split=split, batch_size=100_000)]
    order = np.argsort(np.concatenate([f.frame for f in parts]))
    views = np.concatenate([((f.scores > 0).any(-1) & f.view_mask).sum(-1) for f in parts])[order]
    roots = []
    for f in parts:
        b = model_batch(f, sk, pseudo_3d=False)
        roots.append(np.where(_np(b, "root_ok")[:, None] > 0, _np(b, "root_world"), np.nan))
    root = np.concatenate(roots)[order]
    frame = np.concatenate([f.frame for f in parts])[order]
    ok = np.isfinite(root).all(-1)
    # two people in the recording: 2-means of the kept person's root on the floor (x, y), from the extremes
    xy = root[ok, :2]
    centres = xy[[np.argmin(xy[:, 0]), np.argmax(xy[:, 0])]]
    for _ in range(10):
        label = np.linalg.norm(xy[:, None] - centres[None], axis=-1).argmin(1)
        centres = np.stack([xy[label == k].mean(0) for k in range(2)])
    spread = [float(np.linalg.norm(xy[label == k] - centres[k], axis=-1).max()) for k in range(2)]
    person = dict(zip(frame[ok].tolist(), label.tolist(), strict=True))
    switches = int((np.diff(label) != 0).sum())
    step = np.linalg.norm(np.diff(root, axis=0), axis=-1)
    per_cam = np.concatenate([((f.scores > 0).any(-1) & f.view_mask) for f in parts])[order].mean(0)
    return {"frames": len(root), "views_per_frame": {int(k): int(v) for k, v in
                                                          zip(*np.unique(views, return_counts=True), strict=True)},
            "share_with_person_per_camera": {c: float(s) for c, s in zip(CAMERAS, per_cam, strict=True)},
            "root_jumps_over_0.3m": int((step > 0.3).sum()),
            "person_of_frame": person, "person_centres_m": centres.tolist(), "person_radius_max_m": spread,
            "frames_per_person": [int((label == k).sum()) for k in range(2)], "person_switches": switches,
            "root_step_median_m": float(np.nanmedian(step)), "root_step_max_m": float(np.nanmax(step)),
            "root_mean_m": [float(x) for x in np.nanmean(root, 0)]}


# ---------------------------------------------------------------------------------------------------- report


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    """The tables of one split's result, in BENCHMARKS.md's style."""
    lines = []
    for split, r in result["scores"].items():
        loo, bones = r["loo"], r["bones"]
        people = list(r["frames_per_person"])
        lines.append(f"\n{split} split: {r['frames']} frames (per person {r['frames_per_person']}), "
                     f"{r['observed_keypoints']} held-out keypoints\n")
        lines.append("| method | model | LOO median px | mean px | < 10 px | coverage | "
                     + "".join(f"median px, person {p} | " for p in people) + "bone std mm |")
        lines.append("|---|---|---|---|---|---|" + "---|" * len(people) + "---|")
        for key in sorted(loo, key=lambda k: (k.split("/")[0], list(result["models"]).index(k.split("/")[1])
                                              if "/" in k else -1)):
            s = loo[key]
            method, _, model = key.partition("/")
            b = bones.get(key, bones.get(key.replace("d_single_ownroot", "d_single"), {}))
            bone = "" if key.startswith("d_single_ownroot") else _fmt(b.get("mean_std_mm"))
            pp = "".join(f"{_fmt(s['per_person'][p]['median_px'])} | " for p in people)
            lines.append(f"| {method} | {model or '-'} | {_fmt(s['median_px'])} | {_fmt(s['mean_px'])} | "
                         f"{_fmt(s['under_10px'], '.2f')} | {_fmt(s.get('coverage'), '.2f')} | {pp}{bone} |")
    return "\n".join(lines)


def goals(result: dict[str, Any], split: str = "test") -> list[str]:
    """The issue's goals on `split`, each with its ratio and met / not met."""
    loo, bones = result["scores"][split]["loo"], result["scores"][split]["bones"]
    a = loo["a_dlt"]["median_px"]
    b = loo.get("b_aniposelib", {}).get("median_px")
    out = []
    for m in result["models"]:
        c, d = loo[f"c_multi/{m}"]["median_px"], loo[f"d_single/{m}"]["median_px"]
        out.append(f"{m}: (c)/(a) = {c / a:.3f} ({'met' if c <= 0.85 * a else 'NOT met'}, goal <= 0.85)")
        if b:
            out.append(f"{m}: (c)/(b) = {c / b:.3f} ({'met' if c <= 0.85 * b else 'NOT met'}, goal <= 0.85)")
        out.append(f"{m}: (d)/(a) = {d / a:.3f} ({'met' if d <= 2 * a else 'NOT met'}, goal <= 2)")
        bc, ba = bones[f"c_multi/{m}"]["mean_std_mm"], bones["a_dlt"]["mean_std_mm"]
        out.append(f"{m}: bone std (c)/(a) = {bc / ba:.3f} ({'met' if bc <= 0.5 * ba else 'NOT met'}, goal <= 0.5)")
    if {"real", "prior", "prior+ft"} <= set(result["models"]):
        for key in ("c_multi", "d_single"):
            v = {m: loo[f"{key}/{m}"]["median_px"] for m in ("real", "prior", "prior+ft")}
            ok = v["prior+ft"] < min(v["real"], v["prior"])
            out.append(f"prior+ft better than either alone on {key}: {'met' if ok else 'NOT met'} "
                       f"({v['prior+ft']:.2f} vs real {v['real']:.2f}, prior {v['prior']:.2f} px)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--demo", type=Path, required=True, help="Pose2Sim's Demo_MultiPerson folder (see below).")
    ap.add_argument("--aniposelib-path", type=Path, default=None,
                    help="Folder holding aniposelib (and numba, toml), put on sys.path; without it (b) is left out.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/rigpose-real-bench"), help="Stage cache folder.")
    ap.add_argument("--fresh", action="store_true", help="Remove --work first.")
    ap.add_argument("--synth-frames", type=int, default=20000, help="Frames of the synthetic prior.")
    ap.add_argument("--prior-steps", type=int, default=1200)
    ap.add_argument("--real-steps", type=int, default=400)
    ap.add_argument("--ft-steps", type=int, default=400)
    ap.add_argument("--real-batch", type=int, default=12, help="Frames per step on the real (and mixed) rows.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process (scoring).")
    ap.add_argument("--crosscheck", action="store_true",
                    help="Also run rigpose evaluate --drop-camera per camera and model (test split).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.aniposelib_path is not None:
        sys.path.insert(0, str(args.aniposelib_path))
    try:
        import aniposelib  # noqa: F401

        has_anipose = True
    except ImportError as e:
        _say(f"aniposelib not importable ({e}): (b) is left out")
        has_anipose = False
    from rigpose.cli.ui import configure_output
    from rigpose.rig import load_rig

    configure_output(verbose=False)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    paths = prepare_data(args.demo, args.work, synth_frames=args.synth_frames)
    t_data = time.time() - t0
    rb = args.real_batch
    budgets = {
        "real": {"sets": [f"optim.steps={args.real_steps}", f"data.batch_size={rb}", "optim.warmup_steps=40"]},
        "prior": {"sets": [f"optim.steps={args.prior_steps}"]},
        "prior+ft": {"sets": [f"optim.steps={args.ft_steps}", f"data.batch_size={rb}", "optim.lr=1.0e-4",
                              "optim.warmup_steps=0", "data.mix_ratio=0.5"]},
    }
    t1 = time.time()
    trained = train_models(paths, args.work, budgets)
    t_train = time.time() - t1
    anipose = Anipose(load_rig(paths["rig"])) if has_anipose else None
    t2 = time.time()
    models = {name: info["model"] for name, info in trained.items()}
    selection = selection_report(paths["real"])
    scores = {split: score_split(paths["real"], split, models, anipose, selection["person_of_frame"])
              for split in ("test", "val")}
    result = {"demo": str(args.demo), "work": str(args.work), "paths": paths, "models": trained,
              "aniposelib": has_anipose, "selection": selection, "scores": scores,
              "seconds": {"data": t_data, "train": t_train, "score": time.time() - t2},
              "command": " ".join(sys.argv)}
    if args.crosscheck:
        result["crosscheck_evaluate_dropped_px"] = crosscheck(paths["real"], models)
        result["seconds"]["crosscheck"] = time.time() - t2 - result["seconds"]["score"]
    result["goals"] = goals(result)
    print(markdown(result))
    print("\nperson selection:", json.dumps({k: v for k, v in selection.items() if k != "person_of_frame"}))
    print("\ngoals (test split):\n- " + "\n- ".join(result["goals"]))
    if args.crosscheck:
        print("\nrigpose evaluate --drop-camera, dropped_px (median, test):")
        for name, per in result["crosscheck_evaluate_dropped_px"].items():
            print(f"  {name}: " + "; ".join(f"{c} " + ", ".join(f"{k} {_fmt(v)}" for k, v in d.items())
                                            for c, d in per.items()))
    print(f"\nseconds: {json.dumps(result['seconds'])}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
