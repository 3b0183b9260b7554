"""Retraining on a new rig (`rigpose.retrain`): the champion's zero-shot error there, the candidate's, and a warm
start against training from scratch.

One run, one process, local Ray, a sqlite MLflow registry in a temporary folder, jobs/retrain.yaml's settings
(`--set key=value` overrides them, e.g. `--set warm_budget=1.0`) and jobs/train.yaml's lifter and budget
(`--steps` overrides optim.steps):

1. the dataset is the shipped demo recipe (real motion capture through the Human3.6M S1 rig, 4 cameras,
   detector-like noise), `--frames` frames; the first `rigpose.retrain.run.retrain` cycle trains the champion on
   it (no champion yet: promoted);
2. the same recipe through a new rig (`--new-rig`, default studio-8: 8 cameras) is added to the dataset;
3. a second cycle trains the candidate warm-started from the champion and gates it (the table below is the
   gate's: per rig, the label-free held-out-view error, and MPJPE since the synthetic rows carry joints_3d);
4. the same candidate job from scratch (no init weights, the training job's whole budget), scored the same way.

Reported: per rig the champion (zero-shot on the new rig), warm and scratch candidates; each training's wall time
(sum of its epochs, startup apart); the time and optimizer steps the warm start needed to reach the scratch
candidate's final validation error (steps: the same model and data, so steps are time without the machine's
noise); and the issue's goal ratios.

    .venv/bin/python bench/retrain_bench.py [--new-rig studio-8] [--frames 12000] [--steps N] [--set k=v] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
console = Console(width=130)


def _recipe(tmp: Path, rig: str, frames: int) -> str:
    from rigpose.resources import recipe_path

    d = yaml.safe_load(recipe_path("demo").read_text())
    d.update(name=f"demo-{rig}", rigs=[rig], frames=frames)
    path = tmp / f"demo-{rig}.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def _train_time(history: list[dict[str, Any]]) -> float:
    return float(sum(h["epoch_s"] for h in history))


def _time_to_reach(history: list[dict[str, Any]], px: float) -> tuple[float, int] | None:
    """(seconds of training: sum of epochs, optimizer steps) until the validation held-out-view error first reaches
    `px`; None when it never does."""
    spent = 0.0
    for h in history:
        spent += h["epoch_s"]
        if h.get("val/reprojection_px", float("inf")) <= px:
            return spent, int(h["step"])
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-rig", default="h36m-s1")
    ap.add_argument("--new-rig", default="studio-8")
    ap.add_argument("--frames", type=int, default=12000, help="Frames per rig (the demo recipe has 30000).")
    ap.add_argument("--steps", type=int, default=None, help="Default: jobs/train.yaml's optim.steps.")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="Override a key of jobs/retrain.yaml (repeatable), e.g. warm_budget=1.0.")
    ap.add_argument("--warm-variants", default="", metavar="BUDGET:LR,...",
                    help="Also train these warm starts from the same champion (warm_budget:warm_lr each, e.g. "
                         "1.0:1.0 = the training job's whole schedule) and report when each reaches the scratch "
                         "candidate's final error.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from rigpose.cli.ui import configure_output
    from rigpose.cluster.connect import init_ray
    from rigpose.config import RetrainJob, load_config
    from rigpose.data.reader import Dataset
    from rigpose.data.synth.build import build_dataset
    from rigpose.retrain.gate import rig_scores
    from rigpose.retrain.run import candidate_job, plan, retrain
    from rigpose.tracking.registry import download_lifter_file
    from rigpose.train.trainer import train

    configure_output(verbose=False)
    tmp = Path(tempfile.mkdtemp(prefix="rigpose-retrain-bench-"))
    data = str(tmp / "dataset")
    t0 = time.time()
    build_dataset(_recipe(tmp, args.old_rig, args.frames), data, progress=False)
    overrides = [f"data.url={data}", f"run.output_dir={tmp / 'runs'}", "tracking.model_name=bench-lifter",
                 f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.eval_max_rows=2000"]
    if args.steps:
        overrides.append(f"optim.steps={args.steps}")
    job = load_config(RetrainJob, REPO / "jobs" / "retrain.yaml", args.sets)
    job = job.model_copy(update={"train_job": str(REPO / "jobs" / "train.yaml"),
                                 "overrides": [*job.overrides, *overrides]})
    init_ray(None)
    first = retrain(job, say=print)  # the cycles' own lines: what a user of `rigpose retrain` sees
    assert first.status == "promoted", first.lines
    build_dataset(_recipe(tmp, args.new_rig, args.frames), data, progress=False)
    p = plan(job)  # what the second cycle will train: kept for the scratch run below
    champion_file = download_lifter_file(f"models:/{p.model_name}/{p.champion}", str(tmp), tracking_uri=p.tracking_uri)
    sj = candidate_job(job.model_copy(update={"warm_start": False}), p, None)
    scratch_job = sj.model_copy(update={"run": sj.run.model_copy(update={"name": "scratch"}),
                                        "tracking": sj.tracking.model_copy(update={"enabled": False})})
    second = retrain(job, say=print)
    d = second.decision
    assert d is not None, second.lines
    warm_job = candidate_job(job, p, champion_file)
    warm_history = json.loads((tmp / "runs" / warm_job.run.name / "history.json").read_text())
    scratch = train(scratch_job)
    g = job.gate
    scratch_scores = rig_scores(scratch["model"], data, split=g.split, rig_ids=p.rig_ids, max_rows=g.max_rows)
    scratch_time, warm_time = _train_time(scratch["history"]), _train_time(warm_history)
    reach = _time_to_reach(warm_history, scratch["history"][-1]["val/reprojection_px"])
    variants = []
    for spec in filter(None, args.warm_variants.split(",")):
        budget, lr = (float(x) for x in spec.split(":"))
        vj = candidate_job(job.model_copy(update={"warm_budget": budget, "warm_lr": lr}), p, champion_file)
        vj = vj.model_copy(update={"run": vj.run.model_copy(update={"name": f"warm-{budget}-{lr}"}),
                                   "tracking": vj.tracking.model_copy(update={"enabled": False})})
        h = train(vj)["history"]
        r = _time_to_reach(h, scratch["history"][-1]["val/reprojection_px"])
        variants.append({"warm_budget": budget, "warm_lr": lr, "steps": int(h[-1]["step"]),
                         "final_px": h[-1]["val/reprojection_px"], "train_s": _train_time(h),
                         "reach_s": r[0] if r else None, "reach_steps": r[1] if r else None, "history": h})

    rows = []
    for r in d.rows:
        s = scratch_scores.get(r.rig_id)
        rows.append({"rig": r.rig_id, "new": r.rig_id == args.new_rig,
                     "champion_px": r.champion.heldout_px if r.champion else None,
                     "champion_mm": r.champion.mpjpe_mm if r.champion else None,
                     "warm_px": r.candidate.heldout_px if r.candidate else None,
                     "warm_mm": r.candidate.mpjpe_mm if r.candidate else None,
                     "scratch_px": s.heldout_px if s else None, "scratch_mm": s.mpjpe_mm if s else None})
    table = Table(title=f"retraining on a new rig: {args.old_rig} -> + {args.new_rig} ({args.frames} frames each, "
                        f"warm {warm_job.optim.steps or warm_job.optim.epochs} / scratch "
                        f"{scratch_job.optim.steps or scratch_job.optim.epochs} "
                        f"{'steps' if sj.optim.steps else 'epochs'}"
                        f" at lr {warm_job.optim.lr:g} / {scratch_job.optim.lr:g}), split {g.split!r}: held-out-view "
                        "px / MPJPE mm")
    for col in ("rig", "champion (zero-shot on new)", "warm candidate", "scratch candidate", "warm / champion"):
        table.add_column(col, justify="left" if col == "rig" else "right")

    def cell(px: float | None, mm: float | None) -> str:
        return "-" if px is None else f"{px:.2f} / {mm:.1f}" if mm is not None else f"{px:.2f}"

    for row in rows:
        ratio = (f"{row['warm_px'] / row['champion_px']:.3f} x px, {row['warm_mm'] / row['champion_mm']:.3f} x mm"
                 if row["champion_px"] and row["warm_px"] and row["champion_mm"] and row["warm_mm"] else "-")
        table.add_row(row["rig"] + (" (new)" if row["new"] else ""), cell(row["champion_px"], row["champion_mm"]),
                      cell(row["warm_px"], row["warm_mm"]), cell(row["scratch_px"], row["scratch_mm"]), ratio)
    console.print(table)
    console.print(f"gate: {d.reason}")
    scratch_steps = int(scratch["history"][-1]["step"])
    console.print(f"training wall time (sum of epochs): warm {warm_time:.0f} s ({warm_history[-1]['step']} steps), "
                  f"scratch {scratch_time:.0f} s ({scratch_steps} steps); the warm start reached the scratch "
                  "candidate's final validation error "
                  + (f"after {reach[0]:.0f} s / {reach[1]} steps ({reach[0] / scratch_time:.2f} x the scratch time, "
                     f"{reach[1] / scratch_steps:.2f} x its steps)" if reach is not None else "never"))
    for v in variants:
        console.print(f"warm variant budget {v['warm_budget']} x, lr {v['warm_lr']} x: {v['steps']} steps, final "
                      f"{v['final_px']:.2f} px (val); reached the scratch candidate's final error "
                      + (f"after {v['reach_s']:.0f} s / {v['reach_steps']} steps ({v['reach_s'] / scratch_time:.2f} x "
                         f"the scratch time, {v['reach_steps'] / scratch_steps:.2f} x its steps)"
                         if v["reach_steps"] is not None else "never"))
    console.print(f"whole benchmark: {time.time() - t0:.0f} s; command: .venv/bin/python bench/retrain_bench.py "
                  + shlex.join(sys.argv[1:]))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "reason": d.reason, "promoted": d.promote,
                                         "warm_train_s": warm_time, "scratch_train_s": scratch_time,
                                         "warm_reaches_scratch_s": reach[0] if reach else None,
                                         "warm_reaches_scratch_steps": reach[1] if reach else None,
                                         "scratch_steps": scratch_steps, "variants": variants,
                                         "epochs": len(warm_history),
                                         "warm_optim": warm_job.optim.model_dump(),
                                         "scratch_optim": scratch_job.optim.model_dump(),
                                         "warm_history": warm_history, "scratch_history": scratch["history"],
                                         "frames_per_rig": args.frames,
                                         "dataset_rows": Dataset(data).manifest.num_rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
