"""`rigpose train` end to end on a local Ray: Ray Data over the Parquet shards into a TorchTrainer worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.config import load_job
from rigpose.model.checkpoint import load_lifter
from rigpose.resources import recipes_dir

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rigpose.data.synth.build import build_dataset

    out = str(tmp_path_factory.mktemp("data") / "tiny")
    build_dataset(str(recipes_dir() / "tiny.yaml"), out, progress=False)
    return out


def _overrides(data: str, out: Path, name: str) -> list[str]:
    return [f"data.url={data}", "data.val_split=test", "optim.epochs=2", "model.width=32", "model.num_blocks=1",
            "data.batch_size=64", f"run.output_dir={out}", f"run.name={name}",
            "tracking.enabled=false"]  # MLflow: test_mlflow.py


def test_train_writes_a_loadable_model_and_history(tiny_dataset: str, local_ray: None, tmp_path: Path) -> None:
    from rigpose.train.trainer import train

    job = load_job(REPO / "jobs" / "train.yaml", _overrides(tiny_dataset, tmp_path, "unit"))
    out = train(job)
    assert len(out["history"]) == 2
    assert out["history"][-1]["val/reprojection_px"] > 0
    _, skeleton, meta = load_lifter(out["run_dir"])
    assert skeleton.name == "deepmimic16" and meta["supervision"] == "2d" and meta["epochs"] == 2
    assert (tmp_path / "unit" / "history.json").exists()


def test_cli_train_runs_the_3d_baseline_and_prints_the_model_path(tiny_dataset: str, local_ray: None,
                                                                  tmp_path: Path) -> None:
    args = ["train", str(REPO / "jobs" / "train.yaml")]
    for o in [*_overrides(tiny_dataset, tmp_path, "cli3d"), "supervision=3d"]:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"model: {tmp_path / 'cli3d' / 'model.pt'}" in result.output
    _, _, meta = load_lifter(tmp_path / "cli3d" / "model.pt")
    assert meta["supervision"] == "3d"


@pytest.fixture(scope="module")
def two_rig_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Rigs with 4 (h36m-s1) and 8 (studio-8) cameras in one dataset: rows are padded to 8 views."""
    from rigpose.data.synth.build import build_dataset

    recipe = (recipes_dir() / "tiny.yaml").read_text()
    recipe = recipe.replace("frames: 400", "frames: 900").replace("rigs: [h36m-s1]", "rigs: [h36m-s1, studio-8]")
    path = tmp_path_factory.mktemp("recipe") / "two_rigs.yaml"
    path.write_text(recipe)
    out = str(tmp_path_factory.mktemp("data") / "two_rigs")
    build_dataset(str(path), out, progress=False)
    return out


def test_one_and_two_workers_train_rigs_of_4_and_8_cameras_to_the_same_result(two_rig_dataset: str,
                                                                                local_ray: None,
                                                                                tmp_path: Path) -> None:
    from rigpose.data.reader import Dataset
    from rigpose.train.trainer import train

    ds = Dataset(two_rig_dataset)
    assert ds.manifest.max_views == 8 and set(ds.manifest.rigs) == {"h36m-s1", "studio-8"}
    common = [f"data.url={two_rig_dataset}", "data.val_split=test", "optim.epochs=6", "model.width=64",
              "model.num_blocks=1", "model.dropout=0", f"run.output_dir={tmp_path}"]
    # the same effective batch (32 frames) and number of steps: 1 x 32 vs 2 x 16
    one = train(load_job(REPO / "jobs" / "train.yaml", [*common, "data.batch_size=32", "run.name=one"]))["history"]
    two = train(load_job(REPO / "jobs" / "train.yaml", [*common, "data.batch_size=16", "scaling.num_workers=2",
                                                         "run.name=two"]))["history"]
    assert [h["world_size"] for h in one] == [1] * 6 and [h["world_size"] for h in two] == [2] * 6
    assert [h["steps"] for h in one] == [h["steps"] for h in two]  # per rank: same global steps
    for h in (one, two):
        assert h[-1]["val/reprojection_px"] < 0.95 * h[0]["val/reprojection_px"]
        assert h[-1]["train/loss"] < 0.8 * h[0]["train/loss"]
    # different shuffles and dropout-free but rank-seeded masking: equal within tolerance, not bit for bit
    assert two[-1]["val/reprojection_px"] == pytest.approx(one[-1]["val/reprojection_px"], rel=0.1)
    assert two[-1]["train/loss"] == pytest.approx(one[-1]["train/loss"], rel=0.15)


def test_rerunning_a_finished_run_resumes_it_and_trains_only_the_new_epochs(tiny_dataset: str, local_ray: None,
                                                                            tmp_path: Path) -> None:
    from rigpose.train.trainer import train

    first = train(load_job(REPO / "jobs" / "train.yaml", _overrides(tiny_dataset, tmp_path, "again")))
    assert first["resumed"] is False and len(first["history"]) == 2
    more = _overrides(tiny_dataset, tmp_path, "again") + ["optim.epochs=3"]
    second = train(load_job(REPO / "jobs" / "train.yaml", more))
    assert second["resumed"] is True
    assert [int(h["epoch"]) for h in second["history"]] == [0, 1, 2]
    assert second["history"][:2] == first["history"]  # the first two epochs were not trained again
    other_model = [*more, "model.width=48"]
    with pytest.raises(ValueError, match="model architecture"):
        train(load_job(REPO / "jobs" / "train.yaml", other_model))


def test_cli_train_rejects_a_bad_override_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(REPO / "jobs" / "train.yaml"), "--set", "optim.epochs=0"])
    assert result.exit_code == 1
    assert "field optim.epochs" in result.output


def test_two_workers_stop_early_after_the_same_epoch_and_write_the_best_epochs_weights(two_rig_dataset: str,
                                                                                        local_ray: None,
                                                                                        tmp_path: Path) -> None:
    import torch

    from rigpose.train.trainer import train

    # min_delta 0.99: no later epoch counts as better than the first, so patience 1 stops after epoch 1 of 6; a rank
    # that decided otherwise would report once more than the other and the run would fail
    out = train(load_job(REPO / "jobs" / "train.yaml", [
        f"data.url={two_rig_dataset}", "data.val_split=test", "optim.epochs=6", "optim.early_stop_patience=1",
        "optim.early_stop_min_delta=0.99", "model.width=32", "model.num_blocks=1", "data.batch_size=16",
        "scaling.num_workers=2", f"run.output_dir={tmp_path}", "run.name=two-stop", "tracking.enabled=false"]))
    history = out["history"]
    assert [h["world_size"] for h in history] == [2, 2] and [h["stopped_early"] for h in history] == [0.0, 1.0]
    assert (out["stopped_early"], out["best_epoch"]) == (True, 0)
    model, _, meta = load_lifter(out["model"])
    state = torch.load(Path(out["checkpoint"]) / "state.pt", weights_only=False)
    assert state["epoch"] == 1 and state["best"]["epoch"] == 0 and meta["best_epoch"] == 0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state["best"]["model"][k], rtol=0, atol=0)
