"""Run folders: where Ray Train stores a run, and which re-runs may resume its checkpoints (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rigpose.config import load_job
from rigpose.train.trainer import RUN_FILE, _check_resumable, _run_record, _write_json, storage_root


def _record(*overrides: str, sha: str = "a" * 64) -> dict:
    return _run_record(load_job(None, list(overrides)), sha)


def test_a_new_run_folder_is_not_resumed(tmp_path: Path) -> None:
    assert _check_resumable(str(tmp_path / "run"), _record()) is False


def test_the_same_data_model_and_supervision_resume_even_with_more_epochs(tmp_path: Path) -> None:
    _write_json(str(tmp_path), RUN_FILE, _record("optim.epochs=2"))
    assert _check_resumable(str(tmp_path), _record("optim.epochs=5", "model.dropout=0.1")) is True


@pytest.mark.parametrize(("change", "what"), [
    ({"sha": "b" * 64}, "dataset manifest"),
    ({"overrides": ("model.width=256",)}, "model architecture"),
    ({"overrides": ("supervision=3d",)}, "supervision"),
])
def test_a_rerun_with_other_data_model_or_supervision_is_refused(tmp_path: Path, change: dict, what: str) -> None:
    _write_json(str(tmp_path), RUN_FILE, _record())
    new = _record(*change.get("overrides", ()), sha=change.get("sha", "a" * 64))
    with pytest.raises(ValueError, match=rf"another {what} .*use a new run\.name"):
        _check_resumable(str(tmp_path), new)


def test_storage_root_keeps_urls_and_makes_local_paths_absolute(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage_root("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage_root("outputs/runs") == str(tmp_path / "outputs" / "runs")
    assert storage_root(f"file://{tmp_path}/x") == str(tmp_path / "x")
