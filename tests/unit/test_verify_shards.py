"""`train()` checks the shards it will read, and the splits and rigs the job names, before Ray starts.

Every corruption is refused with one line naming the shard (or the job key) and no Ray started; a read error that
happens inside Ray all the same (a shard changed after the check) names the shard. No test here starts Ray.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import rigpose.train.trainer as trainer
from rigpose.cli.main import app
from rigpose.config import TrainJob
from rigpose.data import validate as v
from rigpose.data.manifest import DatasetError
from rigpose.data.pipeline import training_shards
from rigpose.data.reader import Dataset
from rigpose.data.schema import frames_for_rig
from rigpose.data.validate import validate_dataset, verify_is_full, verify_shards
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.resources import rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17

ROWS = 50


def _frames(rig_id: str, *, split: str, seed: int):
    rig = load_rig(rigs_dir() / f"{rig_id}.json")
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.3, (ROWS, 17, 3)) + [0.0, 0.0, 1.0]
    pix = np.stack([project(X, c) for c in rig.cameras], 1) + rng.normal(0, 1.0, (ROWS, len(rig.cameras), 17, 2))
    return frames_for_rig(rig, sequence=f"{rig_id}-{split}", keypoints=pix, joints_3d=X), rig


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """h36m-s1 with a train and a val shard, studio-8 with a train shard only."""
    root = tmp_path_factory.mktemp("verify") / "ds"
    with DatasetWriter(str(root), skeleton=H36M17, command="test_verify_shards") as w:
        for seed, (rig_id, split) in enumerate([("h36m-s1", "train"), ("h36m-s1", "val"), ("studio-8", "train")]):
            frames, rig = _frames(rig_id, split=split, seed=seed)
            w.add(frames, rig, split=split)
        w.commit()
    return root


@pytest.fixture
def root(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template dataset, to corrupt."""
    return Path(shutil.copytree(template, tmp_path / "ds"))


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail, instead of starting Ray, should a test get as far as `init_ray`."""
    def refuse(address: str | None) -> None:
        raise AssertionError("train() reached init_ray: the check did not refuse the job before Ray")

    monkeypatch.setattr(trainer, "init_ray", refuse)


def _job(root: Path, tmp_path: Path, **data: Any) -> TrainJob:
    # a batch of 1 frame: the few frames of these shards still make whole steps (no full batch is refused first)
    return TrainJob.model_validate({"data": {"url": str(root), "batch_size": 1, **data}, "tracking": {"enabled": False},
                                    "run": {"name": "t", "output_dir": str(tmp_path / "runs")}})


def _shard(root: Path, rig_id: str = "h36m-s1", split: str = "train") -> Path:
    return next((root / f"rig_id={rig_id}" / f"split={split}").glob("*.parquet"))


def _refused(job: TrainJob, match: str) -> str:
    """train(job)'s refusal: one line matching `match`, raised before Ray started and before the run folder."""
    with pytest.raises(ValueError, match=match) as info:
        trainer.train(job)
    message = str(info.value)
    assert "\n" not in message
    assert not _ray_started()
    assert not Path(job.run.output_dir).exists()  # refused before run.json was written
    return message


def _flip_bytes(shard: Path) -> None:
    """Flip bytes across the data pages (the middle half), keeping the size; the footer stays intact."""
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 4, len(data) * 3 // 4, 97):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_train_refuses_a_truncated_shard_naming_it(root: Path, tmp_path: Path) -> None:
    shard = _shard(root)
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    message = _refused(_job(root, tmp_path), f"shard {shard}: {size // 2} bytes, the manifest says {size}")
    assert "unreadable Parquet" in message and f"rigpose datasets validate {root}" in message


def test_train_refuses_flipped_bytes_by_their_sha256(root: Path, tmp_path: Path) -> None:
    shard = _shard(root)
    _flip_bytes(shard)
    _refused(_job(root, tmp_path), f"shard {shard}: sha256 does not match the manifest")


def test_train_refuses_a_modified_shard_of_the_same_size_and_rows(root: Path, tmp_path: Path) -> None:
    shard = _shard(root, "studio-8")
    data = shard.read_bytes()
    assert data.count(b"parquet-cpp-arrow") == 1
    shard.write_bytes(data.replace(b"parquet-cpp-arrow", b"parquet-cpp-arrOw"))  # a valid file, another writer
    assert pq.read_metadata(shard).num_rows == ROWS
    message = _refused(_job(root, tmp_path), f"shard {shard}: sha256 does not match the manifest")
    assert "bytes" not in message and "rows" not in message


def test_train_refuses_a_shard_with_other_rows_than_listed_even_when_only_footers_are_read(
        root: Path, tmp_path: Path) -> None:
    shard = _shard(root)
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 20), shard)  # replaced by a valid shard of 20 rows
    _refused(_job(root, tmp_path, verify="footer"), f"shard {shard}: .*20 rows, the manifest says {ROWS}")


def test_train_refuses_a_missing_shard_naming_it(root: Path, tmp_path: Path) -> None:
    shard = _shard(root, split="val")
    shard.unlink()
    _refused(_job(root, tmp_path), f"shard {shard}: listed in the manifest but missing")


@pytest.mark.parametrize("key", ["train_split", "val_split"])
def test_train_refuses_a_split_the_dataset_lacks_naming_the_key(root: Path, tmp_path: Path, key: str) -> None:
    _refused(_job(root, tmp_path, **{key: "valid"}),
             f"data.{key}: split 'valid' is not in dataset {root} \\(it has: train, val\\)")


def test_train_refuses_a_split_without_shards_of_the_selected_rigs(root: Path, tmp_path: Path) -> None:
    _refused(_job(root, tmp_path, rig_ids=["studio-8"]),
             "data.val_split: split 'val' of dataset .* has no shards of the rigs data.rig_ids selects \\(studio-8\\)")


def test_train_refuses_a_rig_id_the_dataset_lacks(root: Path, tmp_path: Path) -> None:
    _refused(_job(root, tmp_path, rig_ids=["h36m-s1", "nope"]), r"data.rig_ids: .* has no rig \['nope'\]")


def test_a_bad_shard_outside_the_selection_does_not_stop_training(root: Path, tmp_path: Path) -> None:
    _shard(root, "studio-8").unlink()
    job = _job(root, tmp_path, rig_ids=["h36m-s1"])
    with pytest.raises(AssertionError, match="reached init_ray"):  # checked, passed, on to Ray
        trainer.train(job)
    ds = Dataset(str(root))
    assert {s.rig_id for s in training_shards(ds, job.data)} == {"h36m-s1"}


def test_training_shards_are_the_selected_splits_and_rigs(template: Path, tmp_path: Path) -> None:
    ds = Dataset(str(template))
    chosen = training_shards(ds, _job(template, tmp_path).data)
    assert sorted((s.rig_id, s.split) for s in chosen) == [("h36m-s1", "train"), ("h36m-s1", "val"),
                                                            ("studio-8", "train")]
    chosen = training_shards(ds, _job(template, tmp_path, val_split=None, rig_ids=["studio-8"]).data)
    assert [(s.rig_id, s.split) for s in chosen] == [("studio-8", "train")]


def test_flipped_bytes_pass_the_footer_check_and_fail_the_full_one(root: Path) -> None:
    _flip_bytes(_shard(root))
    ds = Dataset(str(root))
    verify_shards(ds, ds.shards(), mode="footer")
    with pytest.raises(DatasetError, match="sha256"):
        verify_shards(ds, ds.shards(), mode="full")
    with pytest.raises(DatasetError, match="sha256"):
        verify_shards(ds, ds.shards(), mode="auto")  # a local dataset: auto is full


def test_auto_hashes_local_files_only() -> None:
    assert verify_is_full("auto", fsspec.filesystem("file"))
    assert not verify_is_full("auto", fsspec.filesystem("memory"))  # stands for s3:// (object storage)
    assert verify_is_full("full", fsspec.filesystem("memory"))
    assert not verify_is_full("footer", fsspec.filesystem("file"))


def test_validate_and_train_report_a_shard_alike(root: Path) -> None:
    shard = _shard(root)
    shard.write_bytes(shard.read_bytes()[:100])
    ds = Dataset(str(root))
    with pytest.raises(DatasetError) as info:
        verify_shards(ds, ds.shards(), mode="full")
    problems = validate_dataset(str(root)).problems  # size, sha256, unreadable Parquet: one line each
    assert len(problems) == 3 and all(p.startswith(f"{shard.relative_to(root)}: ") for p in problems)
    assert str(info.value).startswith(f"shard {shard}: " + "; ".join(p.split(": ", 1)[1] for p in problems))


def test_verification_is_quiet_for_small_datasets_and_shows_progress_for_large_ones(
        root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ds = Dataset(str(root))
    verify_shards(ds, ds.shards(), mode="full")
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(v, "PROGRESS_BYTES", 0)
    verify_shards(ds, ds.shards(), mode="full")
    out = capsys.readouterr().out
    assert "[rigpose] verifying 3 shards" in out and "[rigpose] verified in" in out


def test_cli_train_prints_the_refusal_as_one_line_and_exits_1(root: Path, tmp_path: Path) -> None:
    shard = _shard(root)
    _flip_bytes(shard)
    result = CliRunner().invoke(app, ["train", "--set", f"data.url={root}", "--set", "tracking.enabled=false",
                                      "--set", f"run.output_dir={tmp_path / 'runs'}"])
    assert result.exit_code == 1
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"shard {shard}: sha256" in errors[0]
    assert "Traceback" not in result.output
    assert not _ray_started()


# ------------------------------------------------------------------------ a read error inside Ray, after the check


def test_a_read_error_inside_ray_names_the_shard(root: Path) -> None:
    from ray.train import WorkerGroupError

    ds = Dataset(str(root))
    shard = _shard(root)
    worker = OSError("Corrupt snappy compressed data.\n"
                     f"Failed to read fragment {shard} after 1/10 attempts (total backoff 0.0s).\n"
                     "To change retry attempts, configure `ray.data.DataContext.get_current()`")
    error = WorkerGroupError("[Rank 0 Error Snippet]: ... (Output truncated.) ...", {0: worker})
    message = trainer._read_failure(error, ds, ds.shards())
    assert message is not None and "\n" not in message
    assert message.startswith(f"reading shard {shard} failed in Ray: OSError: Corrupt snappy compressed data;")
    assert f"rigpose datasets validate {root}" in message


def test_a_read_error_inside_ray_without_a_path_names_the_dataset(root: Path) -> None:
    import pyarrow as pa

    ds = Dataset(str(root))
    error = pa.ArrowInvalid("Parquet magic bytes not found in footer. Either the file is corrupted or this is not "
                            "a parquet file.")
    message = trainer._read_failure(error, ds, ds.shards())
    assert message is not None and message.startswith(f"reading the dataset {root} failed in Ray: ArrowInvalid: ")
    assert trainer._read_failure(ZeroDivisionError("division by zero"), ds, ds.shards()) is None


def _ray_started() -> bool:
    import ray  # here, not at the top: importing Ray fixes its auth mode for the process (tests/unit/test_layout.py)

    return ray.is_initialized()
