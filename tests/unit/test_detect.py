"""`rigpose detect`: help, one-line refusals (missing or unreadable video, existing output, missing extra, rtmlib or
weights), frame selection, the RTMPose writer through a stand-in rtmlib, and a real MediaPipe detection of five
frames of Pose2Sim's Demo_MultiPerson (two cameras, tests/fixtures/video) read back by the mediapipe ingest."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.detect import DetectorUnavailableError, detect_videos
from rigpose.detect.frames import open_source
from rigpose.detect.mediapipe import load_pose_model
from rigpose.rig import Rig
from rigpose.rig_import import import_qualisys

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLIPS = FIXTURES / "video" / "Demo_MultiPerson"
VIDEOS = [str(CLIPS / "cam01.mp4"), str(CLIPS / "cam02.mp4")]
QCA = FIXTURES / "calib" / "Demo_MultiPerson_Calib.qca.txt"
runner = CliRunner()


def demo_rig(cameras: tuple[str, ...] = ("cam01", "cam02")) -> Rig:
    """The Demo_MultiPerson calibration (1088 x 1920 cameras) cut to the cameras of the fixture clips."""
    rig = import_qualisys(QCA)
    return Rig(rig_id="demo-multiperson", cameras=tuple(c for c in rig.cameras if c.name in cameras))


def test_detect_help_shows_the_options_and_the_ingest_that_follows() -> None:
    result = runner.invoke(app, ["detect", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("--out", "--detector", "--model", "--weights", "--every", "--max-frames", "Examples",
                 "rigpose datasets ingest mediapipe", "pip download mediapipe==0.10.21"):
        assert text in result.stdout, text


def test_detect_refuses_a_missing_video_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "cam09.mp4"
    result = runner.invoke(app, ["detect", str(missing), "--out", str(tmp_path / "pose")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {missing}: no such video file or image folder"
    assert not (tmp_path / "pose").exists()


def test_detect_refuses_an_unreadable_video_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "cam01.mp4"
    bad.write_text("not a video")
    result = runner.invoke(app, ["detect", str(bad), "--out", str(tmp_path / "pose")])
    assert result.exit_code == 1
    assert f"{bad}: cannot be read as a video" in result.stderr


def test_detect_without_the_extra_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # `import mediapipe` raises ImportError
    result = runner.invoke(app, ["detect", *VIDEOS, "--out", str(tmp_path / "pose")])
    assert result.exit_code == 1
    assert "pip install 'rigpose[detect]'" in result.stderr and "mediapipe==0.10.31" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_detect_refuses_an_existing_output_before_detecting(tmp_path: Path) -> None:
    (tmp_path / "pose").mkdir()
    (tmp_path / "pose" / "cam02.json").write_text("[]")
    with pytest.raises(ValueError, match=r"cam02\.json exists .* --overwrite"):
        detect_videos(VIDEOS, out=str(tmp_path / "pose"), weights=tmp_path / "no-weights")
    with pytest.raises(ValueError, match="are both camera 'cam01'"):
        detect_videos([VIDEOS[0], VIDEOS[0]], out=str(tmp_path / "other"))


def test_mediapipe_without_weights_says_where_to_put_which_file(tmp_path: Path) -> None:
    hint = r"pose_landmarker_full\.task .* pip download mediapipe==0\.10\.21"
    with pytest.raises(DetectorUnavailableError, match=hint):
        load_pose_model("full", weights=tmp_path)
    with pytest.raises(DetectorUnavailableError, match=r"lite\.task there \(the mediapipe wheels package only 'full'"):
        load_pose_model("lite", weights=tmp_path)
    with pytest.raises(ValueError, match=r"expected a \.task model bundle or a mediapipe \.whl"):
        load_pose_model("full", weights=Path(VIDEOS[0]))


def test_frames_keep_the_video_numbers_with_every_and_max_frames(tmp_path: Path) -> None:
    clip = open_source(VIDEOS[0])
    assert (clip.camera, clip.width, clip.height, clip.num_frames) == ("cam01", 272, 480, 5)
    assert [n for n, _ in clip.frames(every=2)] == [0, 2, 4] == clip.frame_numbers(every=2)
    assert [n for n, _ in clip.frames(every=2, max_frames=2)] == [0, 2]
    folder = tmp_path / "cam07"
    folder.mkdir()
    for n in (12, 3, 7):  # numbered by the last number in the name, not by position
        cv2.imwrite(str(folder / f"take2_{n:04d}.png"), np.full((6, 8, 3), n, np.uint8))
    frames = list(open_source(folder).frames())
    assert [n for n, _ in frames] == [3, 7, 12] and frames[0][1].shape == (6, 8, 3)
    assert open_source(folder).camera == "cam07"


def fake_rtmlib(calls: list[str]) -> types.ModuleType:
    """A stand-in for rtmlib 0.0.16's BodyWithFeet: one person, keypoint k at (10 + k, 20 + k) px with score 0.9;
    nobody in frame 3 (the detector finds no box)."""

    class BodyWithFeet:
        MODE: ClassVar = {m: {"det": f"https://example.invalid/{m}/yolox-{m}.zip", "det_input_size": (640, 640),
                    "pose": f"https://example.invalid/{m}/rtmpose-{m}-halpe26.zip", "pose_input_size": (192, 256)}
                for m in ("lightweight", "balanced", "performance")}

        def __init__(self, **kwargs: object) -> None:
            calls.append(str(kwargs["pose"]))
            self.frame = -1

            def det(image: np.ndarray) -> np.ndarray:
                self.frame += 1
                assert image.shape == (480, 272, 3)
                return np.zeros((0, 4)) if self.frame == 3 else np.array([[0.0, 0.0, 100.0, 200.0]])

            self.det_model = det
            self.pose_model = lambda image, bboxes: (10 + np.arange(26)[None, :, None] + [0, 10], np.full((1, 26), .9))

    return types.SimpleNamespace(BodyWithFeet=BodyWithFeet)  # type: ignore[return-value]


def test_rtmpose_refuses_without_rtmlib_or_its_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rtmlib", None)
    with pytest.raises(DetectorUnavailableError, match=r"pip install --no-deps rtmlib==0\.0\.16"):
        detect_videos(VIDEOS, out=str(tmp_path / "pose"), detector="rtmpose")
    monkeypatch.setitem(sys.modules, "rtmlib", fake_rtmlib([]))
    missing = r"never downloaded .* yolox-balanced\.onnx .* rtmpose-balanced-"
    with pytest.raises(DetectorUnavailableError, match=missing):
        detect_videos(VIDEOS, out=str(tmp_path / "pose"), detector="rtmpose", weights=tmp_path / "w")
    assert not (tmp_path / "pose").exists()


def test_rtmpose_writes_openpose_json_that_the_openpose_reader_reads(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from rigpose.data.ingest.openpose import camera_folders, read_openpose_camera

    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "rtmlib", fake_rtmlib(calls))
    (tmp_path / "w").mkdir()
    for name in ("yolox-lightweight", "rtmpose-lightweight-halpe26"):
        (tmp_path / "w" / f"{name}.onnx").write_bytes(b"")
    summary = detect_videos([VIDEOS[0]], out=str(tmp_path / "pose"), detector="rtmpose", model="lite",
                            weights=tmp_path / "w", progress=False)
    assert calls == [str(tmp_path / "w" / "rtmpose-lightweight-halpe26.onnx")]  # the local file, not the URL
    assert (summary.ingest, summary.cameras[0].frames, summary.cameras[0].frames_with_people) == ("openpose", 5, 4)
    folders = camera_folders(str(tmp_path / "pose"))
    assert list(folders) == ["cam01_json"] and [Path(f).name for f in folders["cam01_json"]][:2] == [
        "cam01_000000.json", "cam01_000001.json"]
    cam, fmt = read_openpose_camera("cam01_json", folders["cam01_json"])
    assert fmt is not None and fmt.name == "halpe26"
    assert sorted(cam.people) == [0, 1, 2, 3, 4] and len(cam.people[3].kp) == 0  # frame 3: nobody
    np.testing.assert_allclose(cam.people[0].kp[0, 0], [10.0, 20.0])  # coco17 nose = HALPE-26 point 0
    np.testing.assert_allclose(cam.people[0].score[0, 0], 0.9)
    assert json.loads(Path(folders["cam01_json"][3]).read_text())["people"] == []
    detect_videos([VIDEOS[0]], out=str(tmp_path / "pose"), detector="rtmpose", model="lite", weights=tmp_path / "w",
                  max_frames=2, overwrite=True, progress=False)
    assert len(camera_folders(str(tmp_path / "pose"))["cam01_json"]) == 2  # no frame of the first run is left


@pytest.fixture(scope="module")
def mediapipe_weights() -> str:
    pytest.importorskip("mediapipe", reason="the detect extra is not installed: pip install 'rigpose[detect]'")
    try:
        _, source = load_pose_model("full")
    except DetectorUnavailableError as e:
        pytest.skip(f"no MediaPipe pose weights here ({e})")
    return source


def test_mediapipe_detections_of_the_demo_clip_are_read_by_the_ingest_as_one_consistent_person(
        tmp_path: Path, mediapipe_weights: str) -> None:
    from rigpose.data.ingest import ingest_mediapipe
    from rigpose.data.reader import Dataset
    from rigpose.geometry import reprojection_error, triangulate
    from rigpose.skeleton import COCO17

    out = tmp_path / "Demo_MultiPerson"
    result = runner.invoke(app, ["detect", *VIDEOS, "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "rigpose datasets ingest mediapipe" in result.stdout
    doc = json.loads((out / "cam01.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == [0, 1, 2, 3, 4] and (doc["width"], doc["height"]) == (272, 480)
    assert max(len(f["pose_landmarks"]) for f in doc["frames"]) == 2  # two people in cam01's view

    rig = demo_rig()
    ingest_mediapipe([str(out / "cam01.json"), str(out / "cam02.json")], out=str(tmp_path / "ds"), rig=rig,
                     split="train", progress=False)
    f = Dataset(str(tmp_path / "ds")).read_frames(with_3d=False)
    assert list(f.frame) == [0, 1, 2, 3, 4] and list(f.camera_names[0]) == ["cam01", "cam02"]
    kp = f.keypoints.astype(np.float64)  # [5 frames, 2 views, 17, 2] pixels of the 1088 x 1920 rig cameras
    seen = np.isfinite(kp[..., 0])
    assert seen.all(axis=(1, 2)).all(), "both views of every frame hold the person"
    assert (kp[seen] >= 0).all() and (kp[..., 0][seen] < 1088).all() and (kp[..., 1][seen] < 1920).all()
    X = triangulate(kp, f.cameras, f.scores.astype(np.float64))  # [5, 17, 3] world metres, z up
    assert np.nanmedian(reprojection_error(X, kp, f.cameras)) < 15.0  # px (3.6 measured): one person in both views
    j = COCO17.joint_names.index
    ankles_z = X[:, [j("left_ankle"), j("right_ankle")], 2].mean(axis=1)
    height = X[:, j("nose"), 2] - ankles_z
    shoulders = np.linalg.norm(X[:, j("left_shoulder")] - X[:, j("right_shoulder")], axis=-1)
    assert ((height > 0.9) & (height < 1.9)).all(), height  # metres, nose above ankles (1.1-1.2 measured)
    assert ((shoulders > 0.2) & (shoulders < 0.55)).all(), shoulders
