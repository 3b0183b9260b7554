"""Capacity and regularisation of the lifter, chosen by measurement: train-split and test-split single-view MPJPE of
the 2D-supervised lifter for a few widths, depths, dropout settings and step budgets, on the demo dataset.

Every configuration trains with the same job (`jobs/train.yaml`, tracking off) and the overrides of its row; the
first row is the library's default. The answer is the configuration with the lowest test MPJPE; the train-split
column shows whether a configuration underfits (train close to test) or overfits (train far below test).

    .venv/bin/python bench/capacity_sweep.py [--steps 3000] [--only NAME ...] [--json outputs/bench/capacity.json]

Not part of `make bench` (which runs bench/*_bench.py): the full sweep (11 trainings) takes about
two hours on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
console = Console(width=140)

# name -> overrides of jobs/train.yaml (on top of the data, budget and output settings). The rows that led to the
# defaults state their whole architecture, so they measure the same thing whatever the defaults are.
FORMER = ["model.output=ray", "model.width=512", "model.dropout=0.5", "model.frame=camera"]  # defaults before it
CONFIGS: dict[str, list[str]] = {
    "default": [],
    "today (12 epochs, 0.9/epoch, former model)": ["optim.schedule=exponential", "optim.epochs=12",
                                                   "optim.warmup_steps=0", *FORMER],
    "former (ray, 512, dropout 0.5)": FORMER,
    "denoised, 512, dropout 0.5": ["model.output=denoised", "model.width=512", "model.dropout=0.5",
                                   "model.frame=camera"],
    "denoised, 512, no dropout": ["model.output=denoised", "model.width=512", "model.dropout=0.0",
                                  "model.frame=camera"],
    "denoised, 512, no dropout, 6000 steps": ["model.output=denoised", "model.width=512", "model.dropout=0.0",
                                              "model.frame=camera", "optim.steps=6000"],  # the 1024-wide's compute
    "denoised, 1024, no dropout": ["model.output=denoised", "model.width=1024", "model.dropout=0.0",
                                   "model.frame=camera"],
    "4 blocks": ["model.num_blocks=4"],
    "dropout 0.25": ["model.dropout=0.25"],
    "6000 steps": ["optim.steps=6000"],
    "ray output": ["model.output=ray"],
    "free output": ["model.output=free"],
}


def build_demo(out: Path, frames: int | None) -> str:
    from rigpose.data.manifest import read_manifest
    from rigpose.data.synth.build import build_dataset
    from rigpose.data.synth.recipe import load_recipe
    from rigpose.resources import recipe_path

    if read_manifest(str(out)) is None:
        recipe = load_recipe(recipe_path("demo"))
        if frames is not None:
            recipe = recipe.model_copy(update={"frames": frames})
        build_dataset(recipe, str(out), progress=False, command="bench/capacity_sweep.py")
    return str(out)


def train_one(name: str, overrides: list[str], data: str, out: Path, steps: int) -> dict[str, Any]:
    from rigpose.config import load_job
    from rigpose.train.trainer import train

    run = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    base = [f"data.url={data}", f"optim.steps={steps}", f"run.output_dir={out}", f"run.name={run}",
            "tracking.enabled=false"]
    t0 = time.perf_counter()
    result = train(load_job(REPO / "jobs" / "train.yaml", [*base, *overrides]))
    return {"model": result["model"], "seconds": time.perf_counter() - t0,
            "steps": int(result["history"][-1]["step"])}


def single_mm(model: str, data: str, split: str, max_rows: int) -> float:
    from rigpose.inference.evaluate import evaluate

    r = evaluate(model, data, split=split, modes=("single",), max_rows=max_rows)
    value = r["single"]["overall"].get("mpjpe_mm")
    return float("nan") if value is None else float(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="training steps of every configuration but 'today'")
    p.add_argument("--only", nargs="*", default=None, help="configurations to run (names of CONFIGS)")
    p.add_argument("--out", default="outputs/bench/capacity", help="working folder")
    p.add_argument("--frames", type=int, default=None, help="dataset frames (default: the demo recipe's)")
    p.add_argument("--data", default=None, help="an existing demo dataset (e.g. outputs/datasets/demo) instead of "
                                                "building one under --out")
    p.add_argument("--max-rows", type=int, default=1000, help="frames evaluated per split")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    out = Path(args.out)
    data = args.data or build_demo(out / "demo", args.frames)
    names = args.only or list(CONFIGS)
    rows = []
    table = Table(title=f"2D-supervised lifter, single-view MPJPE (mm), {args.steps} steps unless stated")
    for col in ("configuration", "steps", "train split", "test split", "test_clips", "train s"):
        table.add_column(col, justify="right")
    for name in names:
        run = train_one(name, CONFIGS[name], data, out / "runs", args.steps)
        row = {"name": name, "overrides": CONFIGS[name], **run,
               **{f"{s}_mm": single_mm(run["model"], data, s, args.max_rows) for s in ("train", "test", "test_clips")}}
        rows.append(row)
        table.add_row(name, str(row["steps"]), *(f"{row[f'{s}_mm']:.1f}" for s in ("train", "test", "test_clips")),
                      f"{row['seconds']:.0f}")
        console.print(row)
    console.print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "steps": args.steps, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
