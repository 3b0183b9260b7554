"""`rigpose submit` without a cluster: entrypoint, runtime env, upload contents, forwarded variables, refusals."""

from __future__ import annotations

import re
import shlex
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from rigpose_testing import REPO
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.cluster.submit import (
    CREDENTIAL_ENV,
    FORWARDED_ENV,
    build_submission,
    default_address,
    is_local_address,
    load_runtime_env,
    project_root,
)

JOB = REPO / "jobs" / "train.yaml"
LOCAL = "http://127.0.0.1:8265"
REMOTE = "http://ray-head.example:8265"
OBJECT_STORE = ["data.url=s3://bucket/ds", "run.output_dir=s3://bucket/runs"]


def _train(*sets: str) -> str:
    """The entrypoint `rigpose submit` should send for jobs/train.yaml with these --set overrides."""
    return shlex.join(["python", "-m", "rigpose", "train", "jobs/train.yaml", *(a for s in sets for a in ("--set", s))])


def _fake_project(root: Path, runtime_env: dict | None = None) -> Path:
    """A project folder (pyproject.toml, jobs/train.yaml from the repo, optional jobs/runtime_env.yaml); the job."""
    (root / "jobs").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'fake'\n")
    shutil.copy(JOB, root / "jobs" / "train.yaml")
    if runtime_env is not None:
        (root / "jobs" / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    return root / "jobs" / "train.yaml"


# ------------------------------------------------------------------------------------------------ local paths


def test_a_local_cluster_gets_relative_paths_made_absolute_against_the_current_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # not the project root: paths resolve where the user runs the command
    sub = build_submission(JOB, ["data.url=file://shared/ds"], address=LOCAL, environ={})
    data, runs = tmp_path / "shared" / "ds", tmp_path / "outputs" / "runs"
    assert sub.entrypoint == _train("data.url=file://shared/ds", f"data.url={data}", f"run.output_dir={runs}")
    assert (sub.job.data.url, sub.job.run.output_dir) == (str(data), str(runs))
    assert any(n.startswith("data.url: file://shared/ds -> ") for n in sub.notes)
    assert any(n.startswith("run.output_dir: outputs/runs -> ") for n in sub.notes)


@pytest.mark.parametrize("address", [LOCAL, "http://localhost:8265", REMOTE])
def test_absolute_and_object_store_paths_are_sent_as_given(address: str, tmp_path: Path) -> None:
    sets = [f"data.url={tmp_path}/ds", "run.output_dir=s3://bucket/runs"]
    sub = build_submission(JOB, sets, address=address, environ={})
    assert sub.entrypoint == _train(*sets)
    assert sub.job.data.url == f"{tmp_path}/ds"


def test_a_remote_cluster_is_told_that_every_node_must_see_an_absolute_local_path(tmp_path: Path) -> None:
    sub = build_submission(JOB, [f"data.url={tmp_path}/ds", "run.output_dir=s3://b/r"], address=REMOTE, environ={})
    assert sub.notes == [f"data.url={tmp_path}/ds is a local path: every node of the cluster must see it there"]
    assert build_submission(JOB, OBJECT_STORE, address=REMOTE, environ={}).notes == []


@pytest.mark.parametrize(("sets", "field"), [
    (["data.url=outputs/datasets/demo", "run.output_dir=s3://b/r"], "data.url"),
    (["data.url=file://outputs/datasets/demo", "run.output_dir=s3://b/r"], "data.url"),
    (["data.url=s3://b/d", "run.output_dir=outputs/runs"], "run.output_dir"),
    (["data.url=s3://b/d", "data.mix_url=outputs/datasets/synth", "run.output_dir=s3://b/r"], "data.mix_url"),
])
def test_a_remote_cluster_refuses_a_relative_local_path_naming_the_field(sets: list[str], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}='[^']+' is a relative local path.*use s3://"):
        build_submission(JOB, sets, address=REMOTE, environ={})


# ------------------------------------------------------------------------------------------------ environment


def _environ() -> dict[str, str]:
    return ({k: f"plain-{k}" for k in FORWARDED_ENV} | {k: f"secret-{k}" for k in CREDENTIAL_ENV}
            | {"RAY_AUTH_TOKEN": "secret-ray-token", "HOME": "/home/me", "PATH": "/usr/bin"})


def test_only_the_non_secret_settings_are_forwarded_by_default() -> None:
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ=_environ())
    assert sub.runtime_env["env_vars"] == {k: f"plain-{k}" for k in FORWARDED_ENV}
    assert "secret-" not in repr(sub.runtime_env) + sub.entrypoint + sub.describe() + repr(sub.notes)


def test_credentials_are_forwarded_only_when_asked_for_and_the_ray_token_never() -> None:
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ=_environ(), forward_credentials=True)
    assert sub.runtime_env["env_vars"] == {k: v for k, v in _environ().items() if k in FORWARDED_ENV + CREDENTIAL_ENV}
    assert "secret-ray-token" not in repr(sub.runtime_env) + sub.entrypoint
    assert any("credentials forwarded" in n for n in sub.notes)


@pytest.mark.parametrize("forward_credentials", [False, True])
def test_describe_names_the_forwarded_variables_but_prints_no_value(forward_credentials: bool) -> None:
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ=_environ(),
                           forward_credentials=forward_credentials)
    text = sub.describe()
    assert f"forwarded environment variables: {', '.join(sorted(sub.runtime_env['env_vars']))}" in text
    assert not any(value in text for value in _environ().values())


def test_url_passwords_are_left_out_of_forwarded_values_unless_credentials_are_forwarded() -> None:
    environ = {"MLFLOW_TRACKING_URI": "http://bob:bob-pw@mlflow:5000", "AWS_ENDPOINT_URL": "https://:tok-pw@s3.lan",
               "AWS_REGION": "eu-west-1"}
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ=environ)
    assert sub.runtime_env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://bob@mlflow:5000",
                                           "AWS_ENDPOINT_URL": "https://s3.lan", "AWS_REGION": "eu-west-1"}
    assert sorted(n.split(":")[0] for n in sub.notes) == ["AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"]
    assert "-pw" not in repr(sub.notes) + sub.describe(values=True)
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ=environ, forward_credentials=True)
    assert sub.runtime_env["env_vars"] == environ


def test_a_forwarded_value_holding_a_credential_is_not_forwarded() -> None:
    environ = {"AWS_SECRET_ACCESS_KEY": "wJalr-secret", "AWS_ENDPOINT_URL": "https://s3.lan/?sig=wJalr-secret",
               "AWS_REGION": "eu-west-1"}
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ=environ)
    assert sub.runtime_env["env_vars"] == {"AWS_REGION": "eu-west-1"}
    assert any(n.startswith("AWS_ENDPOINT_URL not forwarded: it holds the value of a credential") for n in sub.notes)


def test_a_set_value_with_a_url_password_is_sent_without_it_unless_credentials_are_forwarded() -> None:
    sets = [*OBJECT_STORE, "tracking.uri=http://bob:bob-pw@mlflow:5000"]
    sub = build_submission(JOB, sets, address=REMOTE, environ={})
    assert sub.entrypoint == _train(*OBJECT_STORE, "tracking.uri=http://bob@mlflow:5000")
    assert sub.job.tracking.uri == "http://bob:bob-pw@mlflow:5000"  # validated here as given
    assert sub.notes == ["--set tracking.uri=http://bob:***@mlflow:5000: sent without the password "
                         "(tracking.uri=http://bob@mlflow:5000); the cluster needs its own credentials, or pass "
                         "--forward-credentials"]
    sub = build_submission(JOB, sets, address=REMOTE, environ={}, forward_credentials=True)
    assert sub.entrypoint == _train(*sets)
    assert "bob-pw" not in sub.describe()


def test_a_job_file_holding_a_url_password_is_refused_unless_credentials_are_forwarded(tmp_path: Path) -> None:
    job = _fake_project(tmp_path)
    job.write_text(job.read_text().replace("  uri: null", "  uri: http://bob:bob-pw@mlflow:5000"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(job))}: holds a URL with a password, which would be "
                                         "uploaded") as err:
        build_submission(job, OBJECT_STORE, address=REMOTE, environ={})
    assert "bob-pw" not in str(err.value) and "--forward-credentials" in str(err.value)
    sub = build_submission(job, OBJECT_STORE, address=REMOTE, environ={}, forward_credentials=True)
    assert "train.yaml holds a URL password: uploaded with the project folder" in sub.notes


def test_the_shell_environment_is_read_when_none_is_given_and_empty_values_are_not_forwarded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FORWARDED_ENV + CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-shell")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_REGION", "")
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE)
    assert sub.runtime_env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert "env_vars" not in build_submission(JOB, OBJECT_STORE, address=REMOTE, environ={}).runtime_env


# ------------------------------------------------------------------------------------------------ runtime env


def test_the_runtime_env_is_the_projects_file_plus_the_project_folder_as_working_dir() -> None:
    reference = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ={})
    assert sub.runtime_env == reference | {"working_dir": str(REPO), "py_modules": [str(REPO / "platform/rigpose")]}


def test_py_modules_are_anchored_at_the_project_wherever_submit_runs(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    # Ray resolves a relative py_modules entry against the current directory, not working_dir
    monkeypatch.chdir(tmp_path)
    sub = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ={})
    assert sub.runtime_env["py_modules"] == [str(REPO / "platform/rigpose")]


def _zip_names(directory: Path, excludes: list[str], *, include_parent_dir: bool, out: Path) -> set[str]:
    """The files Ray's own packer puts in the upload of `directory` (what a job submission sends)."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(directory), out, include_gitignore=False, include_parent_dir=include_parent_dir,
                   excludes=excludes)
    with zipfile.ZipFile(out) as z:
        return set(z.namelist())


def test_rays_packer_keeps_every_source_file_of_the_package_including_its_data_folder(tmp_path: Path) -> None:
    excludes = build_submission(JOB, OBJECT_STORE, address=REMOTE, environ={}).runtime_env["excludes"]
    package = REPO / "platform" / "rigpose"
    sources = {f"rigpose/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {"rigpose/data/writer.py", "rigpose/data/pipeline.py", "rigpose/train/worker.py"} <= sources
    assert _zip_names(package, excludes, include_parent_dir=True, out=tmp_path / "py_module.zip") == sources


def test_rays_packer_leaves_environments_outputs_and_data_files_out_of_the_working_dir(tmp_path: Path) -> None:
    from ray._private.ray_constants import get_runtime_env_default_excludes

    root = tmp_path / "project"
    shutil.copytree(REPO / "jobs", root / "jobs")
    (root / "pyproject.toml").write_text("[project]\nname = 'fake'\n")
    kept = ["pyproject.toml", *(f"jobs/{p.name}" for p in (REPO / "jobs").iterdir() if p.is_file()),
            "platform/rigpose/__init__.py",
            "platform/rigpose/data/writer.py", "platform/rigpose/train/worker.py", "data/README.md",
            "datasets/rigs/h36m-s1.json"]
    dropped = [".venv/lib/python3.11/site-packages/torch/__init__.py", "outputs/runs/demo/model.pt",
               "outputs/datasets/demo/manifest.json", "x.parquet", "datasets/demo/part-00000.parquet",
               "platform/rigpose/__pycache__/writer.cpython-311.pyc", "mlruns/0/meta.yaml", ".git/HEAD", "poses.npz",
               "build/lib/rigpose/__init__.py"]
    for name in kept + dropped:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if not (root / name).exists():
            (root / name).write_text("x")
    sub = build_submission(root / "jobs" / "train.yaml", OBJECT_STORE, address=REMOTE, environ={})
    assert sub.runtime_env["working_dir"] == str(root)
    # Ray adds its default excludes to working_dir's (ray._private.runtime_env.working_dir), not to py_modules'
    excludes = get_runtime_env_default_excludes() + sub.runtime_env["excludes"]
    names = _zip_names(root, excludes, include_parent_dir=False, out=tmp_path / "working_dir.zip")
    assert names == set(kept)


# ------------------------------------------------------------------------------------------------ refusals


def test_the_project_root_is_the_nearest_folder_above_the_job_holding_pyproject_toml(tmp_path: Path) -> None:
    inner = tmp_path / "outer" / "inner"
    _fake_project(inner)
    (tmp_path / "outer" / "pyproject.toml").write_text("[project]\nname = 'outer'\n")
    (inner / "jobs" / "team").mkdir()
    job = shutil.copy(JOB, inner / "jobs" / "team" / "big.yaml")
    assert project_root(Path(job)) == inner
    sub = build_submission(job, OBJECT_STORE, address=REMOTE, environ={})
    assert sub.runtime_env == {"working_dir": str(inner)}  # no jobs/runtime_env.yaml in this project
    assert shlex.split(sub.entrypoint)[:5] == ["python", "-m", "rigpose", "train", "jobs/team/big.yaml"]


def test_a_job_file_outside_any_project_is_refused_naming_it(tmp_path: Path) -> None:
    loose = Path(shutil.copy(JOB, tmp_path / "loose.yaml"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(loose))}: not inside a project folder"):
        project_root(loose)
    with pytest.raises(ValueError, match="not inside a project folder"):
        build_submission(loose, OBJECT_STORE, address=REMOTE, environ={})


def test_a_missing_job_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "jobs" / "nope.yaml"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(missing))}: no such job file"):
        build_submission(missing, [], address=LOCAL, environ={})


def test_a_job_file_with_an_unknown_key_is_refused_naming_the_field(tmp_path: Path) -> None:
    job = _fake_project(tmp_path)
    job.write_text(job.read_text().replace("  lr_decay:", "  lr_decy:"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(job))}: field optim\.lr_decy"):
        build_submission(job, OBJECT_STORE, address=LOCAL, environ={})
    with pytest.raises(ValueError, match=r"field model\.widht"):
        build_submission(JOB, ["model.widht=8"], address=LOCAL, environ={})


@pytest.mark.parametrize("field", ["working_dir", "env_vars"])
def test_a_runtime_env_file_setting_what_submit_sets_is_refused_naming_file_and_field(
        tmp_path: Path, field: str) -> None:
    value = {"A": "1"} if field == "env_vars" else "/elsewhere"
    job = _fake_project(tmp_path, {"py_modules": ["platform/rigpose"], field: value})
    path = re.escape(str(tmp_path / "jobs" / "runtime_env.yaml"))
    with pytest.raises(ValueError, match=rf"^{path}: field {field}: set by `rigpose submit`"):
        build_submission(job, OBJECT_STORE, address=REMOTE, environ={})


def test_a_runtime_env_file_must_be_a_yaml_mapping(tmp_path: Path) -> None:
    _fake_project(tmp_path)
    assert load_runtime_env(tmp_path) == {}  # none: nothing but working_dir is sent
    path = tmp_path / "jobs" / "runtime_env.yaml"
    path.write_text("- platform/rigpose\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: a runtime env is a mapping, got list"):
        load_runtime_env(tmp_path)
    path.write_text("py_modules: [unclosed\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not valid YAML"):
        load_runtime_env(tmp_path)


# ------------------------------------------------------------------------------------------------ addresses


def test_the_jobs_api_address_comes_from_the_environment_or_is_the_local_dashboard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert default_address() == LOCAL
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # not an http address of the Jobs API
    assert default_address() == LOCAL
    monkeypatch.setenv("RAY_ADDRESS", "https://head.example:8265")
    assert default_address() == "https://head.example:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api.example:8265")
    assert default_address() == "http://api.example:8265"


@pytest.mark.parametrize(("address", "local"), [
    (LOCAL, True), ("http://localhost:8265", True), ("http://[::1]:8265", True), ("127.0.0.1:8265", True),
    (REMOTE, False), ("10.0.0.5:8265", False), ("https://127.0.0.1.example:8265", False),
])
def test_an_address_is_local_only_when_its_host_is_this_machine(address: str, local: bool) -> None:
    assert is_local_address(address) is local


def test_the_submission_id_is_the_one_given_or_names_the_run() -> None:
    assert build_submission(JOB, OBJECT_STORE, address=REMOTE, environ={}, submission_id="mine").submission_id == "mine"
    sub = build_submission(JOB, [*OBJECT_STORE, "run.name=exp7"], address=REMOTE, environ={})
    assert sub.submission_id.startswith("rigpose-exp7-") and sub.describe().startswith(
        f"submission id: {sub.submission_id}\nentrypoint: {sub.entrypoint}\n")


# ------------------------------------------------------------------------------------------------ command line


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if the CLI tries to reach a Jobs API; returns the addresses it tried."""
    tried: list[str] = []

    def client(address: str) -> None:
        tried.append(address)
        raise AssertionError(f"the command contacted {address}")

    monkeypatch.setattr("rigpose.cluster.submit.client", client)
    return tried


def _dry_run(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str):
    """`rigpose submit jobs/train.yaml --dry-run ARGS` from the repo with only `env` (plus a secret key and an
    unreachable cluster address) of the forwarded and credential variables set."""
    monkeypatch.chdir(REPO)
    for name in FORWARDED_ENV + CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    env = {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:1", "AWS_SECRET_ACCESS_KEY": "secret-key", **env}
    return CliRunner().invoke(app, ["submit", "jobs/train.yaml", "--dry-run", *args], env=env)


def test_cli_dry_run_prints_the_submission_and_the_values_sent_without_contacting_the_cluster(
        monkeypatch: pytest.MonkeyPatch, no_cluster: list[str]) -> None:
    result = _dry_run(monkeypatch, {"AWS_ENDPOINT_URL": "http://minio:minio-pw@127.0.0.1:9000"},
                      "--set", "optim.epochs=2")
    assert result.exit_code == 0, result.output
    entry = _train("optim.epochs=2", f"data.url={REPO}/outputs/datasets/demo", f"run.output_dir={REPO}/outputs/runs")
    assert f"entrypoint: {entry}\n" in result.stdout
    assert "forwarded environment variables: AWS_ENDPOINT_URL\n  AWS_ENDPOINT_URL=http://minio@127.0.0.1:9000\n" in (
        result.stdout)
    assert "note: AWS_ENDPOINT_URL: forwarded without the password of its URL" in result.stderr
    assert "secret-key" not in result.output and "minio-pw" not in result.output
    assert no_cluster == []


def test_cli_dry_run_with_forwarded_credentials_shows_them_as_stars(
        monkeypatch: pytest.MonkeyPatch, no_cluster: list[str]) -> None:
    result = _dry_run(monkeypatch, {"MLFLOW_TRACKING_URI": "http://bob:bob-pw@mlflow:5000"}, "--forward-credentials",
                      "--set", "tracking.uri=http://carol:carol-pw@mlflow:5000")
    assert result.exit_code == 0, result.output
    assert "  AWS_SECRET_ACCESS_KEY=***\n  MLFLOW_TRACKING_URI=http://bob:***@mlflow:5000\n" in result.stdout
    assert "--set tracking.uri=http://carol:***@mlflow:5000" in result.stdout  # the entrypoint, as shown
    assert not any(s in result.output for s in ("secret-key", "bob-pw", "carol-pw"))
    assert no_cluster == []


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_cli_bad_override_exits_1_with_one_error_line_before_anything_is_sent(
        monkeypatch: pytest.MonkeyPatch, no_cluster: list[str], dry_run: list[str]) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["submit", "jobs/train.yaml", *dry_run, "--set", "optim.epochs=0"])
    assert result.exit_code == 1
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: jobs/train.yaml: field optim.epochs: "), result.output
    assert "entrypoint:" not in result.output and "Traceback" not in result.output
    assert no_cluster == []


def test_cli_names_a_missing_job_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      no_cluster: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["submit", "jobs/nope.yaml", "--dry-run"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: jobs/nope.yaml: no such job file"
