"""Losing a Ray node mid-run, on the local stack (`infra/local/stack.py` in a temporary state folder on free ports:
a Ray head, a second node `rigpose-node2`, an MLflow server, moto's S3).

`rigpose submit` runs a 2-worker job, placed SPREAD (one rank per node while both nodes are there), with
`run.max_failures=1`, on a tiny dataset on the stack's S3, checkpointing every epoch into s3://. Once Ray Train has
registered a checkpoint, every process of the second node (its `ray start`, raylet and workers) gets SIGKILL, as
when a machine is lost. SPREAD, not STRICT_SPREAD: the restart has to fit on the head alone. The job resumes there
from the latest registered checkpoint and finishes: every epoch once in the history and among the registered
checkpoints, one MLflow run before and after, one metric value per epoch, the history's.

Restarting the MLflow server mid-training (training goes on, the queued metrics arrive when it is back) is covered by
test_mlflow.py::test_training_goes_on_while_the_tracking_server_is_down_and_logs_when_it_returns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rigpose_testing import REPO, Stack

from rigpose.cluster.processes import alive, process_table, processes_with, session_members, stop_processes
from rigpose.resources import recipes_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME, EPOCHS = "node-loss", 6
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The stack, up; afterwards `down`, which must leave none of its processes (what it does leave is then
    stopped by pid, and the test errors)."""
    s = Stack()
    try:
        up = s.run("up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield s
    finally:
        before = s.processes()
        down = s.run("down")
        left = {p for p in before if alive(p)} | s.processes()
        stop_processes(left, timeout_s=5.0)
        shutil.rmtree(s.root, ignore_errors=True)
    assert down.returncode == 0 and not left, (sorted(left), down.stdout + down.stderr)


@pytest.fixture(scope="module")
def env(stack: Stack) -> Iterator[dict[str, str]]:
    """The stack's environment (its env file), also this process's S3 settings for the module."""
    import s3fs

    e = stack.env()
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY"):
            mp.setenv(k, e[k])
        s3fs.S3FileSystem.clear_instance_cache()
        yield e
    s3fs.S3FileSystem.clear_instance_cache()


def _fs():
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()  # fresh listings and objects: the job writes them meanwhile
    return fs


def _api(env: dict[str, str], path: str) -> Any:
    """GET the Ray dashboard's `path` with the stack's token (this process's Ray clients hold conftest's token)."""
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{env['RAY_API_SERVER_ADDRESS']}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def _status(env: dict[str, str], sid: str) -> str:
    return str(_api(env, f"/api/jobs/{sid}")["status"])


def _logs(env: dict[str, str], sid: str) -> str:
    return str(_api(env, f"/api/jobs/{sid}/logs")["logs"])


def _snapshot(run: str) -> dict[str, Any]:
    """Ray Train's checkpoint-manager snapshot of the run: the checkpoints it has registered ({} before one)."""
    try:
        return json.loads(_fs().cat_file(f"{run}/checkpoint_manager_snapshot.json"))
    except FileNotFoundError:
        return {}


def _wait_for_checkpoint(env: dict[str, str], sid: str, run: str, timeout_s: float = 300.0) -> int:
    """Until Ray Train has registered a checkpoint of the running job; that checkpoint's epoch (0-based)."""
    deadline = time.monotonic() + timeout_s
    while not (latest := _snapshot(run).get("latest_checkpoint_result")):
        status = _status(env, sid)
        assert status not in TERMINAL and time.monotonic() < deadline, (status, _logs(env, sid)[-4000:])
        time.sleep(0.5)
    return int(latest["metrics"]["epoch"])


def _kill_node(stack: Stack, part: str) -> dict[int, str]:
    """SIGKILL every process of the stack's Ray node `part`, as when its machine is lost: its `ray start --block`,
    the members of its session, those naming its --temp-dir and their children. {pid: command line} of them."""
    record = stack.records()[part]
    leader = process_table()[record["pid"]]
    assert leader.start_ticks == record["start_ticks"], "the node's recorded process is not running"
    temp_dir = next(a.split("=", 1)[1] for a in leader.cmdline.split() if a.startswith("--temp-dir="))
    killed: dict[int, str] = {}
    for _ in range(10):  # again until none is left: a raylet may start a worker while the others die
        table = process_table()
        pids = session_members(leader.pid, table) | processes_with(temp_dir, table=table)
        if not pids:
            return killed
        for pid in pids:
            killed[pid] = table[pid].cmdline
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    raise AssertionError(f"{part}: processes still running after SIGKILL: {sorted(p for p in killed if alive(p))}")


def _submit(env: dict[str, str], data: str, output_dir: str, sid: str) -> None:
    sets = [f"data.url={data}", "data.val_split=test", "data.batch_size=32", "data.shuffle_buffer=256",
            "model.width=64", "model.num_blocks=1", f"optim.epochs={EPOCHS}",
            "scaling.num_workers=2", "scaling.placement_strategy=SPREAD",
            f"run.output_dir={output_dir}", f"run.name={NAME}", "run.max_failures=1",
            f"run.checkpoints_to_keep={EPOCHS}",  # all kept: the snapshot lists every checkpoint registered
            f"tracking.uri={env['MLFLOW_TRACKING_URI']}", f"tracking.experiment={NAME}", "tracking.model_name=null",
            "tracking.eval_max_rows=100"]
    cmd = [str(Path(sys.executable).parent / "rigpose"), "submit", "jobs/train.yaml", "--address",
           env["RAY_API_SERVER_ADDRESS"], "--no-wait", "--submission-id", sid, *(a for s in sets for a in ("--set", s))]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _rank_nodes(logs: str) -> list[str]:
    """The node (id prefix) of each `rank i of 2 on node ID` line, in log order."""
    return re.findall(r"\[rigpose\] rank \d of 2 on node ([0-9a-f]+)", logs)


@pytest.mark.timeout(600)
def test_a_job_that_loses_a_node_resumes_on_the_other_from_its_last_checkpoint(stack: Stack,
                                                                              env: dict[str, str]) -> None:
    from mlflow.tracking import MlflowClient

    from rigpose.data.synth.build import build_dataset

    bucket = env["RIGPOSE_STACK_BUCKET"]
    data, run = f"s3://{bucket}/datasets/tiny", f"s3://{bucket}/runs/{NAME}"
    build_dataset(str(recipes_dir() / "tiny.yaml"), data, progress=False)
    nodes = {n["node_name"]: n["node_id"] for n in _api(env, "/api/v0/nodes?limit=100")["data"]["result"]["result"]
             if n["state"] == "ALIVE"}
    head, node2 = nodes["rigpose-head"], nodes["rigpose-node2"]
    sid = f"{NAME}-{os.getpid()}"
    _submit(env, data, f"s3://{bucket}/runs", sid)

    before_kill = _wait_for_checkpoint(env, sid, run)
    run_id = json.loads(_fs().cat_file(f"{run}/mlflow.json"))["run_id"]
    killed = _kill_node(stack, "ray-node2")
    assert any("RayTrainWorker" in cmd for cmd in killed.values()), killed  # a training rank was on it
    deadline = time.monotonic() + 420
    while (status := _status(env, sid)) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1.0)
    logs = _logs(env, sid)
    assert status == "SUCCEEDED", logs[-6000:]

    # one rank on each node, then both on the head, from the epoch after the checkpoint registered last
    ranks = _rank_nodes(logs)  # each attempt's two lines, before it trains
    assert len(ranks) == 4 and sorted(ranks[:2]) == sorted([head[:12], node2[:12]]), logs[-6000:]
    assert ranks[2:] == [head[:12]] * 2, logs[-6000:]
    resumes = re.findall(r"\[rigpose\] resuming from the checkpoint of epoch (\d+)/", logs)
    assert len(resumes) == 1 and int(resumes[0]) > before_kill, logs[-6000:]
    resumed_at = int(resumes[0])  # epochs done: the 0-based epoch the second attempt starts at
    history = json.loads(_fs().cat_file(f"{run}/history.json"))
    assert [int(h["epoch"]) for h in history] == list(range(EPOCHS))
    assert [int(h["epoch"]) for h in history if "startup_s" in h] == [0, resumed_at]  # each attempt's first epoch
    registered = sorted(int(r["metrics"]["epoch"]) for r in _snapshot(run)["checkpoint_results"])
    assert registered == list(range(EPOCHS)), registered  # no registered epoch redone (or lost), none missing

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] == [json.loads(_fs().cat_file(f"{run}/mlflow.json"))["run_id"]]
    for key in ("train/loss", "val/reprojection_px"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in logged] == list(range(EPOCHS)), (key, logged)  # one value per epoch
        assert [v for _, v in logged] == pytest.approx([h[key] for h in history]), (key, logged)  # the history's

