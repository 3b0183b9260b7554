"""Calibration import: Pose2Sim-style TOML sizes, Qualisys .qca.txt vs Pose2Sim's converter, OpenCV FileStorage
YAML/XML vs the same rig as TOML and vs files cv2.FileStorage writes, one-line refusals, and the CLI commands."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from rigpose.cli.rig import app
from rigpose.geometry import project
from rigpose.rig import Rig, RigError, import_calibration_toml, load_rig, save_rig
from rigpose.rig_import import import_opencv, import_qualisys, read_opencv_storage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "calib"
QCA = FIXTURES / "Demo_MultiPerson_Calib.qca.txt"
POSE2SIM_TOML = FIXTURES / "Demo_MultiPerson_Calib_pose2sim.toml"
OPENCV = FIXTURES / "opencv"
EASYMOCAP = FIXTURES / "easymocap"
runner = CliRunner()


def assert_one_line_naming(err: RigError, *parts: str) -> None:
    message = str(err)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def edited(tmp_path: Path, source: Path, old: str, new: str, name: str | None = None) -> Path:
    text = source.read_text()
    assert old in text, old
    path = tmp_path / (name or source.name)
    path.write_text(text.replace(old, new, 1))
    return path


# ---------------------------------------------------------------------------------------------- TOML sizes


def test_import_toml_accepts_the_whole_pixel_float_sizes_pose2sim_writes() -> None:
    assert "size = [ 1088.0, 1920.0]" in POSE2SIM_TOML.read_text()
    rig = import_calibration_toml(POSE2SIM_TOML, units="m")
    assert all((c.width, c.height) == (1088, 1920) and type(c.width) is int for c in rig.cameras)


@pytest.mark.parametrize(("size", "parts"), [
    ("[ 1088.5, 1920.0]", ["field 'size'", "size must be whole pixels, got 1088.5"]),
    ("[ 1088.0, nan]", ["field 'size'", "whole pixels, got nan"]),
    ("[ 1088.0]", ["field 'size'", "expected 2 numbers [width, height]", "got 1"]),
    ("[ 1088, 1920, 3]", ["field 'size'", "expected 2 numbers", "got 3"]),
    ('[ "1088", 1920]', ["field 'size'", "size must be numbers", "str '1088'"]),
    ("[ true, 1920]", ["field 'size'", "size must be numbers", "bool True"]),
    ('"1088x1920"', ["field 'size'", "expected [width, height] in pixels", "str '1088x1920'"]),
])
def test_import_toml_names_the_real_problem_with_a_size(tmp_path: Path, size: str, parts: list[str]) -> None:
    path = edited(tmp_path, POSE2SIM_TOML, "size = [ 1088.0, 1920.0]", f"size = {size}")
    with pytest.raises(RigError) as e:
        import_calibration_toml(path, units="m")
    assert_one_line_naming(e.value, str(path), "camera 'cam01'", *parts)


@pytest.mark.parametrize(("old", "new", "parts"), [
    ("translation = [ 0.3211048899999996,", 'translation = [ "0.32",',
     ["field 'translation'", "expected numbers, got str '0.32' among them"]),
    ("rotation = [ 1.6882754799999993,", "rotation = [ [1.6882754799999993],",
     ["field 'rotation'", "expected numbers, got list [1.688"]),
    ("distortions = [ -0.000721609375,", "distortions = [ 0, 0, -0.000721609375,",
     ["field 'distortions'", "at most 5 numbers", "got 6"]),
    ("distortions = [ -0.000721609375, 0.002187234375, 9.5e-06, 1.078125e-05]", 'distortions = "none"',
     ["field 'distortions'", "expected a list"]),
    ("distortions = [ -0.000721609375,", 'distortions = [ "a",', ["field 'distortions'", "got str 'a'"]),
])
def test_import_toml_says_not_numbers_rather_than_blaming_the_shape(
    tmp_path: Path, old: str, new: str, parts: list[str]
) -> None:
    path = edited(tmp_path, POSE2SIM_TOML, old, new)
    with pytest.raises(RigError) as e:
        import_calibration_toml(path, units="m")
    assert_one_line_naming(e.value, str(path), "camera 'cam01'", *parts)
    assert "shape (3,)" not in str(e.value)


# ---------------------------------------------------------------------------------------------- Qualisys


def pose2sim_reference() -> dict[str, dict]:
    return {k: v for k, v in tomllib.loads(POSE2SIM_TOML.read_text()).items() if k != "metadata"}


def test_qualisys_import_matches_pose2sims_converter_on_the_demo_multiperson_calibration() -> None:
    rig = import_qualisys(QCA)
    ref = pose2sim_reference()
    assert rig.rig_id == "Demo_MultiPerson_Calib"
    assert rig.camera_names == tuple(ref) == ("cam01", "cam02", "cam03", "cam04")
    for cam, r in zip(rig.cameras, ref.values(), strict=True):
        assert [cam.width, cam.height] == r["size"]
        np.testing.assert_allclose(cam.K, r["matrix"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(cam.R, cv2.Rodrigues(np.array(r["rotation"]))[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(cam.t, r["translation"], rtol=0, atol=1e-12)
        # Pose2Sim divides the (dimensionless) coefficients by 64 like the subpixel quantities; we do not
        np.testing.assert_allclose(cam.dist[:4], 64 * np.array(r["distortions"]), rtol=1e-12, atol=0)
        assert cam.dist[4] == 0.0  # radialDistortion3, which Pose2Sim leaves out, is 0 in this file


def test_qualisys_import_and_pose2sim_project_world_points_to_the_same_pixels() -> None:
    rig = import_qualisys(QCA)
    X_N3 = rig.capture_center() + np.array([[0.0, 0.0, 0.0], [0.4, -0.3, 0.8], [-0.5, 0.2, -0.4]])
    for cam, r in zip(rig.cameras, pose2sim_reference().values(), strict=True):
        K, rvec, t = np.array(r["matrix"]), np.array(r["rotation"]), np.array(r["translation"])
        for ref_dist, ours_dist in ((np.zeros(4), np.zeros(5)), (64 * np.array(r["distortions"]), cam.dist)):
            expected, _ = cv2.projectPoints(X_N3, rvec, t, K, ref_dist)
            ours = project(X_N3, dataclasses.replace(cam, dist=ours_dist))
            np.testing.assert_allclose(ours, expected.reshape(-1, 2), rtol=0, atol=1e-6)
        assert np.all((ours >= 0) & (ours <= [cam.width, cam.height]))  # the volume is in view


def test_qualisys_camera_centres_are_the_transform_positions_in_metres() -> None:
    rig = import_qualisys(QCA)
    np.testing.assert_allclose(rig.cameras[0].center, [1.4602323709212087, -1.9091590482454608, 1.8965058524092062],
                               rtol=0, atol=1e-12)
    for cam in rig.cameras:  # each looks towards the capture volume, not away from it
        assert (cam.R @ rig.capture_center() + cam.t)[2] > 1.0


def one_camera_qca(*, model: str = "Miqus Video", active: str = "1", fov: str = 'left="100" top="50" right="1379" '
                   'bottom="769"', skew: str = "0", serial: str = "7") -> str:
    return (f'<camera active="{active}" serial="{serial}" model="{model}" viewrotation="0">'
            f"<fov_video {fov}/>"
            '<transform x="1000" y="-2000" z="1500" r11="1" r12="0" r13="0" r21="0" r22="0" r23="1" '
            'r31="0" r32="-1" r33="0"/>'
            '<intrinsic focalLengthU="64000" focalLengthV="64064" centerPointU="48000" centerPointV="28800" '
            f'skew="{skew}" radialDistortion1="-0.1" radialDistortion2="0.02" radialDistortion3="0.001" '
            'tangentalDistortion1="0.0005" tangentalDistortion2="-0.0004"/></camera>')


def write_qca(tmp_path: Path, *cameras: str, name: str = "lab.qca.txt") -> Path:
    path = tmp_path / name
    path.write_text("<?xml version='1.0' encoding='ASCII'?>\n<calibration><cameras>" + "".join(cameras)
                    + "</cameras></calibration>\n")
    return path


@pytest.mark.parametrize("binning", [1, 2])
def test_qualisys_intrinsics_are_in_pixels_of_the_cropped_and_binned_video(tmp_path: Path, binning: int) -> None:
    path = write_qca(tmp_path, one_camera_qca(serial="7"), one_camera_qca(serial="8"))
    cam = import_qualisys(path, binning=binning).cameras[0]
    # hand-computed: f = 64000 / 64 = 1000 px, centre (750, 450) sensor px, video window from (100, 50), 1280x720
    assert (cam.width, cam.height) == (1280 // binning, 720 // binning)
    np.testing.assert_allclose(cam.K, [[1000.0 / binning, 0, 650.0 / binning], [0, 1001.0 / binning,
                                                                                 400.0 / binning], [0, 0, 1]])
    np.testing.assert_array_equal(cam.dist, [-0.1, 0.02, 0.0005, -0.0004, 0.001])
    # the QTM camera looks down its -z; world +y here, so OpenCV's +z is world +y and the centre maps to 0
    np.testing.assert_allclose(cam.R @ np.array([1.0, -2.0, 1.5]) + cam.t, 0.0, atol=1e-12)
    np.testing.assert_allclose(cam.viewing_direction, [0.0, 1.0, 0.0], atol=1e-12)


def test_qualisys_keeps_active_video_cameras_only(tmp_path: Path) -> None:
    path = write_qca(tmp_path, one_camera_qca(serial="1"), one_camera_qca(serial="2", model="Miqus M3"),
                     one_camera_qca(serial="3", active="0"), one_camera_qca(serial="4", model="none"))
    assert import_qualisys(path, rig_id="lab").camera_names == ("1", "4")
    markers = write_qca(tmp_path, one_camera_qca(serial="1", model="Arqus A12"), name="markers.qca.txt")
    with pytest.raises(RigError) as e:
        import_qualisys(markers)
    assert_one_line_naming(e.value, str(markers), "rig 'markers'", "field 'cameras'", "no active video camera",
                           "Arqus A12")


@pytest.mark.parametrize(("old", "new", "parts"), [
    ('focalLengthU="64000" ', "", ["camera '7'", "field 'intrinsic/focalLengthU'", "missing attribute"]),
    ('x="1000"', 'x="1 m"', ["camera '7'", "field 'transform/x'", "expected a number, got '1 m'"]),
    ('r11="1"', 'r11="2"', ["camera '7'", "field 'R'", "not a rotation"]),
    ('skew="0"', 'skew="0.5"', ["camera '7'", "field 'intrinsic/skew'", "not supported"]),
    ('right="1379"', 'right="1379.5"', ["field 'fov_video/width'", "whole pixels"]),
    ("<fov_video ", "<fov_marker ", ["camera '7'", "field 'fov_video'", "missing element <fov_video>"]),
    (' serial="7"', "", ["field 'serial'", "missing attribute 'serial'"]),
    ("</calibration>", "", ["not valid XML"]),
    ("<calibration>", "<opencv_storage>", ["expected <calibration><cameras><camera"]),
])
def test_qualisys_refuses_a_bad_file_naming_file_camera_and_field(
    tmp_path: Path, old: str, new: str, parts: list[str]
) -> None:
    good = write_qca(tmp_path, one_camera_qca(), one_camera_qca(serial="8"), name="good.qca.txt")
    text = good.read_text()
    assert old in text
    bad = tmp_path / "bad.qca.txt"
    bad.write_text(text.replace(old, new, 1))
    if old == "<calibration>":  # well-formed, wrong root
        bad.write_text(text.replace("calibration>", "opencv_storage>"))
    with pytest.raises(RigError) as e:
        import_qualisys(bad)
    assert_one_line_naming(e.value, str(bad), *parts)


def test_qualisys_refuses_a_window_that_does_not_bin_into_whole_pixels(tmp_path: Path) -> None:
    path = write_qca(tmp_path, one_camera_qca(fov='left="0" top="0" right="1278" bottom="719"'))
    with pytest.raises(RigError) as e:
        import_qualisys(path, binning=2)
    assert_one_line_naming(e.value, "camera '7' field 'fov_video/width'", "1279 sensor pixels do not bin by 2")


# ---------------------------------------------------------------------------------------------- OpenCV


def assert_same_rig(rig: Rig, ref: Rig, *, atol: float = 1e-12) -> None:
    assert rig.camera_names == ref.camera_names
    assert [(c.width, c.height) for c in rig.cameras] == [(c.width, c.height) for c in ref.cameras]
    for got, want in zip(rig.arrays(), ref.arrays(), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_opencv_yaml_and_xml_one_file_per_camera_give_the_rig_of_the_same_toml(tmp_path: Path) -> None:
    rig = import_opencv([OPENCV / "cam0.yml", OPENCV / "cam1.xml"], units="mm", rig_id="lab")
    assert_same_rig(rig, import_calibration_toml(OPENCV / "rig.toml", units="mm"))
    np.testing.assert_allclose(rig.cameras[0].t, [0.1205, -0.34025, 4.1], rtol=1e-15)  # mm -> m
    assert rig.cameras[1].dist[4] == 0.0  # 4 coefficients: k3 = 0
    save_rig(rig, tmp_path / "lab.json")
    assert load_rig(tmp_path / "lab.json") == rig
    assert import_opencv([OPENCV / "cam0.yml", OPENCV / "cam1.xml"], units="mm").rig_id == "opencv"  # the folder


def test_opencv_easymocap_names_files_merge_into_one_rig() -> None:
    rig = import_opencv([EASYMOCAP / "intri.yml", EASYMOCAP / "extri.yml"], units="mm", rig_id="lab")
    assert_same_rig(rig, import_calibration_toml(OPENCV / "rig.toml", units="mm"))


def test_opencv_units_scale_only_the_translations() -> None:
    mm = import_opencv([OPENCV / "cam0.yml", OPENCV / "cam1.xml"], units="mm")
    m = import_opencv([OPENCV / "cam0.yml", OPENCV / "cam1.xml"], units="m")
    np.testing.assert_allclose(m.arrays().t, 1000 * mm.arrays().t, rtol=1e-15)
    np.testing.assert_array_equal(m.arrays().K, mm.arrays().K)
    with pytest.raises(ValueError, match="units"):
        import_opencv(OPENCV / "cam0.yml", units="cm")  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".yml", ".xml"])
def test_opencv_reads_what_cv2_filestorage_writes(tmp_path: Path, suffix: str) -> None:
    K = np.array([[1500.25, 0.0, 960.5], [0.0, 1499.75, 540.125], [0.0, 0.0, 1.0]])
    dist, rvec, tvec = np.array([[-0.1, 0.02, 1e-4, -2e-4, 3e-3]]), np.array([[0.3], [-1.1], [0.2]]), np.array(
        [[1.5], [-0.25], [3.75]])
    for name in ("a", "b"):
        fs = cv2.FileStorage(str(tmp_path / f"{name}{suffix}"), cv2.FILE_STORAGE_WRITE)
        for key, value in (("camera_matrix", K), ("distortion_coefficients", dist), ("rvec", rvec), ("tvec", tvec)):
            fs.write(key, value)
        fs.write("image_width", 1920)
        fs.write("image_height", 1080)
        fs.release()
    rig = import_opencv([tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"], units="m")
    cam = rig.camera("b")
    np.testing.assert_array_equal(cam.K, K)
    np.testing.assert_array_equal(cam.dist, dist[0])
    np.testing.assert_allclose(cam.R, cv2.Rodrigues(rvec)[0], rtol=0, atol=1e-14)
    np.testing.assert_array_equal(cam.t, tvec[:, 0])
    assert (cam.width, cam.height) == (1920, 1080)


def test_opencv_yaml_loader_reads_a_float_without_a_dot() -> None:
    doc = read_opencv_storage(OPENCV / "cam0.yml")
    assert doc["camera_matrix"].rows == 3 and doc["avg_reprojection_error"] == 0.31


CAM0_K_DATA = ("data: [ 1.4000000000000000e+03, 0., 9.5950000000000000e+02, 0.,\n"
               "       1.4010000000000000e+03, 5.3950000000000000e+02, 0., 0., 1. ]")


@pytest.mark.parametrize(("old", "new", "parts"), [
    ("camera_matrix:", "camera_matrx:", ["field 'camera_matrix'", "missing camera matrix: one of camera_matrix"]),
    (CAM0_K_DATA, "data: [ 1400., 0., 959.5, 0., 1401., 539.5, 0., 0. ]",
     ["field 'camera_matrix'", "opencv-matrix is 3x3 but 'data' holds 8 numbers"]),
    (CAM0_K_DATA, "data: [ 1400., 0., 959.5, 0., abc, 539.5, 0., 0., 1. ]",
     ["field 'camera_matrix'", "expected numbers, got str 'abc' at entry 4"]),
    ("   rows: 3\n   cols: 3", "   rows: 2\n   cols: 3", ["field 'camera_matrix'", "is 2x3 but 'data' holds 9"]),
    ("   rows: 3\n   cols: 1\n   dt: d\n   data: [ 1.205", "   rows: 2\n   cols: 1\n   dt: d\n   data: [ 1.205",
     ["field 'tvec'", "is 2x1 but 'data' holds 3"]),
    ("image_height: 1080", "image_height: 1080.5", ["field 'image_width+image_height'", "whole positive pixels"]),
    ("image_height: 1080", "image_hight: 1080", ["field 'size'", "missing image size"]),
    ("rvec:", "rvek:", ["field 'R'", "missing rotation: one of R, Rot, rotation, rvec"]),
    ("   rows: 1\n   cols: 5", "   rows: 1\n   cols: 3", ["field 'distortion_coefficients'", "is 1x3 but 'data'"]),
    ("avg_reprojection_error:", "units: cm\navg_reprojection_error:", ["field 'units'", "unknown units 'cm'"]),
    ("avg_reprojection_error:", "units: m\navg_reprojection_error:", ["field 'units'", "the file says 'm'"]),
    ("camera_matrix: !!opencv-matrix", "camera_matrix: [[1400, 0, 959.5], [0, 1401, 539.5]]\nx: !!opencv-matrix",
     ["field 'camera_matrix'", "expected a 3x3 camera matrix, got shape (2, 3)"]),
    ("calibration_time:", "calibration_time: [", ["not valid OpenCV YAML"]),
])
def test_opencv_refuses_a_bad_yaml_file_naming_file_camera_and_field(
    tmp_path: Path, old: str, new: str, parts: list[str]
) -> None:
    bad = edited(tmp_path, OPENCV / "cam0.yml", old, new)
    with pytest.raises(RigError) as e:
        import_opencv([bad, OPENCV / "cam1.xml"], units="mm", rig_id="lab")
    assert_one_line_naming(e.value, str(bad), *parts)
    if "YAML" not in parts[0]:
        assert "camera 'cam0'" in str(e.value) or "field 'units'" in str(e.value)


@pytest.mark.parametrize(("old", "new", "parts"), [
    ("<cols>4</cols>\n  <dt>d</dt>\n  <data>\n    -0.2 0.07 0.0005 0.0003",
     "<cols>8</cols>\n  <dt>d</dt>\n  <data>\n    -0.2 0.07 0.0005 0.0003 0 0.1 0 0",
     ["field 'dist_coeffs'", "8 coefficients with non-zero terms past k3", "rational"]),
    ("<cols>4</cols>", "<cols>8</cols>", ["field 'dist_coeffs'", "is 1x8 but 'data' holds 4"]),
    ("-800. 250. 3600.5", "-800. 250.", ["camera 'cam1' field 'T'", "is 3x1 but 'data' holds 2"]),
    ("<opencv_storage>", "<storage>", ["expected an <opencv_storage> root element"]),
    ("</opencv_storage>", "", ["not valid XML"]),
])
def test_opencv_refuses_a_bad_xml_file_naming_file_camera_and_field(
    tmp_path: Path, old: str, new: str, parts: list[str]
) -> None:
    bad = edited(tmp_path, OPENCV / "cam1.xml", old, new)
    if old == "<opencv_storage>":
        bad.write_text(bad.read_text().replace("</opencv_storage>", "</storage>"))
    with pytest.raises(RigError) as e:
        import_opencv([OPENCV / "cam0.yml", bad], units="mm", rig_id="lab")
    assert_one_line_naming(e.value, str(bad), *parts)


def test_opencv_validation_errors_name_the_cameras_own_file(tmp_path: Path) -> None:
    bad = edited(tmp_path, OPENCV / "cam1.xml", "900. 0. 640.5", "-900. 0. 640.5")
    with pytest.raises(RigError) as e:
        import_opencv([OPENCV / "cam0.yml", bad], units="mm", rig_id="lab")
    assert str(e.value).startswith(f"{bad}: rig 'lab' camera 'cam1' field 'K': non-positive focal length")


def test_opencv_refuses_rotations_that_disagree_and_mixed_layouts(tmp_path: Path) -> None:
    bad = edited(tmp_path, EASYMOCAP / "extri.yml", "data: [0.1, -0.2, 0.3]", "data: [0.1, -0.2, 0.31]")
    with pytest.raises(RigError) as e:
        import_opencv([EASYMOCAP / "intri.yml", bad], units="mm", rig_id="lab")
    assert_one_line_naming(e.value, str(bad), "camera 'cam0' field 'Rot_cam0'", "disagrees with 'R_cam0'")
    with pytest.raises(RigError) as e:
        import_opencv([EASYMOCAP / "intri.yml", OPENCV / "cam0.yml"], units="mm", rig_id="lab")
    assert_one_line_naming(e.value, str(OPENCV / "cam0.yml"), "field 'names'", "not both")
    with pytest.raises(RigError) as e:
        import_opencv([EASYMOCAP / "intri.yml", EASYMOCAP / "intri.yml"], units="mm", rig_id="lab")
    assert_one_line_naming(e.value, "field 'K_cam0'", "also given in")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_import_qualisys_writes_a_rig_in_metres(tmp_path: Path) -> None:
    out = tmp_path / "rigs" / "demo.json"
    result = runner.invoke(app, ["import-qualisys", str(QCA), "--out", str(out), "--rig-id", "demo"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: rig 'demo', 4 cameras" in result.stdout
    assert_same_rig(load_rig(out), import_qualisys(QCA, rig_id="demo"), atol=0)


def test_cli_import_qualisys_reports_a_bad_file_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = edited(tmp_path, QCA, 'focalLengthU="107599.671875"', 'focalLengthU="big"')
    out = tmp_path / "demo.json"
    result = runner.invoke(app, ["import-qualisys", str(bad), "--out", str(out)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"{bad}: rig 'Demo_MultiPerson_Calib' camera 'cam01' field 'intrinsic/focalLengthU': "
        "expected a number, got 'big'"]
    assert not out.exists()


def test_cli_import_opencv_writes_a_rig_and_requires_units(tmp_path: Path) -> None:
    out = tmp_path / "lab.json"
    files = [str(OPENCV / "cam0.yml"), str(OPENCV / "cam1.xml")]
    result = runner.invoke(app, ["import-opencv", *files, "--out", str(out), "--units", "mm", "--rig-id", "lab"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: rig 'lab', 2 cameras" in result.stdout
    assert_same_rig(load_rig(out), import_calibration_toml(OPENCV / "rig.toml", units="mm"))
    result = runner.invoke(app, ["import-opencv", *files, "--out", str(out)])
    assert result.exit_code == 2 and "--units" in result.output


def test_cli_import_opencv_reports_a_missing_file_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    result = runner.invoke(app, ["import-opencv", str(missing), "--out", str(tmp_path / "x.json"), "--units", "m"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"{missing}: cannot read or write (No such file or directory)"]
