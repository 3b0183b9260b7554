"""`rigpose submit` without a cluster: what would be sent (entrypoint, runtime env, forwarded variables, paths)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from rigpose_testing import REPO
from typer.testing import CliRunner

from rigpose.cli import app
from rigpose.submit import CREDENTIAL_ENV, build_submission, default_address, is_local_address

JOB = REPO / "jobs" / "train.yaml"
LOCAL = "http://127.0.0.1:8265"
REMOTE = "http://ray-head.example:8265"
SECRET = "s3cr3t-value-never-sent"


def test_relative_local_paths_become_absolute_for_a_cluster_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    sub = build_submission(JOB, ["data.url=s3://bucket/ds"], address=LOCAL, environ={})
    assert sub.job.data.url == "s3://bucket/ds"
    assert sub.job.run.output_dir == str(REPO / "outputs" / "runs")
    assert f"--set run.output_dir={REPO / 'outputs' / 'runs'}" in sub.entrypoint
    assert sub.entrypoint.startswith("python -m rigpose train jobs/train.yaml --set data.url=s3://bucket/ds")
    assert "data.url=/" not in sub.entrypoint  # an s3:// URL is left alone


def test_a_remote_cluster_refuses_relative_local_paths_and_takes_object_storage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match=r"data\.url='outputs/datasets/demo' is a relative local path"):
        build_submission(JOB, ["run.output_dir=s3://b/runs"], address=REMOTE, environ={})
    sub = build_submission(JOB, ["data.url=s3://b/ds", "run.output_dir=s3://b/runs"], address=REMOTE, environ={})
    assert sub.job.data.url == "s3://b/ds" and not sub.notes


def test_credentials_stay_out_of_the_submission_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    environ = {k: SECRET for k in CREDENTIAL_ENV} | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                                                       "AWS_REGION": "us-east-1", "HOME": "/root"}
    sub = build_submission(JOB, [], address=LOCAL, environ=environ)
    assert sub.runtime_env["env_vars"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "us-east-1"}
    assert SECRET not in repr(sub.runtime_env) + sub.entrypoint + sub.describe()
    forwarded = build_submission(JOB, [], address=LOCAL, environ=environ, forward_credentials=True)
    assert forwarded.runtime_env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert SECRET not in forwarded.describe() and "AWS_SECRET_ACCESS_KEY" in forwarded.describe()


def test_the_upload_keeps_the_package_and_excludes_environments_data_and_outputs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    env = build_submission(JOB, [], address=LOCAL, environ={}).runtime_env
    assert env["working_dir"] == str(REPO) and env["py_modules"] == ["platform/rigpose"]
    # Ray's own matcher, as its upload applies it: rooted at working_dir and at every py_modules folder
    from ray._private.runtime_env.packaging import _get_excludes

    package = REPO / "platform" / "rigpose"
    in_package, in_project = _get_excludes(package, env["excludes"]), _get_excludes(REPO, env["excludes"])
    for kept in ("data/store.py", "data/pipeline.py", "train/worker.py", "model/lifter.py"):
        assert not in_package(package / kept), kept
    for kept in ("platform/rigpose/data/schema.py", "jobs/train.yaml", "datasets/rigs/h36m-s1.json"):
        assert not in_project(REPO / kept), kept
    for dropped in (".venv/bin/python", "outputs/runs/demo/model.pt", "x/part-00000.parquet", ".git/HEAD"):
        assert in_project(REPO / dropped), dropped


def _project(tmp_path: Path, runtime_env: dict) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "jobs").mkdir()
    shutil.copy(JOB, tmp_path / "jobs" / "train.yaml")
    (tmp_path / "jobs" / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    return tmp_path / "jobs" / "train.yaml"


def test_a_runtime_env_file_may_not_set_what_submit_sets(tmp_path: Path) -> None:
    job = _project(tmp_path, {"working_dir": "/elsewhere"})
    with pytest.raises(ValueError, match=r"runtime_env\.yaml: field working_dir"):
        build_submission(job, ["data.url=s3://b/d", "run.output_dir=s3://b/r"], address=LOCAL, environ={})


def test_bad_job_files_fail_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"field optim\.lrr"):
        build_submission(JOB, ["optim.lrr=1"], address=LOCAL, environ={})
    with pytest.raises(ValueError, match="no such job file"):
        build_submission(tmp_path / "missing.yaml", [], address=LOCAL, environ={})
    outside = tmp_path / "loose.yaml"
    shutil.copy(JOB, outside)
    with pytest.raises(ValueError, match="not inside a project folder"):
        build_submission(outside, [], address=LOCAL, environ={})


def test_addresses_default_to_the_local_dashboard_and_are_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address is not a Jobs API address
    assert default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert default_address() == "http://head:8265"
    assert is_local_address("http://localhost:8265") and is_local_address("127.0.0.1:8265")
    assert not is_local_address(REMOTE)


def test_cli_dry_run_prints_the_submission_and_a_bad_override_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    runner = CliRunner()
    ok = runner.invoke(app, ["submit", "jobs/train.yaml", "--dry-run", "--address", "http://127.0.0.1:1",
                             "--set", "optim.epochs=2"])
    assert ok.exit_code == 0, ok.output
    assert "entrypoint: python -m rigpose train jobs/train.yaml --set optim.epochs=2" in ok.output
    assert "submitted" not in ok.output  # nothing was sent (nothing listens on port 1)
    bad = runner.invoke(app, ["submit", "jobs/train.yaml", "--dry-run", "--set", "optim.epochs=0"])
    assert bad.exit_code == 1
    assert [ln for ln in bad.output.splitlines() if ln.startswith("error:")] == [
        ln for ln in bad.output.splitlines() if "field optim.epochs" in ln]
