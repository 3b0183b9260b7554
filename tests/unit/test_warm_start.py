"""Warm-started training (model.init_weights): the driver loads and checks the weights before Ray starts, a worker
without a checkpoint starts from exactly them, a resumed run ignores them, and the run records where they came from."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from rigpose_testing import REPO, synthetic_batch, to_torch

from rigpose.config import ModelConfig, TrainJob, load_job
from rigpose.model.checkpoint import MODEL_FILE, load_lifter, save_lifter
from rigpose.model.lifter import Lifter
from rigpose.skeleton import DEEPMIMIC16, H36M17, Skeleton
from rigpose.train import trainer
from rigpose.train.trainer import RUN_FILE, _check_resumable, _run_record, _write_json, load_init_weights
from rigpose.train.worker import STATE_FILE, build_lifter, warm_start

SHA = "0123456789abcdef" * 4  # a manifest hash
TINY = ("model.width=32", "model.num_blocks=1")  # the architecture of the saved weights below


def _saved(path: Path, *, seed: int = 1, skeleton: Skeleton = DEEPMIMIC16, width: int = 32,
           run_name: str = "champion-run") -> Lifter:
    """A lifter (not the job's seed-0 initialisation) saved as `path`/model.pt, as training writes it."""
    torch.manual_seed(seed)
    model = Lifter(ModelConfig(width=width, num_blocks=1), num_joints=skeleton.num_joints,
                   root_joints=skeleton.root_joints)
    path.mkdir(parents=True, exist_ok=True)
    save_lifter(path / MODEL_FILE, model, skeleton, meta={"run_name": run_name, "manifest_sha256": SHA,
                                                          "init_weights": {"resolved": "an/older/model.pt"}})
    return model.eval()


def _job(init: str | Path | None, *overrides: str) -> TrainJob:
    return load_job(None, [*TINY, *overrides, *([f"model.init_weights={init}"] if init is not None else [])])


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("form", ["file", "run folder"])
def test_a_model_warm_started_from_a_saved_model_starts_with_exactly_its_weights(tmp_path: Path, form: str) -> None:
    saved = _saved(tmp_path / "champion")
    where = tmp_path / "champion" / MODEL_FILE if form == "file" else tmp_path / "champion"
    job = _job(where)
    init = load_init_weights(job, DEEPMIMIC16)
    assert init is not None and all(t.device.type == "cpu" for t in init["state_dict"].values())
    torch.manual_seed(job.optim.seed)  # as a worker does: the job's random initialisation first
    model = build_lifter(job, DEEPMIMIC16)
    assert not _states_equal(model, saved)
    source = warm_start(model, init, None)
    assert _states_equal(model, saved)
    batch = to_torch(synthetic_batch(num_frames=8, with_3d=False))
    kp, sc = batch["xy"].flatten(0, 1), batch["w"].flatten(0, 1)  # every view of every frame
    torch.testing.assert_close(model.eval()(kp, sc).X, saved(kp, sc).X, rtol=0, atol=0)
    # the record: what was asked, the file it resolved to, one generation of the source's own meta
    assert source == {"init_weights": str(where), "resolved": str(where),
                      "meta": {"run_name": "champion-run", "manifest_sha256": SHA}}


def test_without_init_weights_nothing_is_loaded_and_the_random_init_stays() -> None:
    job = _job(None)
    assert job.model.init_weights is None and load_init_weights(job, DEEPMIMIC16) is None
    torch.manual_seed(0)
    model = build_lifter(job, DEEPMIMIC16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert warm_start(model, None, None) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_relative_path_is_recorded_as_the_absolute_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _saved(tmp_path / "runs" / "champion")
    monkeypatch.chdir(tmp_path)
    init = load_init_weights(_job("runs/champion"), DEEPMIMIC16)
    assert init is not None
    assert init["source"]["init_weights"] == "runs/champion"
    assert init["source"]["resolved"] == str(tmp_path / "runs" / "champion")


@pytest.mark.parametrize(("override", "key", "there", "here"), [
    ("model.width=64", "model.width", "32", "64"),
    ("model.num_blocks=2", "model.num_blocks", "1", "2"),
    ("model.output=free", "model.output", "'denoised'", "'free'"),
])
def test_weights_of_another_architecture_are_refused_naming_the_key_and_both_values(
        tmp_path: Path, override: str, key: str, there: str, here: str) -> None:
    _saved(tmp_path / "champion")
    with pytest.raises(ValueError) as err:
        load_init_weights(_job(tmp_path / "champion", override), DEEPMIMIC16)
    message = str(err.value)
    assert message.startswith(f"model.init_weights '{tmp_path / 'champion'}': another architecture")
    assert f"{key} {there} there, {here} in the job" in message


def test_settings_that_leave_the_weights_shapes_alone_may_differ(tmp_path: Path) -> None:
    _saved(tmp_path / "champion")  # dropout 0.5, schedule half
    job = _job(tmp_path / "champion", "model.dropout=0.1", "model.dropout_schedule=constant")
    assert load_init_weights(job, DEEPMIMIC16) is not None


def test_weights_of_another_skeleton_are_refused_naming_both(tmp_path: Path) -> None:
    _saved(tmp_path / "h36m", skeleton=H36M17)
    with pytest.raises(ValueError, match=r"^model\.init_weights '.*h36m': its skeleton is 'h36m17', the dataset's "
                                         r"is 'deepmimic16'"):
        load_init_weights(_job(tmp_path / "h36m"), DEEPMIMIC16)


def test_init_from_is_the_other_name_of_init_weights_in_a_job_file_and_in_set(tmp_path: Path) -> None:
    assert load_job(None, ["model.init_from=a/model.pt"]).model.init_weights == "a/model.pt"
    assert ModelConfig(init_from="a").init_weights == "a" and "init_from" not in ModelConfig().model_dump()
    # jobs/train.yaml states init_weights: null; an override under either name replaces it
    assert load_job(REPO / "jobs" / "train.yaml", ["model.init_from=x"]).model.init_weights == "x"
    job_file = tmp_path / "job.yaml"
    job_file.write_text("model: {init_from: x}\n")
    assert load_job(job_file).model.init_weights == "x"
    assert load_job(job_file, ["model.init_weights=y"]).model.init_weights == "y"
    assert load_job(job_file, ["model.init_weights=null"]).model.init_weights is None
    job_file.write_text("model: {init_from: x, init_weights: y}\n")
    with pytest.raises(ValueError, match=r"job\.yaml: model\.init_from and model\.init_weights are one setting"):
        load_job(job_file)


def test_weights_of_another_skeleton_given_as_init_from_are_refused_naming_both(tmp_path: Path) -> None:
    _saved(tmp_path / "dm", skeleton=DEEPMIMIC16)
    with pytest.raises(ValueError, match=r"its skeleton is 'deepmimic16', the dataset's is 'h36m17'"):
        load_init_weights(load_job(None, [*TINY, f"model.init_from={tmp_path / 'dm'}"]), H36M17)


@pytest.mark.parametrize("bad", ["missing", "not a model"])
def test_weights_that_cannot_be_loaded_are_refused_naming_model_init_weights(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "model.pt"
    if bad == "not a model":
        path.write_text("not a torch file")
    with pytest.raises(ValueError, match=r"^model\.init_weights '.*model\.pt': cannot load the weights \("):
        load_init_weights(_job(path), DEEPMIMIC16)


def test_the_init_source_is_scrubbed_of_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    _saved(tmp_path / "s3cr3t-value", run_name="run-s3cr3t-value")
    init = load_init_weights(_job(tmp_path / "s3cr3t-value"), DEEPMIMIC16)
    assert init is not None and "s3cr3t-value" not in json.dumps(init["source"])
    record = _run_record(_job(tmp_path / "s3cr3t-value"), SHA, init=init)
    assert "s3cr3t-value" not in json.dumps(record) and record["init_weights"] == init["source"]


def test_resuming_from_a_checkpoint_ignores_the_warm_start_weights(tmp_path: Path) -> None:
    saved = _saved(tmp_path / "champion")
    init = load_init_weights(_job(tmp_path / "champion"), DEEPMIMIC16)
    torch.manual_seed(0)
    model = build_lifter(_job(None), DEEPMIMIC16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = {"model": before, "init_weights": {"resolved": "what the run started from"}}
    # the checkpoint's own weights are restored by the caller; warm_start leaves the model alone
    assert warm_start(model, init, checkpoint) == {"resolved": "what the run started from"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not _states_equal(model, saved)
    assert warm_start(model, init, {"model": before}) is None  # a checkpoint older than warm starts


def test_a_changed_init_weights_does_not_block_a_resume(tmp_path: Path) -> None:
    _saved(tmp_path / "a", run_name="a")
    _saved(tmp_path / "b", seed=2, run_name="b")
    run_dir = str(tmp_path / "run")
    first = _job(tmp_path / "a")
    _write_json(run_dir, RUN_FILE, _run_record(first, SHA, init=load_init_weights(first, DEEPMIMIC16)))
    for later in (_job(tmp_path / "b"), _job(None)):
        assert _check_resumable(run_dir, _run_record(later, SHA, init=load_init_weights(later, DEEPMIMIC16)))
    assert json.loads(Path(run_dir, RUN_FILE).read_text())["init_weights"]["meta"]["run_name"] == "a"


# ------------------------------------------------------------------------------------- train(): the driver


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped tiny dataset (deepmimic16 skeleton)."""
    from rigpose.data.synth.build import build_dataset, load_recipe
    from rigpose.resources import recipes_dir

    if importlib.util.find_spec("pybullet_data") is None:
        pytest.skip("the tiny recipe's DeepMimic clips need pybullet_data")
    root = tmp_path_factory.mktemp("warm") / "tiny"
    build_dataset(load_recipe(recipes_dir() / "tiny.yaml"), str(root), progress=False)
    return str(root)


def _train_job(data: str, out: Path, init: str | Path | None, *overrides: str) -> TrainJob:
    return _job(init, f"data.url={data}", "data.val_split=test", "data.batch_size=64", "model.dropout=0",
                f"run.output_dir={out}", "run.name=warm", "tracking.enabled=false", *overrides)


@pytest.mark.parametrize("bad", ["missing", "architecture"])
def test_bad_init_weights_are_refused_before_ray_starts_and_before_run_json(
        tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    import ray

    ray_before = ray.is_initialized()

    def no_ray(address: str | None) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(trainer, "init_ray", no_ray)
    _saved(tmp_path / "champion", width=64)
    init = tmp_path / ("nothing-here" if bad == "missing" else "champion")
    with pytest.raises(ValueError, match=r"^model\.init_weights "):
        trainer.train(_train_job(tiny, tmp_path / "runs", init))
    assert ray.is_initialized() == ray_before
    assert not (tmp_path / "runs" / "warm" / RUN_FILE).exists()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    started = not ray.is_initialized()
    yield
    if started and ray.is_initialized():  # train() started it
        from rigpose.cluster.connect import shutdown_ray

        shutdown_ray()


@pytest.mark.slow
def test_a_warm_started_run_trains_from_the_weights_and_records_them_in_checkpoints_run_json_and_model_pt(
        tiny: str, local_ray: None, tmp_path: Path) -> None:
    saved = _saved(tmp_path / "champion")
    # an Adam step moves a weight by about lr: after one epoch at lr 1e-9 the weights are still the initial ones
    out = trainer.train(_train_job(tiny, tmp_path / "runs", tmp_path / "champion", "optim.lr=1e-9",
                                   "optim.epochs=1", "data.val_split=null", "data.cache=false"))
    model, _, meta = load_lifter(out["model"])
    for k, v in saved.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)
    assert meta["init_weights"]["resolved"] == str(tmp_path / "champion")
    assert meta["init_weights"]["meta"]["run_name"] == "champion-run"
    state = torch.load(Path(out["checkpoint"]) / STATE_FILE, weights_only=False)
    assert state["init_weights"] == meta["init_weights"]  # what a resumed attempt carries on (warm_start)
    run_json = json.loads((tmp_path / "runs" / "warm" / RUN_FILE).read_text())
    assert run_json["init_weights"] == meta["init_weights"]


@pytest.mark.slow
def test_a_registry_alias_is_pinned_to_its_version_and_a_missing_one_is_refused(tiny: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from rigpose.data.reader import Dataset
    from rigpose.inference.lift import iter_frames
    from rigpose.tracking.pyfunc import example_input
    from rigpose.tracking.registry import register
    from rigpose.tracking.runs import TrackingTarget

    saved = _saved(tmp_path / "champion")
    target = TrackingTarget(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t",
                            artifact_location=(tmp_path / "art").as_uri())
    client = MlflowClient(target.uri)
    run_id = client.create_run(client.create_experiment("t", artifact_location=target.artifact_location)).info.run_id
    frames = next(iter_frames(Dataset(tiny), split="test", batch_size=2, max_rows=2))
    example = example_input(frames.keypoints, frames.scores, frames.cameras, frames.view_mask)
    reg = register(target, run_id=run_id, model_file=str(tmp_path / "champion" / MODEL_FILE), example=example,
                   name="ws-lifter", tags={}, alias="champion")
    init = load_init_weights(_job("models:/ws-lifter@champion", f"tracking.uri={target.uri}"), DEEPMIMIC16)
    assert init is not None and init["source"]["resolved"] == f"models:/ws-lifter/{reg.version}"
    model = build_lifter(_job(None), DEEPMIMIC16)
    warm_start(model, init, None)
    assert _states_equal(model, saved)
    with pytest.raises(ValueError, match=r"^model\.init_weights 'models:/ws-lifter@nobody': cannot load the weights"):
        load_init_weights(_job("models:/ws-lifter@nobody", f"tracking.uri={target.uri}"), DEEPMIMIC16)
