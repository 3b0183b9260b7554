"""No credential reaches a byte that a tracked training or a `rigpose submit` writes, sends or prints.

Canary values go into every credential variable and URL password; after the two runs every file and every captured
output is scanned for them.

Services on 127.0.0.1, started here and stopped at the end of the module: `mlflow server` (sqlite store, local
artifact folder), a `ray start --head` cluster with token auth whose own environment holds the credential canaries
(a cluster holds its own credentials). The canaries: a random value in every variable of SECRET_ENV (RAY_AUTH_TOKEN
is the real token of the session, see conftest.py), a password in the tracking URI of the job, in
MLFLOW_TRACKING_URI and AWS_ENDPOINT_URL of the submitting shell and in a `--set tracking.uri=` value. Nothing
here reads S3, so AWS_ENDPOINT_URL only has to be carried, never used.

Scanned: the run folders (checkpoints' state.pt, model.pt, run.json, job.json, mlflow.json), the MLflow server's
folder (sqlite file, artifacts, its log), the driver's and the commands' captured output, the Ray session folder of
the cluster (every log, the uploaded packages) and what the Jobs API holds of the submission.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rigpose_testing import captured_output, free_port, ray_head
from rigpose_testing import mlflow_server as start_mlflow
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.config import load_job
from rigpose.resources import recipes_dir
from rigpose.tracking.secrets import SECRET_ENV

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]
#: small and quick: one epoch of a tiny model
TRAIN_SETS = ["model.width=32", "model.num_blocks=1", "data.batch_size=64", "data.val_split=test",
              "optim.epochs=1", "tracking.eval_max_rows=100"]
_TOKEN = secrets.token_hex(6)
#: one canary per credential variable (the Ray token: the real one, set by conftest's ray_token_auth)
CANARIES = {k: f"canary-{k.lower().replace('_', '-')}-{_TOKEN}" for k in SECRET_ENV if k != "RAY_AUTH_TOKEN"}
URL_PASSWORDS = {"job tracking.uri": f"canary-urlpw-job-{_TOKEN}", "MLFLOW_TRACKING_URI": f"canary-urlpw-env-{_TOKEN}",
                 "AWS_ENDPOINT_URL": f"canary-urlpw-s3-{_TOKEN}", "--set tracking.uri": f"canary-urlpw-set-{_TOKEN}"}


def _all_canaries() -> dict[str, str]:
    return {**CANARIES, "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"],
            **{f"password in {k}": v for k, v in URL_PASSWORDS.items()}}


def _files_holding(canaries: dict[str, str], roots: list[Path]) -> dict[str, list[str]]:
    """{file: names of the canaries found in its bytes} for every regular file under `roots`."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_symlink() or not p.is_file():
                continue
            try:
                data = p.read_bytes()
            except OSError:  # gone meanwhile (Ray rotates and removes files)
                continue
            hits = [name for name, value in canaries.items() if value.encode() in data]
            if hits:
                found[str(p)] = hits
    return found


def _assert_no_canary(roots: list[Path], texts: dict[str, str]) -> None:
    canaries = _all_canaries()
    found = _files_holding(canaries, roots)
    found |= {f"<{name}>": hits for name, text in texts.items()
              if (hits := [n for n, v in canaries.items() if v in text])}
    assert not found, "credentials found in:\n" + "\n".join(f"  {f}: {', '.join(h)}" for f, h in sorted(found.items()))


@pytest.fixture(scope="module")
def canary_env(ray_token_auth: str) -> Iterator[dict[str, str]]:
    """The credential canaries in this process's environment for the module; yields them."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CANARIES.items():
            mp.setenv(k, v)
        mp.setenv("AWS_ENDPOINT_URL", f"http://s3user:{URL_PASSWORDS['AWS_ENDPOINT_URL']}@127.0.0.1:{free_port()}")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield dict(CANARIES)


def _clean_env() -> dict[str, str]:
    """This environment without any credential or endpoint: what a service the tests start gets."""
    drop = {*SECRET_ENV, "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on 127.0.0.1 (sqlite store, local artifact folder, started without any credential); yields
    (its URL, its folder)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with start_mlflow(folder, env=_clean_env()) as url:
        yield url, folder


@pytest.fixture(scope="module")
def cluster(canary_env: dict[str, str], ray_token_auth: str) -> Iterator[dict]:
    """`ray start --head` on 127.0.0.1, token auth, the credential canaries in its environment; yields its Jobs API
    address, GCS address and temp folder (the session folder scanned for canaries)."""
    import ray

    with ray_head(dict(os.environ), prefix="rp-can-") as head:
        try:
            yield {**head, "temp_dir": Path(head["temp_dir"])}
        finally:
            ray.shutdown()  # this process's driver, if a test connected it


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rigpose.data.synth.build import build_dataset

    out = str(tmp_path_factory.mktemp("data") / "tiny")
    build_dataset(str(recipes_dir() / "tiny.yaml"), out, progress=False)
    return out


@pytest.mark.timeout(400)
def test_a_tracked_training_writes_no_credential_anywhere(canary_env: dict, mlflow_server: tuple[str, Path],
                                                          cluster: dict, dataset: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from rigpose.train.trainer import train

    server, server_folder = mlflow_server
    host = server.removeprefix("http://")
    uri = f"http://mluser:{URL_PASSWORDS['job tracking.uri']}@{host}"
    job = load_job(REPO / "jobs" / "train.yaml", [
        *TRAIN_SETS, f"data.url={dataset}", f"run.output_dir={tmp_path / 'runs'}", "run.name=tracked",
        f"run.ray_address={cluster['gcs']}", f"tracking.uri={uri}", "tracking.model_name=canary-lifter"])
    log = tmp_path / "driver.log"
    with captured_output(log):
        out = train(job)
    text = log.read_text()
    # it did run, track and register (on the real URI: the workers and the driver talked to the server)
    assert "[rigpose] epoch 1/1" in text and "registered models:/canary-lifter/" in text, text[-3000:]
    run = MlflowClient(server).get_run(out["tracking"]["run_id"])
    assert run.data.params["tracking.uri"] == f"http://mluser:***@{host}"
    assert len(MlflowClient(server).get_metric_history(run.info.run_id, "train/loss")) == 1  # one per epoch
    run_dir = tmp_path / "runs" / "tracked"
    assert list(run_dir.glob("checkpoint_*/state.pt")) and (run_dir / "job.json").exists()
    assert json.loads((run_dir / "job.json").read_text())["tracking"]["uri"] == f"http://mluser:***@{host}"
    _assert_no_canary([tmp_path, server_folder, cluster["temp_dir"]], {"driver output": text})


@pytest.mark.timeout(400)
def test_a_submission_sends_and_writes_no_credential(canary_env: dict, mlflow_server: tuple[str, Path],
                                                     cluster: dict, dataset: str, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    server, server_folder = mlflow_server
    host = server.removeprefix("http://")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://envuser:{URL_PASSWORDS['MLFLOW_TRACKING_URI']}@{host}"}
    sid = f"canaries-{secrets.token_hex(3)}"
    args = ["submit", "jobs/train.yaml", "--address", cluster["address"], "--submission-id", sid]
    for s in [*TRAIN_SETS, f"data.url={dataset}", f"run.output_dir={tmp_path / 'runs'}", "run.name=submitted",
              f"tracking.uri=http://setuser:{URL_PASSWORDS['--set tracking.uri']}@{host}", "tracking.model_name=null"]:
        args += ["--set", s]
    dry = CliRunner().invoke(app, [*args, "--dry-run"], env=env)  # in-process: quick
    assert dry.exit_code == 0, dry.output
    assert f"  MLFLOW_TRACKING_URI=http://envuser@{host}\n" in dry.stdout
    assert "  AWS_ENDPOINT_URL=http://s3user@127.0.0.1:" in dry.stdout
    proc = subprocess.run([str(BIN / "rigpose"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=360)  # follows the job's logs to the end
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"job {sid}: SUCCEEDED" in proc.stdout and "[rigpose] epoch 1/1" in proc.stdout, proc.stdout[-3000:]
    client = JobSubmissionClient(cluster["address"])
    info = client.get_job_info(sid)
    sent = info.runtime_env["env_vars"]
    assert sent["MLFLOW_TRACKING_URI"] == f"http://envuser@{host}" and sent["AWS_ENDPOINT_URL"].startswith(
        "http://s3user@127.0.0.1:")
    assert not set(sent) & set(SECRET_ENV)
    run_dir = tmp_path / "runs" / "submitted"
    assert list(run_dir.glob("checkpoint_*/state.pt")) and (run_dir / "mlflow.json").exists()
    texts = {"submit --dry-run output": dry.output, "submit stdout": proc.stdout, "submit stderr": proc.stderr,
             "Jobs API logs": client.get_job_logs(sid),
             "Jobs API job info": json.dumps({"entrypoint": info.entrypoint, "runtime_env": info.runtime_env,
                                              "metadata": info.metadata})}
    _assert_no_canary([tmp_path, server_folder, cluster["temp_dir"]], texts)
