"""Throughput of `rigpose datasets build` and `Dataset.read_frames`, as ratios to bare pyarrow.parquet on the same data.

Builds a recipe (default the shipped `scale` recipe: 1M frames, 4 views, 16 joints) into a temp dir with
`rigpose.data.synth.build.build_dataset`, then in the same process:

- bare write: the committed shards read back as Arrow tables, then timed `pq.write_table` of those tables
  (same compression) to another temp dir; ratio = build frames/s / bare frames/s;
- read: `Dataset(root).read_frames()` vs bare `pq.read_table` of the same shard files;
- generation alone (`Synthesis.from_recipe(...).batches()` consumed without writing), and the writer alone
  (`DatasetWriter` on those batches), for context: build_dataset runs the two on two threads.

Library start-up is paid once before any timing. Wall seconds give the ratios; CPU seconds (all threads) are
printed too, since on a busy shared machine they move less than wall time.

Ratios are what to compare across machines; frames/s depend on the machine (it is printed).

    .venv/bin/python bench/dataset_bench.py [--recipe RECIPE.yaml] [--frames N] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
console = Console(width=120)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python and library versions."""
    import numpy as np

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "cpu": cpu,
            "python": platform.python_version(), "pyarrow": pa.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def load(recipe_path: Path, frames: int | None) -> Any:
    """The recipe, with `frames` overridden when given, and rig files relative to the repository made absolute
    (shipped rig names stay as they are)."""
    from rigpose.data.synth.recipe import parse_recipe

    raw = yaml.safe_load(recipe_path.read_text())
    if frames is not None:
        raw["frames"] = frames
    raw["rigs"] = [str(REPO / r) if (REPO / r).is_file() else r for r in raw["rigs"]]
    return parse_recipe(raw)


class Timer:
    """Wall and process CPU seconds (all threads) of a `with` block: CPU shows what a busy machine hides."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def warm_up() -> None:
    """One-time library start-up (pyarrow imports pandas on its first NumPy conversion, ~1 s), so that no timed
    step pays it and the build is compared with the bare write on equal terms."""
    import numpy as np

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": pa.array(np.zeros(4, np.float32))}), sink)
    pq.read_table(pa.BufferReader(sink.getvalue())).column("x").to_numpy()


def time_generation(recipe: Any) -> tuple[Timer, list[Any]]:
    """Time to plan and generate every batch without writing (single thread), and the (rig, frames) batches."""
    from rigpose.data.synth.build import Synthesis

    with Timer() as t:
        batches = list(Synthesis.from_recipe(recipe).batches())
    return t, batches


def time_write_only(recipe: Any, batches: list[Any], out: Path) -> Timer:
    """Time of the writer alone: `DatasetWriter` add + commit of already generated batches, as build_dataset
    calls it (checks, quarantine, shards, hashes, manifest)."""
    from rigpose.data.synth.motion_bank import SKELETON
    from rigpose.data.writer import DatasetWriter

    with Timer() as t, DatasetWriter(str(out), skeleton=SKELETON, command="bench/dataset_bench.py",
                                     max_bad_fraction=recipe.max_invalid_fraction) as writer:
        for rig, frames in batches:
            writer.add(frames, rig, source=f"recipe {recipe.name!r}")
        writer.commit()
    return t


def time_build(recipe: Any, out: Path) -> tuple[Timer, Any]:
    """Time of `build_dataset(recipe, out)` (plan, generate, check, write, commit) and its manifest."""
    from rigpose.data.synth.build import build_dataset

    with Timer() as t:
        manifest = build_dataset(recipe, str(out), progress=False, command="bench/dataset_bench.py")
    return t, manifest


def time_bare_write(files: list[Path], out: Path, compression: str) -> tuple[Timer, int]:
    """Time of bare `pq.write_table` of the tables in `files` (read first, untimed) to `out`, and bytes."""
    tables = [pq.read_table(f) for f in files]
    out.mkdir(parents=True)
    gc.collect()
    with Timer() as t:
        for i, table in enumerate(tables):
            pq.write_table(table, out / f"part-{i:05d}.parquet", compression=compression)
    return t, sum(p.stat().st_size for p in out.iterdir())


def time_read(root: Path, files: list[Path], *, repeat: int = 2) -> tuple[Timer, Timer]:
    """Best time of `Dataset(root).read_frames()` and of bare `pq.read_table` of the same files, alternated
    `repeat` times (the files are in the page cache for both)."""
    from rigpose.data.reader import Dataset

    best: dict[str, Timer] = {}
    for _ in range(repeat):
        gc.collect()
        with Timer() as bare:
            rows = sum(pq.read_table(f).num_rows for f in files)
        gc.collect()
        with Timer() as ours:
            num_frames = len(Dataset(str(root)).read_frames())
        assert num_frames == rows, (num_frames, rows)
        for name, t in (("ours", ours), ("bare", bare)):
            if name not in best or t.wall < best[name].wall:
                best[name] = t
    return best["ours"], best["bare"]


def main(argv: list[str] | None = None) -> int:
    from rigpose.resources import recipe_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=recipe_path("scale"))
    ap.add_argument("--frames", type=int, default=None, help="override the recipe's frame count (quick runs)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--tmp", type=Path, default=None, help="temp dir parent (default: the system's)")
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/dataset_bench.py", *map(shlex.quote, sys.argv[1:])])
    info = machine_info()
    recipe = load(args.recipe, args.frames)

    with tempfile.TemporaryDirectory(prefix="rigpose-dataset-bench-", dir=args.tmp) as tmp:
        root = Path(tmp) / "built"
        warm_up()
        gen, batches = time_generation(recipe)
        gen_n = sum(len(frames) for _, frames in batches)
        gc.collect()
        write_only = time_write_only(recipe, batches, Path(tmp) / "write-only")
        del batches
        gc.collect()
        build, manifest = time_build(recipe, root)
        n = manifest.num_rows
        files = [root / s.path for s in manifest.shards]
        compression = "snappy"  # DatasetWriter's default, which build_dataset uses
        bare, bare_bytes = time_bare_write(files, Path(tmp) / "bare", compression)
        read, bare_read = time_read(root, files)
        built_bytes = sum(s.bytes for s in manifest.shards)

    r: dict[str, Any] = {"command": command, "machine": info, "recipe": str(args.recipe), "frames": n,
                         "shards": len(files), "compression": compression, "build_bytes": built_bytes,
                         "bare_write_bytes": bare_bytes, "load_average": os.getloadavg()}
    for name, t, rows in (("generate", gen, gen_n), ("write_only", write_only, gen_n), ("build", build, n),
                          ("bare_write", bare, n), ("read_frames", read, n), ("bare_read", bare_read, n)):
        r[name] = {"s": t.wall, "cpu_s": t.cpu, "fps": rows / t.wall}
    r["write_ratio"] = bare.wall / build.wall
    r["write_only_ratio"] = bare.wall / write_only.wall
    r["read_ratio"] = bare_read.wall / read.wall
    report(r)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1))
    return 0


def report(r: dict[str, Any]) -> None:
    m = r["machine"]
    console.print(f"[bold]Datasets: build and read[/]  {r['frames']:,} frames, {r['shards']} shards, "
                  f"{r['compression']}")
    console.print(f"machine: {m['usable_cores']} of {m['cores']} cores, {m['cpu']}, Python {m['python']}, "
                  f"pyarrow {m['pyarrow']}, numpy {m['numpy']}")
    console.print(f"command: {r['command']}")
    console.print(f"load average at the end: {', '.join(f'{x:.1f}' for x in r['load_average'])}")
    t = Table()
    for col in ("step", "wall s", "CPU s", "frames/s", "ratio (frames/s vs bare)"):
        t.add_column(col, justify="left" if col == "step" else "right")
    rows = (("generate only (no writing)", "generate", ""),
            ("DatasetWriter only (generated batches)", "write_only", f"{r['write_only_ratio']:.2f}x"),
            ("build_dataset (generate+check+write)", "build", f"{r['write_ratio']:.2f}x"),
            ("bare pq.write_table, same tables", "bare_write", "1.00x"),
            ("Dataset.read_frames", "read_frames", f"{r['read_ratio']:.2f}x"),
            ("bare pq.read_table, same files", "bare_read", "1.00x"))
    for label, key, ratio in rows:
        x = r[key]
        t.add_row(label, f"{x['s']:.1f}", f"{x['cpu_s']:.1f}", f"{x['fps']:,.0f}", ratio)
    console.print(t)


if __name__ == "__main__":
    sys.exit(main())
