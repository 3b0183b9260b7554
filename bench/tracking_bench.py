"""MLflow tracking overhead of training: seconds rank 0 spends logging each epoch, against the epoch's own time.

One run of `rigpose train` (jobs/train.yaml, 1 worker, local Ray) on the demo dataset (built from
the shipped demo recipe into outputs/datasets/demo when missing), tracked to a real `mlflow server` started here
on 127.0.0.1 (sqlite backend, local artifacts), and a second run tracked to the embedded sqlite default. Each
epoch's metrics carry `tracking_s`: rank 0's wall time logging the previous epoch (`RunLogger.log_metrics`,
one `log_batch` call), next to `epoch_s` (the training epoch's wall time). Reported per target: the median of
tracking_s / epoch_s over epochs 2.. (goal < 2 %), and, apart, the driver's one-off publishing after `fit()`
(evaluation, artifacts, pictures, model registration) as the rest of the job's wall time.

    .venv/bin/python bench/tracking_bench.py [--data URL] [--epochs 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from dataset_bench import machine_info  # noqa: E402
from train_bench import ensure_dataset  # noqa: E402

console = Console(width=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port; returns once /health answers."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "art"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start in 120 s")


def one_run(data: str, out: Path, name: str, uri: str | None, epochs: int) -> dict[str, Any]:
    from rigpose.config import load_job
    from rigpose.train.trainer import train

    sets = [f"data.url={data}", f"run.output_dir={out}", f"run.name={name}", f"optim.epochs={epochs}",
            f"tracking.model_name=bench-{name}"]
    if uri:
        sets.append(f"tracking.uri={uri}")
    t0 = time.perf_counter()
    result = train(load_job(REPO / "jobs" / "train.yaml", sets))
    wall = time.perf_counter() - t0
    hist = result["history"]
    later = [h for h in hist if "tracking_s" in h]
    ratios = [h["tracking_s"] / h["epoch_s"] for h in later]
    train_s = sum(h["epoch_s"] for h in hist)
    return {"target": uri or "sqlite (embedded default)", "epochs": len(hist),
            "epoch_s": statistics.median(h["epoch_s"] for h in hist[1:] or hist),
            "tracking_s": statistics.median(h["tracking_s"] for h in later) if later else float("nan"),
            "ratio": statistics.median(ratios) if ratios else float("nan"),
            "max_ratio": max(ratios) if ratios else float("nan"),
            "job_wall_s": wall, "train_s": train_s, "startup_s": hist[0].get("startup_s", float("nan"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "outputs" / "datasets" / "demo"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--json", default=None, help="Also write the results here.")
    args = ap.parse_args()
    import ray

    from rigpose.cluster.connect import init_ray

    ensure_dataset(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rigpose-trackbench-") as tmp:
        port = free_port()
        server = start_server(Path(tmp), port)
        try:
            init_ray(None)
            rows.append(one_run(args.data, Path(tmp) / "runs", "server", f"http://127.0.0.1:{port}", args.epochs))
            rows.append(one_run(args.data, Path(tmp) / "runs", "sqlite", None, args.epochs))
        finally:
            server.terminate()
            server.wait(timeout=30)
            ray.shutdown()
    table = Table(title="MLflow logging per epoch vs the epoch (median over epochs 2..)")
    for c in ("tracking target", "epoch s", "logging s / epoch", "logging / epoch", "worst epoch",
              "after fit (eval, artifacts, register) s"):
        table.add_column(c, justify="left" if c == "tracking target" else "right")
    for r in rows:
        table.add_row(r["target"], f"{r['epoch_s']:.1f}", f"{r['tracking_s'] * 1000:.1f} ms", f"{r['ratio']:.3%}",
                      f"{r['max_ratio']:.3%}", f"{r['job_wall_s'] - r['train_s'] - r['startup_s']:.1f}")
    console.print(table)
    info = machine_info()
    console.print(f"machine: {info['usable_cores']} cores ({info['cpu']}); data {args.data}; {args.epochs} epochs")
    console.print("command: " + shlex.join([".venv/bin/python", "bench/tracking_bench.py", *sys.argv[1:]]))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": info}, indent=1))


if __name__ == "__main__":
    main()
