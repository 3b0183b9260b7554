"""Accuracy benchmark of the lifter: 2D-supervised vs 3D-supervised, multi-view answers vs triangulation.

Builds the demo datasets (real DeepMimic motion through the Human3.6M S1 rig; detector-like noise, and noise-free
2D), trains the same lifter with the same budget 2D-supervised and 3D-supervised, and evaluates on (a) `test`:
new placements of the training motions and (b) `test_clips`: held-out motions; plus the one-view-dropped case,
a transfer to another rig without retraining, and the Spearman correlation between the label-free held-out-view
reprojection error and MPJPE over the checkpoints of one run. Prints tables; `--json OUT` writes everything.

    .venv/bin/python bench/accuracy_bench.py [--epochs 12] [--quick] [--json outputs/bench/accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
console = Console(width=140)


def build(recipe_overrides: dict[str, Any], out: Path, *, frames: int | None = None) -> str:
    """Build the shipped demo recipe with `recipe_overrides` (top-level keys replaced) into `out` once."""
    from rigpose.data.manifest import read_manifest
    from rigpose.data.synth.build import build_dataset
    from rigpose.data.synth.recipe import parse_recipe
    from rigpose.resources import recipe_path

    if read_manifest(str(out)) is not None:
        return str(out)
    raw = yaml.safe_load(recipe_path("demo").read_text())
    raw.update(recipe_overrides)
    if frames is not None:
        raw["frames"] = frames
    build_dataset(parse_recipe(raw), str(out), progress=False, command="bench/accuracy_bench.py")
    return str(out)


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
    drop = rng.integers(0, frames.num_views, len(frames))
    frames.keypoints = frames.keypoints.copy()
    frames.scores = frames.scores.copy()
    frames.keypoints[np.arange(len(frames)), drop] = np.nan
    frames.scores[np.arange(len(frames)), drop] = 0.0
    with DatasetWriter(str(dst), skeleton=ds.skeleton, command="bench: drop one view", max_bad_fraction=0.05) as w:
        for rig_id in np.unique(frames.rig_id):
            w.add(frames.take(frames.rig_id == rig_id), ds.rig(str(rig_id)))
        w.commit()
    return str(dst)


def train(data: str, supervision: str, out: Path, *, epochs: int, keep_all: bool = False) -> dict[str, Any]:
    from rigpose.config import load_job
    from rigpose.train.trainer import train as run_training

    name = f"{Path(data).name}-{supervision}"
    overrides = [f"data.url={data}", f"supervision={supervision}", f"optim.epochs={epochs}",
                 f"run.output_dir={out}", f"run.name={name}"]
    if keep_all:
        overrides.append(f"run.checkpoints_to_keep={epochs}")
    t0 = time.perf_counter()
    result = run_training(load_job(REPO / "jobs" / "train.yaml", overrides))
    result["seconds"] = time.perf_counter() - t0
    return result


def evaluate(model: str, data: str, split: str, *, multi_mode: str = "fusion", adapt_steps: int = 0,
             **kw: Any) -> dict[str, Any]:
    """`rigpose.inference.evaluate.evaluate` with the multi-view method `multi_mode` (this benchmark compares them;
    its reference row is fusion) and `adapt_steps`."""
    from rigpose.config import MultiViewConfig
    from rigpose.inference.evaluate import evaluate as ev

    return ev(model, data, split=split, multi_view=MultiViewConfig(method=multi_mode, adapt_steps=adapt_steps), **kw)


def _mm(section: dict[str, Any] | None, key: str = "mpjpe_mm") -> float:
    if not section:
        return float("nan")
    v = section.get("overall", {}).get(key)
    return float("nan") if v is None else float(v)


def spearman(a: list[float], b: list[float]) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def checkpoint_ranking(run: dict[str, Any], data: str, *, max_rows: int) -> dict[str, Any]:
    """MPJPE and held-out-view px of every kept checkpoint of a run, on the val split, and their Spearman."""
    import torch

    from rigpose.model.checkpoint import load_lifter, save_lifter
    from rigpose.model.lifter import Lifter
    from rigpose.train.worker import STATE_FILE

    base, skeleton, meta = load_lifter(run["model"])
    ckpt_root = Path(run["checkpoint"]).parent
    rows = []
    for ckpt in sorted(p for p in ckpt_root.glob("checkpoint_*") if p.is_dir()):
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
        model = Lifter(base.config, num_joints=base.num_joints, root_joints=base.root_joints)
        model.load_state_dict(state["model"])
        with tempfile.TemporaryDirectory() as d:
            save_lifter(Path(d) / "model.pt", model, skeleton, meta=meta)
            r = evaluate(str(Path(d) / "model.pt"), data, "val", modes=("single",), max_rows=max_rows)
        rows.append({"epoch": state["epoch"] + 1, "mpjpe_mm": _mm(r["single"]),
                     "heldout_px": _mm(r["single"], "heldout_px")})
    rho = spearman([r["mpjpe_mm"] for r in rows], [r["heldout_px"] for r in rows]) if len(rows) > 2 else None
    return {"checkpoints": rows, "spearman": rho}


def machine() -> str:
    cpu = "unknown CPU"
    info = Path("/proc/cpuinfo")
    if info.exists():
        lines = info.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    import torch

    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: jobs/train.yaml)")
    p.add_argument("--quick", action="store_true", help="small data and 2 epochs: checks the path, not the numbers")
    p.add_argument("--out", default="outputs/bench/accuracy", help="working folder (datasets, runs)")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--adapt-steps", type=int, default=30, help="test-time adaptation steps per batch")
    p.add_argument("--max-rows", type=int, default=1000, help="frames evaluated per split (the first ones)")
    args = p.parse_args(argv)
    out = Path(args.out)
    frames = 3000 if args.quick else None
    epochs = 2 if args.quick else args.epochs
    if epochs is None:
        epochs = yaml.safe_load((REPO / "jobs" / "train.yaml").read_text())["optim"]["epochs"]
    max_rows = 300 if args.quick else args.max_rows
    t_start = time.perf_counter()
    console.print(f"[bold]accuracy benchmark[/bold] on {machine()}; epochs {epochs}; command: "
                  f"{' '.join([sys.executable, *sys.argv])}")

    zero_noise = {"noise": {}}
    data = {
        "noisy": build({}, out / "demo_noisy", frames=frames),
        "clean": build(zero_noise, out / "demo_clean", frames=frames),
    }
    transfer_rig = "studio-8"
    transfer = build({"rigs": [transfer_rig], "seed": 1}, out / "transfer_studio8",
                     frames=frames)
    dropped = drop_one_view(data["noisy"], out / "demo_noisy_drop1", split="test")

    runs: dict[str, dict[str, Any]] = {}
    for noise in ("noisy", "clean"):
        for sup in ("2d", "3d"):
            runs[f"{noise}-{sup}"] = train(data[noise], sup, out / "runs", epochs=epochs,
                                           keep_all=(noise, sup) == ("noisy", "2d"))
            console.print(f"trained {noise}-{sup} in {runs[f'{noise}-{sup}']['seconds']:.0f} s")

    results: dict[str, Any] = {"epochs": epochs, "machine": machine(), "command": " ".join(sys.argv), "rows": []}
    table = Table(title="single-view and multi-view MPJPE (mm), same lifter and training budget")
    for col in ("2D", "split", "3D-sup single", "2D-sup single", "ratio", "PA 2D-sup", "fusion", "refinement",
                f"adaptation ({args.adapt_steps})", "weighted DLT", "robust DLT", "held-out px"):
        table.add_column(col, justify="right")
    for noise in ("noisy", "clean"):
        for split in ("test", "test_clips"):
            r3 = evaluate(runs[f"{noise}-3d"]["model"], data[noise], split, modes=("single",), max_rows=max_rows)
            multi = {m: evaluate(runs[f"{noise}-2d"]["model"], data[noise], split, multi_mode=m, max_rows=max_rows,
                                 adapt_steps=args.adapt_steps if m == "adaptation" else 0,
                                 multi_heldout=m == "fusion")
                     for m in ("fusion", "refinement", "adaptation")}
            r2 = multi["fusion"]
            row = {
                "noise": noise, "split": split,
                "single_3d_mm": _mm(r3["single"]), "single_2d_mm": _mm(r2["single"]),
                "pa_single_2d_mm": _mm(r2["single"], "pa_mpjpe_mm"),
                **{f"{m}_mm": _mm(multi[m]["multi"][m]) for m in multi},
                "dlt_mm": _mm(r2["multi"]["dlt"]), "robust_mm": _mm(r2["multi"]["robust"]),
                "heldout_px": _mm(r2["single"], "heldout_px"),
            }
            row["ratio_2d_3d"] = row["single_2d_mm"] / row["single_3d_mm"]
            results["rows"].append(row)
            table.add_row(noise, split, *(f"{row[k]:.1f}" for k in ("single_3d_mm", "single_2d_mm")),
                          f"{row['ratio_2d_3d']:.2f}x",
                          *(f"{row[k]:.1f}" for k in ("pa_single_2d_mm", "fusion_mm", "refinement_mm",
                                                       "adaptation_mm", "dlt_mm", "robust_mm", "heldout_px")))
    console.print(table)

    drop = {m: evaluate(runs["noisy-2d"]["model"], dropped, "test", multi_mode=m, max_rows=max_rows,
                        adapt_steps=args.adapt_steps if m == "adaptation" else 0, multi_heldout=False)
            for m in ("fusion", "refinement", "adaptation")}
    results["one_view_dropped"] = {**{f"{m}_mm": _mm(drop[m]["multi"][m]) for m in drop},
                                   "dlt_mm": _mm(drop["fusion"]["multi"]["dlt"]),
                                   "robust_mm": _mm(drop["fusion"]["multi"]["robust"])}
    console.print("one of four views dropped per frame (noisy test):", results["one_view_dropped"])

    tr = evaluate(runs["noisy-2d"]["model"], transfer, "test", max_rows=max_rows, multi_heldout=False)
    tr3 = evaluate(runs["noisy-3d"]["model"], transfer, "test", modes=("single",), max_rows=max_rows)
    results["transfer"] = {"rig": transfer_rig, "single_2d_mm": _mm(tr["single"]), "single_3d_mm": _mm(tr3["single"]),
                           "fusion_mm": _mm(tr["multi"]["fusion"]), "dlt_mm": _mm(tr["multi"]["dlt"])}
    console.print(f"trained on h36m-s1, evaluated on {transfer_rig} (no retraining):", results["transfer"])

    results["checkpoint_ranking"] = checkpoint_ranking(runs["noisy-2d"], data["noisy"], max_rows=max_rows or 2000)
    console.print("held-out-view px vs MPJPE over checkpoints:", results["checkpoint_ranking"])
    results["train_seconds"] = {k: v["seconds"] for k, v in runs.items()}
    results["total_seconds"] = time.perf_counter() - t_start
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    console.print(f"total {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
