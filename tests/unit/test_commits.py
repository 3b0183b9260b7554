"""Dataset commits beside other writers: concurrent ingests lose no row, conflicts are refused naming both writers,
writers killed at every stage leave the dataset valid and their files collectable (rigpose.data.commit)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rigpose_testing import writer_process

from rigpose.data.commit import LEASE_ENV, collect_garbage
from rigpose.data.manifest import MANIFEST, VERSIONS, DatasetError, latest_version, manifest_path, read_manifest
from rigpose.data.reader import Dataset
from rigpose.data.schema import frames_for_rig
from rigpose.data.validate import validate_dataset
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.resources import rig_path
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17
from rigpose.storage import url_to_fs

RIGS = ("h36m-s1", "h36m-s5", "humaneva-s1", "studio-8", "h36m-s9")

def _writer(root: str, rig: str, sequence: str, rows: int, **kw) -> subprocess.Popen:
    return writer_process(root, rig, sequence, rows, **kw)


def _frames(rig_name: str, sequence: str, T: int, seed: int = 0):
    rig = load_rig(rig_path(rig_name))
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.3, (T, 17, 3)) + np.array([0.0, 0.0, 1.0])
    pix = np.stack([project(X, cam) for cam in rig.cameras], 1)
    return rig, frames_for_rig(rig, sequence=sequence, keypoints=pix, subject="S1", joints_3d=X, frame=np.arange(T))


def _ingest(root: str, rig_name: str, sequence: str, T: int = 20, **kw) -> None:
    rig, frames = _frames(rig_name, sequence, T)
    with DatasetWriter(root, skeleton=H36M17, command=f"test {rig_name}/{sequence}", shard_rows=10, **kw) as w:
        w.add(frames, rig, split="train")
        w.commit()


def _unlisted(root: str) -> list[str]:
    fs, path = url_to_fs(root)
    listed = {s.path for s in read_manifest(root).shards}
    return sorted(r for p in fs.find(path) if (r := os.path.relpath(p, path)).endswith(".parquet")
                  and not r.startswith("_quarantine") and r not in listed)


@pytest.mark.parametrize("mode", ["exclusive", "lease"])
def test_concurrent_ingests_of_different_rigs_lose_no_row(tmp_path: Path, mode: str) -> None:
    """N=4 processes commit at the same moment (a barrier); every rig and row is in the dataset afterwards."""
    root, barrier = str(tmp_path / "ds"), tmp_path / "barrier"
    barrier.mkdir()
    _ingest(root, "h36m-s9", "base")  # a dataset that already holds a rig: every writer starts from version 1
    env = {LEASE_ENV: "1"} if mode == "lease" else {}
    rows = {"h36m-s1": 30, "h36m-s5": 25, "humaneva-s1": 41, "studio-8": 12}
    procs = [_writer(root, rig, "walk", n_rows, barrier=str(barrier), n=len(rows), env=env)
             for rig, n_rows in rows.items()]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    m = read_manifest(root)
    assert m.version == 1 + len(rows)
    assert sorted(json.loads(out)["version"] for out, _ in outs) == list(range(2, 2 + len(rows)))
    per_rig = {r: sum(s.rows for s in m.shards if s.rig_id == r) for r in m.rigs}
    assert per_rig == {"h36m-s9": 20, **rows}
    assert len(Dataset(root).read_table(columns=["frame"])) == 20 + sum(rows.values())
    assert json.loads((tmp_path / "ds" / MANIFEST).read_text()) == json.loads(Path(manifest_path(root)).read_text())
    assert validate_dataset(root).ok and not _unlisted(root)
    assert not list((tmp_path / "ds" / VERSIONS).glob("_lease*"))


def test_concurrent_writes_of_the_same_sequence_refuse_the_second_naming_both(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "warmup")
    rig, frames = _frames("h36m-s1", "walk", 20)
    first = DatasetWriter(root, skeleton=H36M17, command="ingest npz first/", shard_rows=10)
    second = DatasetWriter(root, skeleton=H36M17, command="ingest npz second/", shard_rows=10)
    first.add(frames, rig, split="train")
    second.add(frames, rig, split="val")
    first.commit()
    with pytest.raises(DatasetError) as e:
        second.commit()
    msg = str(e.value)
    assert "h36m-s1/walk" in msg and "ingest npz first/" in msg and "ingest npz second/" in msg
    m = read_manifest(root)
    assert m.splits()["train"]["rows"] == 40 and "val" not in m.splits()
    assert not _unlisted(root)  # the refused writer removed its shards


def test_replacing_a_sequence_another_writer_replaced_meanwhile_is_refused(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk")
    rig, frames = _frames("h36m-s1", "walk", 20, seed=1)
    a = DatasetWriter(root, skeleton=H36M17, command="replace a", replace=True)
    b = DatasetWriter(root, skeleton=H36M17, command="replace b", replace=True)
    a.add(frames, rig, split="train")
    b.add(frames, rig, split="train")
    a.commit()
    with pytest.raises(DatasetError, match="replace a"):
        b.commit()
    assert read_manifest(root).num_rows == 20


def test_writers_of_other_sequences_rebase_on_each_other(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    rig, walk = _frames("h36m-s1", "walk", 20)
    _, run = _frames("h36m-s1", "run", 15)
    a = DatasetWriter(root, skeleton=H36M17, command="a")
    b = DatasetWriter(root, skeleton=H36M17, command="b")  # both start from an empty root
    a.add(walk, rig, split="train")
    b.add(run, rig, split="val")
    a.commit()
    m = b.commit()
    assert m.version == 2 and m.splits()["train"]["rows"] == 20 and m.splits()["val"]["rows"] == 15
    assert [h["command"] for h in m.history] == ["a", "b"]


@pytest.mark.parametrize("stage", ["before-shards", "between-shards", "before-commit", "during-commit"])
def test_a_writer_killed_before_its_commit_leaves_the_dataset_as_it_was_and_its_files_collectable(
        tmp_path: Path, stage: str) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk")
    before = Path(manifest_path(root)).read_text()
    p = _writer(root, "h36m-s5", "run", 45, stage=stage)
    p.communicate(timeout=120)
    assert p.returncode == -9
    assert Path(manifest_path(root)).read_text() == before  # no new version: nothing of the killed ingest is seen
    report = validate_dataset(root)
    assert report.ok, report.problems
    orphans = _unlisted(root)
    assert bool(orphans) == (stage != "before-shards")
    gone = collect_garbage(root).removed  # young, but its writer ran here and its process is gone
    assert set(orphans) <= set(gone) and not _unlisted(root)
    assert not list((tmp_path / "ds").glob("_writers/*")) and not list((tmp_path / "ds").rglob(".*.tmp"))
    _ingest(root, "h36m-s5", "run")  # the same ingest again succeeds: nothing of the killed one is in the way
    assert read_manifest(root).num_rows == 40 and validate_dataset(root).ok


def test_a_writer_killed_after_its_version_is_created_has_committed(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk")
    p = _writer(root, "h36m-s5", "run", 45, stage="after-commit")
    p.communicate(timeout=120)
    assert p.returncode == -9
    m = read_manifest(root)
    assert m.version == 2 and m.num_rows == 65 and validate_dataset(root).ok
    assert json.loads((tmp_path / "ds" / MANIFEST).read_text())["version"] == 1  # the copy lags ...
    _ingest(root, "humaneva-s1", "jog")
    assert json.loads((tmp_path / "ds" / MANIFEST).read_text())["version"] == 3  # ... until the next commit


def test_the_next_commit_removes_killed_writers_files_older_than_the_grace_period(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk")
    p = _writer(root, "h36m-s5", "run", 45, stage="before-commit")
    p.communicate(timeout=120)
    orphans = _unlisted(root)
    assert orphans
    for beat in (tmp_path / "ds" / "_writers").glob("*.json"):  # as if the writer ran on another machine
        beat.write_text(json.dumps({**json.loads(beat.read_text()), "host": "elsewhere"}))
    _ingest(root, "humaneva-s1", "jog")
    assert _unlisted(root) == orphans  # still young, and its writer may be alive: kept
    old = time.time() - 7200
    for f in (tmp_path / "ds").rglob("*"):
        if f.is_file():
            os.utime(f, (old, old))
    _ingest(root, "h36m-s9", "jog")
    assert not _unlisted(root) and not list((tmp_path / "ds").glob("_writers/*"))
    assert validate_dataset(root).ok


def test_the_next_commit_on_the_same_host_removes_a_killed_writers_files_at_once(tmp_path: Path) -> None:
    """A killed `datasets build` re-run on the same machine: the dead run's shards go with the next commit."""
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk")
    p = _writer(root, "h36m-s5", "run", 45, stage="between-shards")
    p.communicate(timeout=120)
    assert _unlisted(root)
    _ingest(root, "h36m-s5", "run")
    assert not _unlisted(root) and not list((tmp_path / "ds").glob("_writers/*"))


def test_vacuum_keeps_the_shards_of_a_writer_whose_heartbeat_is_fresh(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk")
    rig, frames = _frames("h36m-s5", "run", 45)
    with DatasetWriter(root, skeleton=H36M17, command="slow ingest", shard_rows=10) as w:
        w.add(frames, rig, split="train")
        pending = _unlisted(root)
        assert len(pending) == 5  # 45 rows in shards of 10
        old = time.time() - 7200
        for rel in pending:  # shards as old as a long ingest's first ones
            os.utime(tmp_path / "ds" / rel, (old, old))
        report = collect_garbage(root)
        assert not report.removed and set(pending) <= set(report.in_progress)
        w.commit()
    assert read_manifest(root).num_rows == 65 and validate_dataset(root).ok


def test_vacuum_dry_run_removes_nothing_and_keep_versions_prunes_old_versions(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    for i in range(4):
        _ingest(root, "h36m-s1", f"seq{i}")
    p = _writer(root, "h36m-s5", "run", 45, stage="before-commit")
    p.communicate(timeout=120)
    orphans = _unlisted(root)
    dry = collect_garbage(root, grace_s=0, dry_run=True, keep_versions=2)
    assert set(orphans) <= set(dry.removed) and dry.versions_pruned == 2 and _unlisted(root) == orphans
    collect_garbage(root, grace_s=0, keep_versions=2)
    fs, path = url_to_fs(root)
    assert sorted(p.name for p in (tmp_path / "ds" / VERSIONS).glob("v*.json")) == \
        ["v0000000003.json", "v0000000004.json"]
    assert latest_version(fs, path) == 4 and read_manifest(root).num_rows == 80
    with pytest.raises(ValueError, match="grace_s"):
        collect_garbage(root, grace_s=-1)


def test_a_dataset_with_only_manifest_json_is_read_and_upgraded_by_its_next_commit(tmp_path: Path) -> None:
    """Datasets written before manifest versions (a manifest.json and no _manifests/) keep working."""
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk")
    legacy = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    del legacy["version"]
    (tmp_path / "ds" / MANIFEST).write_text(json.dumps(legacy))
    for f in (tmp_path / "ds" / VERSIONS).iterdir():
        f.unlink()
    (tmp_path / "ds" / VERSIONS).rmdir()
    assert read_manifest(root).version == 0 and read_manifest(root).num_rows == 20
    _ingest(root, "h36m-s5", "run")
    m = read_manifest(root)
    assert m.version == 1 and m.num_rows == 40 and (tmp_path / "ds" / VERSIONS / "v0000000001.json").is_file()


def test_a_different_calibration_under_a_rig_id_another_writer_is_adding_is_refused(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    rig, frames = _frames("h36m-s1", "walk", 20)
    moved = replace(rig, cameras=(replace(rig.cameras[0], t=rig.cameras[0].t + 0.1), *rig.cameras[1:]))
    a = DatasetWriter(root, skeleton=H36M17, command="a")
    b = DatasetWriter(root, skeleton=H36M17, command="b")
    a.add(frames, rig, split="train")
    b.add(_frames("h36m-s1", "run", 20)[1], moved, split="train")
    a.commit()
    with pytest.raises(DatasetError, match="differs from the calibration"):
        b.commit()
    assert read_manifest(root).num_rows == 20 and not _unlisted(root)


def test_a_reader_pinned_to_a_version_sees_that_version_after_later_commits(tmp_path: Path) -> None:
    """What a training job with data.manifest_version (a retrain) reads, whatever lands meanwhile."""
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk")
    _ingest(root, "h36m-s5", "run")
    _ingest(root, "humaneva-s1", "jog")
    pinned = Dataset(root, version=2)
    assert pinned.manifest.version == 2 and sorted(pinned.manifest.rigs) == ["h36m-s1", "h36m-s5"]
    assert len(pinned.read_table(columns=["frame"])) == 40 and Dataset(root).manifest.version == 3
    with pytest.raises(DatasetError, match="no manifest version 9"):
        Dataset(root, version=9)
