"""`rigpose retrain --submit` without a cluster: the entrypoint is a retrain the CLI accepts, paths are sent relative
to the project, the training job's local paths are rewritten or refused, no secret is sent, refusals name the field.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from rigpose_testing import REPO
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.cluster.submit import CREDENTIAL_ENV, FORWARDED_ENV, build_retrain_submission, build_submission
from rigpose.config import RetrainJob

LOCAL = "http://127.0.0.1:8265"
REMOTE = "http://ray-head.example:8265"
OBJECT_STORE = 'overrides=["data.url=s3://bucket/ds", "run.output_dir=s3://bucket/runs"]'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding the repo's jobs/train.yaml and jobs/retrain.yaml, as the current folder."""
    root = tmp_path / "project"
    (root / "jobs").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'fake'\n")
    for name in ("train.yaml", "retrain.yaml"):
        shutil.copy(REPO / "jobs" / name, root / "jobs" / name)
    monkeypatch.chdir(root)
    return root


def _sets(entrypoint: str) -> list[str]:
    args = shlex.split(entrypoint)
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def _sent_overrides(entrypoint: str) -> list[str]:
    """The retrain job's `overrides` as the entrypoint's last `--set overrides=...` sends them."""
    last = [s for s in _sets(entrypoint) if s.startswith("overrides=")][-1]
    return yaml.safe_load(last.removeprefix("overrides="))


def _run_entrypoint(monkeypatch: pytest.MonkeyPatch, entrypoint: str, cwd: Path) -> tuple[RetrainJob, bool]:
    """Run `entrypoint` (`python -m rigpose retrain ...`) through the real CLI in `cwd` (the cluster's working
    dir) with the cycle itself replaced; returns the job and dry-run flag the cycle was called with."""
    args = shlex.split(entrypoint)
    assert args[:4] == ["python", "-m", "rigpose", "retrain"], args
    seen: dict[str, Any] = {}

    def cycle(job: RetrainJob, *, dry_run: bool, say: Any) -> None:
        seen.update(job=job, dry_run=dry_run)

    monkeypatch.setattr("rigpose.retrain.run.retrain", cycle)
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, args[3:])
    assert result.exit_code == 0, result.output
    return seen["job"], seen["dry_run"]


# ------------------------------------------------------------------------------------------------ entrypoint


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_entrypoint_is_a_retrain_of_the_job_file_that_the_cli_accepts_as_sent(
        monkeypatch: pytest.MonkeyPatch, project: Path, dry_run: bool) -> None:
    sub = build_retrain_submission(Path("jobs/retrain.yaml"), [OBJECT_STORE, "gate.margin=0.1"], address=REMOTE,
                                   dry_run=dry_run, environ={})
    head = ["python", "-m", "rigpose", "retrain", "jobs/retrain.yaml", *(["--dry-run"] if dry_run else [])]
    assert sub.entrypoint == shlex.join([*head, "--set", OBJECT_STORE, "--set", "gate.margin=0.1"])
    job, was_dry_run = _run_entrypoint(monkeypatch, sub.entrypoint, project)
    assert job == sub.job and was_dry_run is dry_run
    assert (sub.train_job.data.url, sub.train_job.run.output_dir) == ("s3://bucket/ds", "s3://bucket/runs")


def test_the_job_files_are_sent_relative_to_the_project_wherever_the_command_runs(
        monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    monkeypatch.chdir(project / "jobs")  # train_job is a path from the current folder, as for a retrain here
    sub = build_retrain_submission(Path("retrain.yaml"), [OBJECT_STORE, "train_job=train.yaml"], address=REMOTE,
                                   environ={})
    args = shlex.split(sub.entrypoint)
    assert args[4] == "jobs/retrain.yaml" and _sets(sub.entrypoint)[-1] == "train_job=jobs/train.yaml"
    assert sub.runtime_env["working_dir"] == str(project)
    job, _ = _run_entrypoint(monkeypatch, sub.entrypoint, project)  # the cluster runs in the project's copy
    assert job.train_job == "jobs/train.yaml"


def test_a_local_cluster_gets_the_training_jobs_relative_paths_appended_to_the_overrides_as_absolute(
        monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    sub = build_retrain_submission(Path("jobs/retrain.yaml"), ['overrides=["optim.epochs=1", "data.url=file://ds"]'],
                                   address=LOCAL, environ={})
    data, runs = project / "ds", project / "outputs" / "runs"
    sent = ["optim.epochs=1", "data.url=file://ds", f"data.url={data}", f"run.output_dir={runs}"]
    assert _sets(sub.entrypoint) == [f"overrides={json.dumps(sent)}"]  # the user's list, replaced by the whole one
    assert _sent_overrides(sub.entrypoint) == sent and sub.job.overrides == sent
    assert (sub.train_job.data.url, sub.train_job.run.output_dir, sub.train_job.optim.epochs) == (str(data),
                                                                                                   str(runs), 1)
    assert any(n.startswith("data.url: file://ds -> ") for n in sub.notes)
    job, _ = _run_entrypoint(monkeypatch, sub.entrypoint, project)
    assert job.overrides == sent


def test_a_remote_cluster_refuses_a_relative_local_path_of_the_training_job_naming_it(project: Path) -> None:
    with pytest.raises(ValueError, match=r"^jobs/train\.yaml \(the train_job of jobs/retrain\.yaml\): "
                                         r"data\.url='outputs/datasets/demo' is a relative local path.*use s3://"):
        build_retrain_submission(Path("jobs/retrain.yaml"), [], address=REMOTE, environ={})
    with pytest.raises(ValueError, match=r"run\.output_dir='outputs/runs' is a relative local path"):
        build_retrain_submission(Path("jobs/retrain.yaml"), ["overrides=[data.url=s3://b/d]"], address=REMOTE,
                                 environ={})
    sub = build_retrain_submission(Path("jobs/retrain.yaml"), [f"overrides=[data.url={project}/ds, "
                                                                 "run.output_dir=s3://b/r]"],
                                   address=REMOTE, environ={})
    assert sub.notes == [f"data.url={project}/ds is a local path: every node of the cluster must see it there"]


# ------------------------------------------------------------------------------------------------ secrets


def test_url_passwords_in_the_overrides_are_left_out_of_the_entrypoint(project: Path) -> None:
    sets = ['overrides=["tracking.uri=http://bob:bob-pw@mlflow:5000"]']
    sub = build_retrain_submission(Path("jobs/retrain.yaml"), sets, address=LOCAL, environ={})
    assert "bob-pw" not in sub.entrypoint + sub.describe(values=True) + repr(sub.notes)
    assert _sent_overrides(sub.entrypoint)[0] == "tracking.uri=http://bob@mlflow:5000"
    assert sub.train_job.tracking.uri == "http://bob:bob-pw@mlflow:5000"  # validated here as given
    assert any(n.startswith("--set overrides=") and "sent without the password" in n for n in sub.notes)
    sub = build_retrain_submission(Path("jobs/retrain.yaml"), sets, address=LOCAL, environ={},
                                   forward_credentials=True)
    assert _sent_overrides(sub.entrypoint)[0] == "tracking.uri=http://bob:bob-pw@mlflow:5000"


def test_credentials_are_not_forwarded_unless_asked_for() -> None:
    environ = ({k: f"plain-{k}" for k in FORWARDED_ENV} | {k: f"secret-{k}" for k in CREDENTIAL_ENV}
               | {"RAY_AUTH_TOKEN": "secret-ray-token"})
    job = REPO / "jobs" / "retrain.yaml"
    sub = build_retrain_submission(job, [OBJECT_STORE], address=REMOTE, environ=environ)
    assert sub.runtime_env["env_vars"] == {k: f"plain-{k}" for k in FORWARDED_ENV}
    assert "secret-" not in repr(sub.runtime_env) + sub.entrypoint + sub.describe() + repr(sub.notes)
    sub = build_retrain_submission(job, [OBJECT_STORE], address=REMOTE, environ=environ, forward_credentials=True)
    assert set(sub.runtime_env["env_vars"]) == set(FORWARDED_ENV + CREDENTIAL_ENV)
    assert "secret-ray-token" not in repr(sub.runtime_env) + sub.entrypoint


@pytest.mark.parametrize("name", ["retrain.yaml", "train.yaml"])
def test_a_job_file_holding_a_url_password_is_refused_unless_credentials_are_forwarded(
        project: Path, name: str) -> None:
    path = project / "jobs" / name
    key = "overrides: []" if name == "retrain.yaml" else "  uri: null"
    value = "overrides: [tracking.uri=http://bob:bob-pw@mlflow:5000]" if name == "retrain.yaml" else (
        "  uri: http://bob:bob-pw@mlflow:5000")
    path.write_text(path.read_text().replace(key, value))
    with pytest.raises(ValueError, match=rf"^jobs/{re.escape(name)}: holds a URL with a password") as err:
        build_retrain_submission(Path("jobs/retrain.yaml"), [], address=LOCAL, environ={})
    assert "bob-pw" not in str(err.value)
    sub = build_retrain_submission(Path("jobs/retrain.yaml"), [], address=LOCAL, environ={},
                                   forward_credentials=True)
    assert f"{name} holds a URL password: uploaded with the project folder" in sub.notes


# ------------------------------------------------------------------------------------------------ refusals


def test_an_unknown_retrain_job_key_is_refused_naming_it(project: Path) -> None:
    with pytest.raises(ValueError, match=r"^jobs/retrain\.yaml: field gate\.margn"):
        build_retrain_submission(Path("jobs/retrain.yaml"), ["gate.margn=0.1"], address=LOCAL, environ={})
    path = project / "jobs" / "retrain.yaml"
    path.write_text(path.read_text().replace("warm_start:", "warm_strat:"))
    with pytest.raises(ValueError, match=r"^jobs/retrain\.yaml: field warm_strat"):
        build_retrain_submission(path.relative_to(project), [], address=LOCAL, environ={})


def test_the_training_job_is_validated_with_the_overrides(project: Path) -> None:
    with pytest.raises(ValueError, match=r"^jobs/train\.yaml: field optim\.epochs"):
        build_retrain_submission(Path("jobs/retrain.yaml"), ["overrides=[optim.epochs=0]"], address=LOCAL,
                                 environ={})
    with pytest.raises(ValueError, match=r"^jobs/train\.yaml: tracking\.enabled and tracking\.model_name are needed"):
        build_retrain_submission(Path("jobs/retrain.yaml"), ["overrides=[tracking.model_name=null]"], address=LOCAL,
                                 environ={})


def test_a_training_job_missing_or_outside_the_project_is_refused_naming_the_field(project: Path) -> None:
    with pytest.raises(ValueError, match=r"^jobs/retrain\.yaml: field train_job: jobs/nope\.yaml: no such job file"):
        build_retrain_submission(Path("jobs/retrain.yaml"), ["train_job=jobs/nope.yaml"], address=LOCAL, environ={})
    outside = shutil.copy(project / "jobs" / "train.yaml", project.parent / "loose.yaml")
    with pytest.raises(ValueError, match=rf"^jobs/retrain\.yaml: field train_job: {re.escape(str(outside))} is not "
                                         "inside the project folder"):
        build_retrain_submission(Path("jobs/retrain.yaml"), [f"train_job={outside}"], address=LOCAL, environ={})


def test_a_schedule_is_refused_a_submitted_retrain_is_one_cycle(project: Path) -> None:
    with pytest.raises(ValueError, match=r"^jobs/retrain\.yaml: field every: '6h': a submitted retrain runs one "
                                         "cycle"):
        build_retrain_submission(Path("jobs/retrain.yaml"), ["every=6h"], address=LOCAL, environ={})


def test_the_submission_id_names_the_model_and_the_metadata_marks_a_retrain(project: Path) -> None:
    sub = build_retrain_submission(Path("jobs/retrain.yaml"), ["overrides=[tracking.model_name=team/lifter v2]"],
                                   address=LOCAL, environ={}, dry_run=True)
    assert re.fullmatch(r"rigpose-retrain-team-lifter-v2-\d{8}-\d{6}", sub.submission_id), sub.submission_id
    assert sub.metadata == {"rigpose_command": "retrain", "rigpose_model": "team/lifter v2", "rigpose_dry_run": "true"}
    assert build_retrain_submission(Path("jobs/retrain.yaml"), [], address=LOCAL, environ={},
                                    submission_id="mine").submission_id == "mine"
    train = build_submission(Path("jobs/train.yaml"), [], address=LOCAL, environ={})
    assert train.metadata == {"rigpose_command": "train", "rigpose_run": "demo"}


# ------------------------------------------------------------------------------------------------ command line


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replaces the Jobs API: records what is submitted; the job ends with `status` (default SUCCEEDED)."""
    state: dict[str, Any] = {"status": "SUCCEEDED", "submitted": []}

    def submit(sub: Any, address: str) -> str:
        state["submitted"].append((sub, address))
        return sub.submission_id

    def follow(address: str, sid: str, *, echo: Any) -> str:
        echo("[rigpose] the job's log\n")
        return state["status"]

    monkeypatch.setattr("rigpose.cluster.submit.submit", submit)
    monkeypatch.setattr("rigpose.cluster.submit.follow", follow)
    return state


def _cli(*args: str, env: dict[str, str] | None = None):
    env = {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:1", **{k: "" for k in FORWARDED_ENV + CREDENTIAL_ENV},
           **(env or {})}
    return CliRunner().invoke(app, ["retrain", "jobs/retrain.yaml", *args], env=env)


def test_cli_dry_run_submit_shows_the_submission_and_sends_nothing(project: Path,
                                                                   fake_cluster: dict[str, Any]) -> None:
    result = _cli("--submit", "--dry-run-submit", "--dry-run", env={"AWS_ENDPOINT_URL": "http://u:pw-1@s3.lan"})
    assert result.exit_code == 0, result.output
    assert "entrypoint: python -m rigpose retrain jobs/retrain.yaml --dry-run --set 'overrides=[" in result.stdout
    assert "  AWS_ENDPOINT_URL=http://u@s3.lan\n" in result.stdout and "pw-1" not in result.output
    assert "note: run.output_dir: outputs/runs -> " in result.stderr
    assert fake_cluster["submitted"] == []


@pytest.mark.parametrize(("status", "code"), [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_cli_submit_follows_the_job_and_exits_with_its_status(project: Path, fake_cluster: dict[str, Any],
                                                             status: str, code: int) -> None:
    fake_cluster["status"] = status
    result = _cli("--submit", "--address", "http://localhost:8265", "--submission-id", "rt-1")
    assert result.exit_code == code, result.output
    [(sub, address)] = fake_cluster["submitted"]
    assert address == "http://localhost:8265" and sub.submission_id == "rt-1"
    assert "submitted rt-1 to http://localhost:8265\n[rigpose] the job's log\njob rt-1: " + status in result.stdout


def test_cli_no_wait_returns_after_submitting(project: Path, fake_cluster: dict[str, Any]) -> None:
    fake_cluster["status"] = "FAILED"  # not followed: not seen
    result = _cli("--submit", "--no-wait")
    assert result.exit_code == 0, result.output
    assert "follow it with: ray job logs --address http://127.0.0.1:1 --follow rigpose-retrain-" in result.stdout


def test_cli_refuses_a_schedule_with_submit_and_submit_options_without_it(project: Path,
                                                                         fake_cluster: dict[str, Any]) -> None:
    result = _cli("--submit", "--every", "6h")
    assert result.exit_code == 1 and result.stderr.startswith("error: retrain: --every with --submit: "), result.output
    result = _cli("--no-wait", "--dry-run-submit")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: retrain: --no-wait, --dry-run-submit: only with --submit"
    result = _cli("--submit", "--set", "gate.margn=1")
    assert result.exit_code == 1 and result.stderr.startswith("error: jobs/retrain.yaml: field gate.margn"), (
        result.output)
    assert fake_cluster["submitted"] == []
