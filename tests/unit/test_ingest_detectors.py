"""rigpose.data.ingest openpose / mmpose / mediapipe: detector outputs of a known 3D pose seen by a small rig.

Every fixture is written here: a 3-camera rig, a person (and a second one) projected through it, and the files
each detector would write, with the joint orders typed from the detectors' own documentation (OpenPose's
output doc, HALPE-26, MediaPipe's PoseLandmark), not taken from the code under test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rigpose.cli.ingest import app
from rigpose.data.ingest import (
    ingest_mediapipe,
    ingest_mmpose,
    ingest_openpose,
    parse_camera_map,
    parse_split_ranges,
    split_of_frames,
)
from rigpose.data.manifest import read_manifest
from rigpose.data.reader import Dataset
from rigpose.geometry import look_at, project
from rigpose.rig import Camera, Rig, save_rig

# coco17 in COCO order, OpenPose-style short names
COCO = ("Nose", "LEye", "REye", "LEar", "REar", "LShoulder", "RShoulder", "LElbow", "RElbow", "LWrist", "RWrist",
        "LHip", "RHip", "LKnee", "RKnee", "LAnkle", "RAnkle")
BODY_25 = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip",
           "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe",
           "LHeel", "RBigToe", "RSmallToe", "RHeel")
COCO_18 = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee",
           "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar")
HALPE_26 = (*COCO, "Head", "Neck", "Hip", "LBigToe", "RBigToe", "LSmallToe", "RSmallToe", "LHeel", "RHeel")
MEDIAPIPE_33 = ("NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE",
                "RIGHT_EYE_OUTER", "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER",
                "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY",
                "RIGHT_PINKY", "LEFT_INDEX", "RIGHT_INDEX", "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP", "RIGHT_HIP",
                "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE", "RIGHT_ANKLE", "LEFT_HEEL", "RIGHT_HEEL",
                "LEFT_FOOT_INDEX", "RIGHT_FOOT_INDEX")
MP_OF_COCO = {"Nose": "NOSE", "LEye": "LEFT_EYE", "REye": "RIGHT_EYE", "LEar": "LEFT_EAR", "REar": "RIGHT_EAR",
              **{f"{s[0]}{j}": f"{s}_{j.upper()}" for s in ("LEFT", "RIGHT")
                 for j in ("Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")}}

# A standing person in world metres (z up), coco17 order; the subject's left is +x.
POSE = np.array([
    [0.0, -0.08, 1.62], [0.03, -0.06, 1.66], [-0.03, -0.06, 1.66], [0.08, 0.0, 1.63], [-0.08, 0.0, 1.63],
    [0.19, 0.0, 1.42], [-0.19, 0.0, 1.42], [0.24, 0.02, 1.14], [-0.24, 0.02, 1.14], [0.26, -0.05, 0.88],
    [-0.26, -0.05, 0.88], [0.11, 0.0, 0.94], [-0.11, 0.0, 0.94], [0.12, -0.02, 0.50], [-0.12, -0.02, 0.50],
    [0.12, 0.03, 0.08], [-0.12, 0.03, 0.08]])
OTHER = np.array([0.9, 0.4, 0.0])  # where the second person stands
W, H = 640, 480


@pytest.fixture
def rig() -> Rig:
    cams = []
    for name, angle in (("c0", 0.0), ("c1", 120.0), ("c2", 240.0)):
        a = np.deg2rad(angle)
        R, t = look_at([3.2 * np.cos(a), 3.2 * np.sin(a), 1.2], [0.0, 0.0, 0.9])
        cams.append(Camera(name=name, width=W, height=H, K=[[520, 0, 322], [0, 518, 238], [0, 0, 1]],
                           dist=[0.02, -0.01, 0.0, 0.0, 0.0], R=R, t=t))
    return Rig(rig_id="lab3", cameras=tuple(cams))


def pixels(rig: Rig, X_J3: np.ndarray) -> np.ndarray:
    """[V, J, 2] pixels of world points [J, 3] in every camera."""
    return np.stack([project(X_J3, cam) for cam in rig.cameras])


def pose_at(t: int, *, other: bool = False) -> np.ndarray:
    return POSE + np.array([0.03 * t, 0.0, 0.0]) + (OTHER if other else 0.0)


def to_format(pix_J2: np.ndarray, order: tuple[str, ...], conf: float = 0.9) -> list[float]:
    """Flat [x, y, c] * K in `order`; joints that are not coco17 get a decoy point (so a wrong map shows)."""
    out = []
    for name in order:
        x, y = pix_J2[COCO.index(name)] if name in COCO else (5.0, 7.0)
        out += [float(x), float(y), conf]
    return out


def no_dataset(root: Path) -> bool:
    return read_manifest(str(root)) is None and not list(root.glob("rig_id=*/**/*.parquet"))


# ---------------------------------------------------------------------------------------------- OpenPose


def write_openpose(pose_dir: Path, cam: str, frame: int, people: list[tuple[list[float], int]], *,
                   pose2sim: bool = False) -> Path:
    """One frame file in Pose2Sim's layout: OpenPose's `<name>_<12 digits>_keypoints.json` or Pose2Sim's
    `<name>_<6 digits>.json`."""
    folder = pose_dir / f"{cam}_json"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{cam}_{frame:06d}.json" if pose2sim else f"{cam}_{frame:012d}_keypoints.json")
    doc = {"version": 1.3, "people": [{"person_id": [pid], "pose_keypoints_2d": kp, "face_keypoints_2d": []}
                                      for kp, pid in people]}
    path.write_text(json.dumps(doc))
    return path


def single_person(pose_dir: Path, rig: Rig, order: tuple[str, ...], T: int = 4, **kw) -> np.ndarray:
    """Frames 0..T-1 of one person in every camera; returns its coco17 pixels [T, V, J, 2]."""
    pix = np.stack([pixels(rig, pose_at(t)) for t in range(T)])
    for t in range(T):
        for v, cam in enumerate(rig.camera_names):
            write_openpose(pose_dir, cam, t, [(to_format(pix[t, v], order), -1)], **kw)
    return pix


@pytest.mark.parametrize(("order", "pose2sim", "name"), [(BODY_25, False, "body25"), (COCO_18, False, "coco18"),
                                                         (HALPE_26, True, "halpe26"), (COCO, True, "coco17")])
def test_openpose_formats_put_each_joint_at_its_coco17_place(tmp_path: Path, rig, order, pose2sim, name) -> None:
    pix = single_person(tmp_path / "pose", rig, order, pose2sim=pose2sim)
    summary = ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train",
                              progress=False)
    assert summary.skeleton == "coco17" and summary.num_rows == 4 and summary.manifest.history[-1]["recipe"][
        "skeleton"] == name
    back = Dataset(str(tmp_path / "ds")).read_frames()
    np.testing.assert_allclose(back.keypoints, pix, atol=1e-3)
    np.testing.assert_allclose(back.scores, 0.9, rtol=1e-6)
    # a known joint: the right wrist is OpenPose point 4 (BODY_25 / COCO-18) or 10 (HALPE-26), coco17 joint 10
    src = json.loads(next((tmp_path / "pose" / "c1_json").glob("*2*.json")).read_text())["people"][0]
    k = order.index("RWrist")
    np.testing.assert_allclose(back.keypoints[2, 1, 10], src["pose_keypoints_2d"][3 * k: 3 * k + 2], atol=1e-3)
    assert list(back.frame) == [0, 1, 2, 3]
    assert set(back.sequence) == {tmp_path.name}  # the folder above `pose` (Pose2Sim's trial folder)


def test_openpose_sequence_defaults_to_the_trial_folder_of_a_pose2sim_pose_dir(tmp_path: Path, rig) -> None:
    single_person(tmp_path / "Trial_1" / "pose", rig, HALPE_26, T=2, pose2sim=True)
    summary = ingest_openpose(str(tmp_path / "Trial_1" / "pose"), out=str(tmp_path / "ds"), rig=rig,
                              split="train", progress=False)
    assert [s.sequence for s in summary.sequences] == ["Trial_1"]


def test_openpose_aligns_frames_by_file_number_and_masks_a_missing_file(tmp_path: Path, rig) -> None:
    pix = single_person(tmp_path / "pose", rig, BODY_25, T=4)
    (tmp_path / "pose" / "c2_json" / "c2_000000000001_keypoints.json").unlink()
    (tmp_path / "pose" / "c2_img").mkdir()  # Pose2Sim's image folder: not a camera
    ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train", progress=False)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    assert np.isnan(back.keypoints[1, 2]).all() and (back.scores[1, 2] == 0).all()
    np.testing.assert_allclose(back.keypoints[1, :2], pix[1, :2], atol=1e-3)


def test_openpose_zero_confidence_point_is_missing(tmp_path: Path, rig) -> None:
    pix = single_person(tmp_path / "pose", rig, BODY_25, T=2)
    path = tmp_path / "pose" / "c0_json" / "c0_000000000000_keypoints.json"
    kp = to_format(pix[0, 0], BODY_25)
    kp[3 * 7: 3 * 8] = [0.0, 0.0, 0.0]  # OpenPose's "not found": point 7 = LWrist = coco17 9
    path.write_text(json.dumps({"people": [{"person_id": [-1], "pose_keypoints_2d": kp}]}))
    ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train", progress=False)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    assert np.isnan(back.keypoints[0, 0, 9]).all() and back.scores[0, 0, 9] == 0
    assert back.scores[0, 0, 10] > 0


def crowd_scene(pose_dir: Path, rig: Rig) -> np.ndarray:
    """Frames 0-5 (person A, tracked id 0; person B, id 1), returns A's pixels [6, V, J, 2]:
    0, 1: A alone.  2: A, plus in c0 and c1 a more confident ghost that no 3D point explains.
    3: nobody anywhere.  4: A and B, both real, B more confident.  5: A and B in c0, A in c1, only B in c2."""
    a = np.stack([pixels(rig, pose_at(t)) for t in range(6)])
    b = np.stack([pixels(rig, pose_at(t, other=True)) for t in range(6)])
    ghost = {0: a[2, 0] + [150.0, 10.0], 1: a[2, 1] + [-110.0, 40.0]}
    for t in range(6):
        for v, cam in enumerate(rig.camera_names):
            people = []
            if t != 3 and not (t == 5 and v == 2):
                people.append((to_format(a[t, v], BODY_25, 0.7), 0))
            if t == 2 and v in ghost:
                people.insert(0, (to_format(ghost[v], BODY_25, 0.95), -1))
            if t == 4 or (t == 5 and v != 1):
                people.insert(0, (to_format(b[t, v], BODY_25, 0.95), 1))
            write_openpose(pose_dir, cam, t, people)
    return a


def test_openpose_keeps_the_person_whose_views_agree_and_counts_empty_and_crowded_frames(tmp_path: Path,
                                                                                       rig) -> None:
    a = crowd_scene(tmp_path / "pose", rig)
    summary = ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train",
                              sequence="crowd", progress=False)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    assert list(back.frame) == [0, 1, 2, 4, 5]  # frame 3 (nobody) left out
    rows = {f: i for i, f in enumerate(back.frame)}
    for t in (0, 1, 2, 4):  # the ghost loses on geometry, B on continuity with frames 0-2
        np.testing.assert_allclose(back.keypoints[rows[t]], a[t], atol=1e-3)
    np.testing.assert_allclose(back.keypoints[rows[5], :2], a[5, :2], atol=1e-3)
    assert (back.scores[rows[5], 2] == 0).all()  # c2 saw only B: left empty, not filled with the wrong person
    assert summary.counts == {"frames": 6, "frames_without_person": 1, "frames_with_several_people": 3,
                              "views_rejected": 1}
    notes = " ".join(summary.notes)
    assert "1 of 6 frames have no person" in notes and "3 of 6 frames have several people" in notes
    assert "tracked person ids [0, 1]" in notes


def test_openpose_person_id_follows_the_tracked_person(tmp_path: Path, rig) -> None:
    crowd_scene(tmp_path / "pose", rig)
    b = np.stack([pixels(rig, pose_at(t, other=True)) for t in range(6)])
    ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train", person_id=1,
                    progress=False)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    assert list(back.frame) == [4, 5]
    np.testing.assert_allclose(back.keypoints[0], b[4], atol=1e-3)
    assert (back.scores[1, 1] == 0).all() and (back.scores[1, [0, 2]] > 0).all()
    with pytest.raises(ValueError, match="person_id 7 is in no file"):
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds2"), rig=rig, split="train", person_id=7,
                        progress=False)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"people": [{"pose_keypoints_2d": [1, 2', ["c1_000000000002_keypoints.json", "not valid JSON"]),
        ('{"persons": []}', ["c1_000000000002_keypoints.json", "field 'people'"]),
        ('{"people": [{"pose_keypoints_2d": [1, 2, 0.5, 4]}]}',
         ["c1_000000000002_keypoints.json", "'people[0].pose_keypoints_2d'", "4 values"]),
        ('{"people": [{"pose_keypoints_2d": [1, "a", 0.5]}]}',
         ["c1_000000000002_keypoints.json", "'people[0].pose_keypoints_2d'", "not a list of numbers"]),
        ('{"people": [{"pose_keypoints_2d": ' + json.dumps([1.0, 2.0, 0.5] * 20) + "}]}",
         ["c1_000000000002_keypoints.json", "20 points", "earlier files have 25 (body25)"]),
        ('{"people": [{"pose_keypoints_2d": ' + json.dumps([1.0, 2.0, -0.5] * 25) + "}]}",
         ["c1_000000000002_keypoints.json", "negative"]),
    ],
)
def test_openpose_malformed_file_is_refused_naming_file_and_field_and_writes_nothing(
    tmp_path: Path, rig, content: str, words: list[str]
) -> None:
    single_person(tmp_path / "pose", rig, BODY_25)
    (tmp_path / "pose" / "c1_json" / "c1_000000000002_keypoints.json").write_text(content)
    with pytest.raises(ValueError) as e:
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train", progress=False)
    for w in words:
        assert w in str(e.value)
    assert "\n" not in str(e.value) and no_dataset(tmp_path / "ds")


def test_openpose_skeleton_comes_from_the_point_count_or_must_match_it(tmp_path: Path, rig) -> None:
    single_person(tmp_path / "odd", rig, BODY_25[:20], T=1)
    with pytest.raises(ValueError, match=r"c0_000000000000_keypoints\.json: field 'people\[0\]\.pose_keypoints_2d' "
                                         r"has 20 points per person, which is no known keypoint format \(17 "):
        ingest_openpose(str(tmp_path / "odd"), out=str(tmp_path / "ds"), rig=rig, split="train", progress=False)
    single_person(tmp_path / "pose", rig, BODY_25, T=1)
    with pytest.raises(ValueError, match=r"c0_000000000000_keypoints\.json: field 'people\[0\]\.pose_keypoints_2d' "
                                         r"has 25 points per person, skeleton 'coco18' has 18"):
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, skeleton="coco18",
                        split="train", progress=False)
    with pytest.raises(ValueError, match="unknown keypoint format"):
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, skeleton="body_25",
                        split="train", progress=False)


def test_openpose_camera_folders_need_rig_names_or_a_camera_map(tmp_path: Path, rig) -> None:
    pix = single_person(tmp_path / "pose", rig, BODY_25, T=2)
    for cam, video in (("c0", "left"), ("c1", "front")):
        (tmp_path / "pose" / f"{cam}_json").rename(tmp_path / "pose" / f"{video}_json")
    with pytest.raises(ValueError, match=r"unknown \['front', 'left'\].*--camera-map"):
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train", progress=False)
    cmap = parse_camera_map(["left_json=c0,front=c1"])
    with pytest.raises(ValueError, match=r"camera map names \['front'\] match no input"):
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train", camera_map=cmap,
                        progress=False)
    ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train",
                    camera_map=parse_camera_map(["left_json=c0", "front_json=c1"]), progress=False)
    np.testing.assert_allclose(Dataset(str(tmp_path / "ds")).read_frames().keypoints, pix, atol=1e-3)
    with pytest.raises(ValueError, match="camera map 'left_json': expected INPUT_NAME=RIG_CAMERA"):
        parse_camera_map(["left_json"])


# ---------------------------------------------------------------------------------------------- MMPose


def write_mmpose(path: Path, frames: list[list[tuple[np.ndarray, np.ndarray]]], *, track: bool = False) -> None:
    """MMPoseInferencer's saved video predictions: [{frame_id, instances: [{keypoints, keypoint_scores}]}]."""
    def instance(p: int, kp: np.ndarray, sc: np.ndarray) -> dict:
        return {"keypoints": kp.tolist(), "keypoint_scores": sc.tolist(), "bbox": [[0, 0, 10, 10]],
                "bbox_score": 0.9, **({"track_id": p} if track else {})}

    doc = [{"frame_id": f, "instances": [instance(p, kp, sc) for p, (kp, sc) in enumerate(people)]}
           for f, people in enumerate(frames)]
    path.write_text(json.dumps(doc))


def halpe(pix_J2: np.ndarray, score: float) -> tuple[np.ndarray, np.ndarray]:
    pts = np.array(to_format(pix_J2, HALPE_26, score)).reshape(-1, 3)
    return pts[:, :2], pts[:, 2]


def test_mmpose_halpe26_predictions_map_onto_coco17_and_clip_rtmpose_scores(tmp_path: Path, rig) -> None:
    T = 3
    pix = np.stack([pixels(rig, pose_at(t)) for t in range(T)])
    files = []
    for v, cam in enumerate(rig.camera_names):
        write_mmpose(tmp_path / f"{cam}.json", [[halpe(pix[t, v], 1.25 if v == 0 else 0.8)] for t in range(T)])
        files.append(str(tmp_path / f"{cam}.json"))
    summary = ingest_mmpose(files[::-1], out=str(tmp_path / "ds"), rig=rig, sequence="take", split="val",
                            progress=False)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    np.testing.assert_allclose(back.keypoints, pix, atol=1e-3)  # files given in any order: matched by stem
    assert (back.scores[:, 0] == 1).all() and np.allclose(back.scores[:, 1:], 0.8)
    assert summary.rows_by("split") == {("val",): (1, 3, 0)}
    assert any("clipped to 1" in n and "'c0': 51" in n for n in summary.notes)


def test_mmpose_track_id_and_bad_fields(tmp_path: Path, rig) -> None:
    a, b = pixels(rig, pose_at(0)), pixels(rig, pose_at(0, other=True))
    files = []
    for v, cam in enumerate(rig.camera_names):
        write_mmpose(tmp_path / f"{cam}.json", [[halpe(a[v], 0.9), halpe(b[v], 0.95)]], track=True)
        files.append(str(tmp_path / f"{cam}.json"))
    ingest_mmpose(files, out=str(tmp_path / "ds"), rig=rig, split="train", person_id=0, progress=False)
    np.testing.assert_allclose(Dataset(str(tmp_path / "ds")).read_frames().keypoints[0], a, atol=1e-3)
    doc = json.loads((tmp_path / "c1.json").read_text())
    doc[0]["instances"][1]["keypoint_scores"] = [0.5] * 3
    (tmp_path / "c1.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"c1\.json: field '\[0\]\.instances\[1\]\.keypoint_scores' has shape \[3\]"):
        ingest_mmpose(files, out=str(tmp_path / "ds2"), rig=rig, split="train", progress=False)
    assert no_dataset(tmp_path / "ds2")


# ---------------------------------------------------------------------------------------------- MediaPipe


def mp_points(pix_J2: np.ndarray) -> list[tuple[str, float, float, float]]:
    """33 (name, x, y, visibility), x and y normalised by the image size; non-coco landmarks are decoys."""
    by_name = {MP_OF_COCO[c]: pix_J2[j] for j, c in enumerate(COCO)}
    return [(n, *(by_name[n] / [W, H]), 0.9) if n in by_name else (n, 0.01, 0.02, 0.5) for n in MEDIAPIPE_33]


def test_mediapipe_json_and_csv_landmarks_become_pixels_of_the_rig_camera(tmp_path: Path, rig) -> None:
    T = 3
    pix = np.stack([pixels(rig, pose_at(t)) for t in range(T)])
    frames = [{"frame": 10 + t, "landmarks": [{"x": x, "y": y, "z": 0.0, "visibility": s}
                                              for _, x, y, s in mp_points(pix[t, 0])]} for t in range(T)]
    (tmp_path / "c0.json").write_text(json.dumps({"frames": frames}))
    for v, by_name in ((1, True), (2, False)):
        with open(tmp_path / f"c{v}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame", "landmark", "x", "y", "z", "visibility"])
            for t in range(T):
                for k, (n, x, y, s) in enumerate(mp_points(pix[t, v])):
                    w.writerow([10 + t, n if by_name else k, x, y, 0.0, s])
    files = [str(tmp_path / "c0.json"), str(tmp_path / "c1.csv"), str(tmp_path / "c2.csv")]
    ingest_mediapipe(files, out=str(tmp_path / "ds"), rig=rig, split="train", progress=False)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    assert list(back.frame) == [10, 11, 12]
    np.testing.assert_allclose(back.keypoints, pix, atol=1e-3)
    # a known landmark: LEFT_SHOULDER (MediaPipe 11) is coco17 joint 5, at x * width, y * height
    lm = frames[1]["landmarks"][11]
    np.testing.assert_allclose(back.keypoints[1, 0, 5], [lm["x"] * W, lm["y"] * H], atol=1e-3)
    np.testing.assert_allclose(back.scores, 0.9, rtol=1e-6)


def test_mediapipe_bad_rows_are_refused_naming_file_line_and_field(tmp_path: Path, rig) -> None:
    (tmp_path / "c0.csv").write_text("frame,landmark,x,y\n0,LEFT_SHOULDER,0.5,oops\n")
    with pytest.raises(ValueError, match=r"c0\.csv: line 2 field 'y' 'oops' is not a number"):
        ingest_mediapipe([str(tmp_path / "c0.csv")] * 3, out=str(tmp_path / "ds"), rig=rig, split="train",
                         progress=False)
    (tmp_path / "c0.csv").write_text("frame,landmark,x,y,score\n")
    with pytest.raises(ValueError, match=r"c0\.csv: header columns unknown \['score'\]"):
        ingest_mediapipe([str(tmp_path / "c0.csv")], out=str(tmp_path / "ds"), rig=rig, split="train",
                         progress=False)
    (tmp_path / "c0.json").write_text(json.dumps([{"frame": 0, "landmarks": [{"x": 0.5, "y": 0.5}] * 17}]))
    with pytest.raises(ValueError, match=r"c0\.json: field 'frames\[0\]\.landmarks' has 17 landmarks, expected 33"):
        ingest_mediapipe([str(tmp_path / "c0.json")], out=str(tmp_path / "ds"), rig=rig, split="train",
                         progress=False)
    assert no_dataset(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------- halpe26 out

# The person's HALPE-26 extras (world metres, facing -y like POSE): head top, neck, pelvis, toes ahead, heels behind.
EXTRA_26 = {"Head": [0.0, 0.0, 1.75], "Neck": [0.0, 0.0, 1.45], "Hip": [0.0, 0.0, 0.94],
            "LBigToe": [0.10, -0.15, 0.02], "RBigToe": [-0.10, -0.15, 0.02], "LSmallToe": [0.16, -0.11, 0.02],
            "RSmallToe": [-0.16, -0.11, 0.02], "LHeel": [0.12, 0.08, 0.03], "RHeel": [-0.12, 0.08, 0.03]}
POSE_26 = np.vstack([POSE, list(EXTRA_26.values())])  # HALPE_26 order
WHOLEBODY_133 = (*COCO, "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
                 *(f"face{i}" for i in range(68)), *(f"hand{i}" for i in range(42)))
MP_OF_26 = {**MP_OF_COCO, "LHeel": "LEFT_HEEL", "RHeel": "RIGHT_HEEL", "LBigToe": "LEFT_FOOT_INDEX",
            "RBigToe": "RIGHT_FOOT_INDEX"}


def to_format_26(pix_J2: np.ndarray, order: tuple[str, ...], conf: float = 0.9,
                 scores: dict[str, float] | None = None) -> list[float]:
    """Flat [x, y, c] * K in `order` from HALPE-26 pixels [26, 2] (BODY_25's MidHip is the Hip point); other points
    are decoys."""
    out = []
    for name in order:
        name26 = "Hip" if name == "MidHip" else name
        x, y = pix_J2[HALPE_26.index(name26)] if name26 in HALPE_26 else (5.0, 7.0)
        out += [float(x), float(y), (scores or {}).get(name, conf)]
    return out


@pytest.mark.parametrize(("order", "missing"), [(HALPE_26, []), (BODY_25, ["Head"])], ids=["halpe26", "body25"])
def test_openpose_writes_halpe26_with_head_neck_hip_and_feet(tmp_path: Path, rig, order, missing) -> None:
    pix = np.stack([pixels(rig, POSE_26 + [0.03 * t, 0.0, 0.0]) for t in range(3)])  # [T, V, 26, 2]
    for t in range(3):
        for v, cam in enumerate(rig.camera_names):
            write_openpose(tmp_path / "pose", cam, t, [(to_format_26(pix[t, v], order), -1)])
    summary = ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train",
                              out_skeleton="halpe26", progress=False)
    assert summary.skeleton == "halpe26" and Dataset(str(tmp_path / "ds")).skeleton.name == "halpe26"
    back = Dataset(str(tmp_path / "ds")).read_frames()
    gone = [HALPE_26.index(n) for n in missing]
    keep = [j for j in range(26) if j not in gone]
    np.testing.assert_allclose(back.keypoints[:, :, keep], pix[:, :, keep], atol=1e-3)
    assert np.isnan(back.keypoints[:, :, gone]).all() and (back.scores[:, :, gone] == 0).all()


def test_mmpose_wholebody_writes_halpe26_with_neck_and_hip_derived_at_the_lower_score(tmp_path: Path, rig) -> None:
    pix = pixels(rig, POSE_26)  # [V, 26, 2]
    scores = {"LShoulder": 0.6, "RShoulder": 0.8, "LHip": 0.9, "RHip": 0.7}
    files = []
    for v, cam in enumerate(rig.camera_names):
        pts = np.array(to_format_26(pix[v], WHOLEBODY_133, scores=scores)).reshape(-1, 3)
        write_mmpose(tmp_path / f"{cam}.json", [[(pts[:, :2], pts[:, 2])]])
        files.append(str(tmp_path / f"{cam}.json"))
    ingest_mmpose(files, out=str(tmp_path / "ds"), rig=rig, split="train", out_skeleton="halpe26", progress=False)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    J = HALPE_26.index
    np.testing.assert_allclose(back.keypoints[0, :, J("Neck")], (pix[:, J("LShoulder")] + pix[:, J("RShoulder")]) / 2,
                               atol=1e-3)  # the mean of the 2D points, not the projection of the 3D neck
    np.testing.assert_allclose(back.keypoints[0, :, J("Hip")], (pix[:, J("LHip")] + pix[:, J("RHip")]) / 2, atol=1e-3)
    np.testing.assert_allclose(back.scores[0, :, J("Neck")], 0.6, rtol=1e-6)
    np.testing.assert_allclose(back.scores[0, :, J("Hip")], 0.7, rtol=1e-6)
    feet = [J(n) for n in ("LBigToe", "RBigToe", "LSmallToe", "RSmallToe", "LHeel", "RHeel")]
    np.testing.assert_allclose(back.keypoints[0][:, feet], pix[:, feet], atol=1e-3)
    assert np.isnan(back.keypoints[0, :, J("Head")]).all()


def test_mediapipe_writes_halpe26_with_heels_and_foot_index_and_no_small_toes(tmp_path: Path, rig) -> None:
    pix = pixels(rig, POSE_26)
    by_name = {mp: pix[:, HALPE_26.index(n)] for n, mp in MP_OF_26.items()}
    for v, cam in enumerate(rig.camera_names):
        lms = [{"x": by_name[n][v][0] / W, "y": by_name[n][v][1] / H, "visibility": 0.9} if n in by_name
               else {"x": 0.01, "y": 0.02, "visibility": 0.5} for n in MEDIAPIPE_33]
        (tmp_path / f"{cam}.json").write_text(json.dumps([{"landmarks": lms}]))
    ingest_mediapipe([str(tmp_path / f"{c}.json") for c in rig.camera_names], out=str(tmp_path / "ds"), rig=rig,
                     split="train", out_skeleton="halpe26", progress=False)
    back = Dataset(str(tmp_path / "ds")).read_frames()
    J = HALPE_26.index
    seen = [J(n) for n in (*COCO, "LBigToe", "RBigToe", "LHeel", "RHeel")]
    np.testing.assert_allclose(back.keypoints[0][:, seen], pix[:, seen], atol=1e-3)
    for n in ("Head", "LSmallToe", "RSmallToe"):
        assert np.isnan(back.keypoints[0, :, J(n)]).all() and (back.scores[0, :, J(n)] == 0).all()


def test_halpe26_out_is_refused_for_formats_without_feet_and_other_skeletons_are_refused(tmp_path: Path,
                                                                                          rig) -> None:
    single_person(tmp_path / "pose", rig, COCO, T=1)
    with pytest.raises(ValueError, match=r"format 'coco17' has no foot points"):
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train",
                        out_skeleton="halpe26", progress=False)
    with pytest.raises(ValueError, match=r"format 'coco18' has no foot points"):
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, split="train",
                        skeleton="coco18", out_skeleton="halpe26", progress=False)
    with pytest.raises(ValueError, match=r"out_skeleton 'h36m17': the detector converters write coco17 or halpe26"):
        ingest_mediapipe([str(tmp_path / "c0.json")], out=str(tmp_path / "ds"), rig=rig, split="train",
                         out_skeleton="h36m17", progress=False)
    assert no_dataset(tmp_path / "ds")


def test_cli_out_skeleton_halpe26_writes_a_halpe26_dataset(tmp_path: Path, rig) -> None:
    save_rig(rig, tmp_path / "rig.json")
    pix = pixels(rig, POSE_26)
    for v, cam in enumerate(rig.camera_names):
        pts = np.array(to_format_26(pix[v], HALPE_26)).reshape(-1, 3)
        write_mmpose(tmp_path / f"{cam}.json", [[(pts[:, :2], pts[:, 2])]])
    files = [str(tmp_path / f"{c}.json") for c in rig.camera_names]
    result = CliRunner().invoke(app, ["mmpose", *files, "--rig", str(tmp_path / "rig.json"), "--out",
                                      str(tmp_path / "mm"), "--out-skeleton", "halpe26", "--split", "test",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "(halpe26)" in result.stdout and read_manifest(str(tmp_path / "mm")).skeleton == "halpe26"


# ---------------------------------------------------------------------------------------------- splits, bounds


def test_parse_split_ranges_reads_fractions_and_frame_numbers() -> None:
    assert parse_split_ranges("train=0:0.7,val=0.7:0.8,test=0.8:1") == (
        [("train", 0.0, 0.7), ("val", 0.7, 0.8), ("test", 0.8, 1.0)], True)
    assert parse_split_ranges("train=0:500,test=500:") == ([("train", 0.0, 500.0), ("test", 500.0, None)], False)
    labels = split_of_frames(np.arange(10), "train=0:0.6,val=0.6:0.8,test=0.8:1")
    assert list(labels) == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert list(split_of_frames(np.arange(100, 105), "a=:102,b=103:")) == ["a", "a", "", "b", "b"]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("train=0:x", ["'train=0:x'", "'x' is not a frame number"]),
        ("train=0:0.5,test=0.4:1", ["'train=0:0.5'", "'test=0.4:1'", "overlap"]),
        ("train=0:500,test=0.5:1", ["'train=0:500'", "500 is outside [0, 1]"]),
        ("train0:1,test=1:2", ["'train0:1'", "NAME=START:STOP"]),
        ("train=0.5:0.2", ["'train=0.5:0.2'", "empty"]),
        ("tr/ain=0:1", ["'tr/ain'"]),
    ],
)
def test_parse_split_ranges_refuses_bad_parts_naming_them(spec: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        parse_split_ranges(spec)
    for w in words:
        assert w in str(e.value)


def test_split_ranges_cut_one_capture_into_sequences_per_split(tmp_path: Path, rig) -> None:
    single_person(tmp_path / "pose", rig, COCO, T=10)
    summary = ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=rig, sequence="take",
                              split="train=0:0.6,val=0.6:0.8,test=0.8:1", progress=False)
    assert summary.rows_by("split", "sequence") == {("test", "take-test"): (1, 2, 0),
                                                    ("train", "take-train"): (1, 6, 0),
                                                    ("val", "take-val"): (1, 2, 0)}
    by_split = {s: sorted(Dataset(str(tmp_path / "ds")).read_frames(splits=[s]).frame) for s in ("train", "test")}
    assert by_split == {"train": [0, 1, 2, 3, 4, 5], "test": [8, 9]}
    summary = ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds2"), rig=rig, sequence="take",
                              split="train=0:4,test=7:", progress=False)
    assert summary.rows_by("split") == {("test",): (1, 3, 0), ("train",): (1, 4, 0)}
    assert any("3 frames lie in no range" in n for n in summary.notes)
    with pytest.raises(ValueError, match="not both"):
        ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds3"), rig=rig, split="train=0:4",
                        split_by="sequence:1", progress=False)


def test_keypoints_outside_the_calibrated_image_warn_naming_camera_and_coordinates(tmp_path: Path, rig) -> None:
    pix = single_person(tmp_path / "pose", rig, BODY_25, T=3)
    c2 = rig.cameras[2]
    small = Rig(rig_id="lab3", cameras=(*rig.cameras[:2], Camera(name="c2", width=400, height=300, K=c2.K,
                                                                 dist=c2.dist, R=c2.R, t=c2.t)))
    summary = ingest_openpose(str(tmp_path / "pose"), out=str(tmp_path / "ds"), rig=small, split="train",
                              progress=False)
    assert len(summary.warnings) == 1
    message = summary.warnings[0]
    ymax, n_out = pix[:, 2, :, 1].max(), int((pix[:, 2, :, 1] > 300).sum() + (pix[:, 2, :, 0] > 400).sum())
    assert "camera 'c2'" in message and "400x300" in message and f"{ymax:.1f}" in message
    assert f"{n_out} of 51 keypoints" in message
    save_rig(small, tmp_path / "small.json")
    result = CliRunner().invoke(app, ["openpose", str(tmp_path / "pose"), "--rig", str(tmp_path / "small.json"),
                                      "--out", str(tmp_path / "ds2"), "--split", "train", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stdout and "'c2'" in result.stdout


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_detector_commands_ingest_and_document_an_example(tmp_path: Path, rig) -> None:
    save_rig(rig, tmp_path / "rig.json")
    runner = CliRunner()
    crowd_scene(tmp_path / "pose", rig)
    result = runner.invoke(app, ["openpose", str(tmp_path / "pose"), "--rig", str(tmp_path / "rig.json"), "--out",
                                 str(tmp_path / "op"), "--split", "train=0:0.5,test=0.5:1", "--person-id", "0",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert Dataset(str(tmp_path / "op")).manifest.splits()["train"]["rows"] == 3
    pix = pixels(rig, pose_at(0))
    for cam, v in (("c0", 0), ("c1", 1), ("video2", 2)):
        write_mmpose(tmp_path / f"{cam}.json", [[halpe(pix[v], 0.9)]])
    files = [str(tmp_path / f"{c}.json") for c in ("c0", "c1", "video2")]
    result = runner.invoke(app, ["mmpose", *files, "--rig", str(tmp_path / "rig.json"), "--out", str(tmp_path / "mm"),
                                 "--camera-map", "video2=c2", "--split", "test", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["mmpose", *files, "--rig", str(tmp_path / "rig.json"), "--out", str(tmp_path / "mm2"),
                                 "--camera-map", "video2", "--split", "test", "--no-progress"])
    assert result.exit_code == 1 and "camera map 'video2'" in result.stderr
    (tmp_path / "mp").mkdir()
    for v, cam in enumerate(rig.camera_names):
        lms = [{"x": x, "y": y, "visibility": s} for _, x, y, s in mp_points(pix[v])]
        (tmp_path / "mp" / f"{cam}.json").write_text(json.dumps([{"pose_landmarks": [lms]}]))
    result = runner.invoke(app, ["mediapipe", *[str(tmp_path / "mp" / f"{c}.json") for c in rig.camera_names],
                                 "--rig", str(tmp_path / "rig.json"), "--out", str(tmp_path / "mp_ds"), "--split",
                                 "train", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "mp" in {s for s in Dataset(str(tmp_path / "mp_ds")).read_frames().sequence}
    for cmd in ("openpose", "mmpose", "mediapipe"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0 and "Example" in result.stdout and f"ingest {cmd}" in result.stdout


def test_choose_people_never_mixes_two_noisy_people_across_views(rig, rng) -> None:
    from rigpose.data.ingest import choose_people
    from rigpose.data.ingest.detectors import People
    from rigpose.data.ingest.people import torso_normalized

    gate_px = np.full(3, 0.05 * np.hypot(W, H))
    for t in range(20):
        a, b = pixels(rig, pose_at(t)), pixels(rig, pose_at(t, other=True))
        missed = t % 3  # the view where A was not detected
        cands, xy = [], []
        for v, cam in enumerate(rig.cameras):
            kp = np.stack([b[v], a[v]] if v != missed else [b[v]]) + rng.normal(0, 3, (2 if v != missed else 1, 17, 2))
            score = np.stack([np.full(17, 0.9), np.full(17, 0.6)][: len(kp)])
            cands.append(People(kp.astype(np.float32), score.astype(np.float32), np.full(len(kp), -1), "s"))
            xy.append(torso_normalized(kp, cam))
        chosen = choose_people(cands, xy, rig.arrays(), gate_px)
        who = {("b" if c == 0 else "a") for c in chosen if c >= 0}
        assert len(who) == 1 and sum(c >= 0 for c in chosen) >= 2, (t, chosen)


def test_choose_people_checks_single_person_views_in_a_crowded_take(rig) -> None:
    """Each view holds one person, but not the same one (view 0 missed A, views 1 and 2 missed B): in a take with
    several people somewhere (`crowd`), the views are checked and the odd one out is dropped; without it the frame
    is kept as detected (one person per view is taken at its word). Found on Pose2Sim's Demo_MultiPerson, where such
    frames became rows mixing the two people (100-270 px reprojection)."""
    from rigpose.data.ingest import choose_people
    from rigpose.data.ingest.detectors import People
    from rigpose.data.ingest.people import torso_normalized

    gate_px = np.full(3, 0.05 * np.hypot(W, H))
    a, b = pixels(rig, pose_at(0)), pixels(rig, pose_at(0, other=True))
    cands, xy = [], []
    for v, cam in enumerate(rig.cameras):
        kp = (b if v == 0 else a)[v][None].astype(np.float32)
        cands.append(People(kp, np.full((1, 17), 0.9, np.float32), np.full(1, -1), "s"))
        xy.append(torso_normalized(kp, cam))
    assert choose_people(cands, xy, rig.arrays(), gate_px) == [0, 0, 0]
    assert choose_people(cands, xy, rig.arrays(), gate_px, crowd=True) == [-1, 0, 0]
