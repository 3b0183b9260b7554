"""Accuracy grid of the lifter: rigs x 2D noise x missing views, every multi-view method vs triangulation.

What it measures. The lifter is trained on the demo recipe (Human3.6M S1 rig, the recipe's 5 px detector model,
subjects scaled 0.9-1.1x) 2D-supervised and 3D-supervised, each with the job's defaults (step budget `--steps`, cosine
schedule, the default model) and with today's (`TODAY_BUDGET`: 12 epochs, lr x0.9 per epoch, and the model as it
was when #13 was filed; `--no-baseline` skips it), so four trainings. Every grid cell then evaluates those models
on data they never saw:

- rigs: the 4 H36M S1 cameras (the training rig), studio-8 and a 3-camera subset of studio-8 (written here as
  `studio-8-3cam`, floor at z = 0); 2D noise: clean, 5 px (the demo recipe's detector model), 12 px (the same
  with pixel_std 12); views: all, or one random view dropped per frame;
- performers at fixed body scales 0.85, 1.0 and 1.15x (one small test dataset per scale, 10 Hz so that a few
  hundred frames cover every training motion once; the recipe's held-out motions are left out), pooled for the
  multi-view numbers and kept apart for the single view (floor_mpjpe_mm: made metric by the feet on the floor);
- per cell: robust and weighted DLT, the default multi-view answer (posterior, with its stated uncertainty),
  fusion, refinement, adaptation (`--adapt-steps`), and the single view of every trained model;
- on the training dataset itself: the single view (and posterior, fusion) on `train` beside `test` and
  `test_clips`, new budget vs today's;
- cost: per-frame time of posterior vs fusion (batch preparation included), best of 3, at 1 and 2 threads; the
  goal's baseline is today's fusion (today's lifter), the faster of its 1- and 2-thread times.

It prints the tables and one PASS/FAIL line per goal (GOALS); `--json OUT` writes everything, with the command,
the machine and the seconds per phase. Built datasets and trained runs in `--out` are reused, so a rerun only
evaluates. `--max-rows` is per cell: it is split evenly over the three body scales.

    .venv/bin/python bench/accuracy_bench.py [--steps 3000] [--max-rows 1000] [--adapt-steps 30] \\
        [--set optim.lr=3e-4 ...] [--no-baseline] [--json outputs/bench/accuracy.json]
    .venv/bin/python bench/accuracy_bench.py --quick     # small data, a few hundred steps: checks the path only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
console = Console(width=200)

# Training budgets as `--set` overrides of jobs/train.yaml (rigpose.config.OptimConfig). `optim.epochs=null` in the
# new budget because a job file that still says `epochs:` would otherwise win over `steps`.
NEW_BUDGET = ["optim.epochs=null", "optim.schedule=cosine", "optim.steps={steps}"]
# "today": the model and budget as they were when #13 was filed (12 epochs at 0.9 per epoch, ray output, 512 wide,
# dropout 0.5 for the first half, the camera frame), the baseline of its single-view goals
TODAY_BUDGET = ["optim.schedule=exponential", "optim.epochs=12", "optim.lr_decay=0.9", "optim.warmup_steps=0",
                "model.output=ray", "model.width=512", "model.dropout=0.5", "model.frame=camera"]
COMMON_TRAIN = ["tracking.enabled=false"]  # the bench evaluates itself; no MLflow run, registration or eval
QUICK = {"train_frames": 3000, "steps": 300, "max_rows": 200}

SUBSET_RIG = "studio-8-3cam"
SUBSET_CAMERAS = (0, 3, 5)  # studio-8 azimuths 0, 135, -135 deg: three well-spread views (gaps 135/90/135 deg)
RIGS = ("h36m-s1", "studio-8", SUBSET_RIG)
NOISE_PX = {"clean": None, "5px": 5.0, "12px": 12.0}  # None: exact projections; else the recipe's model at this std
DROPS = ("all", "drop1")
BODY_SCALES = (0.85, 1.0, 1.15)
TEST_SEED = 101  # test placements differ from the training ones; the same across rigs and noise (paired cells)
TEST_FPS = 10.0
METHODS = ("posterior", "fusion", "refinement", "adaptation")  # the lifter's multi-view answers
BASELINES = ("robust", "dlt")
SUPERVISIONS = ("2d", "3d")

# Goal thresholds (the issue's): multi-view default / robust DLT; single view new / today; body-size spread.
GOALS = {"multi_5px": 0.75, "multi_12px": 0.8, "multi_drop1": 0.8, "multi_any": 1.0, "multi_clean_mm": 1.0,
         "train_vs_today": 0.6, "test_vs_today": 0.75, "body_scale_spread": 0.10, "root_mm": 150.0,
         "sup_2d_vs_3d": 1.05, "cost_posterior_vs_fusion": 3.0}


# ---------------------------------------------------------------------------------------------- data


def demo_recipe() -> dict[str, Any]:
    """The shipped demo recipe as a plain mapping."""
    from rigpose.resources import recipe_path

    return yaml.safe_load(recipe_path("demo").read_text())


def build(raw: dict[str, Any], out: Path) -> str:
    """Build recipe `raw` into `out` once (an existing committed dataset there is reused)."""
    from rigpose.data.manifest import read_manifest
    from rigpose.data.synth.build import build_dataset
    from rigpose.data.synth.recipe import parse_recipe

    if read_manifest(str(out)) is None:
        build_dataset(parse_recipe(raw, source=str(out)), str(out), progress=False, command="bench/accuracy_bench.py")
    return str(out)


def write_subset_rig(out: Path) -> str:
    """`SUBSET_CAMERAS` of studio-8 as rig `SUBSET_RIG` (floor_z 0) in `out`; the file's path."""
    from rigpose.resources import rig_path
    from rigpose.rig import Rig, load_rig, save_rig

    path = out / f"{SUBSET_RIG}.json"
    if not path.is_file():
        studio = load_rig(rig_path("studio-8"))
        out.mkdir(parents=True, exist_ok=True)
        save_rig(Rig(rig_id=SUBSET_RIG, cameras=tuple(studio.cameras[i] for i in SUBSET_CAMERAS), floor_z=0.0), path)
    return str(path.resolve())


def test_recipe(rig_ref: str, noise_px: float | None, scale: float, *, frames: int) -> dict[str, Any]:
    """The demo recipe in one rig, at one 2D noise level and one body scale, every frame in split `test`."""
    raw = demo_recipe()
    noise = dict(raw["noise"], pixel_std=noise_px) if noise_px is not None else {}
    held_out = raw["splits"].get("held_out_clips", [])
    raw.update(name=f"accuracy-grid-{Path(rig_ref).stem}", seed=TEST_SEED, frames=frames, rigs=[rig_ref], noise=noise,
               motion={**raw["motion"], "fps": TEST_FPS, "exclude": held_out},
               subjects={**raw["subjects"], "scale": [scale, scale]},
               splits={"by": "placement", "fractions": {"test": 1.0}})
    return raw


def drop_one_view(src: str, dst: Path, *, split: str, seed: int = 0) -> str:
    """Copy `split` of `src` to `dst` with one random view per frame removed (NaN keypoints, score 0)."""
    from rigpose.data.manifest import read_manifest
    from rigpose.data.reader import Dataset
    from rigpose.data.writer import DatasetWriter

    if read_manifest(str(dst)) is not None:
        return str(dst)
    ds = Dataset(src)
    frames = ds.read_frames(splits=[split])
    rng = np.random.default_rng(seed)
    num_views = frames.view_mask.sum(1)
    drop = np.floor(rng.random(len(frames)) * num_views).astype(int)  # among the rig's real views
    frames.keypoints = frames.keypoints.copy()
    frames.scores = frames.scores.copy()
    frames.keypoints[np.arange(len(frames)), drop] = np.nan
    frames.scores[np.arange(len(frames)), drop] = 0.0
    with DatasetWriter(str(dst), skeleton=ds.skeleton, command="bench: drop one view", max_bad_fraction=0.05) as w:
        for rig_id in np.unique(frames.rig_id):
            w.add(frames.take(frames.rig_id == rig_id), ds.rig(str(rig_id)))
        w.commit()
    return str(dst)


def build_test_sets(out: Path, *, frames: int) -> dict[tuple[str, str, str, float], str]:
    """(rig, noise, drop, scale) -> dataset URL, every frame in split `test`."""
    refs = {"h36m-s1": "h36m-s1", "studio-8": "studio-8", SUBSET_RIG: write_subset_rig(out / "rigs")}
    urls: dict[tuple[str, str, str, float], str] = {}
    for rig in RIGS:
        for noise, px in NOISE_PX.items():
            for scale in BODY_SCALES:
                name = f"test-{rig}-{noise}-x{scale:.2f}-{frames}"
                src = build(test_recipe(refs[rig], px, scale, frames=frames), out / "data" / name)
                urls[rig, noise, "all", scale] = src
                urls[rig, noise, "drop1", scale] = drop_one_view(src, out / "data" / f"{name}-drop1", split="test",
                                                                 seed=TEST_SEED)
    return urls


# ---------------------------------------------------------------------------------------------- training


def train(data: str, supervision: str, budget: list[str], out: Path, *, label: str) -> dict[str, Any]:
    """Train (or reuse the finished run of) the lifter on `data` with `budget` overrides; {model, seconds, ...}."""
    from rigpose.config import load_job
    from rigpose.train.trainer import train as run_training

    overrides = [f"data.url={data}", f"supervision={supervision}", *COMMON_TRAIN, *budget]
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    name = f"{Path(data).name}-{supervision}-{label}-{digest}"
    done = out / name / "bench_train.json"
    if done.is_file() and (out / name / "model.pt").is_file():
        return {**json.loads(done.read_text()), "reused": True}
    overrides += [f"run.output_dir={out}", f"run.name={name}"]
    t0 = time.perf_counter()
    result = run_training(load_job(REPO / "jobs" / "train.yaml", overrides))
    record = {"model": result["model"], "run_dir": result["run_dir"], "overrides": overrides,
              "seconds": time.perf_counter() - t0, "epochs": len(result["history"])}
    done.write_text(json.dumps(record, indent=1))
    return {**record, "reused": False}


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate(model: str, data: str, split: str, *, method: str = "posterior", adapt_steps: int = 0,
             modes: tuple[str, ...] = ("single", "multi"), max_rows: int) -> dict[str, Any]:
    """`rigpose.inference.evaluate.evaluate` with multi-view `method`, no multi-view held-out metric."""
    from rigpose.config import MultiViewConfig
    from rigpose.inference.evaluate import evaluate as ev

    return ev(model, data, split=split, modes=modes, max_rows=max_rows, multi_heldout=False,
              multi_view=MultiViewConfig(method=method, adapt_steps=adapt_steps if method == "adaptation" else 0))


def overall(section: dict[str, Any] | None) -> dict[str, float]:
    """The `overall` metrics of an evaluation section, None -> NaN."""
    values = (section or {}).get("overall", {})
    return {k: float("nan") if v is None else float(v) for k, v in values.items()}


def pool(parts: list[dict[str, float]]) -> dict[str, float]:
    """Metrics of several evaluations, averaged with weights num_poses (the per-scale datasets of one cell)."""
    weights = [p.get("num_poses", 0.0) for p in parts]
    out: dict[str, float] = {"num_poses": float(sum(weights))}
    for key in sorted({k for p in parts for k in p} - {"num_poses", "num_heldout"}):
        vw = [(p[key], w) for p, w in zip(parts, weights, strict=True) if key in p and math.isfinite(p[key]) and w]
        out[key] = sum(v * w for v, w in vw) / sum(w for _, w in vw) if vw else float("nan")
    return out


def evaluate_cell(models: dict[str, str], urls: dict[float, str], *, drop: str, rows: int,
                  adapt_steps: int) -> dict[str, Any]:
    """Every multi-view method (2D-supervised lifter) and, with all views, every model's single view, per scale."""
    multi: dict[float, dict[str, dict[str, float]]] = {}
    single: dict[str, dict[float, dict[str, float]]] = {m: {} for m in models}
    for scale, url in urls.items():
        multi[scale] = {}
        for method in METHODS:
            modes = ("single", "multi") if method == "posterior" and drop == "all" else ("multi",)
            r = evaluate(models["2d"], url, "test", method=method, adapt_steps=adapt_steps, modes=modes,
                         max_rows=rows)
            multi[scale][method] = overall(r["multi"][method])
            if method == "posterior":
                multi[scale].update({b: overall(r["multi"][b]) for b in BASELINES})
                if "single" in r:
                    single["2d"][scale] = overall(r["single"])
        if drop == "all":
            for name, model in models.items():
                if name != "2d":
                    single[name][scale] = overall(evaluate(model, url, "test", modes=("single",),
                                                           max_rows=rows)["single"])
    methods = {m: pool([multi[s][m] for s in urls]) for m in (*BASELINES, *METHODS)}
    robust = methods["robust"]["mpjpe_mm"]
    for m in methods.values():
        m["ratio_to_robust"] = m["mpjpe_mm"] / robust
        m["minus_robust_mm"] = m["mpjpe_mm"] - robust  # what clean 2D is judged by (robust DLT is ~0 mm there)
    return {"multi": methods, "multi_per_scale": {str(s): {m: v["mpjpe_mm"] for m, v in multi[s].items()}
                                                  for s in urls},
            "single": {name: {"pooled": pool(list(per.values())), "per_scale": {str(s): v for s, v in per.items()}}
                       for name, per in single.items() if per}}


def evaluate_training_data(models: dict[str, str], data: str, *, rows: int) -> dict[str, Any]:
    """Single view, posterior and fusion of every model on the training dataset's train / test / test_clips."""
    from rigpose.data.reader import Dataset

    splits = [s for s in ("train", "test", "test_clips") if s in Dataset(data).manifest.splits()]
    out: dict[str, Any] = {}
    for name, model in models.items():
        out[name] = {}
        for split in splits:
            r = evaluate(model, data, split, max_rows=rows)
            fusion = evaluate(model, data, split, method="fusion", modes=("multi",), max_rows=rows)
            out[name][split] = {"single": overall(r["single"]), "posterior": overall(r["multi"]["posterior"]),
                                "fusion": overall(fusion["multi"]["fusion"]),
                                "robust": overall(r["multi"]["robust"])}
    return out


def cost(model_path: str, data: str, *, num_frames: int, today_model: str | None = None) -> dict[str, Any]:
    """Milliseconds per frame of posterior vs fusion on `num_frames` prepared frames (batch building included), best
    of 3, at 1 and 2 torch threads; with `today_model` also today's fusion (today's lifter, the goal's baseline).
    "ratio": the best posterior over the best fusion of today's lifter (or of this one without it)."""
    import torch

    from rigpose.config import MultiViewConfig
    from rigpose.data.reader import iter_frames
    from rigpose.inference.lift import model_batch, open_inputs, sequence_groups
    from rigpose.model.multiview import estimate

    model, skeleton, ds = open_inputs(model_path, data, split="test")
    runs = [("posterior", "posterior", model), ("fusion", "fusion", model)]
    if today_model is not None:
        runs.append(("fusion-today", "fusion", open_inputs(today_model, data, split="test")[0]))
    frames = next(iter_frames(ds, split="test", batch_size=num_frames, max_rows=num_frames))
    groups = sequence_groups(frames)
    threads_before = torch.get_num_threads()
    out: dict[str, Any] = {"num_frames": len(frames), "per_frame_ms": {}}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, method, lifter in runs:
                config, best = MultiViewConfig(method=method), float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    estimate(lifter, model_batch(frames, skeleton, pseudo_3d=False), skeleton, config, groups=groups)
                    best = min(best, time.perf_counter() - t0)
                out["per_frame_ms"][f"{name}@{threads}"] = 1000 * best / len(frames)
    finally:
        torch.set_num_threads(threads_before)
    ms = out["per_frame_ms"]
    base = "fusion-today" if today_model is not None else "fusion"
    best = {name: min(ms[f"{name}@{t}"] for t in (1, 2)) for name, _, _ in runs}
    out["baseline"] = base
    out["ratio"] = best["posterior"] / best[base]
    out["ratio_same_lifter"] = best["posterior"] / best["fusion"]
    return out


# ---------------------------------------------------------------------------------------------- goals


def _worst(items: list[tuple[str, float]], *, limit: float) -> tuple[bool | None, str]:
    """(pass, detail) of the largest value in `items` against `limit`; pass None when nothing was measured."""
    items = [(k, v) for k, v in items if math.isfinite(v)]
    if not items:
        return None, "not measured (skipped, or no finite value)"
    key, value = max(items, key=lambda kv: kv[1])
    return value <= limit, f"worst {value:.3f} ({key}) vs <= {limit:g}; " + ", ".join(f"{k} {v:.3f}" for k, v in items)


def _scale_spread(cell: dict[str, Any], sup: str) -> tuple[float, str]:
    """Largest |error(s) / error(1.0) - 1| over the body scales, of floor_mpjpe_mm (else mpjpe_mm)."""
    per = cell["single"].get(sup, {}).get("per_scale", {})
    key = "floor_mpjpe_mm" if all(math.isfinite(v.get("floor_mpjpe_mm", math.nan)) for v in per.values()) \
        else "mpjpe_mm"
    ref = per.get("1.0", {}).get(key, math.nan)
    return max((abs(v[key] / ref - 1) for s, v in per.items() if s != "1.0"), default=math.nan), key


def goals(grid: list[dict[str, Any]], training: dict[str, Any], cost_result: dict[str, Any]) -> dict[str, Any]:
    """{goal: {"pass", "detail", "ratios"}} against GOALS."""
    G, out = GOALS, {}

    def cell_name(c: dict[str, Any]) -> str:
        return f"{c['rig']}/{c['noise']}/{c['drop']}"

    def ratio(c: dict[str, Any]) -> float:
        return c["multi"]["posterior"]["ratio_to_robust"]

    def add(goal: str, items: list[tuple[str, float]], limit: float) -> None:
        ok, detail = _worst(items, limit=limit)
        out[goal] = {"pass": ok, "detail": detail, "ratios": dict(items), "limit": limit}

    add("multi_5px", [(cell_name(c), ratio(c)) for c in grid if c["noise"] == "5px" and c["drop"] == "all"],
        G["multi_5px"])
    add("multi_12px", [(cell_name(c), ratio(c)) for c in grid if c["noise"] == "12px" and c["drop"] == "all"],
        G["multi_12px"])
    add("multi_drop1", [(cell_name(c), ratio(c)) for c in grid if c["noise"] != "clean" and c["drop"] == "drop1"],
        G["multi_drop1"])
    add("multi_any", [(cell_name(c), ratio(c)) for c in grid if c["noise"] != "clean"], G["multi_any"])
    add("multi_clean_mm", [(cell_name(c), c["multi"]["posterior"]["mpjpe_mm"] - c["multi"]["robust"]["mpjpe_mm"])
                           for c in grid if c["noise"] == "clean"], G["multi_clean_mm"])
    plain = [c for c in grid if c["drop"] == "all"]
    for goal, split in (("train_vs_today", "train"), ("test_vs_today", "test")):
        items = [(sup, training[sup][split]["single"]["mpjpe_mm"] / training[f"{sup}-today"][split]["single"]
                  ["mpjpe_mm"]) for sup in SUPERVISIONS if f"{sup}-today" in training and split in training[sup]]
        add(goal, items, G[goal])
    spreads = [(f"{cell_name(c)} {sup} {key}", spread) for c in plain for sup in SUPERVISIONS
               for spread, key in [_scale_spread(c, sup)]]
    add("body_scale_spread", spreads, G["body_scale_spread"])
    add("root_mm", [(f"{cell_name(c)} {sup}", c["single"][sup]["pooled"].get("floor_root_mm", math.nan))
                    for c in plain for sup in SUPERVISIONS if sup in c["single"]], G["root_mm"])
    sup_items = [(cell_name(c), c["single"]["2d"]["pooled"]["mpjpe_mm"] / c["single"]["3d"]["pooled"]["mpjpe_mm"])
                 for c in plain]
    sup_items.append(("training data test", training["2d"]["test"]["single"]["mpjpe_mm"]
                      / training["3d"]["test"]["single"]["mpjpe_mm"]))
    add("sup_2d_vs_3d", sup_items, G["sup_2d_vs_3d"])
    add("cost_posterior_vs_fusion", [(f"best posterior / best {cost_result['baseline']}", cost_result["ratio"])],
        G["cost_posterior_vs_fusion"])
    return out


# ---------------------------------------------------------------------------------------------- printing


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def grid_table(grid: list[dict[str, Any]], *, adapt_steps: int) -> Table:
    t = Table(title="multi-view MPJPE (mm, world, root-relative; x = / robust DLT) and single view, pooled over "
                    "body scales 0.85/1.0/1.15")
    t.caption = "x: / robust DLT; on clean 2D (robust ~0 mm) the difference to it in mm instead (+d)"
    t.add_column("rig", min_width=13)
    for col in ("2D", "views", "robust", "DLT", "posterior", "x", "fusion", "x", "refine", "x",
                f"adapt {adapt_steps}", "x", "post abs", "in σ", "σ mm", "1v 2D", "1v 3D", "2D today",
                "3D today"):
        t.add_column(col, justify="right")
    for c in grid:
        m, s = c["multi"], c["single"]
        cells = []
        for method in METHODS:
            versus = (f"+{_f(m[method]['minus_robust_mm'], '.2f')}d" if c["noise"] == "clean"
                      else _f(m[method]["ratio_to_robust"], ".2f"))
            cells += [_f(m[method]["mpjpe_mm"]), versus]
        t.add_row(c["rig"], c["noise"], c["drop"], _f(m["robust"]["mpjpe_mm"]), _f(m["dlt"]["mpjpe_mm"]), *cells,
                  _f(m["posterior"].get("mpjpe_abs_mm")), _f(m["posterior"].get("within_uncertainty"), ".2f"),
                  _f(m["posterior"].get("uncertainty_mm")),
                  *(_f(s.get(k, {}).get("pooled", {}).get("mpjpe_mm")) for k in ("2d", "3d", "2d-today", "3d-today")))
    return t


def scale_table(grid: list[dict[str, Any]]) -> Table:
    t = Table(title="single view per body scale 0.85 / 1.0 / 1.15 (mm): plain, floor-metric, estimated scale, "
                    "world root error")
    t.caption = "spread: the goal's max |e(s) / e(1.0) - 1| of floor mpjpe; floor / s: floor mpjpe over the true " \
                "body scale s (for reading only: errors that grow in proportion to the body)"
    for col in ("rig", "2D", "model", "mpjpe", "floor mpjpe", "spread", "floor / s", "floor scale", "root mm"):
        t.add_column(col, justify="right")
    for c in (c for c in grid if c["drop"] == "all"):
        for name, v in c["single"].items():
            per = [v["per_scale"].get(str(s), {}) for s in BODY_SCALES]
            spread, _ = _scale_spread(c, name)
            t.add_row(c["rig"], c["noise"], name, " / ".join(_f(p.get("mpjpe_mm")) for p in per),
                      " / ".join(_f(p.get("floor_mpjpe_mm")) for p in per), _f(100 * spread, ".0f") + "%",
                      " / ".join(_f(p.get("floor_mpjpe_mm", math.nan) / s) for p, s in zip(per, BODY_SCALES,
                                                                                         strict=True)),
                      " / ".join(_f(p.get("floor_scale"), ".2f") for p in per), _f(v["pooled"].get("floor_root_mm")))
    return t


def training_table(training: dict[str, Any]) -> Table:
    t = Table(title="training dataset (h36m-s1, 5 px): MPJPE (mm) per split, new budget vs today")
    for col in ("model", "split", "single", "x today", "posterior", "fusion", "robust"):
        t.add_column(col, justify="right")
    for name, splits in training.items():
        for split, v in splits.items():
            today = training.get(f"{name}-today", {}).get(split)
            x = v["single"]["mpjpe_mm"] / today["single"]["mpjpe_mm"] if today else math.nan
            t.add_row(name, split, _f(v["single"]["mpjpe_mm"]), _f(x, ".2f"),
                      *(_f(v[k]["mpjpe_mm"]) for k in ("posterior", "fusion", "robust")))
    return t


# ---------------------------------------------------------------------------------------------- main


def machine() -> str:
    cpu = "unknown CPU"
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    import torch

    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None,
                   help="new budget in optimizer steps (default: jobs/train.yaml's optim.steps)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra jobs/train.yaml override for every training (repeatable)")
    p.add_argument("--today-set", dest="today", action="append", default=None, metavar="KEY=VALUE",
                   help=f"the 'today' budget, replacing {' '.join(TODAY_BUDGET)} (repeatable)")
    p.add_argument("--no-baseline", action="store_true", help="skip the two 'today' trainings")
    p.add_argument("--quick", action="store_true", help=f"small data and budget ({QUICK}): checks the path only")
    p.add_argument("--out", default="outputs/bench/accuracy", help="working folder (datasets, rigs, runs); reused")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--adapt-steps", type=int, default=30, help="test-time adaptation steps per batch")
    p.add_argument("--max-rows", type=int, default=1000, help="frames per grid cell (split over the body scales) "
                                                              "and per split of the training dataset")
    p.add_argument("--cost-frames", type=int, default=1000, help="frames of the cost measurement")
    return p.parse_args(argv)


def train_all(args: argparse.Namespace, data: str, out: Path) -> dict[str, dict[str, Any]]:
    from rigpose.config import load_job

    steps = args.steps or (QUICK["steps"] if args.quick else load_job(REPO / "jobs" / "train.yaml").optim.steps)
    if steps is None:
        raise ValueError("jobs/train.yaml sets optim.epochs, so it has no step budget: pass --steps N")
    budgets = {"new": [b.format(steps=steps) for b in NEW_BUDGET]}
    if not args.no_baseline:
        budgets["today"] = args.today or TODAY_BUDGET
    runs = {}
    for label, budget in budgets.items():
        for sup in SUPERVISIONS:
            key = sup if label == "new" else f"{sup}-today"
            runs[key] = train(data, sup, [*budget, *args.overrides], out / "runs", label=label)
            console.print(f"trained {key} ({' '.join(budget)}): {runs[key]['seconds']:.0f} s"
                          f"{' (reused)' if runs[key]['reused'] else ''}")
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    max_rows = QUICK["max_rows"] if args.quick else args.max_rows
    rows_per_scale = math.ceil(max_rows / len(BODY_SCALES))
    command = " ".join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])])
    results: dict[str, Any] = {"command": command, "machine": machine(), "max_rows": max_rows,
                               "rows_per_scale": rows_per_scale, "adapt_steps": args.adapt_steps, "seconds": {}}
    console.print(f"[bold]accuracy grid[/bold] on {results['machine']}; command: {command}")
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        results["seconds"][name] = time.perf_counter() - clock
        clock = time.perf_counter()

    raw = demo_recipe()
    if args.quick:
        raw["frames"] = QUICK["train_frames"]
    data = build(raw, out / "data" / f"demo-{raw['frames']}")
    urls = build_test_sets(out, frames=rows_per_scale)
    phase("build")
    runs = train_all(args, data, out)
    results["runs"] = runs
    models = {k: v["model"] for k, v in runs.items()}
    phase("train")

    grid = []
    for rig in RIGS:
        for noise in NOISE_PX:
            for drop in DROPS:
                cell = evaluate_cell(models, {s: urls[rig, noise, drop, s] for s in BODY_SCALES}, drop=drop,
                                     rows=rows_per_scale, adapt_steps=args.adapt_steps)
                grid.append({"rig": rig, "noise": noise, "drop": drop, **cell})
                console.print(f"cell {rig}/{noise}/{drop}: posterior {cell['multi']['posterior']['mpjpe_mm']:.1f} mm,"
                              f" robust {cell['multi']['robust']['mpjpe_mm']:.1f} mm")
    results["grid"] = grid
    phase("grid")
    results["training_data"] = evaluate_training_data(models, data, rows=max_rows)
    phase("training_data")
    results["cost"] = cost(models["2d"], data, num_frames=QUICK["max_rows"] if args.quick else args.cost_frames,
                           today_model=models.get("2d-today"))
    phase("cost")

    console.print(grid_table(grid, adapt_steps=args.adapt_steps))
    console.print(scale_table(grid))
    console.print(training_table(results["training_data"]))
    console.print("cost, ms per frame (best of 3):",
                  {k: round(v, 3) for k, v in results["cost"]["per_frame_ms"].items()})
    results["goals"] = goals(grid, results["training_data"], results["cost"])
    for goal, g in results["goals"].items():
        verdict = {True: "[green]PASS", False: "[red]FAIL", None: "[yellow]SKIP"}[g["pass"]]
        console.print(f"{verdict}[/] {goal}: {g['detail']}")
    results["seconds"]["total"] = sum(results["seconds"].values())
    console.print("seconds:", {k: round(v) for k, v in results["seconds"].items()})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_strict(results), indent=1))
    return 0


def _strict(x: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_strict(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


if __name__ == "__main__":
    sys.exit(main())
