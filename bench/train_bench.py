"""Training throughput of `rigpose train` on Ray against a bare PyTorch loop, and of the Ray Data path alone.

All in one process, one run, on one dataset (default: the demo dataset, built from the shipped demo recipe into
outputs/datasets/demo when missing), lifter and batch of jobs/train.yaml (512 wide, 2 blocks, batch 256 frames of
4 views):

- (a) bare loop: the same model (training mode, its dropout), loss (`rigpose.model.objective.loss_terms` +
  `total_loss`), gradient clipping, Adam and batch over in-memory tensors (the training split preprocessed once,
  shuffled once and cut into contiguous batches before timing), no Ray: the ceiling, with 1 and with 2 torch
  threads in alternating turns, the faster as the denominator ("old" ratios: against the 2-thread loop, what
  this bench's denominator was until 2026-12-07);
- (b) `rigpose.train.trainer.train` with 1 worker reading the Parquet shards through Ray Data, cached
  (`data.cache: true`, preprocessed once into the object store) and streaming (`data.cache: false`, read and
  preprocessed again every epoch); (c) the same with 2 workers (DDP, gloo). Frames/s = the job's frames per
  second of training-epoch wall time (validation off), median over the epochs after the first; the first epoch
  and `startup_s` (from calling train to the first batch: Ray, datasets, workers) are reported apart;
- data path alone: frames/s that the Ray Data iterator (`iter_torch_batches`, batch 256) delivers to one consumer
  with no model, streaming (read + preprocess) and cached, against a bare `pyarrow.parquet.read_table` of the same
  shards, and the preprocessing alone on one core (`Preprocess` on in-memory tables): the per-core figure.

    .venv/bin/python bench/train_bench.py [--data URL] [--epochs 4] [--bare-steps 150] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
console = Console(width=120)


def ensure_dataset(url: str) -> None:
    from rigpose.data.manifest import read_manifest
    from rigpose.data.synth.build import build_dataset
    from rigpose.resources import recipe_path

    if read_manifest(url) is None:
        console.print(f"building {url} from the shipped demo recipe")
        build_dataset(str(recipe_path("demo")), url, progress=False)


def in_memory_batches(url: str) -> tuple[dict[str, torch.Tensor], Any]:
    """The training split, preprocessed once, as float32 tensors; and the dataset's skeleton."""
    from rigpose.data.pipeline import MODEL_COLUMNS, Preprocess
    from rigpose.data.reader import Dataset

    ds = Dataset(url)
    table = ds.read_table(columns=list(MODEL_COLUMNS), splits=["train"])
    prep = Preprocess(num_joints=ds.skeleton.num_joints, num_views=ds.manifest.max_views,
                      root_joints=ds.skeleton.root_joints, with_3d=False, with_pseudo=False)
    arrays = prep(table)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, ds.skeleton


def bare_loop(url: str, *, steps: int, batch: int, threads: tuple[int, ...] = (1, 2),
              rounds: int = 3) -> dict[str, Any]:
    """(a): frames/s of the training step alone over in-memory tensors, the strongest loop this bench can write:
    the split shuffled once and cut into contiguous batch tensors before timing (no gather, no slicing per step),
    the same model in training mode (its dropout), loss, gradient clipping and Adam as `rigpose train`. Each thread
    count in `threads` trains `steps` steps, in `rounds` turns taken in alternation (so each sees the same machine
    load); the headline is the fastest count."""
    from rigpose.config import load_job
    from rigpose.model.objective import loss_terms, total_loss
    from rigpose.train.worker import build_lifter

    data, skeleton = in_memory_batches(url)
    job = load_job(REPO / "jobs" / "train.yaml")
    torch.manual_seed(0)
    model = build_lifter(job, skeleton).train()
    opt = torch.optim.Adam(model.parameters(), lr=job.optim.lr)
    n = data["kp"].shape[0]
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=gen)
    batches = [{k: v[perm[i:i + batch]].contiguous() for k, v in data.items()} for i in range(0, n - batch + 1, batch)]

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        loss, _ = total_loss(loss_terms(model, b, skeleton, loss_cfg=job.loss, step=i, generator=gen), job.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.optim.grad_clip)
        opt.step()

    default_threads = torch.get_num_threads()
    seconds = dict.fromkeys(threads, 0.0)
    done = dict.fromkeys(threads, 0)
    i = 0
    for k in threads:  # warm-up per thread count (allocator, kernels)
        torch.set_num_threads(k)
        for _ in range(10):
            step(i)
            i += 1
    for r in range(rounds):
        for k in threads:
            torch.set_num_threads(k)
            todo = steps * (r + 1) // rounds - steps * r // rounds
            t0 = time.perf_counter()
            for _ in range(todo):
                step(i)
                i += 1
            seconds[k] += time.perf_counter() - t0
            done[k] += todo
    torch.set_num_threads(default_threads)
    by_threads = {k: done[k] * batch / seconds[k] for k in threads}
    best = max(by_threads, key=by_threads.__getitem__)
    return {"frames_per_s": by_threads[best], "threads": best, "by_threads": by_threads, "steps": steps,
            "default_threads": default_threads}


#: Assumptions of the GPU estimate (no device measured): eager PyTorch issues one kernel per ATen operator call,
#: at about this many microseconds each (CPU-side dispatch and launch; the lower and upper end used), and the
#: matmuls run at this share of an H100's dense FP32 rate (67 TFLOP/s; PyTorch's default, no TF32).
LAUNCH_US = (5.0, 10.0)
H100_FP32_FLOPS = 67e12
ACHIEVED_SHARE = 0.5


def op_counts(url: str, *, batches: tuple[int, ...] = (256, 1024)) -> dict[str, Any]:
    """Measured op counts of one training step of (a)'s model, loss, clipping and Adam, per batch size: FLOPs
    (`torch.utils.flop_counter.FlopCounterMode`) and ATen operator calls (a dispatch mode counting them), and the
    GPU step time they imply under LAUNCH_US / H100_FP32_FLOPS x ACHIEVED_SHARE: an ESTIMATE, no GPU measured."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from rigpose.config import load_job
    from rigpose.model.objective import loss_terms, total_loss
    from rigpose.train.worker import build_lifter

    class CountOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.calls += 1
            return func(*args, **(kwargs or {}))

    data, skeleton = in_memory_batches(url)
    job = load_job(REPO / "jobs" / "train.yaml")
    torch.manual_seed(0)
    model = build_lifter(job, skeleton).train()
    opt = torch.optim.Adam(model.parameters(), lr=job.optim.lr)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"assumed": {"launch_us": LAUNCH_US, "h100_fp32_flops": H100_FP32_FLOPS,
                                       "achieved_share": ACHIEVED_SHARE}, "estimate": True,
                           "parameters": sum(p.numel() for p in model.parameters())}
    for batch in batches:
        b = {k: v[:batch].contiguous() for k, v in data.items()}

        def step(b: dict[str, torch.Tensor] = b) -> None:
            loss, _ = total_loss(loss_terms(model, b, skeleton, loss_cfg=job.loss, step=0, generator=gen), job.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), job.optim.grad_clip)
            opt.step()

        step()  # Adam's state exists from here on, as in every later step
        flops, ops = FlopCounterMode(display=False), CountOps()
        with flops, ops:
            step()
        total = flops.get_total_flops()
        compute_s = total / (H100_FP32_FLOPS * ACHIEVED_SHARE)
        step_s = [max(compute_s, ops.calls * us * 1e-6) for us in LAUNCH_US]
        out[str(batch)] = {"flops": total, "aten_calls": ops.calls, "compute_s": compute_s,
                           "gpu_frames_per_s": [batch / s for s in reversed(step_s)]}
    return out


def data_path(url: str, *, batch: int) -> dict[str, Any]:
    """Data path alone: Ray Data iterator (streaming / cached) vs bare read_table, and preprocessing per core."""
    from rigpose.data.pipeline import MODEL_COLUMNS, Preprocess, read_split
    from rigpose.data.reader import Dataset

    ds = Dataset(url)
    urls = ds.shard_urls(splits=["train"])
    rows = sum(s.rows for s in ds.shards(splits=["train"]))
    out: dict[str, Any] = {"rows": rows, "shards": len(urls)}

    def consume(rd: Any) -> float:
        t0 = time.perf_counter()
        n = 0
        for b in rd.iter_torch_batches(batch_size=batch, dtypes=torch.float32):
            n += int(b["kp"].shape[0])
        assert n == rows, (n, rows)
        return n / (time.perf_counter() - t0)

    streaming = read_split(ds, "train", shuffle_seed=0, with_pseudo=False)  # as jobs/train.yaml (pseudo_3d: 0)
    consume(streaming)  # warm-up: Ray Data's workers and imports
    out["ray_streaming_frames_per_s"] = consume(streaming)
    cached = read_split(ds, "train", with_pseudo=False).materialize()
    out["ray_cached_frames_per_s"] = consume(cached)
    t0 = time.perf_counter()
    tables = [pq.read_table(u, columns=list(MODEL_COLUMNS)) for u in urls]
    out["bare_read_frames_per_s"] = rows / (time.perf_counter() - t0)
    for with_pseudo in (False, True):  # root-only triangulation (the default job) / every joint (pseudo-3D term)
        prep = Preprocess(num_joints=ds.skeleton.num_joints, num_views=ds.manifest.max_views,
                          root_joints=ds.skeleton.root_joints, with_3d=False, with_pseudo=with_pseudo)
        c0 = time.process_time()
        for t in tables:
            for off in range(0, t.num_rows, 1024):
                prep(t.slice(off, 1024))
        key = "preprocess_pseudo3d" if with_pseudo else "preprocess"
        out[f"{key}_frames_per_cpu_s"] = rows / (time.process_time() - c0)
    return out


def ray_train(url: str, out_dir: Path, *, name: str, workers: int, cpus: float, cache: bool,
              epochs: int) -> dict[str, Any]:
    """(b)/(c): `train` on the shards; frames/s of the epochs after the first, first epoch, startup."""
    from rigpose.config import load_job
    from rigpose.train.trainer import train

    job = load_job(REPO / "jobs" / "train.yaml", [
        f"data.url={url}", "data.val_split=null", f"data.cache={str(cache).lower()}", f"optim.epochs={epochs}",
        f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={cpus}", f"run.output_dir={out_dir}",
        f"run.name={name}-{int(time.time())}"])
    t0 = time.perf_counter()
    result = train(job)
    history = result["history"]
    steady = [h["frames_per_s"] for h in history[1:]]
    return {"frames_per_s": statistics.median(steady), "first_epoch_frames_per_s": history[0]["frames_per_s"],
            "startup_s": history[0].get("startup_s"), "wall_s": time.perf_counter() - t0, "epochs": epochs,
            "workers": workers, "cpus_per_worker": cpus, "cache": cache}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "outputs" / "datasets" / "demo"))
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "train_runs"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--bare-steps", type=int, default=150)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from dataset_bench import machine_info

    batch = 256
    ensure_dataset(args.data)
    results: dict[str, Any] = {"command": shlex.join([".venv/bin/python", *sys.argv]), "machine": machine_info(),
                               "torch": torch.__version__, "batch": batch, "data": args.data}
    import ray

    results["ray"] = ray.__version__
    console.print("op counts of a training step (the GPU estimate) ...")
    results["op_counts"] = op_counts(args.data)
    console.print("(a) bare PyTorch loop ...")
    results["bare"] = bare_loop(args.data, steps=args.bare_steps, batch=batch)
    from rigpose.cluster.connect import init_ray

    init_ray(None)
    console.print("data path alone ...")
    results["data_path"] = data_path(args.data, batch=batch)
    out = Path(args.out)
    runs = {
        "b_1worker_cached": dict(workers=1, cpus=2, cache=True),
        "b_1worker_streaming": dict(workers=1, cpus=2, cache=False),
        "c_2workers_cached": dict(workers=2, cpus=1, cache=True),
    }
    for name, kw in runs.items():
        console.print(f"rigpose train: {name} ...")
        results[name] = ray_train(args.data, out, name=name, epochs=args.epochs, **kw)
    report(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


def report(r: dict[str, Any]) -> None:
    bare = r["bare"]["frames_per_s"]
    table = Table(title=f"training throughput, batch {r['batch']} frames x 4 views")
    for col in ("what", "frames/s", "vs (a)", "old: vs 2-thread (a)", "first epoch frames/s", "startup s"):
        table.add_column(col, justify="left" if col == "what" else "right")
    old = r["bare"]["by_threads"].get(2, r["bare"]["by_threads"].get("2", bare))
    for k, fps in sorted(r["bare"]["by_threads"].items()):
        table.add_row(f"(a) bare PyTorch loop, {k} thread(s)" + (" (the denominator)" if fps == bare else ""),
                      f"{fps:,.0f}", f"{fps / bare:.2f}", f"{fps / old:.2f}", "-", "-")
    for key in ("b_1worker_cached", "b_1worker_streaming", "c_2workers_cached"):
        x = r[key]
        table.add_row(f"{key}: {x['workers']} worker(s) x {x['cpus_per_worker']:g} CPU, cache={x['cache']}",
                      f"{x['frames_per_s']:,.0f}", f"{x['frames_per_s'] / bare:.2f}", f"{x['frames_per_s'] / old:.2f}",
                      f"{x['first_epoch_frames_per_s']:,.0f}", f"{x['startup_s']:.1f}")
    console.print(table)
    d = r["data_path"]
    consumed = r["b_1worker_cached"]["frames_per_s"]
    t2 = Table(title=f"data path alone ({d['rows']:,} training frames, {d['shards']} shards)")
    for col in ("what", "frames/s", "vs bare read", "x one worker's consumption"):
        t2.add_column(col, justify="left" if col == "what" else "right")
    for key, label in (("bare_read_frames_per_s", "bare pq.read_table (model columns)"),
                       ("ray_streaming_frames_per_s", "Ray Data streaming: read + preprocess + batches"),
                       ("ray_cached_frames_per_s", "Ray Data cached: batches from the object store"),
                       ("preprocess_frames_per_cpu_s", "preprocess per CPU-second (one core)"),
                       ("preprocess_pseudo3d_frames_per_cpu_s", "same, with the pseudo-3D targets (one core)")):
        t2.add_row(label, f"{d[key]:,.0f}", f"{d[key] / d['bare_read_frames_per_s']:.2f}", f"{d[key] / consumed:.1f}")
    console.print(t2)
    oc = r.get("op_counts")
    if oc:
        per_core = d["preprocess_frames_per_cpu_s"]
        t3 = Table(title=f"GPU ESTIMATE from measured op counts (no GPU measured; {oc['parameters']:,} parameters; "
                         f"{oc['assumed']['launch_us']} us per kernel, {oc['assumed']['achieved_share']:.0%} of "
                         f"{oc['assumed']['h100_fp32_flops'] / 1e12:.0f} TFLOP/s)")
        for col in ("batch (frames)", "GFLOP per step", "ATen calls per step", "H100 frames/s (estimate)",
                    "preprocessing cores needed (streaming)"):
            t3.add_column(col, justify="right")
        for batch in (k for k in oc if k.isdigit()):
            x = oc[batch]
            lo, hi = x["gpu_frames_per_s"]
            t3.add_row(batch, f"{x['flops'] / 1e9:.1f}", f"{x['aten_calls']:,}", f"{lo:,.0f}-{hi:,.0f}",
                       f"{lo / per_core:.1f}-{hi / per_core:.1f}")
        console.print(t3)
    console.print(f"command: {r['command']}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    main()
