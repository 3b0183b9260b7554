"""Batch inference throughput: the registry model on Ray Data against the bare PyTorch model on the same arrays.

One run, one process, one dataset: the shipped `scale` recipe (procedural motion, two 4-camera Human3.6M rigs,
16 joints) with `--frames` frames (default 1,000,000), all in one split, built once and cached under
outputs/bench/inference-data/ (building 1M frames takes ~1-3 min here). The model: a lifter of the default
architecture (`ModelConfig()`; random weights: speed does not depend on them), registered as a pyfunc in a
sqlite MLflow registry in a temp dir and used as `models:/bench-lifter@candidate`.

- (a) bare: the split read into memory as padded arrays first (untimed), then a plain loop over `--batch-size`
  frames in this process: `rigpose.inference.lift.model_batch` (prepare_arrays: undistortion, K^-1, root triangulation)
  + `lift_single` (the model) = (a1); `rigpose.inference.lift.lift_frames` (mode single, the dataset's floors:
  (a1) + the metric scale from the feet on the floor + the output rows) on the same batch, timed apart = (a2),
  exactly the per-batch work of the Ray path minus I/O. `--bare-threads 2,1` takes turns batch by batch
  between 2 and 1 torch threads (each count then sees half the frames, under the same machine load: on a busy
  machine 2 threads can lose to 1). The goal's denominator is the fastest (a1), the strictest choice.
- (b) Ray Data end to end: `rigpose.inference.lift_ray.lift_dataset_ray` from the registry URI (the driver loads
  the model and sends its weights to the actors; read the shards' row groups, Frames, prepare, model, output rows,
  one Parquet file written by the driver), `--concurrency` actors of
  `--threads-per-actor` torch threads each, on a local Ray started beforehand (`init_ray(None)`, untimed). The
  time includes the actors' start and model loading; (b0) a `--small-frames` run measures that fixed part.
- (a3) two bare processes (`--bare-processes`), one torch thread each, each doing (a2)'s work on half of the
  frames (read into memory first, untimed), started together: the strongest bare baseline on a machine of 2
  cores, since the Ray path runs its 2 actors on both (issue #16's goal: (b) >= 0.8 x (a3)).

Frames/s depend on the machine (printed); the ratio (b)/(a1) is what to compare (goal: >= 0.7 at 1M frames).
A few comma-separated values of `--concurrency` run (b) once each (tuning; the first is the headline).

    .venv/bin/python bench/inference_bench.py [--frames 1000000] [--batch-size 512] [--concurrency 2]
        [--threads-per-actor 1] [--bare-threads 2,1] [--bare-processes 2] [--json outputs/bench/inference.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "bench-lifter"
SPLIT = "test"
console = Console(width=130)


def ensure_dataset(frames: int, cache: Path) -> tuple[str, float | None]:
    """The scale recipe with `frames` frames, all in split `SPLIT`, under `cache` (built when missing); and the
    build seconds (None when it was cached)."""
    from rigpose.data.manifest import read_manifest
    from rigpose.data.synth.build import build_dataset
    from rigpose.data.synth.recipe import parse_recipe
    from rigpose.resources import recipe_path

    root = cache / f"scale-{frames}"
    manifest = read_manifest(str(root))
    if manifest is not None and sum(s.rows for s in manifest.shards) > 0:
        return str(root), None
    raw = yaml.safe_load(recipe_path("scale").read_text())
    raw["frames"] = frames
    raw["splits"] = {"by": "placement", "fractions": {SPLIT: 1.0}}
    console.print(f"building {root} ({frames:,} frames, once) ...")
    t = time.perf_counter()
    build_dataset(parse_recipe(raw), str(root), progress=False, command="bench/inference_bench.py")
    return str(root), time.perf_counter() - t


def register_model(folder: Path, data: str) -> tuple[str, str]:
    """A default-architecture lifter saved to `folder` and registered as MODEL_NAME@candidate in a sqlite MLflow
    there; (models:/ URI, model file). Points the process's tracking URI there."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from rigpose.config import ModelConfig
    from rigpose.data.reader import Dataset, iter_frames
    from rigpose.model.checkpoint import save_lifter
    from rigpose.model.lifter import Lifter
    from rigpose.tracking.pyfunc import example_input
    from rigpose.tracking.registry import register
    from rigpose.tracking.runs import TrackingTarget

    ds = Dataset(data)
    torch.manual_seed(0)
    model = Lifter(ModelConfig(), num_joints=ds.skeleton.num_joints, root_joints=tuple(ds.skeleton.root_joints))
    model_file = str(folder / "model.pt")
    save_lifter(model_file, model, ds.skeleton)
    target = TrackingTarget(uri=f"sqlite:///{folder / 'mlflow.db'}", experiment="bench",
                            artifact_location=(folder / "artifacts").as_uri())
    client = MlflowClient(target.uri)
    exp = client.create_experiment(target.experiment, artifact_location=target.artifact_location)
    run_id = client.create_run(exp, run_name="inference-bench").info.run_id
    frames = next(iter_frames(ds, split=SPLIT, batch_size=2, max_rows=2))
    example = example_input(frames.keypoints, frames.scores, frames.cameras, frames.view_mask)
    register(target, run_id=run_id, model_file=model_file, example=example, name=MODEL_NAME, tags={})
    mlflow.set_tracking_uri(target.uri)
    return f"models:/{MODEL_NAME}@candidate", model_file


def bare(data: str, model_file: str, *, batch_size: int, threads: list[int]) -> tuple[dict[str, Any], Any]:
    """(a): the split in memory first, then model_batch + lift_single (+ single_table) in a plain loop, batch i
    with threads[i % len(threads)] torch threads.

    Returns {"frames", "batch_size", "read_into_memory_s", "by_threads": {threads: timings}} and the first
    batch's output rows (to check (b) against)."""
    from rigpose.data.reader import Dataset
    from rigpose.inference.lift import dataset_floors, lift_frames, lift_single, model_batch
    from rigpose.model.checkpoint import load_lifter

    model, skeleton, _ = load_lifter(model_file)
    t = time.perf_counter()
    ds = Dataset(data)
    floors = dataset_floors(ds)
    frames = ds.read_frames(with_3d=False, splits=[SPLIT])
    load_s = time.perf_counter() - t
    for k in threads:  # warm-up, each thread count
        torch.set_num_threads(k)
        lift_single(model, model_batch(frames.take(slice(0, batch_size)), skeleton, pseudo_3d=False))
    gc.collect()
    acc = {k: {"frames": 0, "model_s": 0.0, "lift_frames_s": 0.0, "cpu_s": 0.0} for k in threads}
    first = None
    for j, i in enumerate(range(0, len(frames), batch_size)):
        k = threads[j % len(threads)]
        torch.set_num_threads(k)
        part = frames.take(slice(i, i + batch_size))
        t0 = time.perf_counter()
        lift_single(model, model_batch(part, skeleton, pseudo_3d=False))
        t1, c1 = time.perf_counter(), time.process_time()
        table = lift_frames(model, skeleton, part, mode="single", floors=floors)
        t2, c2 = time.perf_counter(), time.process_time()
        a = acc[k]
        a["frames"] += len(part)
        a["model_s"] += t1 - t0
        a["lift_frames_s"] += t2 - t1
        a["cpu_s"] += c2 - c1
        if first is None:
            first = table
    n = len(frames)
    del frames
    gc.collect()
    for a in acc.values():
        a["a1_fps"] = a["frames"] / a["model_s"]
        a["a2_fps"] = a["frames"] / a["lift_frames_s"]
        a["cpu_per_wall"] = a["cpu_s"] / a["lift_frames_s"]
    return {"frames": n, "batch_size": batch_size, "read_into_memory_s": load_s, "by_threads": acc}, first


def _bare_process(data: str, model_file: str, batch_size: int, rows: tuple[int, int], go: Any, q: Any) -> None:
    """One of (a3)'s processes: rows [lo, hi) of the split in memory (untimed), one torch thread, then on `go`
    the (a2) loop over them; puts ("ready",) then (frames, start, end) on `q` (time.monotonic, shared by the
    machine's processes)."""
    from rigpose.data.reader import Dataset
    from rigpose.inference.lift import dataset_floors, lift_frames
    from rigpose.model.checkpoint import load_lifter

    torch.set_num_threads(1)
    model, skeleton, _ = load_lifter(model_file)
    ds = Dataset(data)
    floors = dataset_floors(ds)
    frames = ds.read_frames(with_3d=False, splits=[SPLIT]).take(slice(*rows))
    lift_frames(model, skeleton, frames.take(slice(0, batch_size)), mode="single", floors=floors)  # warm-up
    gc.collect()
    q.put(("ready",))
    go.wait()
    t0 = time.monotonic()
    for i in range(0, len(frames), batch_size):
        lift_frames(model, skeleton, frames.take(slice(i, i + batch_size)), mode="single", floors=floors)
    q.put((len(frames), t0, time.monotonic()))


def bare_processes(data: str, model_file: str, *, batch_size: int, frames: int, processes: int = 2) -> dict[str, Any]:
    """(a3): `processes` bare processes of one torch thread each, each lifting a contiguous share of the split (as
    (a2): lift_frames, in memory), started together; frames/s = all frames over the
    wall time from the start signal to the last one's end."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    go, q = ctx.Event(), ctx.Queue()
    bounds = [(frames * p // processes, frames * (p + 1) // processes) for p in range(processes)]
    procs = [ctx.Process(target=_bare_process, args=(data, model_file, batch_size, b, go, q)) for b in bounds]
    for p in procs:
        p.start()
    for _ in procs:
        assert q.get(timeout=1800) == ("ready",)
    start = time.monotonic()
    go.set()
    done = [q.get(timeout=7200) for _ in procs]
    for p in procs:
        p.join()
    wall = max(end for _, _, end in done) - start
    n = sum(k for k, _, _ in done)
    return {"frames": n, "processes": processes, "wall_s": wall, "fps": n / wall,
            "per_process_s": [end - t0 for _, t0, end in done]}


def ray_run(uri: str, data: str, out: str, *, batch_size: int, concurrency: int, threads: int,
            max_rows: int | None = None) -> dict[str, Any]:
    """(b): lift_dataset_ray end to end, wall seconds and frames/s."""
    from rigpose.inference.lift_ray import lift_dataset_ray

    gc.collect()
    t = time.perf_counter()
    info = lift_dataset_ray(uri, data, split=SPLIT, out_url=out, batch_size=batch_size, max_rows=max_rows,
                            concurrency=concurrency, num_threads=threads)
    wall = time.perf_counter() - t
    return {"frames": info["frames"], "rows": info["rows"], "wall_s": wall, "fps": info["frames"] / wall,
            "concurrency": concurrency, "threads_per_actor": threads, "batch_size": batch_size,
            "model": info["model"], "out_bytes": os.path.getsize(out)}


def same_rows(out: str, first: Any) -> float:
    """Largest |difference| between the bare loop's first batch and the same rows (rig, sequence, frame, view) of
    the Ray file, wherever Ray wrote them (metres); AssertionError when a row is missing or null differently."""
    import pyarrow.compute as pc

    keys = ("rig_id", "sequence", "frame", "view")
    got = pq.read_table(out, filters=[("sequence", "in", sorted(set(first.column("sequence").to_pylist())))])
    got = got.filter(pc.is_in(got.column("frame"), value_set=first.column("frame").unique()))
    index = {k: i for i, k in enumerate(zip(*(got.column(c).to_pylist() for c in keys), strict=True))}
    wanted = list(zip(*(first.column(c).to_pylist() for c in keys), strict=True))
    missing = [k for k in wanted if k not in index]
    assert not missing, f"rows of the bare loop's first batch missing from the Ray output: {missing[:3]}"
    got = got.take([index[k] for k in wanted])
    worst = 0.0
    for name in ("joints_cam", "root_cam"):
        a, b = got.column(name), first.column(name)
        assert a.is_null().to_pylist() == b.is_null().to_pylist(), name
        x = np.asarray(a.drop_null().to_pylist(), np.float64)
        y = np.asarray(b.drop_null().to_pylist(), np.float64)
        worst = max(worst, float(np.abs(x - y).max(initial=0.0)))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000, help="dataset size (cached per size)")
    ap.add_argument("--batch-size", type=int, default=512, help="frames per model call, both paths")
    ap.add_argument("--concurrency", default="2", help="Ray actors; a comma-separated list runs (b) once each")
    ap.add_argument("--threads-per-actor", type=int, default=1, help="torch threads in each Ray actor")
    ap.add_argument("--bare-threads", default=",".join(dict.fromkeys(map(str, (os.cpu_count() or 1, 1)))),
                    help="torch threads of (a); a comma-separated list takes turns batch by batch")
    ap.add_argument("--bare-processes", type=int, default=2, help="processes of (a3), 1 thread each (<= 1: skip)")
    ap.add_argument("--small-frames", type=int, default=2000, help="frames of the (b0) fixed-cost run (0 = skip)")
    ap.add_argument("--cache", type=Path, default=REPO / "outputs" / "bench" / "inference-data")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    import ray

    sys.path.insert(0, str(REPO / "bench"))
    from dataset_bench import machine_info

    command = " ".join([".venv/bin/python", "bench/inference_bench.py", *map(shlex.quote, sys.argv[1:])])
    r: dict[str, Any] = {"command": command, "machine": machine_info(), "torch": torch.__version__,
                         "ray_version": ray.__version__, "load_average_start": os.getloadavg()}
    data, build_s = ensure_dataset(args.frames, args.cache)
    r.update(data=data, build_s=build_s)
    with tempfile.TemporaryDirectory(prefix="rigpose-inference-bench-") as tmp:
        uri, model_file = register_model(Path(tmp), data)
        threads = [int(x) for x in args.bare_threads.split(",")]
        console.print(f"(a) bare loop, {threads} torch threads ...")
        r["bare"], first = bare(data, model_file, batch_size=args.batch_size, threads=threads)
        if args.bare_processes > 1:
            console.print(f"(a3) {args.bare_processes} bare processes x 1 thread ...")
            r["bare_processes"] = bare_processes(data, model_file, batch_size=args.batch_size,
                                                 frames=r["bare"]["frames"], processes=args.bare_processes)
        from rigpose.cluster.connect import init_ray

        t = time.perf_counter()
        init_ray(None)
        r["ray_start_s"] = time.perf_counter() - t
        r["ray_cpus"] = ray.cluster_resources().get("CPU")
        r["ray"] = []  # one run per --concurrency value
        for c in [int(x) for x in args.concurrency.split(",")]:
            console.print(f"(b) lift_dataset_ray from {uri}, {c} actors x {args.threads_per_actor} threads ...")
            out = str(Path(tmp) / f"ray-{c}.parquet")
            run = ray_run(uri, data, out, batch_size=args.batch_size, concurrency=c, threads=args.threads_per_actor)
            run["max_abs_diff_m"] = same_rows(out, first)
            os.unlink(out)
            r["ray"].append(run)
        if args.small_frames:
            console.print(f"(b0) the same, {args.small_frames:,} frames (fixed cost) ...")
            c = int(args.concurrency.split(",")[0])
            r["ray_small"] = ray_run(uri, data, str(Path(tmp) / "small.parquet"), batch_size=args.batch_size,
                                     concurrency=c, threads=args.threads_per_actor, max_rows=args.small_frames)
        ray.shutdown()  # before the registry folder goes: no actor may restart and look for the model there
    r["load_average_end"] = os.getloadavg()
    report(r)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1))
    return 0


def report(r: dict[str, Any]) -> None:
    m, a = r["machine"], r["bare"]
    console.print(f"[bold]Batch inference[/]  {a['frames']:,} frames x 4 views, batch {a['batch_size']}, "
                  f"data {r['data']}" + (f" (built in {r['build_s']:.0f} s)" if r["build_s"] else " (cached)"))
    console.print(f"machine: {m['usable_cores']} of {m['cores']} cores, {m['cpu']}, Python {m['python']}, torch "
                  f"{r['torch']}, Ray {r['ray_version']}, pyarrow {m['pyarrow']}")
    console.print(f"local Ray: {r['ray_cpus']:g} logical CPUs, started in {r['ray_start_s']:.1f} s (untimed); "
                  f"load average {r['load_average_start'][0]:.1f} at start, {r['load_average_end'][0]:.1f} at end")
    t = Table()
    for col in ("what", "frames", "wall s", "frames/s", "vs best (a1)"):
        t.add_column(col, justify="left" if col == "what" else "right")
    by = a["by_threads"]
    base = max(x["a1_fps"] for x in by.values())
    for k, x in by.items():
        t.add_row(f"(a1) bare: model_batch + lift_single, in memory, {k} torch thread(s)", f"{x['frames']:,}",
                  f"{x['model_s']:.1f}", f"{x['a1_fps']:,.0f}", f"{x['a1_fps'] / base:.2f}")
        t.add_row(f"(a2) lift_frames: + metric scale + output rows (= the Ray path minus I/O), {k} thread(s)",
                  f"{x['frames']:,}", f"{x['lift_frames_s']:.1f}", f"{x['a2_fps']:,.0f}", f"{x['a2_fps'] / base:.2f}")
    procs = r.get("bare_processes")
    if procs:
        t.add_row(f"(a3) {procs['processes']} bare processes x 1 thread, (a2)'s work, a share of the frames each",
                  f"{procs['frames']:,}", f"{procs['wall_s']:.1f}", f"{procs['fps']:,.0f}",
                  f"{procs['fps'] / base:.2f}")
    for b in r["ray"]:
        t.add_row(f"(b) Ray Data, registry model, {b['concurrency']} actors x {b['threads_per_actor']} thread(s), "
                  "Parquet -> Parquet", f"{b['frames']:,}", f"{b['wall_s']:.1f}", f"{b['fps']:,.0f}",
                  f"[bold]{b['fps'] / base:.2f}[/]" + (f" ({b['fps'] / procs['fps']:.2f} x (a3))" if procs else ""))
    if "ray_small" in r:
        s = r["ray_small"]
        t.add_row(f"(b0) the same, {s['frames']:,} frames (mostly fixed cost)", f"{s['frames']:,}",
                  f"{s['wall_s']:.1f}", f"{s['fps']:,.0f}", "-")
    console.print(t)
    b = r["ray"][0]
    cpu = ", ".join(f"{k} thread(s) {x['cpu_per_wall']:.2f}" for k, x in by.items())
    console.print(f"(b) wrote {b['rows']:,} rows ({b['out_bytes'] / 1e6:,.0f} MB); first batch equals (a2)'s within "
                  f"{b['max_abs_diff_m']:.1e} m. (a) read the split into memory in {a['read_into_memory_s']:.1f} s "
                  f"(untimed); CPU-s per wall-s of its loop: {cpu}")
    console.print(f"command: {r['command']}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    sys.exit(main())
