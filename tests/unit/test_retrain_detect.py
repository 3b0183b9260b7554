"""Change detection for retraining (rigpose.retrain.detect): new rigs, appended and replaced shards, per rig."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rigpose.data.manifest import read_manifest
from rigpose.data.schema import frames_for_rig
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.resources import rig_path
from rigpose.retrain.detect import describe_changes, diff_manifests
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17


def _ingest(root: str, rig_name: str, sequence: str, T: int, split: str = "train", **kw) -> None:
    rig = load_rig(rig_path(rig_name))
    X = np.random.default_rng(T).normal(0, 0.3, (T, 17, 3)) + [0.0, 0.0, 1.0]
    pix = np.stack([project(X, c) for c in rig.cameras], 1)
    frames = frames_for_rig(rig, sequence=sequence, keypoints=pix, frame=np.arange(T))
    with DatasetWriter(root, skeleton=H36M17, command="test", **kw) as w:
        w.add(frames, rig, split=split)
        w.commit()


def test_a_new_rig_and_an_append_are_told_apart_and_unchanged_rigs_are_not_new(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk", 30)
    _ingest(root, "humaneva-s1", "jog", 12)
    trained_on = read_manifest(root)
    _ingest(root, "studio-8", "dance", 25, split="val")
    _ingest(root, "h36m-s1", "run", 7)
    changes = {c.rig_id: c for c in diff_manifests(trained_on, read_manifest(root))}
    assert changes["studio-8"].new_rig and (changes["studio-8"].shards_added, changes["studio-8"].rows_added) == (1, 25)
    assert changes["studio-8"].splits == ("val",)
    assert not changes["h36m-s1"].new_rig and changes["h36m-s1"].rows_added == 7
    assert not changes["humaneva-s1"].changed
    lines = describe_changes(list(changes.values()))
    assert lines == ["h36m-s1: more data, +1 shard(s) / +7 rows (train)",
                     "studio-8: new rig, +1 shard(s) / +25 rows (val)"]


def test_a_replaced_sequence_shows_as_removed_and_added_rows_and_no_change_says_nothing_new(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk", 30)
    trained_on = read_manifest(root)
    assert describe_changes(diff_manifests(trained_on, read_manifest(root))) == ["nothing new"]
    _ingest(root, "h36m-s1", "walk", 20, replace=True)
    (c,) = diff_manifests(trained_on, read_manifest(root))
    assert (c.shards_added, c.rows_added, c.shards_removed, c.rows_removed) == (1, 20, 1, 30)


def test_without_a_baseline_everything_is_new_and_rig_ids_restrict_the_view(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    _ingest(root, "h36m-s1", "walk", 30)
    _ingest(root, "humaneva-s1", "jog", 12)
    changes = diff_manifests(None, read_manifest(root), rig_ids=["humaneva-s1"])
    assert [(c.rig_id, c.new_rig, c.rows_added) for c in changes] == [("humaneva-s1", True, 12)]
