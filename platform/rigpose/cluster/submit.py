"""`rigpose submit` and `rigpose retrain --submit`: run a job file on a Ray cluster through the Ray Jobs API
(`JobSubmissionClient`).

What is sent (`build_submission`; `build_retrain_submission` for a retrain cycle, the same way): the entrypoint
`python -m rigpose train <job file> --set ...` (`... retrain <retrain job file> --set ...`), and a runtime env
= `jobs/runtime_env.yaml` (py_modules with the project's code, excludes for .venv, data and outputs) + the project
folder as working_dir + the non-secret settings the job needs from this shell's environment (`FORWARDED_ENV`: the
S3 endpoint and region, the MLflow tracking URI). Credentials are not sent unless asked for with
`--forward-credentials`: a runtime env and an entrypoint are readable by everyone who can list the cluster's jobs,
so a cluster should hold its own (the environment of `ray start`, Kubernetes secrets, instance roles). Without it:
the credential variables (`CREDENTIAL_ENV`) stay here, the password of a URL in a forwarded variable or a `--set`
value is left out (`http://user:pw@host` -> `http://user@host`), a forwarded value holding a credential's value is
not forwarded, and a job file holding a URL password (uploaded with the project) is refused. What is shown
(`Submission.describe`, `--dry-run`'s values) is scrubbed (`rigpose.tracking.secrets.scrub`).

Ray token auth (Ray 2.59+): with RAY_AUTH_MODE=token the client sends the token from RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; the token itself is never printed, logged or put in the runtime env.

Local paths: a job runs in a temporary copy of the project folder on the cluster, without outputs/. When the
cluster is on this machine (127.0.0.1 / localhost), relative local `data.url` and `run.output_dir` become absolute
paths here; with a remote cluster a relative local path is refused (use s3:// or a path every node mounts). For a
retrain these are the paths of the training job it names, rewritten through the retrain job's `overrides`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from rigpose.config import RetrainJob, TrainJob, check_train_job, load_config, load_job
from rigpose.tracking.secrets import SECRET_ENV, has_password, scrub, secret_values, strip_passwords

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RUNTIME_ENV_FILE = Path("jobs") / "runtime_env.yaml"
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_EXPERIMENT_NAME")
#: what --forward-credentials adds: the client-side secrets, and the MLflow user name that goes with its password
CREDENTIAL_ENV = (*(k for k in SECRET_ENV if k.startswith(("AWS_", "MLFLOW_TRACKING_"))), "MLFLOW_TRACKING_USERNAME")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Submission:
    """What `rigpose submit` / `rigpose retrain --submit` send to the cluster (no secret in it unless credentials
    were asked for), and the jobs as validated here."""

    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    job: TrainJob | RetrainJob  # the job file's job, with the overrides sent
    train_job: TrainJob  # what trains: `job` itself, or the training job the retrain job names, with its overrides
    metadata: dict[str, str] = field(default_factory=dict)  # the Ray job's metadata: which command, what it trains
    notes: list[str] = field(default_factory=list)

    def describe(self, *, values: bool = False) -> str:
        """The submission for the terminal, scrubbed: names of the forwarded variables, and with `values` one
        `NAME=value` line each (URL passwords and credential values shown as `***`)."""
        env = self.runtime_env.get("env_vars", {})
        text = (f"submission id: {self.submission_id}\nentrypoint: {self.entrypoint}\n"
                f"working_dir: {self.runtime_env['working_dir']}\n"
                f"forwarded environment variables: {', '.join(sorted(env)) or 'none'}")
        if values:
            secrets = secret_values() + secret_values(env)
            text += "".join(f"\n  {k}={scrub(v, secrets) if k not in SECRET_ENV else '***'}"
                            for k, v in sorted(env.items()))
        return scrub(text)


def default_address() -> str:
    """RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS, else the local dashboard."""
    env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def is_local_address(address: str) -> bool:
    """True when the cluster's address is this machine."""
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in LOCAL_HOSTS


def project_root(job_file: Path) -> Path:
    """The folder uploaded as working_dir: the nearest parent of the job file holding pyproject.toml."""
    for parent in job_file.resolve().parents:
        if (parent / "pyproject.toml").exists():
            return parent
    raise ValueError(f"{job_file}: not inside a project folder (no pyproject.toml above it); the job file must be "
                     "inside the folder that is uploaded to the cluster")


def _is_local_path(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _path_overrides(job: TrainJob, *, local_cluster: bool) -> tuple[list[str], list[str]]:
    """(--set overrides that make relative local paths absolute, notes) for the job's data and output paths."""
    overrides, notes = [], []
    for key, value in (("data.url", job.data.url), ("data.mix_url", job.data.mix_url),
                       ("run.output_dir", job.run.output_dir)):
        if value is None or not _is_local_path(value):
            continue
        path = Path(value.removeprefix("file://")).expanduser()
        if path.is_absolute():
            if not local_cluster:
                notes.append(f"{key}={value} is a local path: every node of the cluster must see it there")
            continue
        if not local_cluster:
            raise ValueError(f"{key}={value!r} is a relative local path, which a remote cluster cannot see (the job "
                             "runs in a temporary copy of the project without outputs/): use s3://... or a path "
                             "every node mounts")
        overrides.append(f"{key}={path.resolve()}")
        notes.append(f"{key}: {value} -> {path.resolve()} (the cluster is this machine)")
    return overrides, notes


def load_runtime_env(root: Path) -> dict[str, Any]:
    """jobs/runtime_env.yaml of the project (a plain Ray runtime_env dict); {} when the project has none."""
    path = root / RUNTIME_ENV_FILE
    if not path.exists():
        return {}
    try:
        env = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(env, dict):
        raise ValueError(f"{path}: a runtime env is a mapping, got {type(env).__name__}")
    for key in ("working_dir", "env_vars"):
        if key in env:
            raise ValueError(f"{path}: field {key}: set by `rigpose submit` (the project folder; forwarded variables)")
    return env


def build_submission(job_file: Path, overrides: list[str] | None = None, *, address: str,
                     submission_id: str | None = None, forward_credentials: bool = False,
                     environ: dict[str, str] | None = None) -> Submission:
    """`rigpose submit`: validate the training job here (errors name the field), then assemble the entrypoint
    `python -m rigpose train <job file> --set ...` and the runtime env."""
    job_file = _existing(job_file)
    root = project_root(job_file)
    job = load_job(job_file, overrides)
    notes = _uploaded_file_notes(job_file, forward_credentials=forward_credentials)
    path_sets, path_notes = _path_overrides(job, local_cluster=is_local_address(address))
    sets = [*(overrides or []), *path_sets]
    job = load_job(job_file, sets)
    sid = submission_id or f"rigpose-{_id_part(job.run.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    return _assemble(["train", job_file.resolve().relative_to(root).as_posix()], sets, root=root, job=job,
                     train_job=job, submission_id=sid, notes=[*notes, *path_notes],
                     metadata={"rigpose_command": "train", "rigpose_run": job.run.name},
                     forward_credentials=forward_credentials, environ=environ)


def build_retrain_submission(job_file: Path, overrides: list[str] | None = None, *, address: str,
                             dry_run: bool = False, submission_id: str | None = None,
                             forward_credentials: bool = False,
                             environ: dict[str, str] | None = None) -> Submission:
    """`rigpose retrain --submit`: validate the retrain job and the training job it names (with its `overrides`)
    here, then assemble the entrypoint `python -m rigpose retrain <job file> [--dry-run] --set ...` (one cycle on
    the cluster) and the runtime env.

    `train_job` is a path from the current folder, as for a retrain here; it must lie inside the project folder
    that is uploaded, and is sent relative to it. The training job's relative local `data.url` / `run.output_dir`
    (module docstring) become entries appended to the retrain job's `overrides`, sent as one `--set
    overrides=<JSON list>` (JSON is YAML, which `--set` parses). A schedule (`every`) is refused: one submission is
    one cycle."""
    job_file = _existing(job_file)
    root = project_root(job_file)
    job = load_config(RetrainJob, job_file, overrides)
    if job.every:
        raise ValueError(f"{job_file}: field every: {job.every!r}: a submitted retrain runs one cycle; schedule "
                         "`rigpose retrain --submit` from outside (the Kubernetes CronJob, cron), or run `rigpose "
                         "retrain --every` without --submit (--set every=null sends one cycle)")
    train_file = Path(job.train_job)
    if not train_file.is_file():
        raise ValueError(f"{job_file}: field train_job: {job.train_job}: no such job file (a path from the current "
                         "folder)")
    if not train_file.resolve().is_relative_to(root):
        raise ValueError(f"{job_file}: field train_job: {job.train_job} is not inside the project folder {root}, "
                         "which is what is uploaded to the cluster")
    notes = [*_uploaded_file_notes(job_file, forward_credentials=forward_credentials),
             *_uploaded_file_notes(train_file, forward_credentials=forward_credentials)]
    train_job = load_job(train_file, job.overrides)
    check_train_job(job, train_job)
    try:
        path_sets, path_notes = _path_overrides(train_job, local_cluster=is_local_address(address))
    except ValueError as e:
        raise ValueError(f"{job.train_job} (the train_job of {job_file}): {e}") from None
    sets = list(overrides or [])
    sent_train_job = train_file.resolve().relative_to(root).as_posix()
    if sent_train_job != job.train_job:  # the cluster runs in the uploaded project folder
        sets.append(f"train_job={sent_train_job}")
    if path_sets:  # the whole list, as the job ends up with it: it replaces earlier `--set overrides=...`
        sets = [s for s in sets if s.partition("=")[0].strip() != "overrides"]
        sets.append(f"overrides={json.dumps([*job.overrides, *path_sets])}")
    job = load_config(RetrainJob, job_file, sets)
    train_job = load_job(train_file, job.overrides)
    name = check_train_job(job, train_job)
    sid = submission_id or f"rigpose-retrain-{_id_part(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["retrain", job_file.resolve().relative_to(root).as_posix(), *(["--dry-run"] if dry_run else [])]
    return _assemble(args, sets, root=root, job=job, train_job=train_job, submission_id=sid,
                     notes=[*notes, *path_notes], forward_credentials=forward_credentials, environ=environ,
                     metadata={"rigpose_command": "retrain", "rigpose_model": name,
                               "rigpose_dry_run": str(dry_run).lower()})


def _existing(job_file: Path) -> Path:
    job_file = Path(job_file)
    if not job_file.is_file():
        raise ValueError(f"{job_file}: no such job file")
    return job_file


def _uploaded_file_notes(job_file: Path, *, forward_credentials: bool) -> list[str]:
    """A job file is uploaded as it is, with the project folder: one holding a URL password is refused unless
    credentials are forwarded (then noted)."""
    if not has_password(job_file.read_text()):
        return []
    if not forward_credentials:
        raise ValueError(f"{job_file}: holds a URL with a password, which would be uploaded to the cluster "
                         "with the project folder: give the cluster its own credentials (e.g. "
                         "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD in its environment) and keep only "
                         "user@host in the file, or pass --forward-credentials")
    return [f"{job_file.name} holds a URL password: uploaded with the project folder"]


def _id_part(name: str) -> str:
    """`name` as part of a submission id (which Ray puts in URL paths): runs of other characters become '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "job"


def _assemble(args: list[str], sets: list[str], *, root: Path, job: TrainJob | RetrainJob, train_job: TrainJob,
              submission_id: str, notes: list[str], metadata: dict[str, str], forward_credentials: bool,
              environ: dict[str, str] | None) -> Submission:
    """The entrypoint `python -m rigpose ARGS --set ...` (URL passwords left out of the sets unless credentials
    are forwarded), the runtime env (the project's file, the project folder, the forwarded variables), notes."""
    environ = dict(os.environ if environ is None else environ)
    notes = list(notes)
    sent_sets = sets
    if not forward_credentials:
        sent_sets = [strip_passwords(s) for s in sets]
        notes += [f"--set {scrub(s)}: sent without the password ({t}); the cluster needs its own credentials, or "
                  "pass --forward-credentials" for s, t in zip(sets, sent_sets, strict=True) if s != t]
    entrypoint = shlex.join(["python", "-m", "rigpose", *args, *(a for s in sent_sets for a in ("--set", s))])
    runtime_env = load_runtime_env(root)
    runtime_env["working_dir"] = str(root)
    if "py_modules" in runtime_env:  # Ray resolves local ones against the current directory, not working_dir
        runtime_env["py_modules"] = [str(root / m) if isinstance(m, str) and "://" not in m else m
                                     for m in runtime_env["py_modules"]]
    env_vars, env_notes = forwarded_env(environ, forward_credentials=forward_credentials)
    notes += env_notes
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if forward_credentials:
        notes.append("credentials forwarded in the runtime env: readable by anyone who can list this cluster's jobs")
    return Submission(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id, job=job,
                      train_job=train_job, metadata={k: scrub(v) for k, v in metadata.items()}, notes=notes)


def forwarded_env(environ: dict[str, str], *, forward_credentials: bool = False) -> tuple[dict[str, str], list[str]]:
    """(the variables of `environ` sent in the runtime env, notes): the set ones of `FORWARDED_ENV`, with URL
    passwords left out and those holding a credential's value left out; with `forward_credentials` also
    `CREDENTIAL_ENV`, and every value as it is."""
    names = FORWARDED_ENV + (CREDENTIAL_ENV if forward_credentials else ())
    env_vars = {k: environ[k] for k in names if environ.get(k)}
    if forward_credentials:
        return env_vars, []
    notes, secrets = [], secret_values(environ)
    for k, v in list(env_vars.items()):
        sent = strip_passwords(v)
        if scrub(sent, secrets) != sent:
            del env_vars[k]
            notes.append(f"{k} not forwarded: it holds the value of a credential variable (pass "
                         "--forward-credentials to send it)")
        elif sent != v:
            env_vars[k] = sent
            notes.append(f"{k}: forwarded without the password of its URL ({sent}); the cluster needs its own "
                         "credentials, or pass --forward-credentials")
    return env_vars, notes


def client(address: str) -> Any:
    """A JobSubmissionClient for `address`; connection and auth problems become one-line RuntimeErrors."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, RuntimeError, ray's AuthenticationError: one message for the user
        raise RuntimeError(f"cannot reach the Ray Jobs API at {address}: {_one_line(e)}{_auth_hint(e)}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400] + ("..." if len(text) > 400 else "")


def _auth_hint(e: BaseException) -> str:
    text = str(e).lower()
    if "auth" in text or "401" in text or "403" in text or "token" in text:
        return (" (a cluster with token auth needs RAY_AUTH_MODE=token here, and its token in RAY_AUTH_TOKEN, "
                "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    return ""


def submit(sub: Submission, address: str) -> str:
    """Submit; returns the submission id."""
    c = client(address)
    try:
        return c.submit_job(entrypoint=sub.entrypoint, runtime_env=sub.runtime_env, submission_id=sub.submission_id,
                            metadata=sub.metadata)
    except Exception as e:  # the SDK raises RuntimeError with the server's reply; keep it on one line
        raise RuntimeError(f"submission to {address} failed: {_one_line(e)}{_auth_hint(e)}") from None


def follow(address: str, submission_id: str, *, echo: Any = print) -> str:
    """Stream the job's logs until it ends; returns its final status (SUCCEEDED, FAILED or STOPPED)."""
    c = client(address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(submission_id):
            echo(chunk, end="")

    asyncio.run(tail())
    status = str(c.get_job_status(submission_id).value)
    while status not in TERMINAL:  # the log stream can end a moment before the status is final
        time.sleep(1.0)
        status = str(c.get_job_status(submission_id).value)
    return status
