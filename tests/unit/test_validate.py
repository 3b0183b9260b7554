"""`datasets validate` / `describe`: corrupt shards and bad calibrations are found and named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.data.checks import unordered_sequences
from rigpose.data.schema import frames_for_rig, frames_to_table
from rigpose.data.validate import _check_values, describe_dataset, validate_dataset
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.resources import rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17


@pytest.fixture
def rig():
    return load_rig(rigs_dir() / "h36m-s1.json")


def _write(root: Path, rig, *, observed_by=None, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.3, (50, 17, 3)) + [0.0, 0.0, 1.0]
    cams = (observed_by or rig).cameras
    pix = np.stack([project(X, c) for c in cams], 1) + rng.normal(0, 1.0, (50, 4, 17, 2))
    with DatasetWriter(str(root), skeleton=H36M17, command="test") as w:
        w.add(frames_for_rig(rig, sequence="s", keypoints=pix, joints_3d=X), rig, split="train")
        w.commit()


def test_a_good_dataset_validates(tmp_path: Path, rig) -> None:
    _write(tmp_path / "ds", rig)
    report = validate_dataset(str(tmp_path / "ds"))
    assert report.ok, report.problems
    assert report.rows_checked == 50 and report.shards_checked == 1


def test_validate_names_a_modified_shard_and_a_missing_one(tmp_path: Path, rig) -> None:
    _write(tmp_path / "ds", rig)
    shard = next((tmp_path / "ds").rglob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = validate_dataset(str(tmp_path / "ds"))
    assert any(shard.name in p and "sha256" in p for p in report.problems)
    shard.unlink()
    report = validate_dataset(str(tmp_path / "ds"))
    assert any(shard.name in p and "missing" in p for p in report.problems)


def test_validate_names_a_shard_replaced_by_one_with_other_rows(tmp_path: Path, rig) -> None:
    import pyarrow.parquet as pq

    _write(tmp_path / "ds", rig)
    shard = next((tmp_path / "ds").rglob("*.parquet"))
    pq.write_table(pq.read_table(shard).slice(0, 20), shard)  # a valid shard, not the one the manifest lists
    report = validate_dataset(str(tmp_path / "ds"))
    assert any(shard.name in p and "20 rows, the manifest says 50" in p for p in report.problems)
    assert any(shard.name in p and "sha256" in p for p in report.problems)


def test_validate_reports_files_no_manifest_lists(tmp_path: Path, rig) -> None:
    _write(tmp_path / "ds", rig)
    stray = tmp_path / "ds" / "rig_id=h36m-s1" / "split=train" / "part-99999-crashed.parquet"
    stray.write_bytes(b"partial")
    report = validate_dataset(str(tmp_path / "ds"))
    assert report.ok and any("part-99999-crashed.parquet" in n for n in report.notes)


def test_describe_singles_out_a_miscalibrated_camera(tmp_path: Path, rig) -> None:
    cams = list(rig.cameras)
    # the 2D was seen by camera 2 sitting 20 cm away from where its calibration says
    cams[2] = dataclasses.replace(cams[2], t=cams[2].t + np.array([0.2, 0.0, 0.0]))
    _write(tmp_path / "ds", rig, observed_by=dataclasses.replace(rig, cameras=tuple(cams)))
    per_cam = describe_dataset(str(tmp_path / "ds"))["rigs"]["h36m-s1"]["reprojection_px_median_per_camera"]
    assert per_cam[2] > 5 * max(per_cam[i] for i in (0, 1, 3))


def test_cli_validate_exits_1_and_describe_prints_json(tmp_path: Path, rig) -> None:
    _write(tmp_path / "ds", rig)
    runner = CliRunner()
    ok = runner.invoke(app, ["datasets", "validate", str(tmp_path / "ds")])
    assert ok.exit_code == 0, ok.output
    described = runner.invoke(app, ["datasets", "describe", str(tmp_path / "ds"), "--json"])
    assert described.exit_code == 0 and json.loads(described.stdout)["rows"] == 50
    next((tmp_path / "ds").rglob("*.parquet")).write_bytes(b"garbage")
    bad = runner.invoke(app, ["datasets", "validate", str(tmp_path / "ds")])
    assert bad.exit_code == 1


def interleaved_frames(rig, *, num_rows: int = 400, num_sequences: int = 25, seed: int = 1):
    """One shard's rows of many sequences, interleaved at random, frames increasing within each sequence except
    three crafted defects: s03 repeats a frame, s07 steps back, s11 steps back at its last row; s24 has one row."""
    rng = np.random.default_rng(seed)
    seq = np.array([f"s{i:02d}" for i in rng.integers(0, num_sequences - 1, num_rows)], dtype=object)
    seq[rng.integers(num_rows)] = f"s{num_sequences - 1:02d}"
    frame = np.zeros(num_rows, np.int64)
    for name in np.unique(seq):
        rows = np.flatnonzero(seq == name)
        frame[rows] = 10 + 3 * np.arange(len(rows))
    for name, k in (("s03", 4), ("s07", 2), ("s11", -1)):
        rows = np.flatnonzero(seq == name)
        frame[rows[k]] = frame[rows[k - 1]] if name == "s03" else frame[rows[k - 1]] - 1
    X = rng.normal(0, 0.3, (num_rows, 17, 3)) + [0.0, 0.0, 1.0]
    pix = np.stack([project(X, c) for c in rig.cameras], 1)
    frames = frames_for_rig(rig, sequence="x", keypoints=pix)
    return dataclasses.replace(frames, sequence=seq, frame=frame)


def _unordered_by_masks(sequence: np.ndarray, frame: np.ndarray) -> list[str]:
    """The per-sequence mask loop validate ran before (one pass over all rows per sequence)."""
    return [str(q) for q in np.unique(sequence) if (np.diff(frame[sequence == q]) <= 0).any()]


def test_validate_names_exactly_the_sequences_whose_frames_do_not_increase(rig) -> None:
    frames = interleaved_frames(rig)
    problems = _check_values(frames_to_table(frames), where="part-0.parquet", num_joints=17)
    assert problems == [f"part-0.parquet: field 'frame' not strictly increasing in sequence {q!r}"
                        for q in ("s03", "s07", "s11")]
    assert unordered_sequences(frames.sequence, frames.frame) == _unordered_by_masks(frames.sequence, frames.frame)


def test_unordered_sequences_agree_with_per_sequence_masks_on_random_orders() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        seq = np.array([f"q{i}" for i in rng.integers(0, 6, n)], dtype=object)
        frame = rng.integers(0, 12, n)
        assert unordered_sequences(seq, frame) == _unordered_by_masks(seq, frame)
    assert unordered_sequences(np.array([], dtype=object), np.array([], np.int64)) == []
