"""Datasets (rigpose.data writer, reader, manifest): round trips, atomic commits, appends, replacement, quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rigpose.data.checks import check_frames
from rigpose.data.manifest import DatasetError, manifest_path, read_manifest
from rigpose.data.reader import Dataset
from rigpose.data.schema import ARROW_SCHEMA, Frames, frames_for_rig
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.resources import rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17


@pytest.fixture
def rig4():
    return load_rig(rigs_dir() / "h36m-s1.json")


@pytest.fixture
def rig3():
    return load_rig(rigs_dir() / "humaneva-s1.json")


def make_frames(rig, rng: np.random.Generator, *, sequence: str = "walk", T: int = 20, start: int = 0) -> Frames:
    X = rng.normal(0, 0.3, (T, 17, 3)) + np.array([0.0, 0.0, 1.0])
    pix = np.stack([project(X, cam) for cam in rig.cameras], 1)  # [T, V, J, 2]
    return frames_for_rig(rig, sequence=sequence, keypoints=pix, subject="S1", joints_3d=X,
                          frame=np.arange(start, start + T))


def write(root: Path | str, rig, frames: Frames, split: str = "train", **kw) -> None:
    with DatasetWriter(str(root), skeleton=H36M17, command="test", **kw) as w:
        w.add(frames, rig, split=split)
        w.commit()


def test_round_trip_preserves_every_array(tmp_path: Path, rig4, rng: np.random.Generator) -> None:
    frames = make_frames(rig4, rng)
    frames.keypoints[3, 1, 5] = np.nan
    frames.scores[3, 1, 5] = 0.0
    write(tmp_path / "ds", rig4, frames)
    back = Dataset(str(tmp_path / "ds")).read_frames(splits="train")
    np.testing.assert_array_equal(back.keypoints, frames.keypoints)
    np.testing.assert_array_equal(back.scores, frames.scores)
    np.testing.assert_allclose(back.cameras.K, frames.cameras.K)
    np.testing.assert_allclose(back.cameras.R, frames.cameras.R)
    np.testing.assert_allclose(back.joints_3d, frames.joints_3d)
    assert list(back.sequence) == ["walk"] * 20 and list(back.frame) == list(range(20))
    assert back.view_mask.all()


def test_rigs_with_different_camera_counts_share_a_dataset_padded_and_masked(
    tmp_path: Path, rig4, rig3, rng: np.random.Generator
) -> None:
    root = str(tmp_path / "ds")
    with DatasetWriter(root, skeleton=H36M17, command="test") as w:
        w.add(make_frames(rig4, rng, sequence="a"), rig4, split="train")
        w.add(make_frames(rig3, rng, sequence="b", T=7), rig3, split="train")
        w.commit()
    ds = Dataset(root)
    assert ds.manifest.max_views == 4
    frames = ds.read_frames(splits="train")
    assert frames.keypoints.shape == (27, 4, 17, 2)
    three = frames.rig_id == "humaneva-s1"
    assert three.sum() == 7
    assert not frames.view_mask[three, 3].any() and frames.view_mask[~three].all()
    assert np.isnan(frames.keypoints[three, 3]).all() and (frames.scores[three, 3] == 0).all()
    # padding cameras are harmless
    np.testing.assert_allclose(frames.cameras.K[three, 3], np.broadcast_to(np.eye(3), (7, 3, 3)))


def test_nothing_is_visible_before_commit_and_abort_removes_shards(tmp_path: Path, rig4, rng) -> None:
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(
        str(root), skeleton=H36M17, command="test", shard_rows=5
    ) as w:
        w.add(make_frames(rig4, rng), rig4, split="train")  # 4 shards already written
        assert list(root.rglob("*.parquet"))
        raise RuntimeError("boom")
    assert read_manifest(str(root)) is None
    assert not list(root.rglob("*.parquet"))
    with pytest.raises(DatasetError, match=r"no manifest\.json"):
        Dataset(str(root))


def test_appending_adds_partitions_and_keeps_old_rows(tmp_path: Path, rig4, rig3, rng) -> None:
    root = tmp_path / "ds"
    write(root, rig4, make_frames(rig4, rng, sequence="a"), "train")
    write(root, rig4, make_frames(rig4, rng, sequence="b"), "test")
    write(root, rig3, make_frames(rig3, rng, sequence="c"), "train")
    m = read_manifest(str(root))
    assert m.splits()["train"]["rows"] == 40 and m.splits()["test"]["rows"] == 20
    assert set(m.rigs) == {"h36m-s1", "humaneva-s1"}
    assert len(m.history) == 3
    assert (root / "rig_id=humaneva-s1" / "split=train").is_dir()


def test_manifest_splits_summarise_the_shards_and_callers_cannot_change_them(tmp_path: Path, rig4, rig3, rng
                                                                             ) -> None:
    root = tmp_path / "ds"
    write(root, rig4, make_frames(rig4, rng, sequence="a"), "train")
    write(root, rig3, make_frames(rig3, rng, sequence="c"), "train")
    write(root, rig4, make_frames(rig4, rng, sequence="b"), "test")
    m = read_manifest(str(root))
    expected = {"train": {"rows": 40, "shards": 2, "rigs": ["h36m-s1", "humaneva-s1"], "sequences": 2},
                "test": {"rows": 20, "shards": 1, "rigs": ["h36m-s1"], "sequences": 1}}
    got = m.splits()
    assert got == expected
    got["train"]["rigs"].append("other")  # a caller editing its answer ...
    got["test"]["rows"] = 0
    del got["train"]
    assert m.splits() == expected  # ... does not edit the manifest's
    assert json.loads(m.to_json())["splits"] == expected and "_splits" not in json.loads(m.to_json())


def test_ingesting_a_sequence_twice_is_refused_unless_replacing(tmp_path: Path, rig4, rng) -> None:
    root = tmp_path / "ds"
    write(root, rig4, make_frames(rig4, rng, sequence="a"))
    with pytest.raises(DatasetError, match="sequence 'a' of rig 'h36m-s1' is already in"):
        write(root, rig4, make_frames(rig4, rng, sequence="a"))
    write(root, rig4, make_frames(rig4, rng, sequence="a", T=5), replace=True)
    ds = Dataset(str(root))
    assert ds.manifest.num_rows == 5
    assert len(list(root.rglob("*.parquet"))) == 1  # the replaced shard was removed


def test_replacing_one_sequence_rewrites_a_mixed_shard(tmp_path: Path, rig4, rng) -> None:
    root = str(tmp_path / "ds")
    with DatasetWriter(root, skeleton=H36M17, command="test") as w:
        w.add(make_frames(rig4, rng, sequence="a"), rig4, split="train")
        w.add(make_frames(rig4, rng, sequence="b"), rig4, split="train")
        w.commit()
    write(root, rig4, make_frames(rig4, rng, sequence="a", T=3), replace=True)
    frames = Dataset(root).read_frames()
    assert sorted(np.unique(frames.sequence)) == ["a", "b"]
    assert (frames.sequence == "a").sum() == 3 and (frames.sequence == "b").sum() == 20


def test_a_different_skeleton_is_refused(tmp_path: Path, rig4, rng) -> None:
    root = tmp_path / "ds"
    write(root, rig4, make_frames(rig4, rng))
    with pytest.raises(DatasetError, match="skeleton is 'h36m17'"):
        DatasetWriter(str(root), skeleton="coco17", command="test")


def test_bad_rows_go_to_quarantine_with_reasons(tmp_path: Path, rig4, rng) -> None:
    import pyarrow.parquet as pq

    frames = make_frames(rig4, rng, T=200)
    frames.keypoints[10, 0, 0, 0] = np.inf
    root = tmp_path / "ds"
    write(root, rig4, frames)
    assert Dataset(str(root)).manifest.num_rows == 199
    q = pq.read_table(next((root / "_quarantine").glob("*.parquet")))
    assert q.column("reason").to_pylist() == ["infinite keypoint"]
    assert q.column("frame").to_pylist() == [10]


def test_too_many_bad_rows_abort_the_ingest_and_leave_the_dataset_as_it_was(tmp_path: Path, rig4, rng) -> None:
    root = tmp_path / "ds"
    write(root, rig4, make_frames(rig4, rng, sequence="a"))
    before = (root / "manifest.json").read_bytes()
    frames = make_frames(rig4, rng, sequence="b")
    frames.scores[:5] = 0.0  # five frames with no valid view = 25% bad
    with pytest.raises(DatasetError, match=r"25\.00%"):
        write(root, rig4, frames)
    assert (root / "manifest.json").read_bytes() == before
    assert len(list(root.glob("rig_id=*/split=*/*.parquet"))) == 1


def test_nan_keypoint_with_a_nonzero_score_is_quarantined(tmp_path: Path, rig4, rng) -> None:
    frames = make_frames(rig4, rng, T=200)
    frames.keypoints[7, 2, 3] = np.nan  # score stays 1
    with DatasetWriter(str(tmp_path / "ds"), skeleton=H36M17, command="test") as w:
        w.add(frames, rig4, split="train")
        w.commit()
        assert w.num_quarantined == 1


def test_scores_outside_unit_range_and_unordered_frames_are_refused(tmp_path: Path, rig4, rng) -> None:
    frames = make_frames(rig4, rng)
    frames.scores[2, 1, 4] = 1.5
    with pytest.raises(DatasetError, match=r"'scores' outside \[0, 1\]: 1.5 at row 2, view 1, joint 4"):
        write(tmp_path / "a", rig4, frames)
    frames = make_frames(rig4, rng)
    frames.frame[5] = 2
    with pytest.raises(DatasetError, match="'frame' not strictly increasing in sequence 'walk'"):
        write(tmp_path / "b", rig4, frames)
    assert read_manifest(str(tmp_path / "a")) is None and read_manifest(str(tmp_path / "b")) is None


def _first_unordered_by_masks(frames: Frames, source: str) -> str | None:
    """check_frames' message as its per-sequence mask loop wrote it (the first bad sequence by name)."""
    for seq in np.unique(frames.sequence):
        f = frames.frame[frames.sequence == seq]
        steps = np.diff(f)
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0])
            return (f"{source}: field 'frame' not strictly increasing in sequence {seq!r}: {f[i]} then {f[i + 1]} "
                    f"at row {i + 1}")
    return None


def test_check_frames_names_the_first_bad_step_of_interleaved_sequences(rig4, rng) -> None:
    parts = [make_frames(rig4, rng, sequence=f"take{k}", T=12) for k in range(4)]
    order = rng.permutation(48)  # rows of 4 sequences interleaved: no fast path
    order = np.concatenate([np.sort(order[order % 12 < 6]), np.sort(order[order % 12 >= 6])])
    frames = Frames.concat(parts).take(order)
    assert _first_unordered_by_masks(frames, "src") is None
    check_frames(frames, source="src")  # interleaved but increasing within each sequence: fine
    for seq, k, new in (("take2", 7, 3), ("take1", 5, 4), ("take3", 11, 0)):
        bad = frames.take(np.arange(len(frames)))
        rows = np.flatnonzero(bad.sequence == seq)
        bad.frame[rows[k]] = new
        expected = _first_unordered_by_masks(bad, "src")
        assert expected is not None
        with pytest.raises(DatasetError) as e:
            check_frames(bad, source="src")
        assert str(e.value) == expected


def test_a_truncated_shard_is_named_in_the_error(tmp_path: Path, rig4, rng) -> None:
    root = tmp_path / "ds"
    write(root, rig4, make_frames(rig4, rng))
    shard = next(root.rglob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=f"{shard.name} is truncated or corrupt"):
        Dataset(str(root)).read_frames()


def test_a_manifest_with_escaping_shard_paths_is_refused(tmp_path: Path, rig4, rng) -> None:
    root = tmp_path / "ds"
    write(root, rig4, make_frames(rig4, rng))
    committed = Path(manifest_path(str(root)))  # the latest version: what readers read
    m = json.loads(committed.read_text())
    for bad in ("../elsewhere/part.parquet", "/etc/passwd"):
        m["shards"][0]["path"] = bad
        committed.write_text(json.dumps(m))
        with pytest.raises(DatasetError, match="absolute or climbs out"):
            Dataset(str(root))


def test_reading_without_3d_never_materialises_joints_3d(tmp_path: Path, rig4, rng) -> None:
    write(tmp_path / "ds", rig4, make_frames(rig4, rng))
    frames = Dataset(str(tmp_path / "ds")).read_frames(with_3d=False)
    assert frames.joints_3d is None
    assert "joints_3d" in ARROW_SCHEMA.names


def test_a_changed_calibration_under_the_same_rig_id_is_refused(tmp_path: Path, rig4, rng) -> None:
    import dataclasses

    root = tmp_path / "ds"
    write(root, rig4, make_frames(rig4, rng, sequence="a"))
    cams = list(rig4.cameras)
    cams[0] = dataclasses.replace(cams[0], t=cams[0].t + 0.01)
    moved = dataclasses.replace(rig4, cameras=tuple(cams))
    with pytest.raises(DatasetError, match="differs from the calibration"):
        write(root, moved, make_frames(moved, rng, sequence="b"))


def test_a_large_shard_is_written_as_row_groups_of_at_most_16k_rows_in_frame_order(tmp_path: Path, rig4, rng) -> None:
    import pyarrow.parquet as pq

    from rigpose.data.writer import ROW_GROUP_ROWS

    frames = make_frames(rig4, rng, T=40_000)
    write(tmp_path / "ds", rig4, frames, shard_rows=50_000)  # one shard
    ds = Dataset(str(tmp_path / "ds"))
    (shard,) = ds.manifest.shards
    meta = pq.read_metadata(tmp_path / "ds" / shard.path)
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert ROW_GROUP_ROWS == 16384 and sizes == [16384, 16384, 40_000 - 2 * 16384]
    # a reader that takes one group at a time sees the rows in order
    first = pq.ParquetFile(tmp_path / "ds" / shard.path).read_row_group(1, columns=["frame"])
    np.testing.assert_array_equal(first["frame"].to_numpy(), np.arange(16384, 2 * 16384))
