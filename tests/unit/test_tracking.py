"""MLflow tracking and registry on a sqlite tracking URI in a temporary folder (no server, no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rigpose_testing import free_port

from rigpose.config import ModelConfig, MultiViewConfig, TrainJob
from rigpose.data.reader import Dataset, iter_frames
from rigpose.model.checkpoint import save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import recipes_dir
from rigpose.retrain.gate import champion_gate
from rigpose.tracking import runs as tr
from rigpose.tracking.pyfunc import example_input, lift_arrays
from rigpose.tracking.registry import LifterModel, list_versions, load_pyfunc_lifter, promote, register, with_retries


def _job(tmp_path: Path, **tracking) -> TrainJob:
    return TrainJob.model_validate({"run": {"output_dir": str(tmp_path / "runs"), "name": "r1"},
                                    "tracking": tracking})


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sqlite tracking store for the module (creating its schema takes seconds); tests use their own names."""
    return tmp_path_factory.mktemp("tracking")


_SHARED: list[Path] = []


@pytest.fixture(autouse=True)
def _shared_store(shared: Path) -> None:
    _SHARED[:] = [shared]


def _target(tmp_path: Path) -> tr.TrackingTarget:
    return tr.resolve_target(_job(_SHARED[0] if _SHARED else tmp_path), {})


def _spec(tmp_path: Path, target: tr.TrackingTarget | None = None, **params: str) -> tr.RunSpec:
    return tr.RunSpec(target=target or _target(tmp_path), run_name="r1", run_dir=str(tmp_path / "runs" / "r1"),
                      params={"optim.lr": "0.0003", **params}, tags={"rigpose.rig_ids": "h36m-s1"})


# ------------------------------------------------------------------ where runs go


def test_default_target_is_an_absolute_sqlite_file_beside_the_runs(tmp_path: Path) -> None:
    t = tr.resolve_target(_job(tmp_path), {})
    assert t.uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert t.artifact_location == (tmp_path / "mlflow" / "artifacts").as_uri()
    assert t.ui_command() == f"mlflow ui --backend-store-uri {t.uri}"


def test_environment_uri_beats_the_default_and_the_job_file_beats_both(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert tr.resolve_target(_job(tmp_path), env).uri == "http://127.0.0.1:5000"
    assert tr.resolve_target(_job(tmp_path, uri="http://mlflow:80"), env).uri == "http://mlflow:80"


def test_a_sqlite_uri_keeps_artifacts_beside_its_database_not_in_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's own default would be ./mlruns here
    db = tmp_path / "store" / "mlflow.db"
    for job, env in ((_job(tmp_path, uri=f"sqlite:///{db}"), {}), (_job(tmp_path), {"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})):
        t = tr.resolve_target(job, env)
        assert t.uri == f"sqlite:///{db}" and t.artifact_location == (db.parent / "artifacts").as_uri()
    assert tr.resolve_target(_job(tmp_path, uri="http://mlflow:80"), {}).artifact_location is None  # the server's
    t = tr.resolve_target(_job(tmp_path, uri=f"sqlite:///{db}", experiment="beside"), {})
    run_id = tr.RunLogger(_spec(tmp_path, t), warn=lambda s: None).ensure_run()
    from mlflow.tracking import MlflowClient

    assert MlflowClient(t.uri).get_run(run_id).info.artifact_uri.startswith((db.parent / "artifacts").as_uri())
    assert not (elsewhere / "mlruns").exists()


def test_a_relative_sqlite_uri_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute sqlite path"):
        tr.resolve_target(_job(tmp_path, uri="sqlite:///mlflow.db"), {})


# ------------------------------------------------------------------ credentials


def test_scrub_hides_url_passwords_and_credential_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret")
    text = "http://alice:pa55word@mlflow:5000 key=wJalrXUtnFEMI-secret s3://bucket/x"
    assert tr.scrub(text) == "http://alice:***@mlflow:5000 key=*** s3://bucket/x"


def test_run_params_carry_the_job_dataset_and_code_without_secrets(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-but-longer")
    job = _job(tmp_path, experiment="exp-hunter2-but-longer")
    params = tr.run_params(job, manifest_sha256="ab" * 32, rig_ids=["a", "b"])
    assert params["optim.lr"] == "0.0003" and params["dataset.rig_ids"] == "a,b"
    assert params["dataset.manifest_sha256"] == "ab" * 32 and params["rigpose.git_commit"]
    assert params["tracking.experiment"] == "exp-***"
    assert not any("hunter2" in v for v in params.values())


# ------------------------------------------------------------------ RunLogger on sqlite


def test_one_run_per_training_run_reused_on_resume(tmp_path: Path) -> None:
    first = tr.RunLogger(_spec(tmp_path), warn=lambda s: None)
    assert first.log_metrics({"train/loss": 2.0}, step=0)
    again = tr.RunLogger(_spec(tmp_path, **{"optim.epochs": "20"}), warn=lambda s: None)
    assert again.run_id == first.run_id  # found in the run folder's mlflow.json
    assert again.log_metrics({"train/loss": 1.0}, step=1)
    run = first.client().get_run(first.run_id)
    assert run.data.params["optim.epochs"] == "20"  # a new key is logged on resume
    assert [m.value for m in sorted(first.client().get_metric_history(first.run_id, "train/loss"),
                                    key=lambda m: m.step)] == [2.0, 1.0]


def test_a_changed_param_on_resume_becomes_a_tag_instead_of_failing(tmp_path: Path) -> None:
    tr.RunLogger(_spec(tmp_path), warn=lambda s: None).flush()
    again = tr.RunLogger(_spec(tmp_path, **{"optim.lr": "0.001"}), warn=lambda s: None)
    assert again.flush()
    tags = again.client().get_run(again.run_id).data.tags
    assert tags["rigpose.changed.optim.lr"] == "0.0003 -> 0.001"


def test_artifacts_are_scrubbed_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-abcdef123456")
    logger = tr.RunLogger(_spec(tmp_path), warn=lambda s: None)
    assert logger.log_artifact_bytes("notes/job.yaml", b"token: tok-abcdef123456\n")
    local = logger.client().download_artifacts(logger.run_id, "notes/job.yaml", str(tmp_path))
    assert Path(local).read_text() == "token: ***\n"


def test_backfill_sends_only_the_epochs_the_server_lacks(tmp_path: Path) -> None:
    logger = tr.RunLogger(_spec(tmp_path), warn=lambda s: None)
    logger.log_metrics({"train/loss": 3.0}, step=0)
    logger.backfill([{"epoch": 0, "train/loss": 3.0}, {"epoch": 1, "train/loss": 2.0, "lr": 0.1}])
    assert logger.flush()
    hist = logger.client().get_metric_history(logger.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in hist) == [(0, 3.0), (1, 2.0)]


# ------------------------------------------------------------------ an unreachable server


def test_an_unreachable_server_warns_once_queues_and_never_raises(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tr, "MAX_PENDING_METRICS", 5)
    target = tr.TrackingTarget(uri=f"http://127.0.0.1:{free_port()}", experiment="e")
    warnings: list[str] = []
    logger = tr.RunLogger(_spec(tmp_path, target), warn=warnings.append, timeout_s=2)
    for step in range(3):
        assert logger.log_metrics({"a": 1.0, "b": 2.0}, step=step) is False
    assert len(warnings) == 1 and "training goes on" in warnings[0]
    assert logger.run_id is None and len(logger._pending_metrics) == 5 and logger.dropped == 1


def test_an_outage_the_driver_warned_about_is_not_warned_again_by_rank_0(tmp_path: Path) -> None:
    import pickle

    target = tr.TrackingTarget(uri=f"http://127.0.0.1:{free_port()}", experiment="e")
    warnings: list[str] = []
    driver = tr.RunLogger(_spec(tmp_path, target), warn=warnings.append, timeout_s=2)
    assert driver.flush() is False
    rank0 = tr.RunLogger(pickle.loads(pickle.dumps(driver.spec)), warn=warnings.append, timeout_s=2)  # as Ray sends it
    assert rank0.log_metrics({"a": 1.0}, step=0) is False
    assert len(warnings) == 1 and "training goes on" in warnings[0]


def test_mlflow_is_kept_from_printing_a_tracking_uri_that_holds_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    monkeypatch.delenv(key, raising=False)
    with tr.mlflow_uri("http://bob:pw-1234@127.0.0.1:1"):
        assert os.environ[key] == "true"  # MLflow's "View run ... at: <uri>" when a fluent run ends
    assert key not in os.environ
    with tr.mlflow_uri("http://127.0.0.1:1"):  # nothing to hide: MLflow's links stay
        assert key not in os.environ


def test_params_and_the_ui_command_show_the_tracking_uri_without_its_password(tmp_path: Path) -> None:
    job = _job(tmp_path, uri="http://bob:pw-77aa@127.0.0.1:1")
    params = tr.run_params(job, manifest_sha256="ab" * 32, rig_ids=["a"])
    assert params["tracking.uri"] == "http://bob:***@127.0.0.1:1"
    assert tr.resolve_target(job, {}).ui_command() == "open http://bob:***@127.0.0.1:1"


def test_with_retries_backs_off_then_names_what_failed() -> None:
    sleeps: list[float] = []

    def boom() -> None:
        raise ConnectionError("refused")

    with pytest.raises(RuntimeError, match="registering model 'x' failed after 4 attempts: ConnectionError"):
        with_retries(boom, "registering model 'x'", attempts=4, sleep=sleeps.append, warn=lambda s: None)
    assert sleeps == [1.0, 2.0, 4.0]
    calls = iter([ConnectionError("once"), None])

    def flaky() -> str:
        e = next(calls)
        if e:
            raise e
        return "ok"

    assert with_retries(flaky, "x", sleep=sleeps.append, warn=lambda s: None) == "ok"


# ------------------------------------------------------------------ the pyfunc model and the registry


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    from rigpose.data.synth.build import build_dataset

    out = str(tmp_path_factory.mktemp("data") / "tiny")
    build_dataset(str(recipes_dir() / "tiny.yaml"), out, progress=False)
    return Dataset(out)


def _model_file(ds: Dataset, path: Path, seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    sk = ds.skeleton
    model = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=sk.num_joints, root_joints=tuple(sk.root_joints))
    save_lifter(str(path), model, sk)
    return str(path)


def _frames(ds: Dataset, n: int = 6):
    return next(iter_frames(ds, split="test", batch_size=n, max_rows=n))


def test_pyfunc_predicts_what_the_lifter_gives_on_raw_detector_rows(tiny: Dataset, tmp_path: Path) -> None:
    path = _model_file(tiny, tmp_path / "m.pt", 0)
    model = LifterModel()
    model.load_context(type("Ctx", (), {"artifacts": {"lifter": path}})())
    f = _frames(tiny)
    rows = example_input(f.keypoints, f.scores, f.cameras, f.view_mask)
    scores = np.where(np.isfinite(f.keypoints).all(-1), f.scores, 0)
    v = int(np.argmax((scores[0] > 0).sum(-1)))  # frame 0 seen by one camera only: its best view
    kp = f.keypoints.copy()
    kp[0, [0, v]] = kp[0, [v, 0]]
    scores[0, [0, v]] = scores[0, [v, 0]]
    cams = type(f.cameras)(*(a.copy() for a in f.cameras))
    for a in cams:
        a[0, [0, v]] = a[0, [v, 0]]
    rows = example_input(kp, scores, cams, f.view_mask)
    for c in ("keypoints", "scores", "K", "dist", "R", "t"):
        rows.at[0, c] = [rows.loc[0, c][0]]
    out = model.predict(None, rows)
    assert list(out.columns) == ["joints_3d", "joints_cam", "num_views", "uncertainty"]
    sigma = np.stack([np.asarray(x) for x in out["uncertainty"]])  # the default method's, metres per joint
    assert sigma.shape == (len(rows), 16) and (sigma > 0).all()
    vm = f.view_mask.copy()
    vm[0, 1:] = False
    f = type(f)(**{**f.__dict__, "keypoints": kp, "cameras": cams})
    want = lift_arrays(model.model, model.skeleton, f.keypoints, scores, f.cameras, vm)
    np.testing.assert_allclose(np.stack([np.asarray(x) for x in out["joints_3d"]]), want["joints_3d"], atol=1e-5)
    assert out["num_views"][0] == 1 and len(out["joints_cam"][0]) == 1
    assert model.multi_view == MultiViewConfig()  # the one default multi-view method
    # one view, fused: the world pose is that view's camera-frame lift moved into the world frame
    fused = lift_arrays(model.model, model.skeleton, f.keypoints, scores, f.cameras, vm,
                        multi_view=MultiViewConfig(method="fusion"))
    R, t = cams.R[0, 0], cams.t[0, 0]
    cam = np.asarray(out["joints_cam"][0][0])
    np.testing.assert_allclose(fused["joints_3d"][0], (cam - t) @ R, atol=1e-4)


def test_pyfunc_names_a_missing_column_and_a_bad_row(tiny: Dataset, tmp_path: Path) -> None:
    model = LifterModel()
    model.load_context(type("Ctx", (), {"artifacts": {"lifter": _model_file(tiny, tmp_path / "m.pt", 0)}})())
    f = _frames(tiny, 2)
    rows = example_input(f.keypoints, f.scores, f.cameras, f.view_mask)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['dist'\]"):
        model.predict(None, rows.drop(columns=["dist"]))
    bad = rows.copy()
    bad.at[1, "keypoints"] = [[[1.0, 2.0, 3.0]] * tiny.skeleton.num_joints] * len(rows.loc[1, "keypoints"])
    with pytest.raises(ValueError, match="row 1: column keypoints has shape"):
        model.predict(None, bad)


def _registered_run(target: tr.TrackingTarget, tmp_path: Path, name: str) -> str:
    spec = tr.RunSpec(target=target, run_name=name, run_dir=str(tmp_path / "runs" / name))
    return tr.RunLogger(spec, warn=lambda s: None).ensure_run()


def _sqlite_registry(tiny: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> tuple[tr.TrackingTarget, pd.DataFrame]:
    """A sqlite registry in tmp_path as the current MLflow URI, and an input example of 2 frames."""
    import mlflow

    target = _target(tmp_path)
    mlflow.set_tracking_uri(None)  # no process-wide URI: the (test-scoped) environment decides
    monkeypatch.setenv("MLFLOW_TRACKING_URI", target.uri)
    f = _frames(tiny, 2)
    return target, example_input(f.keypoints, f.scores, f.cameras, f.view_mask)


def test_register_alias_list_promote_and_load_by_alias(tiny: Dataset, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    target, example = _sqlite_registry(tiny, tmp_path, monkeypatch)
    regs = [register(target, run_id=_registered_run(target, tmp_path, f"r{i}"),
                     model_file=_model_file(tiny, tmp_path / f"m{i}.pt", i), example=example, name="lifter",
                     tags={"rigpose.rig_ids": "h36m-s1", "rigpose.metric.val.reprojection_px": str(10 + i)},
                     warn=lambda s: None) for i in range(2)]
    assert [r.version for r in regs] == ["1", "2"]
    versions = list_versions("lifter", uri=target.uri)
    assert [v["version"] for v in versions] == ["2", "1"]
    assert versions[0]["aliases"] == ["candidate"] and versions[1]["aliases"] == []  # the alias moved
    assert versions[1]["metrics"] == {"val.reprojection_px": 10.0} and versions[0]["rig_ids"] == "h36m-s1"
    promote("lifter", "1", "champion", uri=target.uri)
    loaded = load_pyfunc_lifter("models:/lifter@champion")
    assert loaded.skeleton.name == tiny.skeleton.name
    with pytest.raises(ValueError, match="no version 7"):
        promote("lifter", "7", uri=target.uri)
    with pytest.raises(ValueError, match="no registered model 'nope'"):
        list_versions("nope", uri=target.uri)
    sig = mlflow.models.get_model_info("models:/lifter@champion").signature
    assert [c.name for c in sig.inputs] == ["keypoints", "scores", "K", "dist", "R", "t"]
    assert isinstance(mlflow.pyfunc.load_model("models:/lifter/2").predict(example), pd.DataFrame)


def test_the_training_manifest_of_the_champion_is_found_through_its_alias(tiny: Dataset, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What retraining compares new data against (rigpose.retrain.detect.training_manifest)."""
    from mlflow.tracking import MlflowClient

    from rigpose.retrain.detect import TRAINING_MANIFEST, diff_manifests, training_manifest

    target, example = _sqlite_registry(tiny, tmp_path, monkeypatch)
    assert training_manifest("lineage", uri=target.uri) == (None, None)  # no model yet: everything is new
    run_id = _registered_run(target, tmp_path, "lineage-run")
    MlflowClient(target.uri).log_text(run_id, tiny.manifest.to_json(), TRAINING_MANIFEST)
    reg = register(target, run_id=run_id, model_file=_model_file(tiny, tmp_path / "m.pt", 0), example=example,
                   name="lineage", tags={}, warn=lambda s: None)
    assert training_manifest("lineage", uri=target.uri) == (None, None)  # a candidate only: no champion
    promote("lineage", reg.version, "champion", uri=target.uri)
    version, manifest = training_manifest("lineage", uri=target.uri)
    assert version == reg.version and manifest.to_json() == tiny.manifest.to_json()
    assert not any(c.changed for c in diff_manifests(manifest, tiny.manifest))


def test_a_first_registration_prints_nothing_of_mlflow_s(tiny: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    target, example = _sqlite_registry(tiny, tmp_path, monkeypatch)
    run_id = _registered_run(target, tmp_path, "q")
    capfd.readouterr()
    warned: list[str] = []
    reg = register(target, run_id=run_id, model_file=_model_file(tiny, tmp_path / "q.pt", 0), example=example,
                   name="quiet-first", tags={}, warn=warned.append)
    out, err = capfd.readouterr()
    assert reg.version == "1"
    assert "already exists" not in out + err and "Registered model" not in out + err, out + err
    assert "Created version" not in out + err and not warned


def test_champion_gate_promotes_only_a_better_candidate(tiny: Dataset, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    target, example = _sqlite_registry(tiny, tmp_path, monkeypatch)
    v1 = register(target, run_id=_registered_run(target, tmp_path, "a"), model_file=_model_file(
        tiny, tmp_path / "a.pt", 0), example=example, name="gated", tags={}, warn=lambda s: None)
    first = champion_gate("gated", v1.version, data_url=tiny.root, split="test", uri=target.uri, max_rows=40)
    assert first.promoted and first.champion_version is None
    tags = mlflow.tracking.MlflowClient(target.uri).get_model_version("gated", v1.version).tags
    assert float(tags["rigpose.gate.heldout_px"]) == pytest.approx(first.candidate_px, rel=1e-5)
    assert (tags["rigpose.gate.split"], tags["rigpose.gate.max_rows"], tags["rigpose.gate.champion_version"],
            tags["rigpose.gate.promoted"]) == ("test", "40", "none", "true")
    # the gate's figure is `rigpose evaluate`'s single-view heldout_px on the same rows (one definition)
    from rigpose.inference.evaluate import evaluate

    report = evaluate(_model_file(tiny, tmp_path / "a.pt", 0), tiny.root, split="test", modes=("single",), max_rows=40)
    assert report["single"]["overall"]["heldout_px"] == pytest.approx(first.candidate_px, rel=1e-6)
    v2 = register(target, run_id=_registered_run(target, tmp_path, "b"), model_file=_model_file(
        tiny, tmp_path / "b.pt", 1), example=example, name="gated", tags={}, warn=lambda s: None)
    second = champion_gate("gated", v2.version, data_url=tiny.root, split="test", uri=target.uri, max_rows=40)
    assert second.champion_version == "1" and second.champion_px is not None
    assert second.promoted == (second.candidate_px < second.champion_px)
    tags = mlflow.tracking.MlflowClient(target.uri).get_model_version("gated", v2.version).tags
    assert tags["rigpose.gate.champion_version"] == "1"
    assert float(tags["rigpose.gate.champion_heldout_px"]) == pytest.approx(second.champion_px, rel=1e-5)
    assert tags["rigpose.gate.promoted"] == str(second.promoted).lower()
    shown = {v["version"]: v["metrics"]["gate.heldout_px"] for v in list_versions("gated", uri=target.uri)}
    assert shown == pytest.approx({"1": first.candidate_px, "2": second.candidate_px}, rel=1e-5)
    champion = mlflow.tracking.MlflowClient(target.uri).get_model_version_by_alias("gated", "champion").version
    assert str(champion) == ("2" if second.promoted else "1")


def test_registering_leaves_mlflow_s_process_wide_uri_as_it_was(tiny: Dataset, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A later training run in the same process must not inherit the last run's tracking URI."""
    import os

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:////elsewhere/registry.db")
    mlflow.set_tracking_uri(None)
    target = _target(tmp_path)
    f = _frames(tiny, 2)
    register(target, run_id=_registered_run(target, tmp_path, "g"), model_file=_model_file(tiny, tmp_path / "g.pt", 0),
             example=example_input(f.keypoints, f.scores, f.cameras, f.view_mask), name="g", tags={},
             warn=lambda s: None)
    load_pyfunc_lifter("models:/g@candidate", tracking_uri=target.uri)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert os.environ["MLFLOW_REGISTRY_URI"] == "sqlite:////elsewhere/registry.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert mlflow.get_tracking_uri() == "http://127.0.0.1:1"  # the environment decides again, as before


def test_publishing_fails_the_job_clearly_when_the_registry_never_answers(tiny: Dataset, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What `rigpose train` does after fit() when the tracking server was down all along (retries, then a
    message naming the server and where the trained model is)."""
    from rigpose.train.publish import publish

    monkeypatch.setattr(tr.time, "sleep", lambda s: None)  # the backoff waits, not the attempts
    uri = f"http://127.0.0.1:{free_port()}"
    job = TrainJob.model_validate({"data": {"url": tiny.root, "val_split": "test"},
                                   "run": {"output_dir": str(tmp_path / "runs"), "name": "r1"},
                                   "tracking": {"uri": uri, "model_name": "m", "eval_max_rows": 40}})
    logger = tr.RunLogger(_spec(tmp_path, tr.resolve_target(job, {})), warn=lambda s: None, timeout_s=2)
    model_file = _model_file(tiny, tmp_path / "model.pt", 0)
    with pytest.raises(RuntimeError, match=rf"cannot register model 'm': the MLflow tracking server {uri} was "
                                           rf"unreachable for the whole run \(the model is at {model_file}"):
        publish(job, logger, tiny, run_dir=str(tmp_path / "runs" / "r1"), model_file=model_file,
                history=[{"epoch": 0, "train/loss": 1.0}], manifest_sha256="ab" * 32)


def test_a_model_logged_with_the_old_code_file_still_loads_and_predicts(tiny: Dataset, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # versions registered before the package layout carry this exact code file (rigpose/pyfunc_model.py then)
    import mlflow

    target, example = _sqlite_registry(tiny, tmp_path, monkeypatch)
    old_entry = tmp_path / "pyfunc_model.py"
    old_entry.write_text("from mlflow.models import set_model\n\nfrom rigpose.registry import LifterModel\n\n"
                         "set_model(LifterModel())\n")
    run_id = _registered_run(target, tmp_path, "old")
    weights = _model_file(tiny, tmp_path / "old.pt", 0)
    with tr.mlflow_uri(target.uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(old_entry), artifacts={"lifter": weights})
    with tr.mlflow_uri(target.uri):
        out = mlflow.pyfunc.load_model(info.model_uri).predict(example)
    new = LifterModel()
    new.load_context(type("Ctx", (), {"artifacts": {"lifter": weights}})())
    np.testing.assert_allclose(np.stack(out["joints_3d"].map(np.stack)), np.stack(new.predict(None, example)[
        "joints_3d"].map(np.stack)))
