"""The streaming data path (`data.cache: false`) against the cached one: time to the first batch of an epoch and
frames/s that the Ray Data iterator delivers to one consumer with no model.

One process, one run, local Ray (4 logical CPUs on this 2-core machine, PLATFORM_NOTES), one dataset: a shipped
recipe (`--recipe`, default demo: the 4-camera Human3.6M S1 rig; `--frames`) built into a temporary folder by
today's writer, so its shards are Parquet row groups of 16k rows. Three ways to read its training split, each
iterated `--epochs` times after one warm-up epoch (batch 256, `iter_torch_batches`, preprocessing as
jobs/train.yaml: root-only triangulation):

- before: what `read_split` did until 2026-12-07: `ray.data.read_parquet` of the shards (one block per shard,
  shard order shuffled per epoch) then a separate `map_batches(Preprocess)`, kept here as the baseline;
- fused: today's `read_split`: one read+preprocess task per row group, blocks of 1024 rows yielded as made,
  row-group order shuffled per epoch;
- cached: today's `read_split(...).materialize()` (preprocessed once), the ceiling streaming is measured against.

Reported per way: the median over epochs of the seconds from asking for the epoch's iterator to its first batch,
and of frames/s over the whole epoch; streaming / cached ratios (the goal of #16: >= 0.9 x, first batch < 1 s).

    .venv/bin/python bench/stream_bench.py [--recipe demo] [--frames 30000] [--epochs 3]
                                           [--ways before,fused,cached] [--json OUT]

At scale: `--recipe scale --frames 1000000 --ways fused --epochs 1` streams the 1M-frame recipe (procedural
motion, two 4-camera rigs) once, the object store never holding the split.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

console = Console(width=120)
BATCH = 256


def _before(ds: Any, *, seed: int) -> Any:
    """The baseline: read_parquet (one block per shard), then a separate preprocessing map."""
    import ray.data
    from ray.data import FileShuffleConfig

    from rigpose.data.pipeline import MODEL_COLUMNS, PREPROCESS_ROWS, Preprocess

    rd = ray.data.read_parquet(ds.shard_urls(splits=["train"]), partitioning=None,
                               shuffle=FileShuffleConfig(seed=seed, reseed_after_execution=True))
    prep = Preprocess(num_joints=ds.skeleton.num_joints, num_views=ds.manifest.max_views,
                      root_joints=ds.skeleton.root_joints, with_3d=False, with_pseudo=False)
    return rd.select_columns(list(MODEL_COLUMNS)).map_batches(prep, batch_format="pyarrow",
                                                             batch_size=PREPROCESS_ROWS)


def _epoch(rd: Any, rows: int) -> tuple[float, float]:
    """(seconds to the first batch, frames/s over the epoch) of one pass of `rd`'s iterator."""
    import torch

    t0 = time.perf_counter()
    first, n = None, 0
    for b in rd.iter_torch_batches(batch_size=BATCH, dtypes=torch.float32):
        if first is None:
            first = time.perf_counter() - t0
        n += int(b["kp"].shape[0])
    if n != rows:
        raise RuntimeError(f"an epoch gave {n} rows, the split has {rows}")
    return float(first), n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="demo", help="Shipped recipe to build (demo; scale: the 1M-frame one).")
    ap.add_argument("--frames", type=int, default=30000, help="Frames of the recipe to build.")
    ap.add_argument("--ways", default="before,fused,cached",
                    help="Comma-separated reads to time, of before, fused, cached (the x-cached column needs cached).")
    ap.add_argument("--epochs", type=int, default=3, help="Measured epochs per way (after one warm-up).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from rigpose.cluster.connect import init_ray
    from rigpose.data.pipeline import read_split, row_groups
    from rigpose.data.reader import Dataset
    from rigpose.data.synth.build import build_dataset
    from rigpose.resources import recipe_path

    chosen = [w for w in args.ways.split(",") if w]
    if unknown := set(chosen) - {"before", "fused", "cached"}:
        raise ValueError(f"--ways: unknown {sorted(unknown)}")
    tmp = Path(tempfile.mkdtemp(prefix="rigpose-stream-bench-"))
    recipe = yaml.safe_load(recipe_path(args.recipe).read_text())
    recipe.update(frames=args.frames)
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    t_build = time.perf_counter()
    build_dataset(str(tmp / "recipe.yaml"), str(tmp / "ds"), progress=False)
    console.print(f"built {args.frames:,} frames of {args.recipe!r} in {time.perf_counter() - t_build:.0f} s")
    ds = Dataset(str(tmp / "ds"))
    rows = sum(s.rows for s in ds.shards(splits=["train"]))
    groups = row_groups(ds, "train")
    init_ray(None)
    makers = {"before": lambda: _before(ds, seed=0),
              "fused": lambda: read_split(ds, "train", shuffle_seed=0, with_pseudo=False),
              "cached": lambda: read_split(ds, "train", with_pseudo=False).materialize()}
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        rd = makers[name]()
        _epoch(rd, rows)  # warm-up: Ray Data's workers, imports
        runs = [_epoch(rd, rows) for _ in range(args.epochs)]
        results[name] = {"first_batch_s": statistics.median(r[0] for r in runs),
                         "frames_per_s": statistics.median(r[1] for r in runs), "epochs": runs}
    cached = results["cached"]["frames_per_s"] if "cached" in results else float("nan")
    shards = len(ds.shards(splits=["train"]))
    table = Table(title=f"training split of the {args.recipe} recipe, {rows:,} rows in {shards} shards"
                        f" / {len(groups)} row groups; batch {BATCH}, median of {args.epochs} epochs")
    for col in ("read", "first batch (s)", "frames/s", "x cached"):
        table.add_column(col, justify="left" if col == "read" else "right")
    for name, r in results.items():
        ratio = r["frames_per_s"] / cached
        table.add_row(name, f"{r['first_batch_s']:.2f}", f"{r['frames_per_s']:,.0f}", f"{ratio:.2f}")
    console.print(table)
    console.print("command: .venv/bin/python bench/stream_bench.py " + shlex.join(sys.argv[1:]))
    if args.json:
        args.json.write_text(json.dumps({"recipe": args.recipe, "rows": rows, "row_groups": len(groups),
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
