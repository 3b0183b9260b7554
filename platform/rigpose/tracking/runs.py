"""MLflow run tracking for training: where runs go, one run per training run, logging that never stops training.

- `resolve_target(job)`: the tracking URI (job file, else $MLFLOW_TRACKING_URI, else a sqlite file with local
  artifacts in `<output folder>/mlflow/`, an absolute path: never the current directory of a Ray worker).
- `RunLogger`: params, tags, metrics and artifacts of one MLflow run. The run is created once per training run and
  its id kept in the run folder (`mlflow.json`), so retries and resumes log into the same run. Every call is a
  quick attempt (no HTTP retries, short timeout); when the tracking server is unreachable the logger warns once,
  queues what it could not send (bounded) and sends it on a later call once the server is back. The outage is
  recorded in the run's `RunSpec`, so rank 0's logger (given the driver's spec) does not warn about it again.
  Training never fails because of tracking; registration (rigpose.tracking.registry) is the one step that must
  succeed.
- `scrub(...)` (rigpose.tracking.secrets): credentials never reach params, tags, artifacts or logs: values of the
  credential environment variables are replaced by `***`, and so is the password part of URLs
  (`scheme://user:pass@host`). The real URI stays in memory (`TrackingTarget.uri`): MLflow needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigpose.config import TrainJob, flatten
from rigpose.storage import url_to_fs, write_bytes_atomic
from rigpose.tracking.secrets import scrub, secret_values

RUN_ID_FILE = "mlflow.json"
MAX_PENDING_METRICS = 100_000
Warn = Callable[[str], None]







def is_model_uri(s: str) -> bool:
    """True for MLflow model URIs (models:/..., runs:/...)."""
    return s.startswith(("models:/", "runs:/"))

def git_commit(repo: Path | None = None) -> str:
    """The commit the code runs from: $RIGPOSE_GIT_COMMIT (set by `rigpose submit`), else `git rev-parse HEAD`
    of the checkout holding this package, else "unknown" (an installed wheel, a Ray job's uploaded copy)."""
    if os.environ.get("RIGPOSE_GIT_COMMIT"):
        return os.environ["RIGPOSE_GIT_COMMIT"]
    if repo is None:
        package = Path(__file__).resolve().parents[1]
        if package.parent.name != "platform":  # not <checkout>/platform/rigpose: installed, no checkout to ask
            return "unknown"
        repo = package.parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{out}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class TrackingTarget:
    """Where a run is tracked: URI, experiment, and (for the embedded default) where its artifacts go."""

    uri: str
    experiment: str
    artifact_location: str | None = None

    def ui_command(self) -> str:
        """The command that opens the MLflow UI on this target."""
        uri = scrub(self.uri)
        if uri.startswith(("http://", "https://")):
            return f"open {uri}"
        return f"mlflow ui --backend-store-uri {uri}"


def output_folder(output_dir: str) -> Path:
    """The project's output folder for a run.output_dir: its parent when local ("outputs/runs" -> outputs),
    else ./outputs (a remote run folder cannot hold a sqlite file)."""
    if "://" in output_dir and not output_dir.startswith("file://"):
        return Path("outputs").resolve()
    return Path(output_dir.removeprefix("file://")).expanduser().resolve().parent


def resolve_target(job: TrainJob, environ: dict[str, str] | None = None) -> TrackingTarget:
    """The job's tracking target: tracking.uri, else $MLFLOW_TRACKING_URI, else the embedded sqlite default.

    With a sqlite URI a new experiment keeps its artifacts in `artifacts/` beside the database file (MLflow's own
    default would be `./mlruns` of whatever folder the command runs in); a server URI leaves them to the server.
    """
    environ = dict(os.environ) if environ is None else environ
    uri = job.tracking.uri or environ.get("MLFLOW_TRACKING_URI")
    experiment = scrub(job.tracking.experiment)  # it is printed and stored: never a credential
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            raise ValueError(f"tracking.uri {uri!r}: use an absolute sqlite path (sqlite:////abs/path/mlflow.db); a "
                             "relative one lands in whatever folder each process runs in")
        if uri.startswith("sqlite:///"):  # artifacts beside the database, never ./mlruns of the current folder
            db = Path(uri.removeprefix("sqlite:///"))
            return TrackingTarget(uri=uri, experiment=experiment, artifact_location=(db.parent / "artifacts").as_uri())
        return TrackingTarget(uri=uri, experiment=experiment)
    folder = output_folder(job.run.output_dir) / "mlflow"
    return TrackingTarget(uri=f"sqlite:///{folder / 'mlflow.db'}", experiment=experiment,
                          artifact_location=(folder / "artifacts").as_uri())


@contextlib.contextmanager
def mlflow_uri(uri: str | None, registry_uri: str | None = None) -> Iterator[None]:
    """MLflow's fluent API (log_model, register_model, load_model, models:/ URIs) on `uri` inside the block only.

    `mlflow.set_tracking_uri` is process-global and also exports $MLFLOW_TRACKING_URI: without restoring both, a
    later run in the same process (or a subprocess) would silently log to this URI. `uri=None` changes nothing.
    The registry URI is `registry_uri`, else `uri`. A URI holding a credential also keeps MLflow from printing it
    ("View run ... at: <uri>/#/...", when a fluent run ends).
    """
    if uri is None:
        yield
        return
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    saved = (getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None))
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    env = {k: os.environ.get(k) for k in keys}
    if scrub(uri) != uri or scrub(registry_uri or "") != (registry_uri or ""):
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri or uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def quiet_when_piped() -> None:
    """No MLflow artifact progress bars when stderr is not a terminal (logs, CI): they print a line per update."""
    import sys

    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def quick_http(timeout_s: float = 5.0, retries: int = 0) -> Iterator[None]:
    """MLflow REST calls in this block fail fast (MLflow's default is 7 retries with backoff: minutes)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s)),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_params(job: TrainJob, *, manifest_sha256: str, rig_ids: list[str],
               mix: dict[str, Any] | None = None) -> dict[str, str]:
    """Params of a training run: the flattened job plus dataset, manifest hash, rigs, version and commit; with a
    mix (`rigpose.train.trainer.open_mix`'s record) also the mixed-in dataset's manifest hash and rows per epoch."""
    import rigpose

    params = {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in flatten(job).items()}
    params.update({"dataset.url": job.data.url, "dataset.manifest_sha256": manifest_sha256,
                   "dataset.rig_ids": ",".join(rig_ids), "rigpose.version": rigpose.__version__,
                   "rigpose.git_commit": git_commit()})
    if mix is not None:
        params.update({"dataset.mix_url": str(mix["dataset"]), "dataset.mix_manifest_sha256": mix["manifest_sha256"],
                       "dataset.mix_rows_per_epoch": str(mix["rows_per_epoch"])})
    return {k: scrub(v)[:6000] for k, v in params.items()}


def run_tags(job: TrainJob, *, run_dir: str, manifest_sha256: str, rig_ids: list[str],
             mix: dict[str, Any] | None = None) -> dict[str, str]:
    """Lineage tags of a training run (what scheduled retraining looks runs up by). `rigpose.dataset`,
    `rigpose.manifest_sha256` and `rigpose.rig_ids` are the main dataset's (the one validated on, whose rigs the
    retrain gate compares); a mix adds `rigpose.mix_dataset`, `rigpose.mix_manifest_sha256`, `rigpose.mix_ratio`."""
    tags = {"rigpose.run_dir": run_dir, "rigpose.run_name": job.run.name, "rigpose.supervision": job.supervision,
            "rigpose.dataset": job.data.url, "rigpose.manifest_sha256": manifest_sha256,
            "rigpose.rig_ids": ",".join(rig_ids)}
    if mix is not None:
        tags.update({"rigpose.mix_dataset": str(mix["dataset"]), "rigpose.mix_manifest_sha256": mix["manifest_sha256"],
                     "rigpose.mix_ratio": str(mix["ratio"])})
    return {k: scrub(v) for k, v in tags.items()}


@dataclass
class RunSpec:
    """Everything needed to create (or find again) the MLflow run of one training run; plain data (picklable)."""

    target: TrackingTarget
    run_name: str
    run_dir: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: when the server was found unreachable (time.time()), None while it answers: set by the logger that warned,
    #: so a logger made later from this spec (rank 0, from the driver's) does not warn about the same outage again
    down_since: float | None = None


def read_run_id(run_dir: str, target: TrackingTarget) -> str | None:
    """The MLflow run id recorded in the run folder for this tracking URI, if any."""
    fs, path = url_to_fs(run_dir)
    try:
        with fs.open(f"{path}/{RUN_ID_FILE}", "rb") as f:
            rec = json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return rec.get("run_id") if rec.get("tracking_uri") == scrub(target.uri) else None


class RunLogger:
    """Logs into the MLflow run of one training run; never raises (see the module docstring).

    `warn` gets one line when the server first becomes unreachable and one when it is back.
    """

    def __init__(self, spec: RunSpec, *, warn: Warn = print, timeout_s: float = 5.0) -> None:
        self.spec, self.warn, self.timeout_s = spec, warn, timeout_s
        self.run_id: str | None = read_run_id(spec.run_dir, spec.target)
        self._pending_metrics: list[Any] = []
        self._pending_tags: dict[str, str] = {}
        self._pending_artifacts: dict[str, bytes] = {}
        self._params_done = False
        self._down_since: float | None = spec.down_since  # an outage another logger of this run already told
        self.dropped = 0
        self._secrets = secret_values()

    # ------------------------------------------------------------------ public API (never raises)
    def log_metrics(self, metrics: dict[str, float], *, step: int) -> bool:
        """Queue numeric metrics at `step` and try to send everything queued; True when all was sent."""
        self._queue(metrics, step=step)
        return self.flush()

    def _queue(self, metrics: dict[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            if isinstance(v, int | float) and v == v:  # not NaN
                self._pending_metrics.append(Metric(key=k, value=float(v), timestamp=now, step=int(step)))
        overflow = len(self._pending_metrics) - MAX_PENDING_METRICS
        if overflow > 0:
            del self._pending_metrics[:overflow]
            self.dropped += overflow

    def set_tags(self, tags: dict[str, str]) -> bool:
        """Queue tags (scrubbed) and try to send."""
        self._pending_tags.update({k: scrub(str(v), self._secrets) for k, v in tags.items()})
        return self.flush()

    def log_artifact_bytes(self, name: str, data: bytes) -> bool:
        """Queue one artifact file (text artifacts are scrubbed) and try to send."""
        with contextlib.suppress(UnicodeDecodeError):
            data = scrub(data.decode(), self._secrets).encode()
        self._pending_artifacts[name] = data
        return self.flush()

    def backfill(self, history: list[dict[str, Any]], *, probe: str = "train/loss") -> None:
        """Queue the epochs of `history` (per-epoch metric dicts with "epoch") whose `probe` metric the server
        lacks: what rank 0 could not send before its process ended. Skipped when the server does not answer."""
        try:
            with quick_http(self.timeout_s):
                have = ({m.step for m in self.client().get_metric_history(self.run_id, probe)}
                        if self.run_id is not None else set())
        except Exception:
            return
        for h in history:
            if int(h.get("epoch", -1)) not in have:
                self._queue({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))

    def flush(self) -> bool:
        """One quick attempt to create the run if needed and send what is queued; True when nothing is left."""
        try:
            with quick_http(self.timeout_s):
                self._send()
        except Exception as e:  # unreachable server, HTTP errors, sqlite locked: keep training, keep the queue
            if self._down_since is None:
                self._down_since = self.spec.down_since = time.time()
                self.warn(f"MLflow tracking at {scrub(self.spec.target.uri)} failed ({type(e).__name__}: "
                          f"{scrub(first_line(e), self._secrets)}); training goes on, metrics are queued and sent "
                          "when it is back")
            return False
        if self._down_since is not None:
            self.warn(f"MLflow tracking is back after {time.time() - self._down_since:.0f} s: queued metrics sent"
                      + (f" ({self.dropped} oldest dropped)" if self.dropped else ""))
            self._down_since = self.spec.down_since = None
        return True

    def flush_with_retries(self, attempts: int = 4, first_delay_s: float = 1.0) -> bool:
        """`flush` with exponential backoff between attempts (bounded); True when everything was sent."""
        delay = first_delay_s
        for i in range(attempts):
            if self.flush():
                return True
            if i + 1 < attempts:
                time.sleep(delay)
                delay *= 2
        return False

    # ------------------------------------------------------------------ internals
    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.spec.target.uri, registry_uri=self.spec.target.uri)

    def ensure_run(self) -> str:
        """The run id, creating the run (and the experiment) on first use and recording it in the run folder."""
        if self.run_id is not None:
            return self.run_id
        client = self.client()
        target = self.spec.target
        exp_id = experiment_id(client, target)
        run = client.create_run(exp_id, run_name=self.spec.run_name, tags=self.spec.tags)
        self.run_id = run.info.run_id
        fs, path = url_to_fs(self.spec.run_dir)
        record = {"run_id": self.run_id, "experiment_id": exp_id, "tracking_uri": scrub(target.uri)}
        write_bytes_atomic(fs, f"{path}/{RUN_ID_FILE}", json.dumps(record, indent=1).encode())
        return self.run_id

    def _send(self) -> None:
        from mlflow.entities import RunTag

        run_id = self.ensure_run()
        client = self.client()
        if not self._params_done:
            self._log_params(client, run_id)
            self._params_done = True
        while self._pending_metrics:
            chunk = self._pending_metrics[:1000]
            client.log_batch(run_id, metrics=chunk)
            del self._pending_metrics[:len(chunk)]
        if self._pending_tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self._pending_tags.items()])
            self._pending_tags.clear()
        for name in list(self._pending_artifacts):
            _log_bytes(client, run_id, name, self._pending_artifacts[name])
            del self._pending_artifacts[name]

    def _log_params(self, client: Any, run_id: str) -> None:
        """Params are immutable in MLflow: on a resume, new keys are logged and changed values become tags."""
        from mlflow.entities import Param, RunTag

        have = client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in self.spec.params.items() if k not in have]
        changed = [RunTag(f"rigpose.changed.{k}", f"{have[k][:240]} -> {v[:240]}")
                   for k, v in self.spec.params.items() if k in have and have[k] != v]
        for i in range(0, len(new), 100):
            client.log_batch(run_id, params=new[i:i + 100])
        if changed:
            client.log_batch(run_id, tags=changed)


def experiment_id(client: Any, target: TrackingTarget) -> str:
    """The id of `target.experiment`, created (with the target's artifact location) when it does not exist."""
    exp = client.get_experiment_by_name(target.experiment)
    if exp is not None:
        return str(exp.experiment_id)
    return str(client.create_experiment(target.experiment, artifact_location=target.artifact_location))


def record_run(target: TrackingTarget, run_name: str, *, tags: dict[str, str],
               artifacts: dict[str, bytes]) -> str:
    """A finished MLflow run that records a decision or a report (no training): `tags` and text `artifacts`
    ({name: bytes}), both scrubbed. Returns its run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
    secrets = secret_values()
    run = client.create_run(experiment_id(client, target), run_name=run_name,
                            tags={k: scrub(str(v), secrets)[:5000] for k, v in tags.items()})
    for name, data in artifacts.items():
        _log_bytes(client, run.info.run_id, name, scrub(data.decode(), secrets).encode())
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def _log_bytes(client: Any, run_id: str, name: str, data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / Path(name).name
        p.write_bytes(data)
        folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
        client.log_artifact(run_id, str(p), artifact_path=folder)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type name."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
