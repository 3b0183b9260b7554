"""rigpose.data.ingest / ingest_cli: interchange npz, VideoPose3D Human3.6M and HumanEva-I files, COCO JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rigpose.cli.ingest import app
from rigpose.data.ingest import (
    hash_fraction,
    ingest_coco,
    ingest_h36m,
    ingest_humaneva,
    ingest_npz,
    parse_split_by,
    split_for,
    write_interchange_npz,
)
from rigpose.data.ingest.coco import _best_person
from rigpose.data.manifest import DatasetError, read_manifest
from rigpose.data.reader import Dataset
from rigpose.geometry import project
from rigpose.resources import rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import COCO17, H36M17, HUMANEVA15, h36m32_to_h36m17

RIGS = rigs_dir()


@pytest.fixture
def rig4():
    return load_rig(RIGS / "h36m-s1.json")


def motion(rng: np.random.Generator, T: int, J: int) -> np.ndarray:
    """[T, J, 3] world metres around the rig's centre, 1 m above the floor."""
    return (rng.normal(0, 0.25, (T, J, 3)) + np.array([0.0, 0.0, 1.0])).astype(np.float32)


def views(rig, X: np.ndarray) -> np.ndarray:
    """[T, V, J, 2] pixels of world points [T, J, 3] in every camera of `rig`."""
    return np.stack([project(X.astype(np.float64), cam) for cam in rig.cameras], 1).astype(np.float32)


def npz_file(path: Path, rig, rng, *, T: int = 12, **fields) -> dict:
    """Write a consistent interchange npz (h36m17) and return its fields; `fields` override or add."""
    X = motion(rng, T, 17)
    d = {"keypoints": views(rig, X), "joint_names": H36M17.joint_names, "camera_names": rig.camera_names,
         "joints_3d": X, **fields}
    write_interchange_npz(str(path), **{k: v for k, v in d.items() if v is not None})
    return d


def raw_npz(path: Path, **arrays) -> None:
    np.savez(path, **arrays)


def no_dataset(root: Path) -> bool:
    return read_manifest(str(root)) is None and not list(root.glob("rig_id=*/**/*.parquet"))


def ingest(files, root, rig, **kw):
    kw.setdefault("split", "train")
    return ingest_npz([str(f) for f in files], out=str(root), rig=rig, progress=False, **kw)


# ---------------------------------------------------------------------------------------------- npz


def test_npz_round_trip_keeps_keypoints_scores_frames_subject_and_3d(tmp_path: Path, rig4, rng) -> None:
    scores = rng.uniform(0.2, 1, (12, 4, 17)).astype(np.float32)
    d = npz_file(tmp_path / "walk.npz", rig4, rng, scores=scores, frame=np.arange(100, 112), subject="S1",
                 sequence="walking")
    summary = ingest([tmp_path / "walk.npz"], tmp_path / "ds", rig4)
    assert summary.num_rows == 12 and summary.num_quarantined == 0 and summary.skeleton == "h36m17"
    assert summary.rows_by("split", "rig_id", "sequence") == {("train", "h36m-s1", "walking"): (1, 12, 0)}
    back = Dataset(str(tmp_path / "ds")).read_frames()
    np.testing.assert_array_equal(back.keypoints, d["keypoints"])
    np.testing.assert_array_equal(back.scores, scores)
    np.testing.assert_array_equal(back.joints_3d, d["joints_3d"])
    assert list(back.frame) == list(range(100, 112))
    assert set(back.subject) == {"S1"} and set(back.sequence) == {"walking"}


def test_npz_views_and_joints_given_in_another_order_are_put_in_rig_and_skeleton_order(
    tmp_path: Path, rig4, rng
) -> None:
    X = motion(rng, 5, 17)
    kp = views(rig4, X)
    vperm, jperm = [2, 0, 3, 1], rng.permutation(17)
    write_interchange_npz(str(tmp_path / "a.npz"), keypoints=kp[:, vperm][:, :, jperm],
                          joint_names=[H36M17.joint_names[j] for j in jperm],
                          camera_names=[rig4.camera_names[v] for v in vperm], joints_3d=X[:, jperm])
    ingest([tmp_path / "a.npz"], tmp_path / "ds", rig4)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    np.testing.assert_array_equal(back.keypoints, kp)
    np.testing.assert_array_equal(back.joints_3d, X)
    assert list(back.camera_names[0]) == list(rig4.camera_names)


def test_npz_folder_is_one_ingest_with_sequence_from_stem_and_unknown_subject(tmp_path: Path, rig4, rng) -> None:
    (tmp_path / "in").mkdir()
    for name in ("b", "a", "c"):
        npz_file(tmp_path / "in" / f"{name}.npz", rig4, rng, T=4)
    (tmp_path / "in" / "notes.txt").write_text("not an npz")
    summary = ingest([tmp_path / "in"], tmp_path / "ds", rig4)
    assert [s.sequence for s in summary.sequences] == ["a", "b", "c"]
    assert {s.subject for s in summary.sequences} == {"unknown"}
    assert summary.manifest.num_rows == 12


def test_npz_nan_keypoint_with_zero_score_is_kept_as_missing(tmp_path: Path, rig4, rng) -> None:
    d = npz_file(tmp_path / "a.npz", rig4, rng, joints_3d=None)
    kp = d["keypoints"].copy()
    kp[3, 1, 5] = np.nan
    kp[:, 2] = np.nan  # a whole camera missing in every frame
    write_interchange_npz(str(tmp_path / "a.npz"), keypoints=kp, joint_names=H36M17.joint_names,
                          camera_names=rig4.camera_names)
    summary = ingest([tmp_path / "a.npz"], tmp_path / "ds", rig4)
    assert summary.num_rows == 12 and summary.num_quarantined == 0
    back = Dataset(str(tmp_path / "ds")).read_frames()
    assert np.isnan(back.keypoints[3, 1, 5]).all() and back.scores[3, 1, 5] == 0
    assert (back.scores[:, 2] == 0).all()
    others, present = back.scores[:, [0, 1, 3]], np.isfinite(back.keypoints[:, [0, 1, 3]]).all(-1)
    assert (others[present] == 1).all() and (others[~present] == 0).all() and (~present).sum() == 1
    assert back.joints_3d is None


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"joint_names": ["Hip", "Pelvis2", *H36M17.joint_names[2:]]}, "joint_names", ["Pelvis2", "RHip"]),
        ({"camera_names": ["54138969", "55011271", "58860488", "99999999"]}, "camera_names", ["99999999", "60457274"]),
        ({"keypoints": np.zeros((12, 4, 17, 3), np.float32)}, "keypoints", ["[12, 4, 17, 3]"]),
        ({"keypoints": np.zeros((12, 4, 17, 2), np.int64)}, "keypoints", ["int64"]),
        ({"frame": np.array([0, 1, 2, 3, 4, 5, 5, 7, 8, 9, 10, 11])}, "frame", ["strictly increasing", "row 6"]),
        ({"frame": np.arange(12.0)}, "frame", ["float64"]),
        ({"scores": np.full((12, 4, 17), 1.5, np.float32)}, "scores", ["outside [0, 1]", "1.5"]),
        ({"scores": np.ones((12, 4, 16), np.float32)}, "scores", ["[12, 4, 17]"]),
        ({"joints_3d": np.zeros((12, 17, 2), np.float32)}, "joints_3d", ["[12, 17, 3]"]),
        ({"score": np.ones((12, 4, 17), np.float32)}, "score", ["unknown field"]),
        ({"sequence": np.array(["a", "b"])}, "sequence", ["one string"]),
    ],
)
def test_npz_bad_field_is_one_line_error_naming_file_and_field_and_writes_nothing(
    tmp_path: Path, rig4, rng, change: dict, field: str, words: list[str]
) -> None:
    X = motion(rng, 12, 17)
    arrays = {"keypoints": views(rig4, X), "joint_names": np.array(H36M17.joint_names),
              "camera_names": np.array(rig4.camera_names)}
    arrays.update({k: np.asarray(v) for k, v in change.items()})
    raw_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError) as err:
        ingest([tmp_path / "bad.npz"], tmp_path / "ds", rig4)
    msg = str(err.value)
    assert "\n" not in msg and "bad.npz" in msg and repr(field) in msg, msg
    for w in words:
        assert w in msg, msg
    assert no_dataset(tmp_path / "ds")


def test_npz_missing_required_field_and_pickled_strings_are_refused(tmp_path: Path, rig4, rng) -> None:
    kp = views(rig4, motion(rng, 3, 17))
    raw_npz(tmp_path / "a.npz", keypoints=kp, joint_names=np.array(H36M17.joint_names))
    with pytest.raises(ValueError, match=r"a\.npz: missing required field\(s\) \['camera_names'\]"):
        ingest([tmp_path / "a.npz"], tmp_path / "ds", rig4)
    raw_npz(tmp_path / "b.npz", keypoints=kp, joint_names=np.array(H36M17.joint_names, dtype=object),
            camera_names=np.array(rig4.camera_names))
    with pytest.raises(ValueError, match=r"b\.npz: field 'joint_names' cannot be read without unpickling"):
        ingest([tmp_path / "b.npz"], tmp_path / "ds", rig4)
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"c\.npz: not a readable \.npz"):
        ingest([tmp_path / "c.npz"], tmp_path / "ds", rig4)


def test_npz_error_in_a_later_file_leaves_no_partial_dataset(tmp_path: Path, rig4, rng) -> None:
    npz_file(tmp_path / "a.npz", rig4, rng)
    npz_file(tmp_path / "b.npz", rig4, rng, frame=np.arange(12)[::-1].copy())
    with pytest.raises(ValueError, match=r"b\.npz: field 'frame' not strictly increasing"):
        ingest([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "ds", rig4)
    assert no_dataset(tmp_path / "ds")


def test_npz_forced_skeleton_must_match_joint_names(tmp_path: Path, rig4, rng) -> None:
    npz_file(tmp_path / "a.npz", rig4, rng)
    with pytest.raises(ValueError, match=r"a\.npz: field 'joint_names' does not match skeleton 'coco17'"):
        ingest([tmp_path / "a.npz"], tmp_path / "ds", rig4, skeleton="coco17")


def test_npz_bad_rows_are_quarantined_under_the_limit_and_abort_over_it(tmp_path: Path, rig4, rng) -> None:
    d = npz_file(tmp_path / "a.npz", rig4, rng, T=200, joints_3d=None)
    kp = d["keypoints"].copy()
    kp[7, 0, 0] = np.inf
    write_interchange_npz(str(tmp_path / "a.npz"), keypoints=kp, joint_names=H36M17.joint_names,
                          camera_names=rig4.camera_names)
    summary = ingest([tmp_path / "a.npz"], tmp_path / "ok", rig4)  # 1 of 200 = 0.5% <= 1%
    assert summary.num_rows == 199 and summary.num_quarantined == 1
    assert summary.quarantine and Path(summary.quarantine).exists()
    assert 7 not in Dataset(str(tmp_path / "ok")).read_frames().frame

    kp[10:13, 1, 2] = np.inf  # 4 of 200 = 2% > 1%
    write_interchange_npz(str(tmp_path / "a.npz"), keypoints=kp, joint_names=H36M17.joint_names,
                          camera_names=rig4.camera_names)
    with pytest.raises(DatasetError, match="4 of 200 rows"):
        ingest([tmp_path / "a.npz"], tmp_path / "bad", rig4)
    assert no_dataset(tmp_path / "bad")
    assert list((tmp_path / "bad" / "_quarantine").glob("*.parquet"))  # the reasons stay for the user
    summary = ingest([tmp_path / "a.npz"], tmp_path / "bad", rig4, max_bad_fraction=0.05)
    assert summary.num_quarantined == 4


def test_npz_sequence_already_in_dataset_is_refused_unless_replace(tmp_path: Path, rig4, rng) -> None:
    npz_file(tmp_path / "walk.npz", rig4, rng, T=6)
    ingest([tmp_path / "walk.npz"], tmp_path / "ds", rig4)
    npz_file(tmp_path / "walk.npz", rig4, rng, T=9)
    with pytest.raises(DatasetError, match=r"'walk'.*already in"):
        ingest([tmp_path / "walk.npz"], tmp_path / "ds", rig4)
    assert Dataset(str(tmp_path / "ds")).manifest.num_rows == 6
    ingest([tmp_path / "walk.npz"], tmp_path / "ds", rig4, replace=True)
    assert Dataset(str(tmp_path / "ds")).manifest.num_rows == 9


def test_npz_same_sequence_twice_in_one_ingest_is_refused(tmp_path: Path, rig4, rng) -> None:
    npz_file(tmp_path / "a.npz", rig4, rng, sequence="walk")
    npz_file(tmp_path / "b.npz", rig4, rng, sequence="walk")
    with pytest.raises(ValueError, match=r"b\.npz: field 'sequence' 'walk'.*already given by .*a\.npz"):
        ingest([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "ds", rig4)
    assert no_dataset(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------- splits


def test_split_by_sequence_is_deterministic_and_adding_files_never_moves_old_sequences(
    tmp_path: Path, rig4, rng
) -> None:
    (tmp_path / "in").mkdir()
    for i in range(8):
        npz_file(tmp_path / "in" / f"seq{i:02d}.npz", rig4, rng, T=2)
    first = ingest([tmp_path / "in"], tmp_path / "one", rig4, split=None, split_by="sequence:0.5,0.25,0.25")
    for i in range(8, 16):
        npz_file(tmp_path / "in" / f"seq{i:02d}.npz", rig4, rng, T=2)
    both = ingest([tmp_path / "in"], tmp_path / "two", rig4, split=None, split_by="sequence:0.5,0.25,0.25")
    old = {s.sequence: s.split for s in first.sequences}
    new = {s.sequence: s.split for s in both.sequences}
    assert {k: new[k] for k in old} == old
    assert set(new.values()) <= {"train", "val", "test"}
    assert new == {f"seq{i:02d}": split_for(f"seq{i:02d}", [("train", 0.5), ("val", 0.25), ("test", 0.25)])
                   for i in range(16)}


def test_split_for_follows_the_fractions_over_many_names() -> None:
    fractions = [("train", 0.8), ("val", 0.1), ("test", 0.1)]
    names = [f"sequence-{i}" for i in range(4000)]
    got = [split_for(n, fractions) for n in names]
    assert abs(got.count("train") / 4000 - 0.8) < 0.03 and abs(got.count("test") / 4000 - 0.1) < 0.02
    assert hash_fraction("walk") == hash_fraction("walk") and 0 <= hash_fraction("walk") < 1


def test_parse_split_by_reads_positional_and_named_fractions() -> None:
    assert parse_split_by("sequence:0.8,0.1,0.1") == ("sequence", [("train", 0.8), ("val", 0.1), ("test", 0.1)])
    assert parse_split_by("subject:train=0.9,holdout=0.1") == ("subject", [("train", 0.9), ("holdout", 0.1)])
    assert parse_split_by("sequence:1") == ("sequence", [("train", 1.0)])


@pytest.mark.parametrize("spec", ["sequence", "frame:0.5,0.5", "sequence:0.5,0.4", "sequence:a,b",
                                  "sequence:0.5,0.2,0.2,0.1", "sequence:train=0.5,0.5", "sequence:tr/ain=1"])
def test_parse_split_by_refuses_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="split"):
        parse_split_by(spec)


def test_split_and_split_by_are_exclusive(tmp_path: Path, rig4, rng) -> None:
    npz_file(tmp_path / "a.npz", rig4, rng)
    with pytest.raises(ValueError, match="exactly one of split"):
        ingest([tmp_path / "a.npz"], tmp_path / "ds", rig4, split=None)
    with pytest.raises(ValueError, match="exactly one of split"):
        ingest([tmp_path / "a.npz"], tmp_path / "ds", rig4, split_by="sequence:1")


# ---------------------------------------------------------------------------------------------- Human3.6M


def h36m_files(tmp_path: Path, rng, *, subjects=("S1", "S9"), T3=30, T2=32, layout="h36m") -> dict:
    """VideoPose3D-layout data_3d_h36m.npz / data_2d_h36m_gt.npz; 2D = the 3D projected through the shipped rigs."""
    pos3d, pos2d = {}, {}
    for s in subjects:
        rig = load_rig(RIGS / f"h36m-{s.lower()}.json")
        pos3d[s], pos2d[s] = {}, {}
        for action in ("Walking", "Directions 1"):
            X32 = motion(rng, max(T3, T2), 32)
            pos3d[s][action] = X32[:T3]
            kp = views(rig, h36m32_to_h36m17(X32))[:T2]
            pos2d[s][action] = [kp[:, v] for v in range(4)]
    meta = {"layout_name": layout, "num_joints": 17,
            "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
    np.savez_compressed(tmp_path / "data_3d_h36m.npz", positions_3d=pos3d)
    np.savez_compressed(tmp_path / "data_2d_h36m_gt.npz", positions_2d=pos2d, metadata=meta)
    return {"3d": pos3d, "2d": pos2d, "d3": str(tmp_path / "data_3d_h36m.npz"),
            "d2": str(tmp_path / "data_2d_h36m_gt.npz")}


def test_h36m_uses_standard_split_converts_3d_to_17_joints_and_cuts_to_the_shorter_length(tmp_path: Path, rng) -> None:
    f = h36m_files(tmp_path, rng)
    summary = ingest_h36m(f["d3"], f["d2"], out=str(tmp_path / "ds"), rigs_dir=str(RIGS), progress=False)
    assert summary.rows_by("split", "rig_id") == {("test", "h36m-s9"): (2, 60, 0), ("train", "h36m-s1"): (2, 60, 0)}
    assert any("cut to 30 frames" in n and "'Walking'" in n for n in summary.notes)
    back = Dataset(str(tmp_path / "ds")).read_frames(splits="train")
    walk = back.sequence == "Walking"
    np.testing.assert_allclose(back.joints_3d[walk], h36m32_to_h36m17(f["3d"]["S1"]["Walking"]))
    np.testing.assert_array_equal(back.keypoints[walk][:, 2], f["2d"]["S1"]["Walking"][2][:30])
    assert set(back.subject) == {"S1"} and set(back.sequence) == {"Walking", "Directions 1"}
    # the 2D is consistent with the 3D through the rig's cameras
    rig = load_rig(RIGS / "h36m-s1.json")
    np.testing.assert_allclose(views(rig, back.joints_3d[walk]), back.keypoints[walk], atol=1e-2)


def test_h36m_detections_only_have_no_3d_and_missing_camera_becomes_nan_view(tmp_path: Path, rng) -> None:
    f = h36m_files(tmp_path, rng, subjects=("S1",))
    f["2d"]["S1"]["Walking"][1] = None
    f["2d"]["S1"]["Directions 1"] = f["2d"]["S1"]["Directions 1"][:3]  # a shorter camera list
    np.savez_compressed(f["d2"], positions_2d=f["2d"], metadata={"layout_name": "h36m", "num_joints": 17})
    summary = ingest_h36m(None, f["d2"], out=str(tmp_path / "ds"), rigs_dir=str(RIGS), progress=False)
    assert summary.num_rows == 64
    assert sum("missing, kept as NaN views" in n for n in summary.notes) == 2
    back = Dataset(str(tmp_path / "ds")).read_frames()
    assert back.joints_3d is None
    walk = back.sequence == "Walking"
    assert np.isnan(back.keypoints[walk][:, 1]).all() and (back.scores[walk][:, 1] == 0).all()
    assert (back.scores[~walk][:, 3] == 0).all() and (back.scores[~walk][:, :3] == 1).all()


def test_h36m_coco_layout_detections_become_coco17_without_3d(tmp_path: Path, rng) -> None:
    f = h36m_files(tmp_path, rng, subjects=("S1",), layout="coco")
    summary = ingest_h36m(f["d3"], f["d2"], out=str(tmp_path / "ds"), rigs_dir=str(RIGS), progress=False)
    assert summary.skeleton == "coco17" and any("3D not ingested" in n for n in summary.notes)


def test_h36m_missing_rig_file_and_unknown_subject_are_errors(tmp_path: Path, rng) -> None:
    f = h36m_files(tmp_path, rng, subjects=("S1",))
    (tmp_path / "rigs").mkdir()
    with pytest.raises(ValueError, match=r"h36m-s1\.json: no rig file for subject 'S1'"):
        ingest_h36m(f["d3"], f["d2"], out=str(tmp_path / "ds"), rigs_dir=str(tmp_path / "rigs"), progress=False)
    with pytest.raises(ValueError, match=r"subjects \['S7'\] not in the file"):
        ingest_h36m(f["d3"], f["d2"], out=str(tmp_path / "ds"), rigs_dir=str(RIGS), subjects=["S7"],
                    progress=False)
    with pytest.raises(ValueError, match=r"data_3d_h36m\.npz: field 'positions_2d' missing"):
        ingest_h36m(None, f["d3"], out=str(tmp_path / "ds"), rigs_dir=str(RIGS), progress=False)
    assert no_dataset(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------- HumanEva-I


def humaneva_files(tmp_path: Path, rng) -> dict:
    rig = load_rig(RIGS / "humaneva-s1.json")
    pos3d, pos2d = {}, {}
    for key in ("Train/S1", "Validate/S1", "Unlabeled/Train/S1"):
        pos2d[key] = {}
        if not key.startswith("Unlabeled"):
            pos3d[key] = {}
        for action in ("Walking 1 chunk0", "Jog 1 chunk0"):
            X = motion(rng, 10, 15)
            kp = views(rig, X)
            pos2d[key][action] = [kp[:, v] for v in range(3)]
            if key in pos3d:
                pos3d[key][action] = X
    pos2d["Validate/S1"]["Jog 1 chunk0"][2] = None  # as in VideoPose3D's detections: a camera missing
    pos2d["Train/S1"]["Jog 1 chunk0"][0] = np.zeros((0, 15, 2), np.float32)  # or empty
    np.savez_compressed(tmp_path / "data_3d_humaneva15.npz", positions_3d=pos3d)
    np.savez_compressed(tmp_path / "data_2d_humaneva15_gt.npz", positions_2d=pos2d,
                        metadata={"layout_name": "humaneva15", "num_joints": 15})
    return {"3d": pos3d, "d3": str(tmp_path / "data_3d_humaneva15.npz"),
            "d2": str(tmp_path / "data_2d_humaneva15_gt.npz")}


def test_humaneva_splits_train_validate_keeps_names_and_masks_missing_cameras(tmp_path: Path, rng) -> None:
    f = humaneva_files(tmp_path, rng)
    summary = ingest_humaneva(f["d3"], f["d2"], out=str(tmp_path / "ds"), rigs_dir=str(RIGS), progress=False)
    assert summary.skeleton == HUMANEVA15.name
    assert {(s.split, s.sequence, s.subject) for s in summary.sequences} == {
        ("train", "Train/Walking 1 chunk0", "S1"), ("train", "Train/Jog 1 chunk0", "S1"),
        ("test", "Validate/Walking 1 chunk0", "S1"), ("test", "Validate/Jog 1 chunk0", "S1"),
    }
    assert any("Unlabeled/Train/S1" in n and "skipped" in n for n in summary.notes)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    jog = back.sequence == "Validate/Jog 1 chunk0"
    assert np.isnan(back.keypoints[jog][:, 2]).all() and (back.scores[jog][:, 2] == 0).all()
    assert (back.scores[back.sequence == "Train/Jog 1 chunk0"][:, 0] == 0).all()
    np.testing.assert_allclose(back.joints_3d[jog], f["3d"]["Validate/S1"]["Jog 1 chunk0"])


def test_humaneva_unlabeled_goes_to_its_own_split_when_asked(tmp_path: Path, rng) -> None:
    f = humaneva_files(tmp_path, rng)
    summary = ingest_humaneva(None, f["d2"], out=str(tmp_path / "ds"), rigs_dir=str(RIGS), subjects=["S1"],
                              include_unlabeled=True, progress=False)
    assert summary.rows_by("split") == {("test",): (2, 20, 0), ("train",): (2, 20, 0), ("unlabeled",): (2, 20, 0)}
    assert "Unlabeled/Train/Walking 1 chunk0" in {s.sequence for s in summary.sequences}


# ---------------------------------------------------------------------------------------------- COCO


def coco_json(path: Path, frames: list[int], kp_F173: np.ndarray, *, scores=None, extra_person=False) -> None:
    images = [{"id": 1000 + i, "file_name": f"cam/frame_{f:06d}.jpg"} for i, f in enumerate(frames)]
    anns = []
    for i, _ in enumerate(frames):
        a = {"id": i, "image_id": 1000 + i, "category_id": 1, "keypoints": kp_F173[i].reshape(-1).tolist()}
        if scores is not None:
            a["score"] = float(scores[i])
        anns.append(a)
        if extra_person:  # a worse-scoring bystander
            anns.append({**a, "id": 500 + i, "score": 0.01, "keypoints": [1.0] * 51})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1}]}))


def _best_person_by_loop(anns: list[dict], J: int) -> dict:
    """The per-annotation loop the COCO converter ran: a person replaces the kept one only when strictly better
    by (score, -1 without; labelled keypoints; area)."""
    best: dict = {}
    for a in anns:
        if "keypoints" not in a or a.get("category_id", 1) != 1:
            continue
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(J, 3)
        score = a.get("score")
        rank = (float(score) if score is not None else -1.0, float((kp[:, 2] > 0).sum()), float(a.get("area", 0)))
        row = np.vstack([kp, [np.nan if score is None else float(score), 0.0, 0.0]])
        if a["image_id"] not in best or rank > best[a["image_id"]][0]:
            best[a["image_id"]] = (rank, row)
    return {k: v for k, (_, v) in best.items()}


def test_coco_keeps_the_same_person_per_image_as_a_per_annotation_loop(rng) -> None:
    for _ in range(100):  # crowded images, ties on every key, people without score or area, other categories
        anns = []
        for _ in range(int(rng.integers(0, 40))):
            kp = np.round(rng.uniform(0, 3, (17, 3)))
            kp[:, 2] = rng.integers(0, 3, 17)
            a = {"image_id": int(rng.integers(0, 8)), "keypoints": kp.reshape(-1).tolist()}
            if rng.random() < 0.6:
                a["score"] = float(np.round(rng.random(), 1))
            if rng.random() < 0.5:
                a["area"] = float(rng.integers(0, 3))
            if rng.random() < 0.1:
                a["category_id"] = 2
            anns.append(a)
        ours, ref = _best_person(anns, 17, "cam.json"), _best_person_by_loop(anns, 17)
        assert ours.keys() == ref.keys()
        for image_id, row in ref.items():
            np.testing.assert_array_equal(ours[image_id], row)


def test_coco_names_the_first_bad_annotation() -> None:
    good = {"image_id": 0, "keypoints": [1.0] * 51}
    for anns, field in (([good, {**good, "score": 2.0}, {**good, "keypoints": [1.0] * 5}], "annotations[1].score"),
                        ([good, {**good, "keypoints": [1.0] * 5}, {**good, "score": 2.0}], "annotations[1].keypoints"),
                        ([good, {**good, "score": float("nan")}], "annotations[1].score"),
                        ([good, {"keypoints": [1.0] * 51}], "annotations[1].image_id")):
        with pytest.raises(ValueError, match=rf"cam.json: field '{re.escape(field)}'"):
            _best_person(anns, 17, "cam.json")


def test_coco_aligns_frames_across_cameras_keeps_best_person_and_masks_gaps(tmp_path: Path, rig4, rng) -> None:
    X = motion(rng, 6, 17)
    pix = views(rig4, X)  # [T, V, J, 2]
    files = []
    for v in range(4):
        frames = [10, 11, 12, 13, 14, 15] if v != 3 else [10, 11, 13, 14, 15]  # camera 3 lacks frame 12
        rows = [t for t, f in enumerate([10, 11, 12, 13, 14, 15]) if f in frames]
        conf = np.full((len(rows), 17), 0.9) if v < 2 else np.ones((len(rows), 17)) * 2  # detector vs GT
        if v == 0:
            conf[0, 4] = 0.0  # confidence 0 = missing
        if v == 2:
            conf[1, 5] = 0  # visibility 0 = missing
        kp = np.concatenate([pix[rows, v], conf[..., None]], -1)
        coco_json(tmp_path / f"cam{v}.json", frames, kp, scores=np.full(len(rows), 0.8) if v < 2 else None,
                  extra_person=v == 0)
        files.append(str(tmp_path / f"cam{v}.json"))
    summary = ingest_coco(files, out=str(tmp_path / "ds"), rig=rig4, sequence="clip", subject="A", split="val",
                          progress=False)
    assert summary.skeleton == "coco17" and summary.rows_by("split") == {("val",): (1, 6, 0)}
    back = Dataset(str(tmp_path / "ds")).read_frames()
    assert list(back.frame) == [10, 11, 12, 13, 14, 15]
    np.testing.assert_allclose(back.scores[1, 0], 0.9, rtol=1e-6)  # detector confidence kept per keypoint
    assert back.scores[0, 0, 4] == 0 and np.isnan(back.keypoints[0, 0, 4]).all()
    assert back.scores[1, 2, 5] == 0 and np.isnan(back.keypoints[1, 2, 5]).all()
    assert (back.scores[2, 2] == 1).all()  # GT visibility 2, no annotation score -> 1
    assert np.isnan(back.keypoints[2, 3]).all() and (back.scores[2, 3] == 0).all()  # camera 3 lacks frame 12
    np.testing.assert_allclose(back.keypoints[3, 0, 1:], pix[3, 0, 1:], atol=1e-3)  # not the bystander
    assert back.keypoints.shape[2] == COCO17.num_joints


def test_coco_bad_inputs_are_one_line_errors_naming_file_and_field(tmp_path: Path, rig4, rng) -> None:
    kp = np.concatenate([views(rig4, motion(rng, 2, 17))[:, 0], np.full((2, 17, 1), 1.7)], -1)
    coco_json(tmp_path / "a.json", [0, 1], kp)
    files = [str(tmp_path / "a.json")] * 4
    with pytest.raises(ValueError, match=r"a\.json: field 'keypoints' third value 1\.7"):
        ingest_coco(files, out=str(tmp_path / "ds"), rig=rig4, sequence="s", split="train", progress=False)
    with pytest.raises(ValueError, match="3 COCO files for rig 'h36m-s1' with 4 cameras"):
        ingest_coco(files[:3], out=str(tmp_path / "ds"), rig=rig4, sequence="s", split="train", progress=False)
    (tmp_path / "b.json").write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "keypoints": [1] * 9}]}))
    with pytest.raises(ValueError, match=r"b\.json: field 'annotations\[0\]\.keypoints' has 9 values, expected 51"):
        ingest_coco([str(tmp_path / "b.json")] * 4, out=str(tmp_path / "ds"), rig=rig4, sequence="s",
                    split="train", progress=False)
    assert no_dataset(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_npz_ingests_and_prints_a_summary_table(tmp_path: Path, rig4, rng) -> None:
    npz_file(tmp_path / "walk.npz", rig4, rng)
    result = CliRunner().invoke(app, ["npz", str(tmp_path / "walk.npz"), "--rig", str(RIGS / "h36m-s1.json"),
                                      "--out", str(tmp_path / "ds"), "--split-by", "sequence:1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "h36m-s1" in result.stdout and "train" in result.stdout and "12" in result.stdout
    assert Dataset(str(tmp_path / "ds")).manifest.num_rows == 12


def test_cli_bad_input_prints_one_red_line_and_exits_1_without_traceback(tmp_path: Path, rig4, rng) -> None:
    npz_file(tmp_path / "walk.npz", rig4, rng, camera_names=["a", "b", "c", "d"])
    result = CliRunner().invoke(app, ["npz", str(tmp_path / "walk.npz"), "--rig", str(RIGS / "h36m-s1.json"),
                                      "--out", str(tmp_path / "ds"), "--split", "train", "--no-progress"])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error:") and "walk.npz" in result.stderr
    assert "camera_names" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert no_dataset(tmp_path / "ds")


def test_cli_h36m_humaneva_and_coco_commands_run(tmp_path: Path, rig4, rng) -> None:
    f = h36m_files(tmp_path, rng, subjects=("S1",))
    runner = CliRunner()
    result = runner.invoke(app, ["h36m", f["d2"], "--data-3d", f["d3"], "--out", str(tmp_path / "h36m"),
                                 "--rigs-dir", str(RIGS), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "note:" in result.stdout and "cut to 30 frames" in result.stdout
    g = humaneva_files(tmp_path, rng)
    result = runner.invoke(app, ["humaneva", g["d2"], "--out", str(tmp_path / "he"), "--rigs-dir", str(RIGS),
                                 "--include-unlabeled", "--subject", "S1"])  # progress bars on
    assert result.exit_code == 0, result.output
    assert "unlabeled" in result.stdout
    kp = np.concatenate([views(rig4, motion(rng, 3, 17))[:, 0], np.full((3, 17, 1), 2.0)], -1)
    coco_json(tmp_path / "c.json", [0, 1, 2], kp)
    result = runner.invoke(app, ["coco", *[str(tmp_path / "c.json")] * 4, "--rig", str(RIGS / "h36m-s1.json"),
                                 "--sequence", "clip", "--split", "test", "--out", str(tmp_path / "coco"),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert Dataset(str(tmp_path / "coco")).manifest.splits()["test"]["rows"] == 3


def test_cli_help_documents_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("npz", "h36m", "humaneva", "coco"):
        assert cmd in result.stdout
