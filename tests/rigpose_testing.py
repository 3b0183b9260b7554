"""Helpers shared by the tests (imported as `rigpose_testing`; conftest.py files cannot be imported by name)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rigpose.cluster.processes import descendants, processes_with, stop_processes

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for services the tests start)."""
    from rigpose.cluster.processes import free_port as free

    return free("127.0.0.1")


def synthetic_batch(num_frames: int = 32, *, seed: int = 0, noise_px: float = 0.0, with_3d: bool = True,
                    rig_name: str = "h36m-s1") -> dict:
    """Model inputs (rigpose.model.inputs.prepare_arrays) for random DeepMimic-sized poses seen by a shipped rig.

    Poses: a fixed T-ish skeleton (deepmimic16) randomly rotated about z and placed near the capture centre.
    """
    from rigpose.model.inputs import prepare_arrays
    from rigpose.resources import rig_path
    from rigpose.rig import load_rig
    from rigpose.skeleton import DEEPMIMIC16

    rng = np.random.default_rng(seed)
    rig = load_rig(rig_path(rig_name))
    base = rest_pose_deepmimic16()
    yaw = rng.uniform(0, 2 * np.pi, num_frames)
    c, s = np.cos(yaw), np.sin(yaw)
    Rz = np.stack([np.stack([c, -s, 0 * c], -1), np.stack([s, c, 0 * c], -1),
                   np.stack([0 * c, 0 * c, 1 + 0 * c], -1)], -2)
    bend = rng.normal(0, 0.05, (num_frames, 16, 3))
    X = np.einsum("nij,kj->nki", Rz, base) + bend + np.c_[rng.uniform(-0.5, 0.5, (num_frames, 2)),
                                                           np.zeros(num_frames)][:, None]
    cams = rig.arrays()
    from rigpose import geometry as g

    pix = g.project(X[:, None], cams) + rng.normal(0, noise_px, (num_frames, len(rig.cameras), 16, 2))
    scores = np.ones(pix.shape[:-1])
    N, V = num_frames, len(rig.cameras)
    full = g.CameraArrays(*(np.broadcast_to(a, (N, *a.shape)) for a in cams))
    arrays = prepare_arrays(pix, scores, full, np.ones((N, V), bool), root_joints=DEEPMIMIC16.root_joints,
                            joints_3d=X if with_3d else None)
    return arrays


def rest_pose_deepmimic16() -> np.ndarray:
    """A standing deepmimic16 pose [16, 3], metres, pelvis at 0.9 m height, facing +x, left on +y."""
    return np.array([
        [0, 0, 0.90], [0, 0, 1.14], [0, 0, 1.36], [0, 0, 1.53],  # pelvis, chest, neck, head
        [0, -0.09, 0.90], [0, -0.09, 0.48], [0, -0.09, 0.07],  # right hip, knee, ankle
        [0, -0.18, 1.32], [0, -0.20, 1.05], [0.05, -0.21, 0.80],  # right shoulder, elbow, wrist
        [0, 0.09, 0.90], [0, 0.09, 0.48], [0, 0.09, 0.07],  # left hip, knee, ankle
        [0, 0.18, 1.32], [0, 0.20, 1.05], [0.05, 0.21, 0.80],  # left shoulder, elbow, wrist
    ], dtype=np.float64)


def to_torch(batch: dict) -> dict:
    import torch

    return {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- own processes
# Tests stop only what they started: `ray stop --force` (or pkill by name) would also kill every other Ray on the
# machine, e.g. another engineer's tests or a user's cluster. These find the processes of one service by a marker
# only it has on its command line (its own temp folder) plus their descendants (Ray's workers rename themselves
# "ray::..." but stay children of their raylet). Linux /proc; no psutil in the venv.
# The helpers are the package's own (`rigpose.cluster.processes`, which the local stack uses), imported above and
# re-exported to the tests: descendants, processes_with, stop_processes.


#: SIGTERM-to-SIGKILL grace when a test stops a Ray it started: some of a Ray node's processes ignore SIGTERM for
#: any wait (30 s per cluster, seen here), and a test's cluster holds nothing worth a graceful stop.
RAY_STOP_GRACE_S = 5.0


# One writer in its own process: ROWS frames of RIG/SEQUENCE in shards of 10 rows. It waits at a barrier (a file
# per writer in BARRIER; all N there) before committing, so that the commits really race. STAGE, when given, is
# where the process kills itself with SIGKILL (no cleanup runs, as with `kill -9` or a lost node).
_WRITER = r"""
import json, os, signal, sys, time
import numpy as np
from rigpose.data import commit as commit_mod
from rigpose.data import writer as writer_mod
from rigpose.data.schema import frames_for_rig
from rigpose.geometry import project
from rigpose.resources import rig_path
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17

root, rig_name, sequence, rows, barrier, n, stage = sys.argv[1:8]
rig = load_rig(rig_path(rig_name))

def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)

if stage == "before-shards":
    writer_mod.DatasetWriter._write_shard = die
elif stage == "between-shards":
    original, calls = writer_mod.DatasetWriter._write_shard, []
    def second_kills(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            die()
        return original(self, *a, **k)
    writer_mod.DatasetWriter._write_shard = second_kills
elif stage == "before-commit":
    commit_mod.write_bytes_exclusive = die
elif stage == "during-commit":
    os.link = die  # the version's temp file is written and fsynced, never linked into place
elif stage == "after-commit":
    commit_mod.refresh_copy = die  # the version is created; manifest.json is not refreshed

rng = np.random.default_rng(abs(hash((rig_name, sequence))) % 2**32)
T = int(rows)
X = rng.normal(0, 0.3, (T, 17, 3)) + np.array([0.0, 0.0, 1.0])
pix = np.stack([project(X, cam) for cam in rig.cameras], 1)
frames = frames_for_rig(rig, sequence=sequence, keypoints=pix, subject="S1", joints_3d=X, frame=np.arange(T))
with writer_mod.DatasetWriter(root, skeleton=H36M17, command=f"writer {rig_name}/{sequence}", shard_rows=10) as w:
    w.add(frames, rig, split="train")
    if barrier != "-":
        open(os.path.join(barrier, f"{rig_name}-{sequence}"), "w").close()
        deadline = time.time() + 120
        while len(os.listdir(barrier)) < int(n) and time.time() < deadline:
            time.sleep(0.01)
    m = w.commit()
print(json.dumps({"version": m.version, "rows": m.num_rows}))
"""


def writer_process(root: str, rig: str, sequence: str, rows: int, *, barrier: str = "-", n: int = 1,
                   stage: str = "-", env: dict[str, str] | None = None) -> subprocess.Popen:
    """A `DatasetWriter` of `rows` frames of `rig`/`sequence` into `root`, in its own process (WRITER); its
    stdout ends with {"version", "rows"} of the committed manifest."""
    return subprocess.Popen([sys.executable, "-c", _WRITER, root, rig, sequence, str(rows), barrier, str(n), stage],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


@contextlib.contextmanager
def ray_head(env: dict[str, str], *, prefix: str = "rp-ray-") -> Iterator[dict[str, str]]:
    """`ray start --head` on 127.0.0.1 with the environment `env`, every port free; yields {"address" (Jobs API),
    "gcs", "temp_dir"} once the Jobs API answers. Afterwards stops only this head's processes (those naming its
    temp folder or GCS address, and their children): `ray stop --force` would kill every Ray on the machine."""
    import shutil
    import tempfile
    import time

    from ray.job_submission import JobSubmissionClient

    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dash = free_port(), free_port()
    ports = {"--port": gcs, "--dashboard-port": dash, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
    bin_dir = Path(sys.executable).parent
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
    subprocess.run([str(bin_dir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                    "--dashboard-host=127.0.0.1", "--num-cpus=4", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                    *(f"{k}={v}" for k, v in ports.items())], env=env, check=True, capture_output=True, timeout=180)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1.0)
        yield {"address": address, "gcs": f"127.0.0.1:{gcs}", "temp_dir": temp_dir}
    finally:
        # found now, at the end, so that processes it started during the tests (workers, job drivers) are included
        left = stop_processes(processes_with(temp_dir, f"--address=127.0.0.1:{gcs}"), timeout_s=RAY_STOP_GRACE_S)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray head processes still running after SIGKILL: {sorted(left)}"


@contextlib.contextmanager
def captured_output(path: Path) -> Iterator[None]:
    """This process's output into the file `path`: the Python streams (pytest replaces them) and file descriptors
    1 and 2, where Ray forwards the workers' lines."""
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            f.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# One process racing for a `rigpose.storage.Lease` on URL: it waits at a barrier (a file per racer in BARRIER; all N
# there), then takes the lease ROUNDS times, writing "enter <time>" / "exit <time>" lines to LOG while it holds it,
# so that the test can check that no two holds overlap. STAGE "die": take it once, print its object, SIGKILL itself.
_LEASE_RACER = r"""
import json, os, signal, sys, time
from rigpose.storage import Lease, url_to_fs

url, log, rounds, barrier, n, exclusive, settle, ttl, stage = sys.argv[1:10]
fs, path = url_to_fs(url)
lease = Lease(fs, path, owner=f"racer-{os.getpid()}", ttl_s=float(ttl), wait_s=60,
              exclusive={"auto": None, "1": True, "0": False}[exclusive], settle_s=float(settle))
if barrier != "-":
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    deadline = time.time() + 60
    while len(os.listdir(barrier)) < int(n) and time.time() < deadline:
        time.sleep(0.005)
with open(log, "a") as f:
    for _ in range(int(rounds)):
        with lease:
            f.write(f"enter {time.time()!r}\n")
            f.flush()
            if stage == "die":
                print(json.dumps({"expires": lease.expires}), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.05)
            f.write(f"exit {time.time()!r}\n")
            f.flush()
"""


def lease_racer(url: str, log: Path, *, rounds: int = 1, barrier: Path | None = None, n: int = 1,
                exclusive: bool | None = None, settle_s: float = 0.5, ttl_s: float = 30.0,
                stage: str = "-") -> subprocess.Popen:
    """A process taking the lease at `url` `rounds` times and logging its holds to `log` (_LEASE_RACER)."""
    mode = {None: "auto", True: "1", False: "0"}[exclusive]
    args = [url, str(log), str(rounds), str(barrier) if barrier else "-", str(n), mode, str(settle_s), str(ttl_s),
            stage]
    return subprocess.Popen([sys.executable, "-c", _LEASE_RACER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def lease_holds(logs: list[Path]) -> list[tuple[float, float]]:
    """The (enter, exit) times of every hold in the racers' logs, sorted; asserts that no two overlap (a killed
    holder's hold, entered and never left, lasts to +inf)."""
    from itertools import pairwise

    holds = []
    for log in logs:
        words = log.read_text().split() if log.exists() else []
        assert words[0::2] == ["enter", "exit"] * (len(words) // 4) + ["enter"] * (len(words) // 2 % 2), words
        stamps = [float(t) for t in words[1::2]] + [float("inf")] * (len(words) // 2 % 2)
        holds += list(zip(stamps[0::2], stamps[1::2], strict=True))
    holds.sort()
    for (_, left), (entered, _) in pairwise(holds):
        assert left <= entered, f"two processes held the lease at once: {holds}"
    return holds


@contextlib.contextmanager
def mlflow_server(folder: Path, *, artifacts: str | None = None, env: dict[str, str] | None = None,
                  timeout_s: float = 240.0) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 (sqlite store in `folder`, artifacts at `artifacts`, default `folder`/artifacts;
    environment `env`, default this one; its log in `folder`/server.log); yields its URL once /health answers.
    Afterwards stops it and the uvicorn worker it starts, found by pid, never by name."""
    import time
    import urllib.request

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", artifacts or str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=dict(os.environ) if env is None else env)
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-3000:]}"
                                       ) from None
                time.sleep(1.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_with_children(proc)
        log.close()


def stop_with_children(proc: subprocess.Popen, *, timeout_s: float = 20.0) -> None:
    """Stop `proc` and the processes it started (`mlflow server` / `models serve` run uvicorn as a child, which
    would outlive its parent); only those: found from its pid, never by name."""
    children = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stop_processes(children, timeout_s=timeout_s)


class Stack:
    """The local stack (`infra/local/stack.py`) of one temporary state folder on free ports, driven through its
    command line (tests/integration/test_local_stack.py, test_local_stack_postgres.py, test_node_loss.py); `db`
    is its --db (default: the script's, sqlite)."""

    SCRIPT = REPO / "infra" / "local" / "stack.py"

    def __init__(self, *, db: str | None = None) -> None:
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="rp-stack-", dir="/tmp"))  # short: Ray's sockets are below it
        self.state = self.root / "state"
        self.ports = {"--dashboard-port": free_port(), "--gcs-port": free_port(), "--mlflow-port": free_port(),
                      "--s3-port": free_port()}
        self.db = db

    def run(self, command: str) -> subprocess.CompletedProcess:
        args = [a for k, v in self.ports.items() for a in (k, str(v))] + (["--db", self.db] if self.db else [])
        return subprocess.run([sys.executable, str(self.SCRIPT), command, "--state-dir", str(self.state), *args],
                              capture_output=True, text=True, timeout=600)

    @staticmethod
    def states(out: str, parts: list[str]) -> dict[str, str]:
        """{part: its state word} of the health lines in `out` (`up`, `status`, `down`) of the parts `parts`."""
        return {w[0]: w[1] for w in (line.split() for line in out.splitlines()) if len(w) > 1 and w[0] in parts}

    def records(self) -> dict[str, dict]:
        import json

        return json.loads((self.state / "stack.json").read_text())["parts"]

    def env(self) -> dict[str, str]:
        """The env file's exports, as `source` would set them (its `unset RAY_AUTH_TOKEN` included)."""
        exports = dict(line.removeprefix("export ").split("=", 1) for line in
                       (self.state / "env").read_text().splitlines() if line.startswith("export "))
        return {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}, **exports}

    def processes(self) -> set[int]:
        """Every process of the stack, found independently of the script's own bookkeeping: the recorded pids'
        sessions, those naming the state folder (Ray's temp folders, MLflow's store), and their children."""
        from rigpose.cluster.processes import descendants as below
        from rigpose.cluster.processes import process_table

        table = process_table()
        sids = {r["pid"] for r in self.records().values()} if (self.state / "stack.json").exists() else set()
        found = {p for p, info in table.items() if info.sid in sids or str(self.state) in info.cmdline}
        for pid in list(found):
            found |= below(pid, table)
        return found


def tiny_retrain_recipe(tmp: Path, rig: str, *, frames: int = 300,
                        calibration_error: dict[str, float] | None = None) -> Path:
    """The shipped tiny recipe through `rig`, `frames` frames, with a validation split (what the retrain gate
    compares on) and the recipe's `calibration_error` if given, written into `tmp`."""
    import yaml

    from rigpose.resources import recipes_dir

    d = yaml.safe_load((recipes_dir() / "tiny.yaml").read_text())
    d.update(name=f"tiny-{rig}", rigs=[rig], frames=frames)
    d["splits"].update(fractions={"train": 0.7, "val": 0.3}, held_out_clips=[])
    if calibration_error:
        d["calibration_error"] = calibration_error
    path = tmp / f"{rig}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def tiny_retrain_job(tmp: Path, *, data: str, server: str, model: str, experiment: str, gate_rows: int) -> Path:
    """A retrain job file in `tmp` for the integration tests: jobs/train.yaml made tiny (1 epoch, 32 wide) on `data`,
    tracked on `server` as `model`, the gate on at most `gate_rows` rows per rig."""
    import yaml

    job = tmp / "retrain.yaml"
    job.write_text(yaml.safe_dump({"train_job": str(REPO / "jobs" / "train.yaml"), "overrides": [
        f"data.url={data}", "data.val_split=val", "optim.epochs=1", "model.width=32", "model.num_blocks=1",
        "data.batch_size=64", f"run.output_dir={tmp / 'runs'}", f"tracking.uri={server}",
        f"tracking.model_name={model}", f"tracking.experiment={experiment}", "tracking.eval_max_rows=100"],
        "gate": {"max_rows": gate_rows}}))
    return job
