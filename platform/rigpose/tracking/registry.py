"""The lifter as an MLflow pyfunc model, its registration with aliases, and loading it back from the registry.

Pyfunc contract (one row per frame; V views, J joints of the model's skeleton; raw detector output, the model
undistorts and normalises by the intrinsics itself):

| input column | shape      | meaning                                                                      |
|--------------|------------|------------------------------------------------------------------------------|
| keypoints    | [V][J][2]  | 2D keypoints, pixels of each view's image (a missing joint: score 0)          |
| scores       | [V][J]     | detector confidences in [0, 1] (0 = not detected)                             |
| K            | [V][3][3]  | intrinsics, pixels                                                            |
| dist         | [V][5]     | distortion k1, k2, p1, p2, k3                                                 |
| R, t         | [V][3][3], [V][3] | world -> camera rotation and translation (metres): X_cam = R X_world + t |

| output column | shape     | meaning                                                                       |
|---------------|-----------|-------------------------------------------------------------------------------|
| joints_3d     | [J][3]    | world frame, metres: the one view's lift, or the confidence-weighted fusion of all views |
| joints_cam    | [V][J][3] | every view lifted alone, in its own camera frame, metres (NaN: view without keypoints) |
| num_views     | int       | views with at least one keypoint                                               |

Rows may have different V (padded inside). Registration: `register(...)` logs the pyfunc into a training run,
registers it under a name with alias `candidate` and lineage tags (`rigpose.manifest_sha256`, `rigpose.rig_ids`,
`rigpose.run_id`, key metrics); `promote`, `list_versions`, `load_lifter_uri` serve the `rigpose models` commands
and `rigpose lift --model models:/NAME@ALIAS`.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import torch

from rigpose.tracking.pyfunc import ARTIFACT_KEY, LifterModel
from rigpose.tracking.runs import TrackingTarget, first_line, mlflow_uri, quick_http, quiet_when_piped, scrub

CANDIDATE, CHAMPION = "candidate", "champion"
#: metrics copied onto a registered version as tags `rigpose.metric.<name>` (shown by `rigpose models list`)
#: (val/*: training validation; eval/*: `rigpose evaluate` on tracking.eval_split when it is not the val split; the
#: held-out-view figure has one definition, `rigpose.metrics.heldout_view_px`, in both)
KEY_METRICS = ("val/reprojection_px", "val/mpjpe_mm", "val/pa_mpjpe_mm", "eval/heldout_px", "eval/mpjpe_mm",
               "eval/pa_mpjpe_mm")












def with_retries(fn: Callable[[], Any], what: str, *, attempts: int = 5, first_delay_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, warn: Callable[[str], None] = print) -> Any:
    """`fn()` retried with exponential backoff; RuntimeError naming `what` when every attempt failed."""
    delay = first_delay_s
    for i in range(attempts):
        try:
            with quick_http(timeout_s=10):
                return fn()
        except Exception as e:  # connection errors, 5xx, sqlite locked
            last = e
            if i + 1 < attempts:
                warn(f"{what}: attempt {i + 1}/{attempts} failed ({type(e).__name__}); retrying in {delay:.0f} s")
                sleep(delay)
                delay *= 2
    raise RuntimeError(f"{what} failed after {attempts} attempts: {type(last).__name__}: "
                       f"{scrub(str(last).splitlines()[0] if str(last) else '')}") from last


@dataclass(frozen=True)
class Registered:
    """A registered model version."""

    name: str
    version: str
    run_id: str
    uri: str  # models:/NAME/VERSION


def log_model(run_id: str, target: TrackingTarget, model_file: str, example: pd.DataFrame) -> str:
    """Log the pyfunc (weights file `model_file`, signature inferred on `example`) into run `run_id`;
    returns the logged model's URI."""
    import mlflow
    from mlflow.models import infer_signature

    import rigpose

    model = LifterModel()
    model.load_context(type("Ctx", (), {"artifacts": {ARTIFACT_KEY: model_file}})())
    with warnings.catch_warnings():  # num_views is an integer column by design (never missing)
        warnings.filterwarnings("ignore", message=".*integer column.*")
        signature = infer_signature(example, model.predict(None, example))
    with mlflow_uri(target.uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={ARTIFACT_KEY: model_file}, signature=signature, input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                              "numpy", "pandas", "scipy", f"rigpose=={rigpose.__version__}"],
            metadata={"skeleton": model.skeleton.name, "joint_names": list(model.skeleton.joint_names)})
    return info.model_uri


def register(target: TrackingTarget, *, run_id: str, model_file: str, example: pd.DataFrame, name: str,
             tags: dict[str, str], alias: str = CANDIDATE, attempts: int = 5,
             warn: Callable[[str], None] = print) -> Registered:
    """Log the model into the run and register it as a new version of `name` with `alias` and lineage `tags`.

    Each step is tried `attempts` times with doubling waits (1 s first: 5 attempts wait 15 s, 7 about a minute);
    RuntimeError with a clear message when the registry cannot be reached.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
    model_uri = with_retries(lambda: log_model(run_id, target, model_file, example),
                             f"logging the model to MLflow at {scrub(target.uri)}", attempts=attempts, warn=warn)

    def _register() -> Any:
        import mlflow

        try:
            client.get_registered_model(name)
        except Exception:  # the first version of this name
            client.create_registered_model(name, description="RigPose 2D->3D lifter (pyfunc: raw 2D keypoints, "
                                                             "scores and cameras in; 3D joints out)")
        # mlflow.register_model prints "Registered model ... already exists" (the name was created just above, with
        # its description) and "Created version ...": our own line says it once; anything else it prints is kept
        printed = io.StringIO()
        with mlflow_uri(target.uri), contextlib.redirect_stderr(printed):
            mv = mlflow.register_model(model_uri, name, tags={k: scrub(str(v)) for k, v in tags.items()})
        for line in printed.getvalue().splitlines():
            if line.strip() and not line.startswith(("Registered model ", "Created version ")):
                warn(line)
        client.set_registered_model_alias(name, alias, mv.version)
        return mv

    mv = with_retries(_register, f"registering model {name!r} at {scrub(target.uri)}", attempts=attempts,
                      warn=warn)
    return Registered(name=name, version=str(mv.version), run_id=run_id, uri=f"models:/{name}/{mv.version}")


def client_for(uri: str | None = None) -> Any:
    """An MlflowClient for `uri` (default: $MLFLOW_TRACKING_URI)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def promote(name: str, version: str, alias: str = CHAMPION, *, uri: str | None = None) -> None:
    """Point `alias` of model `name` at `version` (ValueError when the version does not exist)."""
    client = client_for(uri)
    try:
        client.get_model_version(name, str(version))
    except Exception as e:
        raise ValueError(f"model {name!r} has no version {version} ({first_line(e)})") from None
    client.set_registered_model_alias(name, alias, str(version))


def list_versions(name: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """[{version, aliases, created, run_id, metrics, dataset, manifest_sha256, rig_ids}] newest first."""
    client = client_for(uri)
    try:
        rm = client.get_registered_model(name)
    except Exception as e:
        raise ValueError(f"no registered model {name!r} ({first_line(e)})") from None
    aliases: dict[str, list[str]] = {}
    for a, v in (rm.aliases or {}).items():
        aliases.setdefault(str(v), []).append(a)
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = mv.tags or {}
        out.append({
            "version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
            "created": mv.creation_timestamp, "run_id": mv.run_id,
            "metrics": {**{k.removeprefix("rigpose.metric."): float(v) for k, v in tags.items()
                           if k.startswith("rigpose.metric.")},
                        # the figure the champion gate compared (rigpose.retrain.gate), when one ran
                        **({"gate.heldout_px": float(tags["rigpose.gate.heldout_px"])}
                           if "rigpose.gate.heldout_px" in tags else {})},
            "dataset": tags.get("rigpose.dataset"), "manifest_sha256": tags.get("rigpose.manifest_sha256"),
            "rig_ids": tags.get("rigpose.rig_ids"),
        })
    return sorted(out, key=lambda r: int(r["version"]), reverse=True)


def version_artifact(name: str, alias: str, artifact: str, *, uri: str | None = None) -> tuple[str, bytes] | None:
    """(version, the bytes of `artifact` logged in the run behind `name@alias`), e.g. the training manifest
    `dataset/manifest.json` a version was trained on; None when the model or the alias does not exist."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    client = client_for(uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except Exception:  # no such model or alias (RestException); anything else shows at the download below
        return None
    with tempfile.TemporaryDirectory() as tmp, mlflow_uri(uri):
        try:
            local = download_artifacts(run_id=mv.run_id, artifact_path=artifact, dst_path=tmp)
        except Exception as e:
            raise ValueError(f"models:/{name}@{alias} (version {mv.version}, run {mv.run_id}): no artifact "
                             f"{artifact!r} ({first_line(e)})") from None
        return str(mv.version), Path(local).read_bytes()


def load_pyfunc_lifter(uri: str, *, tracking_uri: str | None = None) -> LifterModel:
    """The `LifterModel` behind a registry URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...), resolved on
    `tracking_uri` (default: MLflow's current URI, e.g. $MLFLOW_TRACKING_URI)."""
    quiet_when_piped()
    try:
        with mlflow_uri(tracking_uri):
            loaded = mlflow.pyfunc.load_model(uri)
    except Exception as e:
        raise ValueError(f"{uri}: cannot load the model ({first_line(e)})") from None
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, LifterModel):
        raise ValueError(f"{uri}: not a rigpose lifter model (python model {type(inner).__name__})")
    return inner


def download_lifter_file(uri: str, dst: str, *, tracking_uri: str | None = None) -> str:
    """Copy the lifter weights file (`model.pt`) of a registry model into folder `dst`; returns its path."""
    from mlflow.artifacts import download_artifacts

    quiet_when_piped()
    try:
        with mlflow_uri(tracking_uri):
            local = download_artifacts(artifact_uri=uri, dst_path=dst)
    except Exception as e:
        raise ValueError(f"{uri}: cannot download the model ({first_line(e)})") from None
    files = sorted(Path(local).rglob("*.pt"))
    if not files:
        raise ValueError(f"{uri}: no lifter weights (*.pt) in the model's artifacts")
    return str(files[0])


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """Key metrics as model-version tags `rigpose.metric.<name>`."""
    return {f"rigpose.metric.{k.replace('/', '.')}": f"{v:.6g}" for k, v in metrics.items()
            if k in KEY_METRICS and v is not None and v == v}







def absolute_mlflow_uri(uri: str) -> str:
    """`uri` with a relative sqlite path made absolute (a Ray worker resolves it in another folder)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def pin_model_uri(uri: str, *, tracking_uri: str | None = None, registry_uri: str | None = None) -> str:
    """`models:/NAME@ALIAS` as `models:/NAME/VERSION` (the version the alias points at now); other URIs as they are.

    ValueError naming `uri` when the registry has no such model or alias.
    """
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    from mlflow.tracking import MlflowClient

    from rigpose.tracking.runs import first_line

    name, _, alias = uri.removeprefix("models:/").rpartition("@")
    if not name or not alias or "/" in alias:
        raise ValueError(f"{uri}: not a model URI of the form models:/NAME@ALIAS")
    try:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
        version = client.get_model_version_by_alias(name, alias).version
    except Exception as e:  # no such model or alias, registry unreachable
        raise ValueError(f"{uri}: cannot resolve the alias ({first_line(e)})") from None
    return f"models:/{name}/{version}"
