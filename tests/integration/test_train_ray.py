"""`rigpose train` end to end on a local Ray: Ray Data over the Parquet shards into a TorchTrainer worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rigpose.cli import app
from rigpose.config import load_job
from rigpose.train.checkpoint import load_lifter

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rigpose.data.synth import build_dataset

    out = str(tmp_path_factory.mktemp("data") / "tiny")
    build_dataset(str(REPO / "datasets" / "recipes" / "tiny.yaml"), out, progress=False)
    return out


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from rigpose.train.trainer import init_ray

    init_ray(None)
    yield
    ray.shutdown()


def _overrides(data: str, out: Path, name: str) -> list[str]:
    return [f"data.url={data}", "data.val_split=test", "optim.epochs=2", "model.width=32", "model.num_blocks=1",
            "data.batch_size=64", f"run.output_dir={out}", f"run.name={name}"]


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


def test_cli_train_rejects_a_bad_override_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(REPO / "jobs" / "train.yaml"), "--set", "optim.epochs=0"])
    assert result.exit_code == 1
    assert "field optim.epochs" in result.output
