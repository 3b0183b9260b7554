"""Resharding a committed dataset (rigpose.data.reshard, `rigpose datasets reshard`): small shards merged and big
row groups cut with every row kept once and unchanged, a new manifest version beside a still readable old one,
lineage that keeps retrain's change detection exact, and refusals that commit nothing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rigpose.cli.datasets import app
from rigpose.data import writer
from rigpose.data.commit import collect_garbage
from rigpose.data.manifest import DatasetError, Manifest, read_manifest
from rigpose.data.reader import Dataset
from rigpose.data.reshard import plan_reshard, reshard
from rigpose.data.schema import frames_for_rig
from rigpose.data.synth.build import build_dataset
from rigpose.data.validate import validate_dataset
from rigpose.geometry import project
from rigpose.resources import recipes_dir, rig_path
from rigpose.retrain.detect import describe_changes, diff_manifests
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17

KEYS = [("rig_id", "ascending"), ("split", "ascending"), ("sequence", "ascending"), ("frame", "ascending")]


def _append(root: str, rig_name: str, sequence: str, T: int, *, split: str = "train", with_3d: bool = True,
            shard_rows: int = 10) -> None:
    """One ingest of `T` frames of `sequence`, in shards of `shard_rows` rows (many small shards)."""
    rig = load_rig(rig_path(rig_name))
    X = np.random.default_rng(T + len(sequence)).normal(0, 0.3, (T, 17, 3)) + [0.0, 0.0, 1.0]
    pix = np.stack([project(X, c) for c in rig.cameras], 1)
    pix[::7, 0, 3] = np.nan  # some missing keypoints (score 0): NaNs must survive the copy
    frames = frames_for_rig(rig, sequence=sequence, keypoints=pix, frame=np.arange(T) * 2,
                            joints_3d=X if with_3d else None)
    with writer.DatasetWriter(root, skeleton=H36M17, command=f"append {rig_name}/{sequence}",
                              shard_rows=shard_rows) as w:
        w.add(frames, rig, split=split)
        w.commit()


@pytest.fixture
def appended(tmp_path: Path) -> str:
    """A dataset of six appends: 2 rigs, 2 splits, 16 shards of at most 10 rows, with and without joints_3d."""
    root = str(tmp_path / "ds")
    _append(root, "h36m-s1", "walk", 25)
    _append(root, "h36m-s1", "run", 25, with_3d=False)
    _append(root, "h36m-s1", "jog", 25)
    _append(root, "h36m-s1", "sit", 12, split="val")
    _append(root, "humaneva-s1", "box", 30)
    _append(root, "humaneva-s1", "throw", 18)
    return root


@pytest.fixture(scope="module")
def tiny_old_writer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped tiny recipe as the writer before row groups wrote it: one row group per shard."""
    root = tmp_path_factory.mktemp("tiny") / "ds"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "ROW_GROUP_ROWS", 10**6)
        build_dataset(str(recipes_dir() / "tiny.yaml"), str(root), progress=False)
    return root


def _assert_same_rows(a: pa.Table, b: pa.Table) -> None:
    """Every row of `a` is in `b` once with the same values (NaN equal to NaN), whatever the row order."""
    assert a.num_rows == b.num_rows
    a, b = a.sort_by(KEYS), b.sort_by(KEYS)
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        assert x.type == y.type, name
        np.testing.assert_array_equal(x.is_null().to_numpy(zero_copy_only=False),
                                      y.is_null().to_numpy(zero_copy_only=False), err_msg=name)
        if pa.types.is_list(x.type):
            np.testing.assert_array_equal(pc.list_value_length(x).to_numpy(zero_copy_only=False),
                                          pc.list_value_length(y).to_numpy(zero_copy_only=False), err_msg=name)
            x, y = pc.list_flatten(x), pc.list_flatten(y)
        np.testing.assert_array_equal(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False),
                                      err_msg=name)


def _group_sizes(root: str, manifest: Manifest) -> list[int]:
    return [pq.ParquetFile(os.path.join(root, s.path)).metadata.row_group(i).num_rows
            for s in manifest.shards for i in range(pq.ParquetFile(os.path.join(root, s.path)).num_row_groups)]


def _files(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def test_small_shards_are_merged_per_partition_keeping_every_row_once_with_the_same_values(appended: str) -> None:
    before = read_manifest(appended)
    rows = Dataset(appended).read_table()
    plan = plan_reshard(appended, rows_per_shard=30, row_group_rows=16)
    assert plan.partitions() == {("h36m-s1", "train"): (9, 3, 75), ("h36m-s1", "val"): (2, 1, 12),
                                 ("humaneva-s1", "train"): (5, 2, 48)}
    after = reshard(plan, command="test reshard")
    assert after.version == before.version + 1 and read_manifest(appended).version == after.version
    assert len(after.shards) == 6 and all(s.rows <= 30 for s in after.shards)
    assert max(_group_sizes(appended, after)) <= 16
    _assert_same_rows(rows, Dataset(appended).read_table())
    report = validate_dataset(appended)
    assert report.ok, report.problems
    # every new shard names the shards it was made from, and they are exactly the old ones
    assert sorted(p for s in after.shards for p in s.sources) == sorted(s.path for s in before.shards)
    old = {s.path: s for s in before.shards}
    for s in after.shards:
        assert s.sources == {p: old[p].rows for p in s.sources} and sum(s.sources.values()) == s.rows
        assert s.sequences == sorted({q for p in s.sources for q in old[p].sequences})
    # the old version still reads, and its shards are still there
    _assert_same_rows(rows, Dataset(appended, version=before.version).read_table())
    assert after.history[-1]["command"] == "test reshard" and after.history[-1]["rows_added"] == 0


def test_shards_of_one_big_row_group_are_rewritten_in_groups_of_at_most_the_limit(tiny_old_writer: Path,
                                                                                  tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    shutil.copytree(tiny_old_writer, root)
    before = read_manifest(root)
    assert max(_group_sizes(root, before)) > 50  # as the old writer left it
    plan = plan_reshard(root, row_group_rows=50)
    assert len(plan.rewrites) == len(before.shards) and {r.reason for r in plan.rewrites} == {"row groups"}
    after = reshard(plan, command="test reshard")
    assert max(_group_sizes(root, after)) <= 50
    _assert_same_rows(Dataset(root, version=before.version).read_table(), Dataset(root).read_table())
    assert validate_dataset(root).ok
    assert describe_changes(diff_manifests(before, after)) == ["nothing new"]
    assert not plan_reshard(root, row_group_rows=50).rewrites  # done: a second reshard has nothing to do


def test_retrain_sees_nothing_new_after_a_reshard_and_exactly_the_appends_after_it(appended: str) -> None:
    trained_on = read_manifest(appended)
    resharded = reshard(plan_reshard(appended), command="reshard 1")  # the writer's size: one shard a partition
    assert len(resharded.shards) == 3
    assert describe_changes(diff_manifests(trained_on, resharded)) == ["nothing new"]
    _append(appended, "h36m-s1", "dance", 7)
    (c, *_) = diff_manifests(trained_on, read_manifest(appended))
    assert (c.rig_id, c.shards_added, c.rows_added, c.shards_removed) == ("h36m-s1", 1, 7, 0)
    # a reshard that merges the new shard with resharded old ones: still exactly those 7 rows are new
    merged = reshard(plan_reshard(appended), command="reshard 2")
    assert len(merged.shards) == 3
    changes = diff_manifests(trained_on, merged)
    assert describe_changes(changes) == ["h36m-s1: more data, +1 shard(s) / +7 rows (train)"]
    assert describe_changes(diff_manifests(resharded, merged)) == describe_changes(changes)
    # sources name the shards as written, never a shard an earlier reshard wrote
    assert not {p for s in merged.shards for p in s.sources} & {s.path for s in resharded.shards}


def test_a_dry_run_changes_nothing(appended: str) -> None:
    before = _files(appended)
    r = CliRunner().invoke(app, ["reshard", appended, "--rows-per-shard", "30", "--dry-run", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "9 -> 3" in r.output and "dry run: would write 6 shard(s) of 135 rows" in r.output
    assert _files(appended) == before


def test_the_command_commits_a_new_version_and_says_so(appended: str) -> None:
    r = CliRunner().invoke(app, ["reshard", appended, "--rig", "humaneva-s1", "--no-progress"])
    assert r.exit_code == 0, r.output
    m = read_manifest(appended)
    assert "committed manifest version 7 (5 shard(s) -> 1)" in " ".join(r.output.split())
    assert [s.rig_id for s in m.shards if s.sources] == ["humaneva-s1"]
    r = CliRunner().invoke(app, ["reshard", appended, "--rig", "humaneva-s1", "--no-progress"])
    assert r.exit_code == 0 and "nothing to reshard" in r.output and read_manifest(appended).version == 7


@pytest.mark.parametrize("when", ["before its shards", "before its commit"])
def test_a_commit_by_another_writer_meanwhile_refuses_the_reshard_and_commits_nothing(appended: str,
                                                                                     when: str) -> None:
    plan = plan_reshard(appended, rows_per_shard=30)
    written: list[int] = []

    def other_writer_commits(rows: int) -> None:
        written.append(rows)
        if len(written) == len(plan.rewrites):  # after the reshard's last shard, before its commit
            _append(appended, "studio-8", "late", 5)

    if when == "before its shards":
        _append(appended, "studio-8", "late", 5)
    with pytest.raises(DatasetError) as e:
        reshard(plan, command="test reshard", advance=other_writer_commits)
    assert appended in str(e.value) and "'append studio-8/late'" in str(e.value)
    assert "nothing of the reshard was committed" in str(e.value)
    m = read_manifest(appended)
    assert m.version == plan.base.version + 1 and m.history[-1]["command"] == "append studio-8/late"
    listed = {s.path for s in m.shards}
    assert not [p for p in Path(appended).rglob("*.parquet") if str(p.relative_to(appended)) not in listed]
    assert not list(Path(appended).glob("_writers/*"))
    assert validate_dataset(appended).ok


def test_bad_input_is_refused_naming_the_dataset_or_the_value(appended: str, tmp_path: Path) -> None:
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=f"{nowhere}: no manifest; not a RigPose dataset"):
        plan_reshard(nowhere)
    with pytest.raises(ValueError, match="rows_per_shard must be >= 1, got 0"):
        plan_reshard(appended, rows_per_shard=0)
    with pytest.raises(ValueError, match="row_group_rows must be >= 1, got -5"):
        plan_reshard(appended, row_group_rows=-5)
    with pytest.raises(ValueError, match="no rig studio-9; the dataset has h36m-s1, humaneva-s1"):
        plan_reshard(appended, rig_ids=["studio-9"])
    r = CliRunner().invoke(app, ["reshard", nowhere, "--no-progress"])
    assert r.exit_code == 1 and "not a RigPose dataset" in r.output
    r = CliRunner().invoke(app, ["reshard", appended, "--rows-per-shard", "0"])
    assert r.exit_code == 2 and "--rows-per-shard" in r.output
    assert read_manifest(appended).version == 6


def test_the_old_versions_shards_stay_for_the_grace_period_after_the_reshard(appended: str) -> None:
    before = read_manifest(appended)
    reshard(plan_reshard(appended), command="test reshard")
    old = time.time() - 7200
    for p in Path(appended).rglob("*"):  # shards and versions written long ago; only the reshard is recent
        if p.is_file() and not p.name.endswith(f"v{before.version + 1:010d}.json"):
            os.utime(p, (old, old))
    _append(appended, "studio-8", "next", 5)  # its clean-up after the commit leaves them too
    report = collect_garbage(appended)
    assert sorted(report.superseded) == sorted(s.path for s in before.shards) and not report.removed
    assert Dataset(appended, version=before.version).read_table().num_rows == before.num_rows
    reshard_version = Path(appended) / "_manifests" / f"v{before.version + 1:010d}.json"
    os.utime(reshard_version, (old, old))  # an hour after the reshard: they go
    report = collect_garbage(appended)
    assert sorted(report.removed) == sorted(s.path for s in before.shards)
    assert validate_dataset(appended).ok


def test_manifests_without_sources_load_and_sources_are_written_only_when_there_are_any(appended: str) -> None:
    text = (Path(appended) / "manifest.json").read_text()
    assert '"sources"' not in text  # shards as ingests wrote them: the JSON is as before lineage
    m = Manifest.from_json(text, source="m")
    assert m.to_json() == text and all(s.origins() == {s.path: s.rows} for s in m.shards)
    after = reshard(plan_reshard(appended), command="test reshard")
    d = json.loads(after.to_json())
    assert all(sum(s["sources"].values()) == s["rows"] for s in d["shards"])
    d["shards"][0]["sources"] = {**d["shards"][0]["sources"], "rig_id=x/split=train/extra.parquet": 3}
    with pytest.raises(DatasetError, match="its sources hold"):
        Manifest.from_json(json.dumps(d), source="m")
    d["shards"][0]["sources"] = {"../outside.parquet": d["shards"][0]["rows"]}
    with pytest.raises(DatasetError, match="climbs out of the dataset root"):
        Manifest.from_json(json.dumps(d), source="m")
