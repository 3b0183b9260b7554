"""Training as a Ray job on a real `ray start --head` cluster (127.0.0.1, token auth) reading from the S3 endpoint.

The cluster and moto's S3 server are started here and stopped at the end of the module. The dataset lives on S3
and so do the runs (checkpoints, model.pt, history.json). Covered: the plain `ray job submit ... -- python -m
rigpose train` form, also surviving the SIGKILL of a training worker's process mid-run (resume from the last
checkpoint, the right number of epochs); `rigpose submit`: a stopped job resumed by submitting its run again, and
a missing auth token reported in one line; `rigpose retrain --submit`: a whole retrain cycle as one Ray job (no
champion yet: a candidate trained on the cluster, gated and promoted; a real `mlflow server`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rigpose_testing import ray_head
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.resources import recipes_dir

REPO = Path(__file__).resolve().parents[2]
BUCKET = "rigpose-jobs"
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# small and quick, but epochs long enough (~1-2 s) that a kill lands inside a run
# tracking off: these tests are about the cluster; MLflow is covered by test_mlflow.py against a real server
TRAIN_SETS = ["model.width=64", "model.num_blocks=1", "data.batch_size=32", "data.val_split=test",
              "data.shuffle_buffer=256", "tracking.enabled=false"]


def _s3fs():
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem()


@pytest.fixture(scope="module")
def s3_data(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1,200-frame dataset built straight onto the S3 endpoint; its s3:// URL."""
    from rigpose.data.synth.build import build_dataset

    recipe = (recipes_dir() / "tiny.yaml").read_text()
    recipe = recipe.replace("frames: 400", "frames: 1200")
    path = tmp_path_factory.mktemp("recipe") / "jobs.yaml"
    path.write_text(recipe)
    _s3fs().mkdir(BUCKET)
    url = f"s3://{BUCKET}/datasets/jobs"
    build_dataset(str(path), url, progress=False)
    return url


@pytest.fixture(scope="module")
def cluster(s3_server: str, ray_token_auth: str) -> Iterator[str]:
    """`ray start --head` on 127.0.0.1 with token auth; yields the Jobs API address. Env: S3 endpoint + keys."""
    with ray_head(dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_token_auth)) as head:
        yield head["address"]


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _wait_status(address: str, sid: str, statuses: set[str], timeout: float = 420.0) -> str:
    c = _client(address)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(c.get_job_status(sid).value)
        if status in statuses:
            return status
        time.sleep(1.0)
    raise AssertionError(f"job {sid} not in {statuses} after {timeout:.0f} s; logs:\n{c.get_job_logs(sid)[-4000:]}")


def _checkpoints(run_url: str) -> list[str]:
    fs = _s3fs()
    fs.invalidate_cache()
    try:
        return sorted(p for p in fs.ls(run_url) if p.rsplit("/", 1)[-1].startswith("checkpoint_2"))
    except FileNotFoundError:
        return []


def _wait_for_checkpoint(run_url: str, timeout: float = 300.0) -> None:
    """Until Ray Train has registered a checkpoint of the run (its checkpoint-manager snapshot lists one)."""
    fs = _s3fs()
    deadline = time.time() + timeout
    while True:
        fs.invalidate_cache()
        try:
            snapshot = json.loads(fs.cat_file(f"{run_url}/checkpoint_manager_snapshot.json"))
        except FileNotFoundError:
            snapshot = {}
        if snapshot.get("latest_checkpoint_result"):
            return
        if time.time() > deadline:
            raise AssertionError(f"no registered checkpoint under {run_url} after {timeout:.0f} s")
        time.sleep(0.5)


def _history(run_url: str) -> list[dict]:
    fs = _s3fs()
    return json.loads(fs.cat_file(f"{run_url}/history.json"))


def _submit(address: str, data: str, name: str, epochs: int, *extra: str) -> str:
    args = ["submit", "jobs/train.yaml", "--address", address, "--no-wait", "--submission-id",
            f"{name}-{secrets.token_hex(3)}"]
    for s in [*TRAIN_SETS, f"data.url={data}", f"run.output_dir=s3://{BUCKET}/runs", f"run.name={name}",
              f"optim.epochs={epochs}", *extra]:
        args += ["--set", s]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert "forwarded environment variables: AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_REGION" in result.output
    return next(line.split()[1] for line in result.output.splitlines() if line.startswith("submitted "))


def _ray_job_submit(address: str, data: str, name: str, epochs: int, *extra: str,
                    no_wait: bool = False) -> subprocess.CompletedProcess:
    """The plain form from the README: `ray job submit ... -- python -m rigpose train jobs/train.yaml --set ...`."""
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
           "--runtime-env", "jobs/runtime_env.yaml", "--submission-id", name,
           *(["--no-wait"] if no_wait else []), "--", "python", "-m", "rigpose", "train", "jobs/train.yaml"]
    for s in [*TRAIN_SETS, f"data.url={data}", f"run.output_dir=s3://{BUCKET}/runs", f"run.name={name}",
              f"optim.epochs={epochs}", *extra]:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert no_wait or proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


@pytest.mark.timeout(600)
def test_plain_ray_job_submit_trains_from_s3_and_checkpoints_to_s3(cluster: str, s3_data: str) -> None:
    from rigpose.model.checkpoint import load_lifter

    run = f"s3://{BUCKET}/runs/plain"
    proc = _ray_job_submit(cluster, s3_data, "plain", 2)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower() and "model: s3://" in out, out[-3000:]
    code = out.split("[rigpose] code: ")[1].split()[0]  # the uploaded copy (py_modules), not this checkout
    assert not code.startswith(str(REPO)), code
    assert _checkpoints(run), "no checkpoint on S3"
    fs = _s3fs()
    assert fs.exists(f"{run}/{Path(_checkpoints(run)[-1]).name}/state.pt")
    _, _, meta = load_lifter(f"{run}/model.pt")
    assert meta["epochs"] == 2 and meta["dataset"] == s3_data


@pytest.mark.timeout(600)
def test_a_ray_job_survives_a_killed_worker_and_resumes_from_its_checkpoint(cluster: str, s3_data: str) -> None:
    from ray.util.state import list_actors

    epochs = 30  # ~0.3 s each after the first on this machine: the kill lands well inside the run
    sid = "fault"
    proc = _ray_job_submit(cluster, s3_data, sid, epochs, "scaling.num_workers=2", "run.max_failures=2",
                           no_wait=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = f"s3://{BUCKET}/runs/fault"
    _wait_for_checkpoint(run)
    workers = list_actors(address=cluster, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert len(workers) == 2, workers
    assert str(_client(cluster).get_job_status(sid).value) == "RUNNING"
    os.kill(int(workers[-1].pid), signal.SIGKILL)  # one training worker's process, mid-run
    assert _wait_status(cluster, sid, {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED"
    logs = _client(cluster).get_job_logs(sid)
    assert "[rigpose] resuming from the checkpoint of epoch" in logs
    history = _history(run)
    assert [int(h["epoch"]) for h in history] == list(range(epochs))
    assert all(h["world_size"] == 2 for h in history)


@pytest.mark.timeout(600)
def test_a_stopped_job_resumes_when_its_run_is_submitted_again(cluster: str, s3_data: str) -> None:
    epochs = 30
    first = _submit(cluster, s3_data, "stopped", epochs)
    run = f"s3://{BUCKET}/runs/stopped"
    _wait_for_checkpoint(run)
    _client(cluster).stop_job(first)
    assert _wait_status(cluster, first, {"STOPPED", "SUCCEEDED", "FAILED"}) == "STOPPED"
    done_before = len(_checkpoints(run))
    assert done_before >= 1
    second = _submit(cluster, s3_data, "stopped", epochs)
    assert _wait_status(cluster, second, {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED"
    logs = _client(cluster).get_job_logs(second)
    assert "[rigpose] resuming from the checkpoint of epoch" in logs
    assert [int(h["epoch"]) for h in _history(run)] == list(range(epochs))


def test_submit_without_the_cluster_token_fails_with_one_line_naming_the_fix(cluster: str, tmp_path: Path) -> None:
    # a fresh process: Ray caches a token it has loaded for the life of the process
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    rigpose = str(Path(sys.executable).parent / "rigpose")
    proc = subprocess.run([rigpose, "submit", "jobs/train.yaml", "--address", cluster, "--no-wait"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(error) == 1 and "RAY_AUTH_MODE=token" in error[0], proc.stderr
    assert "submitted " not in proc.stdout


def _retrain_recipe(tmp: Path) -> Path:
    """The shipped tiny recipe with a validation split (what the retrain gate compares on), 300 frames."""
    import yaml

    d = yaml.safe_load((recipes_dir() / "tiny.yaml").read_text())
    d.update(name="tiny-retrain", frames=300)
    d["splits"].update(fractions={"train": 0.7, "val": 0.3}, held_out_clips=[])
    path = tmp / "retrain-recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.timeout(600)
def test_rigpose_retrain_submit_runs_the_whole_cycle_on_the_cluster_and_promotes_a_first_champion(
        cluster: str, server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from rigpose.data.synth.build import build_dataset

    model, data = "cj-lifter", f"s3://{BUCKET}/datasets/retrain"
    _s3fs().makedirs(BUCKET, exist_ok=True)
    build_dataset(str(_retrain_recipe(tmp_path)), data, progress=False)
    overrides = [f"data.url={data}", "data.val_split=val", "optim.epochs=1", "model.width=32", "model.num_blocks=1",
                 "data.batch_size=64", "data.shuffle_buffer=256", f"run.output_dir=s3://{BUCKET}/runs",
                 f"tracking.uri={server}", f"tracking.model_name={model}", "tracking.experiment=cluster-retrain",
                 "tracking.eval_max_rows=100"]
    sid = f"retrain-{secrets.token_hex(3)}"
    args = ["retrain", "jobs/retrain.yaml", "--submit", "--address", cluster, "--submission-id", sid,
            "--set", f"overrides={json.dumps(overrides)}", "--set", "gate.max_rows=200"]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        result = CliRunner().invoke(app, args)  # follows the job's log to the end, exits with its status
    finally:
        os.chdir(cwd)
    out = result.output
    assert result.exit_code == 0, out[-4000:]
    assert "entrypoint: python -m rigpose retrain jobs/retrain.yaml --set 'overrides=" in out
    assert f"job {sid}: SUCCEEDED" in out
    logs = _client(cluster).get_job_logs(sid)  # what the cluster ran: the cycle, there
    assert f"no {model}@champion yet" in logs and "h36m-s1: new rig" in logs, logs[-3000:]
    assert f"{model}@champion is now version 1" in logs, logs[-3000:]
    assert _client(cluster).get_job_info(sid).metadata["rigpose_command"] == "retrain"
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.version == "1" and champion.tags["rigpose.retrain.promoted"] == "true"
