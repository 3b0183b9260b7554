"""The lifter's frame (`model.frame`: camera or person), chosen by measurement: single-view error, body-scale and
world-frame root of the 2D-supervised lifter trained on the demo dataset, on the accuracy grid's unseen rigs.

Hypothesis it tests: a lifter in the camera's frame can learn depth from where the person sits in the image, a cue
that holds for the training rigs' heights and pitches only; in the person frame (a virtual camera turned to look at
the person, `rigpose.model.lifter.person_rotation`) that cue is gone, so the body scale and world root estimated
from the feet on the floor should carry better to rigs whose cameras stand higher or lower.

    .venv/bin/python bench/frame_sweep.py [--steps 3000] [--set model.width=512] [--json outputs/bench/frame.json]

Every training: jobs/train.yaml, 2D supervision, tracking off, the new step budget, and `model.frame=<frame>`; the
datasets are the accuracy bench's (bench/accuracy_bench.py, shared working folder, reused). Not part of
`make bench`: two trainings plus evaluation, about 40 minutes on 2 cores at 1500 steps and width 512.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_bench as ab  # (the sibling bench: its datasets, training and evaluation)

console = Console(width=160)
FRAMES = ("camera", "person")
RIGS = ("h36m-s1", "studio-8")
NOISE = "5px"
KEYS = ("mpjpe_mm", "floor_mpjpe_mm", "floor_scale", "floor_root_mm")


def measure(model: str, urls: dict[float, str], rows: int) -> dict[str, dict[str, float]]:
    """Single-view overall metrics per body scale."""
    return {str(s): ab.overall(ab.evaluate(model, url, "test", modes=("single",), max_rows=rows)["single"])
            for s, url in urls.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="training steps of each frame's run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra jobs/train.yaml override for both trainings (repeatable)")
    p.add_argument("--frames", default=",".join(FRAMES), help="comma-separated frames to train")
    p.add_argument("--out", default="outputs/bench/accuracy", help="the accuracy bench's working folder (reused)")
    p.add_argument("--max-rows", type=int, default=600, help="test frames per rig (split over the body scales)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = math.ceil(args.max_rows / len(ab.BODY_SCALES))
    recipe = ab.demo_recipe()
    data = ab.build(recipe, out / "data" / f"demo-{recipe['frames']}")
    urls = ab.build_test_sets(out, frames=rows)
    results: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "machine": ab.machine(),
                               "steps": args.steps, "overrides": args.overrides, "runs": {}}
    table = Table(title=f"2D-supervised single view, {NOISE} 2D, per body scale 0.85 / 1.0 / 1.15")
    for col in ("frame", "rig", *KEYS, "train split mm", "test split mm"):
        table.add_column(col, justify="right")
    for frame in args.frames.split(","):
        budget = [b.format(steps=args.steps) for b in ab.NEW_BUDGET] + [*args.overrides, f"model.frame={frame}"]
        t0 = time.perf_counter()
        run = ab.train(data, "2d", budget, out / "runs", label=f"frame-{frame}")
        own = {s: ab.overall(ab.evaluate(run["model"], data, s, modes=("single",), max_rows=args.max_rows)["single"])
               ["mpjpe_mm"] for s in ("train", "test")}
        entry = {"run": run, "train_seconds": time.perf_counter() - t0, "training_data": own, "rigs": {}}
        for rig in RIGS:
            per = measure(run["model"], {s: urls[rig, NOISE, "all", s] for s in ab.BODY_SCALES}, rows)
            entry["rigs"][rig] = per
            table.add_row(frame, rig, *(" / ".join(f"{per[str(s)].get(k, math.nan):.{3 if k == 'floor_scale' else 1}f}"
                                                   for s in ab.BODY_SCALES) for k in KEYS),
                          f"{own['train']:.1f}", f"{own['test']:.1f}")
        results["runs"][frame] = entry
        console.print(f"{frame}: trained in {run['seconds']:.0f} s{' (reused)' if run['reused'] else ''}; {own}")
    console.print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(ab._strict(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
