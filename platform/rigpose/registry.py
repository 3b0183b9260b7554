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

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from rigpose import geometry as g
from rigpose.model.batch import prepare_arrays
from rigpose.model.lifter import Lifter
from rigpose.skeleton import Skeleton
from rigpose.tracking import TrackingTarget, first_line, mlflow_uri, quick_http, quiet_when_piped, scrub

INPUT_COLUMNS = ("keypoints", "scores", "K", "dist", "R", "t")
OUTPUT_COLUMNS = ("joints_3d", "joints_cam", "num_views")
ARTIFACT_KEY = "lifter"
CANDIDATE, CHAMPION = "candidate", "champion"
#: metrics copied onto a registered version as tags `rigpose.metric.<name>` (shown by `rigpose models list`)
KEY_METRICS = ("val/reprojection_px", "val/mpjpe_mm", "val/pa_mpjpe_mm", "heldout_px", "mpjpe_mm", "pa_mpjpe_mm")


def _stack_padded(values: Any, name: str, tail: tuple[int, ...], num_views: int) -> np.ndarray:
    """Rows of [V_i, *tail] nested lists/arrays -> [N, num_views, *tail] float64 (padding 0)."""
    out = np.zeros((len(values), num_views, *tail), np.float64)
    for i, v in enumerate(values):
        a = np.asarray(v if not isinstance(v, np.ndarray) or v.dtype != object else np.stack(
            [np.stack(list(x)) if isinstance(x, np.ndarray) and x.dtype == object else x for x in v]),
            dtype=np.float64)
        if a.ndim != 1 + len(tail) or a.shape[1:] != tail:
            raise ValueError(f"row {i}: column {name} has shape {list(a.shape)}, expected [V, "
                             f"{', '.join(map(str, tail))}]")
        out[i, :a.shape[0]] = a
    return out


def frame_arrays(df: pd.DataFrame, num_joints: int) -> tuple[np.ndarray, np.ndarray, g.CameraArrays, np.ndarray]:
    """(keypoints [N, V, J, 2] px, scores [N, V, J], cameras [N, V, ...], view_mask [N, V]) from pyfunc input rows."""
    missing = [c for c in INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"input is missing column(s) {missing}; expected {list(INPUT_COLUMNS)}")
    views = [len(v) for v in df["keypoints"]]
    V = max(views) if views else 0
    for c in INPUT_COLUMNS[1:]:
        bad = [i for i, v in enumerate(df[c]) if len(v) != views[i]]
        if bad:
            raise ValueError(f"row {bad[0]}: column {c} has {len(df[c].iloc[bad[0]])} views, keypoints has "
                             f"{views[bad[0]]}")
    J = num_joints
    kp = _stack_padded(df["keypoints"], "keypoints", (J, 2), V)
    sc = _stack_padded(df["scores"], "scores", (J,), V)
    cams = g.CameraArrays(K=_stack_padded(df["K"], "K", (3, 3), V), dist=_stack_padded(df["dist"], "dist", (5,), V),
                          R=_stack_padded(df["R"], "R", (3, 3), V), t=_stack_padded(df["t"], "t", (3,), V))
    vm = np.arange(V)[None, :] < np.asarray(views)[:, None]
    pad = ~vm
    cams.K[pad] = np.eye(3)  # padding views get harmless cameras (masked out of everything)
    cams.R[pad] = np.eye(3)
    cams.t[pad] = (0.0, 0.0, 1.0)
    return kp, sc, cams, vm


@torch.no_grad()
def lift_arrays(model: Lifter, skeleton: Skeleton, keypoints: np.ndarray, scores: np.ndarray,
                cameras: g.CameraArrays, view_mask: np.ndarray, *, device: str = "cpu"
                ) -> dict[str, np.ndarray]:
    """{"joints_3d" [N, J, 3] world m, "joints_cam" [N, V, J, 3] camera m, "num_views" [N]} for raw 2D + cameras."""
    from rigpose.model.fuse import fuse
    from rigpose.predict import lift_single

    with np.errstate(invalid="ignore", divide="ignore"):
        arrays = prepare_arrays(keypoints, scores, cameras, view_mask, root_joints=tuple(skeleton.root_joints),
                                pseudo_3d=False)
    batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    rel, root = lift_single(model, batch)
    world = fuse(model, batch, skeleton).cpu().double().numpy()
    used = ((batch["w"].sum(-1) > 0) & (batch["view_mask"] > 0)).sum(-1).cpu().numpy()
    return {"joints_3d": world, "joints_cam": rel + root[..., None, :], "num_views": used.astype(np.int64)}


class LifterModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around a saved lifter (artifact "lifter" = a `model.pt` from rigpose.train.checkpoint)."""

    def load_context(self, context: Any) -> None:
        from rigpose.train.checkpoint import load_lifter

        self.model, self.skeleton, self.meta = load_lifter(context.artifacts[ARTIFACT_KEY])
        self.model.eval()

    def lift(self, keypoints: np.ndarray, scores: np.ndarray, cameras: g.CameraArrays, view_mask: np.ndarray
             ) -> dict[str, np.ndarray]:
        """Array fast path (batch inference): see `lift_arrays`."""
        return lift_arrays(self.model, self.skeleton, keypoints, scores, cameras, view_mask)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        """Rows of raw 2D + cameras -> rows of 3D joints (see the module docstring)."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        kp, sc, cams, vm = frame_arrays(model_input, self.skeleton.num_joints)
        out = self.lift(kp, sc, cams, vm)
        return pd.DataFrame({
            "joints_3d": [x.tolist() for x in out["joints_3d"]],
            "joints_cam": [x[: int(n)].tolist() for x, n in zip(out["joints_cam"], vm.sum(1), strict=True)],
            "num_views": out["num_views"],
        })


def example_input(keypoints: np.ndarray, scores: np.ndarray, cameras: g.CameraArrays, view_mask: np.ndarray
                  ) -> pd.DataFrame:
    """Pyfunc input rows from arrays (e.g. a few dataset frames): only the real views of each frame."""
    rows = []
    for i in range(keypoints.shape[0]):
        v = np.flatnonzero(view_mask[i])
        kp = np.nan_to_num(np.asarray(keypoints[i, v], np.float64))
        sc = np.where(np.isfinite(keypoints[i, v]).all(-1), scores[i, v], 0.0)
        rows.append({"keypoints": kp.tolist(), "scores": np.asarray(sc, np.float64).tolist(),
                     "K": np.asarray(cameras.K[i, v], np.float64).tolist(),
                     "dist": np.asarray(cameras.dist[i, v], np.float64).tolist(),
                     "R": np.asarray(cameras.R[i, v], np.float64).tolist(),
                     "t": np.asarray(cameras.t[i, v], np.float64).tolist()})
    return pd.DataFrame(rows, columns=list(INPUT_COLUMNS))


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
            name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={ARTIFACT_KEY: model_file}, signature=signature, input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                              "numpy", "pandas", "scipy", f"rigpose=={rigpose.__version__}"],
            metadata={"skeleton": model.skeleton.name, "joint_names": list(model.skeleton.joint_names)})
    return info.model_uri


def register(target: TrackingTarget, *, run_id: str, model_file: str, example: pd.DataFrame, name: str,
             tags: dict[str, str], alias: str = CANDIDATE, warn: Callable[[str], None] = print) -> Registered:
    """Log the model into the run and register it as a new version of `name` with `alias` and lineage `tags`.

    Retries with backoff; RuntimeError with a clear message when the registry cannot be reached.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
    model_uri = with_retries(lambda: log_model(run_id, target, model_file, example),
                             f"logging the model to MLflow at {scrub(target.uri)}", warn=warn)

    def _register() -> Any:
        import mlflow

        try:
            client.get_registered_model(name)
        except Exception:  # the first version of this name
            client.create_registered_model(name, description="RigPose 2D->3D lifter (pyfunc: raw 2D keypoints, "
                                                             "scores and cameras in; 3D joints out)")
        with mlflow_uri(target.uri):
            mv = mlflow.register_model(model_uri, name, tags={k: scrub(str(v)) for k, v in tags.items()})
        client.set_registered_model_alias(name, alias, mv.version)
        return mv

    mv = with_retries(_register, f"registering model {name!r} at {scrub(target.uri)}", warn=warn)
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
            "metrics": {k.removeprefix("rigpose.metric."): float(v) for k, v in tags.items()
                        if k.startswith("rigpose.metric.")},
            "dataset": tags.get("rigpose.dataset"), "manifest_sha256": tags.get("rigpose.manifest_sha256"),
            "rig_ids": tags.get("rigpose.rig_ids"),
        })
    return sorted(out, key=lambda r: int(r["version"]), reverse=True)


def is_model_uri(s: str) -> bool:
    """True for MLflow model URIs (models:/..., runs:/...)."""
    return s.startswith(("models:/", "runs:/"))


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



@dataclass(frozen=True)
class GateResult:
    """Candidate vs champion on the same data: the label-free held-out-view error (px, lower is better)."""

    candidate_version: str
    champion_version: str | None
    candidate_px: float
    champion_px: float | None
    promoted: bool


def champion_gate(name: str, candidate_version: str, *, data_url: str, split: str, uri: str | None = None,
                  max_rows: int | None = 5000, alias: str = CHAMPION) -> GateResult:
    """Evaluate the candidate and the current champion on `split` of `data_url` (single-view held-out-view
    reprojection error, needs no 3D labels); point `alias` at the candidate when there is no champion yet or the
    candidate's error is lower."""
    import shutil
    import tempfile

    from rigpose.evaluate import evaluate

    client = client_for(uri)
    try:
        champion: str | None = str(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # no such alias yet
        champion = None
    tmp = tempfile.mkdtemp(prefix="rigpose-gate-")
    try:
        def heldout(version: str) -> float:
            weights = download_lifter_file(f"models:/{name}/{version}", f"{tmp}/v{version}", tracking_uri=uri)
            report = evaluate(weights, data_url, split=split, modes=("single",), max_rows=max_rows)
            return float(report["single"]["overall"]["heldout_px"])

        cand_px = heldout(candidate_version)
        champ_px = heldout(champion) if champion not in (None, str(candidate_version)) else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    promoted = champion is None or (champ_px is not None and cand_px < champ_px)
    if promoted:
        promote(name, candidate_version, alias, uri=uri)
    return GateResult(candidate_version=str(candidate_version), champion_version=champion, candidate_px=cand_px,
                      champion_px=champ_px, promoted=promoted)
