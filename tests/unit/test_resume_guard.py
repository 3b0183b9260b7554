"""Which re-runs may resume a run folder's checkpoints (run.json), and where run folders live (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rigpose.config import load_job
from rigpose.train.trainer import RUN_FILE, _check_resumable, _run_record, _write_json, storage_root

SHA = "0123456789abcdef" * 4  # a manifest hash


def _record(*overrides: str, sha: str = SHA) -> dict:
    return _run_record(load_job(None, list(overrides)), sha)


def _earlier_attempt(run_dir: Path, *overrides: str, sha: str = SHA) -> str:
    """A run folder whose run.json was written by an earlier attempt of the job with these overrides."""
    _write_json(str(run_dir), RUN_FILE, _record(*overrides, sha=sha))
    return str(run_dir)


def test_a_run_folder_without_run_json_is_not_resumed(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "history.json").write_text("[]")  # other files do not make a run resumable
    assert _check_resumable(str(tmp_path / "run"), _record()) is False
    assert _check_resumable(str(tmp_path / "never-created"), _record()) is False


def test_run_json_holds_the_record_as_written(tmp_path: Path) -> None:
    run_dir = _earlier_attempt(tmp_path / "run", "model.width=64")
    assert json.loads((tmp_path / "run" / RUN_FILE).read_text()) == _record("model.width=64")
    assert [p.name for p in Path(run_dir).iterdir()] == [RUN_FILE]  # written atomically: no temp file left


def test_the_same_manifest_model_and_supervision_resume(tmp_path: Path) -> None:
    run_dir = _earlier_attempt(tmp_path / "run", "model.width=64", "supervision=3d")
    assert _check_resumable(run_dir, _record("model.width=64", "supervision=3d")) is True


@pytest.mark.parametrize("change", [
    "optim.epochs=40", "model.dropout=0.1", "model.dropout_schedule=constant", "optim.lr=0.001",
    "loss.cross_view=2.0", "data.batch_size=32", "scaling.num_workers=4", "data.url=s3://moved/ds",
])
def test_settings_that_leave_the_weights_shapes_and_data_alone_still_resume(tmp_path: Path, change: str) -> None:
    run_dir = _earlier_attempt(tmp_path / "run")
    assert _check_resumable(run_dir, _record(change)) is True


@pytest.mark.parametrize(("overrides", "sha", "what", "before", "now"), [
    ((), "f" * 64, "dataset manifest", SHA, "f" * 64),
    (("model.width=256",), SHA, "model architecture", "'width': 1024", "'width': 256"),
    (("model.num_blocks=3",), SHA, "model architecture", "'num_blocks': 2", "'num_blocks': 3"),
    (("model.output=free",), SHA, "model architecture", "'output': 'denoised'", "'output': 'free'"),
    (("supervision=3d",), SHA, "supervision", "'2d'", "'3d'"),
    (("data.rig_ids=[studio-8]",), SHA, "rig selection", "None", "['studio-8']"),
])
def test_a_rerun_that_would_resume_other_data_or_another_model_is_refused_naming_the_difference(
        tmp_path: Path, overrides: tuple[str, ...], sha: str, what: str, before: str, now: str) -> None:
    run_dir = _earlier_attempt(tmp_path / "run")
    with pytest.raises(ValueError) as err:
        _check_resumable(run_dir, _record(*overrides, sha=sha))
    message = str(err.value)
    assert message.startswith(f"run {run_dir} exists") and f"another {what} " in message
    assert message.index(before) < message.index(", now ") < message.index(now)
    assert "use a new run.name" in message


def test_storage_root_keeps_object_store_urls_without_trailing_slashes() -> None:
    assert storage_root("s3://bucket/team/runs") == "s3://bucket/team/runs"
    assert storage_root("s3://bucket/team/runs//") == "s3://bucket/team/runs"


def test_storage_root_makes_local_paths_absolute_against_the_current_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage_root("outputs/runs") == str(tmp_path / "outputs" / "runs")
    assert storage_root("outputs/runs/") == str(tmp_path / "outputs" / "runs")
    assert storage_root("./a/../runs") == str(tmp_path / "runs")
    assert storage_root("~/runs") == str(tmp_path / "home" / "runs")
    assert storage_root("/abs/runs") == "/abs/runs"


def test_storage_root_strips_file_urls_to_plain_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage_root(f"file://{tmp_path}/runs") == str(tmp_path / "runs")
    assert storage_root("file://outputs/runs") == str(tmp_path / "outputs" / "runs")


def test_a_damaged_run_json_is_named_in_the_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=rf"{RUN_FILE}: not valid JSON .*new run\.name"):
        _check_resumable(str(run_dir), _record())
