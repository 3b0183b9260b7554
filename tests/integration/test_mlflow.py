"""MLflow end to end against a real `mlflow server` on 127.0.0.1 (sqlite backend, artifacts on the local S3 endpoint).

One tiny training run (dataset on S3, local Ray) is tracked and registered; the tests then check what was logged,
load the model by alias, promote it, run batch inference and ONNX export from the registry, serve it with
`mlflow models serve` and send it a REST request, and check that no credential reached MLflow. A second server
that starts late checks that tracking survives an unreachable server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rigpose_testing import captured_output, free_port, stop_with_children
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.config import load_job
from rigpose.resources import recipes_dir

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = "it-lifter"
pytestmark = pytest.mark.integration
#: distinctive fake credentials: none of them may appear in any param, tag, artifact or log line
SECRETS = {"AWS_SESSION_TOKEN": "sessiontok-7f3a9c1e55d2", "MLFLOW_TRACKING_PASSWORD": "mlflowpw-0b8e4d2a91c6"}


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {_tail(proc)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer in {timeout_s:.0f} s: {_tail(proc)}")


def _tail(proc: subprocess.Popen) -> str:
    if proc.stdout is None or proc.poll() is None:
        return "(still running)"
    return proc.stdout.read()[-3000:]


def start_mlflow_server(folder: Path, artifacts: str, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with a sqlite backend in `folder` and artifacts at `artifacts`."""
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "server.log", "a")  # noqa: SIM115 (closed with the process; a restart appends)
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder,
        env={**os.environ, "MLFLOW_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]})
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Stop `proc` and its children (rigpose_testing.stop_with_children), then close its log."""
    stop_with_children(proc)
    if getattr(proc, "log", None) is not None:
        proc.log.close()


def wait_server(proc: subprocess.Popen, port: int, folder: Path) -> None:
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
    except Exception:
        raise RuntimeError((folder / "server.log").read_text()[-3000:]) from None


@pytest.fixture(scope="module")
def dataset(bucket: str) -> str:
    from rigpose.data.synth.build import build_dataset

    url = f"{bucket}/datasets/tiny"
    build_dataset(str(recipes_dir() / "tiny.yaml"), url, progress=False)
    return url


def _job(data: str, out: Path, name: str, uri: str, *extra: str):
    return load_job(REPO / "jobs" / "train.yaml", [
        f"data.url={data}", "data.val_split=test", "optim.epochs=2", "model.width=32", "model.num_blocks=1",
        "data.batch_size=64", f"run.output_dir={out}", f"run.name={name}", f"tracking.uri={uri}",
        f"tracking.model_name={MODEL}", "tracking.eval_max_rows=200", *extra])


@pytest.fixture(scope="module")
def trained(server: str, dataset: str, local_ray: None, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict]:
    """One tracked training run with fake credentials in the environment; yields train()'s result + its logs."""
    from rigpose.train.trainer import train

    out = tmp_path_factory.mktemp("runs")
    log_file = out / "driver.log"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SECRETS.items():
            mp.setenv(k, v)
        # the experiment name is a param: it carries a secret on purpose, to show params are scrubbed
        job = _job(dataset, out, "tracked", server, f"tracking.experiment=exp-{SECRETS['MLFLOW_TRACKING_PASSWORD']}")
        # the driver's output, where Ray also forwards the workers' lines
        with captured_output(log_file):
            result = train(job)
    yield {**result, "log": log_file.read_text(), "experiment": job.tracking.experiment}


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_training_logs_params_metrics_artifacts_and_registers_a_candidate(trained: dict, server: str) -> None:
    client = _client(server)
    run = client.get_run(trained["tracking"]["run_id"])
    params, tags = run.data.params, run.data.tags
    assert params["optim.epochs"] == "2" and params["model.width"] == "32"
    assert params["dataset.url"].endswith("datasets/tiny") and len(params["dataset.manifest_sha256"]) == 64
    assert params["dataset.rig_ids"] == "h36m-s1" and params["rigpose.version"]
    assert tags["rigpose.manifest_sha256"] == params["dataset.manifest_sha256"]
    history = client.get_metric_history(run.info.run_id, "val/reprojection_px")
    assert sorted(m.step for m in history) == [0, 1]
    for key in ("train/loss", "train/cross_view", "lr", "frames_per_s", "val/mpjpe_mm", "val/pa_mpjpe_mm"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    names |= {a.path for d in ("plots", "dataset") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"evaluation.json", "job.yaml", "history.json", "dataset/manifest.json", "plots/per_joint_error.png",
            "plots/per_camera_error.png", "plots/skeletons.png", "plots/viz.html"} <= names
    reg = trained["tracking"]["registered"]
    mv = client.get_model_version_by_alias(MODEL, "candidate")
    assert mv.version == reg.version and mv.run_id == run.info.run_id
    assert mv.tags["rigpose.manifest_sha256"] == params["dataset.manifest_sha256"]
    assert mv.tags["rigpose.rig_ids"] == "h36m-s1" and float(mv.tags["rigpose.metric.val.reprojection_px"]) > 0


def _all_logged_text(client, run_id: str, dst: Path) -> str:
    from mlflow.artifacts import download_artifacts

    run = client.get_run(run_id)
    parts = [json.dumps(run.data.params), json.dumps(run.data.tags)]
    for mv in client.search_model_versions(f"name='{MODEL}'"):
        parts.append(json.dumps(mv.tags))
        local = download_artifacts(artifact_uri=f"models:/{MODEL}/{mv.version}", dst_path=str(dst / mv.version))
        parts += [p.read_bytes().decode("latin-1") for p in Path(local).rglob("*") if p.is_file()]
    pending = [a for a in client.list_artifacts(run_id)]
    while pending:  # every file of the run, folder by folder
        a = pending.pop()
        if a.is_dir:
            pending += client.list_artifacts(run_id, a.path)
        else:
            local = client.download_artifacts(run_id, a.path, str(dst / "run"))
            parts.append(Path(local).read_bytes().decode("latin-1"))
    return "\n".join(parts)


def test_no_credential_reaches_params_tags_artifacts_or_logs(trained: dict, server: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    text = _all_logged_text(_client(server), trained["tracking"]["run_id"], tmp_path)
    assert "supervision: 2d" in text and "num_heldout" in text  # it did read job.yaml and evaluation.json
    assert "[rigpose] epoch 2/2" in trained["log"] and "registered models:/" in trained["log"]  # and the logs
    for value in (*SECRETS.values(), os.environ["RAY_AUTH_TOKEN"]):  # the Ray token: set by conftest
        assert value not in text
        assert value not in trained["log"]
    assert "exp-***" in text  # the planted secret was scrubbed, not dropped


def test_model_loads_by_alias_and_matches_the_trained_weights(trained: dict, server: str, dataset: str) -> None:
    import mlflow

    from rigpose.data.reader import Dataset, iter_frames
    from rigpose.model.checkpoint import load_lifter
    from rigpose.tracking.pyfunc import example_input, lift_arrays
    from rigpose.tracking.runs import mlflow_uri

    with mlflow_uri(server):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@candidate")
    ds = Dataset(dataset)
    frames = next(iter_frames(ds, split="test", batch_size=5, max_rows=5))
    got = pyfunc.predict(example_input(frames.keypoints, frames.scores, frames.cameras, frames.view_mask))
    model, skeleton, _ = load_lifter(trained["model"])
    want = lift_arrays(model, skeleton, frames.keypoints, np.where(np.isfinite(frames.keypoints).all(-1),
                                                                   frames.scores, 0), frames.cameras,
                       frames.view_mask)
    np.testing.assert_allclose(np.stack([np.asarray(x) for x in got["joints_3d"]]), want["joints_3d"], atol=1e-5)
    assert got["num_views"].tolist() == want["num_views"].tolist()


def test_promote_and_list_from_the_command_line(trained: dict, server: str) -> None:
    runner = CliRunner()
    version = trained["tracking"]["registered"].version
    r = runner.invoke(app, ["models", "promote", MODEL, version, "--alias", "champion", "--tracking-uri", server])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["models", "list", MODEL, "--tracking-uri", server, "--json"])
    assert r.exit_code == 0, r.output
    versions = {v["version"]: v for v in json.loads(r.output)}
    assert "champion" in versions[version]["aliases"] and "candidate" in versions[version]["aliases"]
    assert versions[version]["rig_ids"] == "h36m-s1"
    r = runner.invoke(app, ["models", "promote", MODEL, "999", "--tracking-uri", server])
    assert r.exit_code == 1 and "999" in r.output


def test_batch_inference_from_the_registry_writes_predictions(trained: dict, server: str, dataset: str,
                                                              bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq
    import s3fs

    from rigpose.data.reader import Dataset

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    version = trained["tracking"]["registered"].version
    _client(server).set_registered_model_alias(MODEL, "champion", version)
    out = f"{bucket}/predictions/lift.parquet"
    r = CliRunner().invoke(app, ["lift", "--model", f"models:/{MODEL}@champion", "--data", dataset, "--split", "test",
                                 "--out", out])
    assert r.exit_code == 0, r.output
    with s3fs.S3FileSystem().open(out, "rb") as f:
        table = pq.read_table(f)
    test_rows = Dataset(dataset).manifest.splits()["test"]["rows"]
    assert table.num_rows >= test_rows  # one row per real view of every test frame
    assert set(table.column("frame").to_pylist()) and table.column("joints_cam").null_count < table.num_rows


def test_onnx_export_from_the_registry_agrees_with_pytorch(trained: dict, server: str, tmp_path: Path) -> None:
    import torch

    from rigpose.inference.export import onnx_lift
    from rigpose.model.checkpoint import load_lifter

    out = tmp_path / "lifter.onnx"
    r = CliRunner().invoke(app, ["models", "export", f"{MODEL}@candidate", "--onnx", str(out),
                                 "--tracking-uri", server])
    assert r.exit_code == 0, r.output
    model, skeleton, _ = load_lifter(trained["model"])
    rng = np.random.default_rng(0)
    xy = rng.normal(0, 0.3, (7, skeleton.num_joints, 2)).astype(np.float32)
    scores = rng.uniform(0.2, 1.0, (7, skeleton.num_joints)).astype(np.float32)
    got = onnx_lift(out, xy, scores)
    with torch.no_grad():
        want = model(torch.from_numpy(xy), torch.from_numpy(scores))
    for name, value in want._asdict().items():
        np.testing.assert_allclose(got[name], value.numpy(), atol=1e-4)


def test_mlflow_models_serve_answers_a_rest_request(trained: dict, server: str, dataset: str) -> None:
    from rigpose.data.reader import Dataset, iter_frames
    from rigpose.tracking.pyfunc import example_input

    port = free_port()
    # mlflow runs `uvicorn` from PATH: the venv's bin, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@candidate",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", proc)
        frames = next(iter_frames(Dataset(dataset), split="test", batch_size=3, max_rows=3))
        rows = example_input(frames.keypoints, frames.scores, frames.cameras, frames.view_mask)
        body = json.dumps({"dataframe_records": rows.to_dict(orient="records")}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
    finally:
        stop(proc)
    preds = answer["predictions"]
    assert len(preds) == 3
    X = np.asarray(preds[0]["joints_3d"], dtype=float)
    assert X.shape == (Dataset(dataset).skeleton.num_joints, 3) and np.isfinite(X).all()
    seen = (np.isfinite(frames.keypoints[0]).all(-1) & (frames.scores[0] > 0)).any(-1) & frames.view_mask[0]
    assert preds[0]["num_views"] == int(seen.sum())


def test_training_goes_on_while_the_tracking_server_is_down_and_logs_when_it_returns(
        bucket: str, dataset: str, local_ray: None, tmp_path: Path) -> None:
    """The server is down when training starts and comes up after the first checkpoint: training goes on, and
    every epoch's metrics reach the server (queued, or backfilled from the run's history after fit)."""
    import threading

    from rigpose.train.trainer import train

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    job = _job(dataset, tmp_path / "runs", "outage", uri)
    started: dict = {}

    def start_later() -> None:  # the server comes up once the first epoch is checkpointed (its metrics failed)
        deadline = time.time() + 300
        while not list((tmp_path / "runs" / "outage").glob("checkpoint_*")) and time.time() < deadline:
            time.sleep(0.5)
        started["proc"] = start_mlflow_server(tmp_path / "late", f"{bucket}/late-artifacts", port)

    t = threading.Thread(target=start_later)
    t.start()
    try:
        out = train(job)
        t.join()
        client = _client(uri)
        run_id = out["tracking"]["run_id"]
        assert sorted(m.step for m in client.get_metric_history(run_id, "val/reprojection_px")) == [0, 1]
        assert client.get_model_version_by_alias(MODEL, "candidate").run_id == run_id
    finally:
        t.join()
        if "proc" in started:
            stop(started["proc"])


def test_a_tracking_server_restarted_mid_training_gets_every_epoch_in_the_same_run(
        bucket: str, dataset: str, local_ray: None, tmp_path: Path) -> None:
    """The server is up when training starts, is stopped once two epochs are checkpointed and comes back (same
    store, same port) two checkpoints later: training goes on and the one run gets each epoch's metrics once."""
    import threading

    from rigpose.train.trainer import train

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    folder, runs = tmp_path / "server", tmp_path / "runs" / "restart"
    server = {"proc": start_mlflow_server(folder, f"{bucket}/restart-artifacts", port)}
    wait_server(server["proc"], port, folder)
    epochs = 8
    # every checkpoint kept: the outage is timed by their count (the job's default keeps the best 2, so the count
    # stayed at 2 and the server came back only if a poll caught a third before its deletion)
    job = _job(dataset, tmp_path / "runs", "restart", uri, f"optim.epochs={epochs}",
               f"run.checkpoints_to_keep={epochs}")
    seen: dict = {}

    def checkpoints() -> int:
        return len(list(runs.glob("checkpoint_*")))

    def restart() -> None:
        deadline = time.time() + 600
        while checkpoints() < 2 and time.time() < deadline:
            time.sleep(0.2)
        seen["stopped_at"] = checkpoints()  # before the stop, which takes a few epochs' time itself
        stop(server["proc"])
        while checkpoints() < seen["stopped_at"] + 2 and time.time() < deadline:
            time.sleep(0.2)
        seen["restarted_at"] = checkpoints()
        server["proc"] = start_mlflow_server(folder, f"{bucket}/restart-artifacts", port)

    t = threading.Thread(target=restart)
    t.start()
    try:
        out = train(job)
        t.join()
        # the outage fell inside training, not after it
        assert seen["restarted_at"] < epochs, seen
        wait_server(server["proc"], port, folder)
        client = _client(uri)
        run_id = out["tracking"]["run_id"]
        experiment = client.get_run(run_id).info.experiment_id
        assert [r.info.run_id for r in client.search_runs([experiment])] == [run_id]
        for name in ("val/reprojection_px", "train/loss"):
            assert sorted(m.step for m in client.get_metric_history(run_id, name)) == list(range(epochs)), name
        assert client.get_model_version_by_alias(MODEL, "candidate").run_id == run_id
    finally:
        t.join()
        stop(server["proc"])
