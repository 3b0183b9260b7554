"""Throughput of `rigpose datasets build` and `Dataset.read_frames`, as ratios to bare pyarrow.parquet on the same data.

Builds a recipe (default the shipped `scale` recipe: 1M frames, 4 views, 16 joints) into a temp dir with
`rigpose.data.synth.build.build_dataset`, then in the same process:

- bare write: the committed shards read back as Arrow tables, then timed `pq.write_table` of those tables
  (same compression) to another temp dir; ratio = build frames/s / bare frames/s;
- read: `Dataset(root).read_frames()` vs bare `pq.read_table` of the same shard files;
- generation alone (`Synthesis.from_recipe(...).batches()` consumed without writing), and the writer alone
  (`DatasetWriter` on those batches), for context: build_dataset runs the two on two threads;
- preprocessing (the training pipeline's `Preprocess`: undistortion, K^-1, robust root triangulation, as
  jobs/train.yaml runs it, without the pseudo-3D targets) in frames per CPU-second (`time.process_time`, all
  threads), read included: `pq.read_table` of the model columns of up to `--preprocess-rows` rows, then
  `Preprocess` on blocks of `PREPROCESS_ROWS`. This checkout's, the one under `--baseline` (an older checkout's
  `platform/` folder, e.g. from `git worktree add /tmp/old <commit>`) and a bare ceiling (`bare_preprocess`:
  pyarrow + float32 undistortion with 3 fixed Newton steps + a closed-form 2-view robust root, no checks), each in
  a fresh process with 1 and with 2 threads (OMP/OpenBLAS/MKL and torch), the faster taken.

Library start-up is paid once before any timing. Wall seconds give the ratios; CPU seconds (all threads) are
printed too, since on a busy shared machine they move less than wall time.

Ratios are what to compare across machines; frames/s depend on the machine (it is printed).

    .venv/bin/python bench/dataset_bench.py [--recipe RECIPE.yaml] [--frames N] [--json OUT]
        [--baseline OLD/platform] [--preprocess-rows N]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import shlex
import subprocess
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


# ---------------------------------------------------------------------------------------------- preprocessing

THREADS = (1, 2)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def bare_preprocess(table: pa.Table, *, num_joints: int, root_joints: tuple[int, ...], inlier_px: float = 20.0
                    ) -> dict[str, Any]:
    """The ceiling: the same outputs' core (xy, w, root) with nothing but vectorised NumPy, for rows of one
    camera count. float32 undistortion with 3 fixed Newton steps; per view pair the root's 2-view least-squares
    point (3x3 normal equations by cofactors), the pair with the most views within `inlier_px` (reprojection in
    the undistorted image x focal length) refitted once on them. No padding, validity checks or NaN care."""
    import numpy as np

    N = table.num_rows
    V = int(table.column("num_views")[0].as_py())

    def col(name: str, width: int, dtype: Any) -> np.ndarray:
        return table.column(name).combine_chunks().flatten().to_numpy().astype(dtype, copy=False).reshape(
            N, V, width)

    kp = col("keypoints", 2 * num_joints, np.float32).reshape(N, V, num_joints, 2)
    w = col("scores", num_joints, np.float32)
    K, dist = col("K", 9, np.float32), col("dist", 5, np.float32)
    R, t = col("R", 9, np.float64), col("t", 3, np.float64)
    fx, cx, fy, cy = (K[..., i, None] for i in (0, 2, 4, 5))
    k1, k2, p1, p2, k3 = (dist[..., i, None] for i in range(5))
    xd, yd = (kp[..., 0] - cx) / fx, (kp[..., 1] - cy) / fy
    x, y = xd, yd
    for _ in range(3):
        x2, y2, xy = x * x, y * y, x * y
        r2 = x2 + y2
        rad = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        drad = k1 + r2 * (2 * k2 + 3 * k3 * r2)
        ex = x * rad + 2 * p1 * xy + p2 * (r2 + 2 * x2) - xd
        ey = y * rad + p1 * (r2 + 2 * y2) + 2 * p2 * xy - yd
        a = rad + 2 * x2 * drad + 2 * p1 * y + 6 * p2 * x
        b = 2 * xy * drad + 2 * p1 * x + 2 * p2 * y
        d = rad + 2 * y2 * drad + 6 * p1 * y + 2 * p2 * x
        det = a * d - b * b
        x, y = x - (d * ex - b * ey) / det, y - (a * ey - b * ex) / det
    r = list(root_joints)
    u, v, wr = x[..., r].mean(-1).astype(np.float64), y[..., r].mean(-1).astype(np.float64), w[..., r].min(-1)
    # DLT rows per view, unit length, times the score: [N, V, 2, 4]
    rows = np.stack([u[..., None] * np.concatenate([R[..., 6:9], t[..., 2:3]], -1)
                     - np.concatenate([R[..., 0:3], t[..., 0:1]], -1),
                     v[..., None] * np.concatenate([R[..., 6:9], t[..., 2:3]], -1)
                     - np.concatenate([R[..., 3:6], t[..., 1:2]], -1)], -2)
    rows *= (wr[..., None] / np.sqrt((rows * rows).sum(-1)))[..., None]
    A, c = rows[..., :3], rows[..., 3]
    M = np.einsum("nvri,nvrj->nvij", A, A)  # [N, V, 3, 3]
    q = np.einsum("nvri,nvr->nvi", A, c)

    def solve(M: np.ndarray, q: np.ndarray) -> np.ndarray:
        m = M.reshape(*M.shape[:-2], 9)
        c0 = m[..., 4] * m[..., 8] - m[..., 5] * m[..., 7]
        c1 = m[..., 2] * m[..., 7] - m[..., 1] * m[..., 8]
        c2 = m[..., 1] * m[..., 5] - m[..., 2] * m[..., 4]
        c4 = m[..., 0] * m[..., 8] - m[..., 2] * m[..., 6]
        c5 = m[..., 2] * m[..., 3] - m[..., 0] * m[..., 5]
        c8 = m[..., 0] * m[..., 4] - m[..., 1] * m[..., 3]
        det = m[..., 0] * c0 + m[..., 1] * c1 + m[..., 2] * c2
        return -np.stack([c0 * q[..., 0] + c1 * q[..., 1] + c2 * q[..., 2],
                          c1 * q[..., 0] + c4 * q[..., 1] + c5 * q[..., 2],
                          c2 * q[..., 0] + c5 * q[..., 1] + c8 * q[..., 2]], -1) / det[..., None]

    first, second = np.triu_indices(V, 1)
    X = solve(M[:, first] + M[:, second], q[:, first] + q[:, second])  # [N, P, 3]
    Xc = np.einsum("nvij,npj->npvi", R.reshape(N, V, 3, 3), X) + t[:, None]  # [N, P, V, 3]
    f = fx[..., 0].astype(np.float64)[:, None]
    e2 = f * f * ((Xc[..., 0] / Xc[..., 2] - u[:, None]) ** 2 + (Xc[..., 1] / Xc[..., 2] - v[:, None]) ** 2)
    inl = e2 < inlier_px**2  # [N, P, V]
    best = inl.sum(-1).argmax(-1)
    keep = inl[np.arange(N), best]  # [N, V]
    root = solve((M * keep[..., None, None]).sum(1), (q * keep[..., None]).sum(1))
    return {"xy": np.stack([x, y], -1), "w": w, "root_world": root.astype(np.float32)}


def _preprocess_child(args: argparse.Namespace) -> int:
    """In a fresh process (threads already limited through the environment): read + preprocess, frames per
    CPU-second, printed as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    files = json.loads(args.preprocess_child)
    meta = json.loads(args.meta)
    from rigpose.data.pipeline import MODEL_COLUMNS, PREPROCESS_ROWS, Preprocess

    roots = tuple(meta["root_joints"])
    prep: Any = (functools.partial(bare_preprocess, num_joints=meta["num_joints"], root_joints=roots)
                 if args.impl == "bare" else
                 Preprocess(num_joints=meta["num_joints"], num_views=meta["num_views"], root_joints=roots,
                            with_3d=False, with_pseudo=False))
    pq.read_table(files[0], columns=list(MODEL_COLUMNS)).slice(0, 64)  # imports, first-call costs: untimed
    prep(pq.read_table(files[0], columns=list(MODEL_COLUMNS)).slice(0, 64))
    gc.collect()
    c0, w0, rows = time.process_time(), time.perf_counter(), 0
    for f in files:
        table = pq.read_table(f, columns=list(MODEL_COLUMNS))
        table = table.slice(0, min(table.num_rows, args.preprocess_rows - rows))
        for off in range(0, table.num_rows, PREPROCESS_ROWS):
            prep(table.slice(off, PREPROCESS_ROWS))
        rows += table.num_rows
        if rows >= args.preprocess_rows:
            break
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    import rigpose

    print(json.dumps({"rows": rows, "cpu_s": cpu, "wall_s": wall, "fps_cpu": rows / cpu, "threads": args.threads,
                      "rigpose": str(Path(rigpose.__file__).parent)}))
    return 0


def time_preprocess(files: list[Path], meta: dict[str, Any], *, source: Path, impl: str, rows: int
                    ) -> dict[str, Any]:
    """Frames per CPU-second of `impl` ("rigpose": `Preprocess` of the package under `source`; "bare") at each
    of `THREADS`, each in a fresh process; the faster one and all runs."""
    runs = []
    for n in THREADS:
        env = {**os.environ, **dict.fromkeys(THREAD_VARS, str(n)),
               "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--preprocess-child", json.dumps([str(f) for f in files]),
               "--meta", json.dumps(meta), "--threads", str(n), "--impl", impl, "--preprocess-rows", str(rows)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = max(runs, key=lambda r: r["fps_cpu"])
    return {**best, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    from rigpose.resources import recipe_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=recipe_path("scale"))
    ap.add_argument("--frames", type=int, default=None, help="override the recipe's frame count (quick runs)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--tmp", type=Path, default=None, help="temp dir parent (default: the system's)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="an older checkout's platform/ folder: its preprocessing is timed beside this one's")
    ap.add_argument("--preprocess-rows", type=int, default=100_000, help="rows the preprocessing timings read")
    ap.add_argument("--preprocess-child", default=None, help=argparse.SUPPRESS)  # internal: JSON list of files
    ap.add_argument("--meta", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="rigpose", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.preprocess_child is not None:
        return _preprocess_child(args)
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
        train = [root / s.path for s in manifest.shards if s.split == "train"] or files
        from rigpose.data.reader import Dataset

        ds = Dataset(str(root))
        meta = {"num_joints": ds.skeleton.num_joints, "num_views": manifest.max_views,
                "root_joints": list(ds.skeleton.root_joints)}
        prep = {"new": time_preprocess(train, meta, source=REPO / "platform", impl="rigpose",
                                       rows=args.preprocess_rows),
                "bare": time_preprocess(train, meta, source=REPO / "platform", impl="bare",
                                        rows=args.preprocess_rows)}
        if args.baseline is not None:
            prep["old"] = time_preprocess(train, meta, source=args.baseline.resolve(), impl="rigpose",
                                          rows=args.preprocess_rows)

    r: dict[str, Any] = {"command": command, "machine": info, "recipe": str(args.recipe), "frames": n,
                         "shards": len(files), "compression": compression, "build_bytes": built_bytes,
                         "bare_write_bytes": bare_bytes, "load_average": os.getloadavg()}
    for name, t, rows in (("generate", gen, gen_n), ("write_only", write_only, gen_n), ("build", build, n),
                          ("bare_write", bare, n), ("read_frames", read, n), ("bare_read", bare_read, n)):
        r[name] = {"s": t.wall, "cpu_s": t.cpu, "fps": rows / t.wall}
    r["write_ratio"] = bare.wall / build.wall
    r["write_only_ratio"] = bare.wall / write_only.wall
    r["read_ratio"] = bare_read.wall / read.wall
    r["preprocess"] = prep
    r["preprocess"]["baseline"] = str(args.baseline) if args.baseline else None
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
    p = r["preprocess"]
    console.print(f"[bold]Preprocessing[/] (read + Preprocess, root only), frames per CPU-second, the faster of "
                  f"{' and '.join(map(str, THREADS))} threads; baseline: {p['baseline'] or 'none given'}")
    t = Table()
    for col in ("what", "rows", "frames / CPU-s", "threads", "1 thread", "2 threads", "vs old", "vs bare"):
        t.add_column(col, justify="left" if col == "what" else "right")
    for key, label in (("old", "before (--baseline)"), ("new", "this checkout"), ("bare", "bare ceiling")):
        if key not in p:
            continue
        x = p[key]
        per = {run["threads"]: f"{run['fps_cpu']:,.0f}" for run in x["runs"]}
        vs_old = f"{x['fps_cpu'] / p['old']['fps_cpu']:.2f}x" if "old" in p else "-"
        t.add_row(label, f"{x['rows']:,}", f"{x['fps_cpu']:,.0f}", str(x["threads"]), per.get(1, "-"),
                  per.get(2, "-"), vs_old, f"{x['fps_cpu'] / p['bare']['fps_cpu']:.2f}")
    console.print(t)


if __name__ == "__main__":
    sys.exit(main())
