"""rigpose.rig: Camera/Rig types, rig JSON round trip, validation messages, and calibration TOML import vs OpenCV."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from rigpose.geometry import look_at
from rigpose.resources import rigs_dir
from rigpose.rig import (
    Camera,
    Rig,
    RigError,
    import_calibration_toml,
    load_rig,
    rig_from_dict,
    rig_to_dict,
    rotation_from_rodrigues,
    save_rig,
    validate_rig,
)

TARGET = np.array([0.0, 0.0, 1.0])


def make_camera(name: str, azimuth_deg: float, **overrides: Any) -> Camera:
    a = np.deg2rad(azimuth_deg)
    R, t = look_at(np.array([4.0 * np.cos(a), 4.0 * np.sin(a), 1.5]), TARGET)
    fields = {"name": name, "width": 1280, "height": 720,
              "K": np.array([[1000.0, 0.0, 640.0], [0.0, 1001.0, 360.0], [0.0, 0.0, 1.0]]),
              "dist": np.array([-0.1, 0.02, 0.001, -0.001, 0.0]), "R": R, "t": t}
    return Camera(**{**fields, **overrides})


def make_rig(num_cameras: int = 3, rig_id: str = "test-rig") -> Rig:
    return Rig(rig_id=rig_id, cameras=tuple(make_camera(f"c{i}", 120.0 * i + 10) for i in range(num_cameras)))


def replace_camera(rig: Rig, index: int, **overrides: Any) -> Rig:
    cam = rig.cameras[index]
    fields = {k: getattr(cam, k) for k in ("name", "width", "height", "K", "dist", "R", "t")}
    cams = list(rig.cameras)
    cams[index] = Camera(**{**fields, **overrides})
    return Rig(rig_id=rig.rig_id, cameras=tuple(cams), units=rig.units)


def assert_one_line_naming(err: RigError, *parts: str) -> None:
    message = str(err)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------- types


def test_camera_center_and_viewing_direction_follow_world_to_camera_convention() -> None:
    cam = make_camera("c", 30.0)
    np.testing.assert_allclose(cam.R @ cam.center + cam.t, 0.0, atol=1e-12)  # the centre maps to the origin
    along_axis = cam.center + 2.0 * cam.viewing_direction
    np.testing.assert_allclose(cam.R @ along_axis + cam.t, [0.0, 0.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(np.cross(cam.viewing_direction, TARGET - cam.center), 0.0, atol=1e-12)
    assert cam.focal == (1000.0, 1001.0)
    assert cam.principal_point == (640.0, 360.0)


def test_camera_stores_read_only_float64_copies() -> None:
    K = np.eye(3, dtype=np.float32) * 500
    K[2, 2] = 1
    cam = make_camera("c", 0.0, K=K)
    assert cam.K.dtype == np.float64
    K[0, 0] = -1
    assert cam.K[0, 0] == 500
    with pytest.raises(ValueError):
        cam.K[0, 0] = 1.0


def test_camera_rejects_wrong_array_shape_naming_camera_and_field() -> None:
    with pytest.raises(RigError) as e:
        make_camera("cx", 0.0, dist=np.zeros(4))
    assert_one_line_naming(e.value, "camera 'cx'", "field 'dist'", "(5,)")


def test_rig_arrays_stack_cameras_in_view_order() -> None:
    rig = make_rig(3)
    arrays = rig.arrays()
    assert arrays._fields == ("K", "dist", "R", "t")
    assert [a.shape for a in arrays] == [(3, 3, 3), (3, 5), (3, 3, 3), (3, 3)]
    assert all(a.dtype == np.float64 for a in arrays)
    np.testing.assert_array_equal(arrays.t[2], rig.cameras[2].t)


def test_rig_finds_cameras_by_name_and_names_the_rig_when_missing() -> None:
    rig = make_rig(3)
    assert rig.camera_names == ("c0", "c1", "c2")
    assert len(rig) == 3
    assert rig.camera("c1") is rig.cameras[1]
    with pytest.raises(KeyError, match="test-rig"):
        rig.camera("nope")


def test_rigs_compare_equal_by_value() -> None:
    assert make_rig(3) == make_rig(3)
    assert make_rig(3) != make_rig(2)


# ---------------------------------------------------------------------------------------------- files


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    rig = make_rig(3)
    save_rig(rig, tmp_path / "r.json")
    assert load_rig(tmp_path / "r.json") == rig
    assert rig_from_dict(json.loads(json.dumps(rig_to_dict(rig))), source="x") == rig


def test_save_rig_rounds_to_the_requested_significant_digits(tmp_path: Path) -> None:
    rig = make_rig(2)
    save_rig(rig, tmp_path / "r.json", significant_digits=6)
    loaded = load_rig(tmp_path / "r.json")
    np.testing.assert_allclose(loaded.arrays().R, rig.arrays().R, rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "r.json").read_text())["cameras"][0]["K"][0][0] == 1000.0


def test_save_rig_writes_through_fsspec_urls() -> None:
    rig = make_rig(2)
    save_rig(rig, "memory://rigs/test.json")
    assert load_rig("memory://rigs/test.json") == rig


def test_save_rig_refuses_an_invalid_rig_and_writes_nothing(tmp_path: Path) -> None:
    bad = replace_camera(make_rig(2), 1, R=np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(RigError, match="field 'R'"):
        save_rig(bad, tmp_path / "bad.json")
    assert list(tmp_path.iterdir()) == []


def test_save_rig_replaces_an_existing_file_without_leaving_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    save_rig(make_rig(2), path)
    save_rig(make_rig(3), path)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert len(load_rig(path)) == 3


def test_load_rig_converts_millimetre_translations_to_metres(tmp_path: Path) -> None:
    rig = make_rig(2)
    d = rig_to_dict(rig)
    d["units"] = "mm"
    for cam in d["cameras"]:
        cam["t"] = [1000.0 * x for x in cam["t"]]
    (tmp_path / "mm.json").write_text(json.dumps(d))
    loaded = load_rig(tmp_path / "mm.json")
    assert loaded.units == "m"
    np.testing.assert_allclose(loaded.arrays().t, rig.arrays().t, rtol=1e-12)


def test_load_rig_names_the_file_for_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"rig_id": "x", "units": "m",')
    with pytest.raises(RigError) as e:
        load_rig(path)
    assert_one_line_naming(e.value, str(path), "not valid JSON", "line 1")


# ---------------------------------------------------------------------------------------------- validation


def test_validate_accepts_a_good_rig() -> None:
    validate_rig(make_rig(3), source="good.json")


def test_validate_rejects_non_rotation_naming_camera_and_field() -> None:
    rig = replace_camera(make_rig(3), 1, R=make_rig(3).cameras[1].R * 1.01)
    with pytest.raises(RigError) as e:
        validate_rig(rig, source="datasets/rigs/x.json")
    assert str(e.value).startswith("datasets/rigs/x.json: rig 'test-rig' camera 'c1' field 'R': not a rotation (")
    assert_one_line_naming(e.value, "R^T R - I max 2.0e-02", "det 1.03")


def test_validate_rejects_reflection_although_orthonormal() -> None:
    rig = replace_camera(make_rig(2), 0, R=-make_rig(2).cameras[0].R)
    with pytest.raises(RigError) as e:
        validate_rig(rig, source="r.json")
    assert_one_line_naming(e.value, "r.json", "camera 'c0'", "field 'R'", "det -1")


def test_validate_accepts_rotation_error_within_1e_6_and_rejects_beyond() -> None:
    R = make_rig(2).cameras[0].R
    validate_rig(replace_camera(make_rig(2), 0, R=R * (1 + 3e-7)))
    with pytest.raises(RigError, match="field 'R'"):
        validate_rig(replace_camera(make_rig(2), 0, R=R * (1 + 2e-6)))


@pytest.mark.parametrize(("overrides", "field", "reason"), [
    ({"K": np.array([[0.0, 0, 640], [0, 1000, 360], [0, 0, 1]])}, "K", "non-positive focal length"),
    ({"K": np.array([[1000.0, 0, 640], [0, -5, 360], [0, 0, 1]])}, "K", "non-positive focal length"),
    ({"K": np.array([[1000.0, 0, 1281], [0, 1000, 360], [0, 0, 1]])}, "K", "principal point (1281, 360) outside"),
    ({"K": np.array([[1000.0, 0, 640], [0, 1000, -1], [0, 0, 1]])}, "K", "outside the 1280x720 image"),
    ({"K": np.array([[1000.0, 0, 640], [0, 1000, 360], [0, 0, 2]])}, "K", "[0, 0, 1]"),
    ({"K": np.array([[np.nan, 0, 640], [0, 1000, 360], [0, 0, 1]])}, "K", "non-finite"),
    ({"dist": np.array([0.0, np.inf, 0, 0, 0])}, "dist", "non-finite"),
    ({"t": np.array([0.0, np.nan, 4.0])}, "t", "non-finite"),
    ({"R": np.full((3, 3), np.nan)}, "R", "non-finite"),
    ({"width": 0}, "width", "positive integer"),
    ({"height": 720.0}, "height", "positive integer"),
])
def test_validate_rejects_bad_camera_naming_file_rig_camera_and_field(
    overrides: dict[str, Any], field: str, reason: str
) -> None:
    rig = replace_camera(make_rig(3), 2, **overrides)
    with pytest.raises(RigError) as e:
        validate_rig(rig, source="f.json")
    assert_one_line_naming(e.value, "f.json: rig 'test-rig' camera 'c2'", f"field '{field}'", reason)
    assert e.value.camera == "c2" and e.value.field == field and e.value.source == "f.json"


def test_validate_rejects_duplicate_camera_names() -> None:
    rig = replace_camera(make_rig(3), 2, name="c0")
    with pytest.raises(RigError) as e:
        validate_rig(rig, source="f.json")
    assert_one_line_naming(e.value, "f.json", "camera 'c0'", "field 'name'", "duplicate", "cameras 0 and 2")


def test_validate_rejects_fewer_than_min_cameras() -> None:
    with pytest.raises(RigError) as e:
        validate_rig(make_rig(1), source="f.json")
    assert_one_line_naming(e.value, "f.json: rig 'test-rig' field 'cameras'", "1 camera(s), need at least 2")
    validate_rig(make_rig(1), min_cameras=1)
    with pytest.raises(RigError, match="need at least 4"):
        validate_rig(make_rig(3), min_cameras=4)


def test_validate_rejects_units_other_than_metres_and_unsafe_rig_ids() -> None:
    rig = make_rig(2)
    with pytest.raises(RigError, match="field 'units'"):
        validate_rig(Rig(rig_id=rig.rig_id, cameras=rig.cameras, units="mm"))
    for bad_id in ("", "../escape", "a b", "rig=1"):
        with pytest.raises(RigError, match="field 'rig_id'"):
            validate_rig(Rig(rig_id=bad_id, cameras=rig.cameras))


# ---------------------------------------------------------------------------------------------- parsing


def good_dict() -> dict[str, Any]:
    return json.loads(json.dumps(rig_to_dict(make_rig(2))))


def _set(path: tuple, value: Any) -> dict[str, Any]:
    d = good_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


def _drop(path: tuple) -> dict[str, Any]:
    d = good_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return d


@pytest.mark.parametrize(("d", "parts"), [
    (_drop(("cameras", 1, "R")), ["camera 'c1'", "field 'R'", "missing key 'R'"]),
    (_drop(("units",)), ["rig 'test-rig'", "field 'units'", "missing key"]),
    (_drop(("rig_id",)), ["field 'rig_id'", "missing key"]),
    (_set(("cameras", 0, "focal"), 1.0), ["camera 'c0'", "field 'focal'", "unknown key"]),
    (_set(("cameras", 0, "K"), [[1, 0, 2], [0, 1, 2]]), ["camera 'c0'", "field 'K'", "3x3", "shape (2, 3)"]),
    (_set(("cameras", 0, "dist"), [0.1, 0.0, 0.0, 0.0]), ["field 'dist'", "expected 5 numbers", "shape (4,)"]),
    (_set(("cameras", 1, "t"), ["0", 1, 2]), ["camera 'c1'", "field 't'", "expected 3 numbers"]),
    (_set(("cameras", 1, "R"), [[1, 0, 0], [0, 1], [0, 0, 1]]), ["field 'R'", "expected 3x3 numbers"]),
    (_set(("cameras", 1, "R"), [[1, 0, 0], [0, True, 0], [0, 0, 1]]), ["field 'R'", "expected 3x3 numbers"]),
    (_set(("cameras", 0, "width"), 1280.5), ["field 'width'", "integer"]),
    (_set(("cameras", 0, "name"), 7), ["camera '#0'", "field 'name'", "expected a string"]),
    (_set(("cameras", 1), "c1"), ["camera '#1'", "expected an object"]),
    (_set(("units",), "cm"), ["field 'units'", "'m' or 'mm'", "'cm'"]),
    (_set(("cameras",), {}), ["field 'cameras'", "list of cameras"]),
])
def test_parsing_rejects_malformed_rig_naming_the_key(d: dict[str, Any], parts: list[str]) -> None:
    with pytest.raises(RigError) as e:
        rig_from_dict(d, source="f.json")
    assert_one_line_naming(e.value, "f.json: ", *parts)


def test_parsing_rejects_a_non_object_top_level() -> None:
    with pytest.raises(RigError, match=r"f\.json: expected a JSON object"):
        rig_from_dict([1, 2], source="f.json")


def test_load_rig_reports_nan_in_a_file_as_non_finite(tmp_path: Path) -> None:
    d = good_dict()
    d["cameras"][0]["t"][1] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(d))  # Python's json writes and reads NaN
    with pytest.raises(RigError) as e:
        load_rig(tmp_path / "nan.json")
    assert_one_line_naming(e.value, "nan.json", "camera 'c0'", "field 't'", "non-finite")


# ---------------------------------------------------------------------------------------------- floor


def with_floor(rig: Rig, floor_z: Any) -> Rig:
    return Rig(rig_id=rig.rig_id, cameras=rig.cameras, units=rig.units, floor_z=floor_z)


@pytest.mark.parametrize("floor_z", [0.0, -0.0125, 1.5])
def test_floor_z_round_trips_through_the_rig_file(tmp_path: Path, floor_z: float) -> None:
    rig = with_floor(make_rig(2), floor_z)
    save_rig(rig, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["floor_z"] == floor_z
    loaded = load_rig(tmp_path / "r.json")
    assert loaded == rig and loaded.floor_z == floor_z
    assert rig_from_dict(json.loads(json.dumps(rig_to_dict(rig))), source="x") == rig


def test_a_rig_without_a_known_floor_writes_no_floor_z_and_files_without_one_load(tmp_path: Path) -> None:
    rig = make_rig(2)
    assert rig.floor_z is None
    save_rig(rig, tmp_path / "r.json")
    assert "floor_z" not in json.loads((tmp_path / "r.json").read_text())
    assert load_rig(tmp_path / "r.json").floor_z is None
    assert rig_from_dict({**good_dict(), "floor_z": None}, source="f.json").floor_z is None


def test_floor_z_in_a_millimetre_rig_file_is_converted_to_metres() -> None:
    d = {**good_dict(), "units": "mm", "floor_z": 25}
    assert rig_from_dict(d, source="f.json").floor_z == pytest.approx(0.025)


@pytest.mark.parametrize("bad", ["0.0", True, [0.0]])
def test_parsing_rejects_a_floor_z_that_is_not_a_number_naming_rig_and_field(bad: Any) -> None:
    with pytest.raises(RigError) as e:
        rig_from_dict({**good_dict(), "floor_z": bad}, source="f.json")
    assert_one_line_naming(e.value, "f.json: rig 'test-rig' field 'floor_z'", "expected a number")
    assert e.value.field == "floor_z" and e.value.rig_id == "test-rig"


def test_load_rig_rejects_a_non_finite_floor_z_naming_rig_and_field(tmp_path: Path) -> None:
    (tmp_path / "nan.json").write_text(json.dumps({**good_dict(), "floor_z": float("nan")}))
    with pytest.raises(RigError) as e:
        load_rig(tmp_path / "nan.json")
    assert_one_line_naming(e.value, "nan.json: rig 'test-rig' field 'floor_z'", "finite number")
    with pytest.raises(RigError, match="rig 'test-rig' field 'floor_z'"):
        validate_rig(with_floor(make_rig(2), float("inf")))
    with pytest.raises(RigError, match="field 'floor_z'"):
        validate_rig(with_floor(make_rig(2), "0"))


# ---------------------------------------------------------------------------------------------- calibration TOML


@pytest.mark.parametrize("rvec", [
    [0.0, 0.0, 0.0], [1e-9, -2e-9, 3e-9], [3e-5, 1e-5, -2e-5], [0.3, -1.2, 0.4], [np.pi, 0.0, 0.0],
    [2.0, 2.0, -1.0],
])
def test_rotation_from_rodrigues_matches_opencv(rvec: list[float]) -> None:
    expected, _ = cv2.Rodrigues(np.array(rvec, dtype=np.float64))
    np.testing.assert_allclose(rotation_from_rodrigues(rvec), expected, atol=1e-14)


def anipose_toml(cameras: list[dict[str, Any]], *, scale: float) -> str:
    """An anipose-style calibration: one [cam_N] section per camera, then [metadata]."""
    out = []
    for i, c in enumerate(cameras):
        out += [f"[cam_{i}]", f'name = "{c["name"]}"', f"size = [ {c['width']}, {c['height']},]",
                "matrix = [ " + ", ".join("[ " + ", ".join(repr(float(x)) for x in row) + ",]" for row in c["K"])
                + ",]",
                "distortions = [ " + ", ".join(repr(float(x)) for x in c["dist"]) + ",]",
                "rotation = [ " + ", ".join(repr(float(x)) for x in c["rvec"]) + ",]",
                "translation = [ " + ", ".join(repr(float(x) * scale) for x in c["t"]) + ",]", ""]
    out += ["[metadata]", "adjusted = false", "error = 0.41"]
    return "\n".join(out) + "\n"


def toml_cameras(rng: np.random.Generator) -> list[dict[str, Any]]:
    cams = []
    for i, name in enumerate(["B", "A", "C"]):  # not sorted: file order must be kept
        rvec = rng.normal(0, 1.0, 3)
        R, _ = cv2.Rodrigues(rvec)
        center = np.array([3.0 * np.cos(i), 3.0 * np.sin(i), 1.5])
        cams.append({"name": name, "width": 1920, "height": 1080,
                     "K": [[1400.0 + i, 0.0, 955.5], [0.0, 1401.0, 541.25], [0.0, 0.0, 1.0]],
                     "dist": [-0.11, 0.05, 0.001, -0.002, 0.01][: 5 - i], "rvec": rvec, "R": R,
                     "t": -R @ center})
    return cams


@pytest.mark.parametrize(("units", "scale"), [("mm", 1000.0), ("m", 1.0)])
def test_import_calibration_toml_matches_opencv_rodrigues_and_converts_units(
    tmp_path: Path, rng: np.random.Generator, units: str, scale: float
) -> None:
    cams = toml_cameras(rng)
    path = tmp_path / "calib.toml"
    path.write_text(anipose_toml(cams, scale=scale))
    rig = import_calibration_toml(path, units=units)  # type: ignore[arg-type]
    assert rig.rig_id == "calib"
    assert rig.camera_names == ("B", "A", "C")
    for cam, ref in zip(rig.cameras, cams, strict=True):
        np.testing.assert_allclose(cam.R, ref["R"], atol=1e-14)
        np.testing.assert_allclose(cam.t, ref["t"], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(cam.K, ref["K"])
        np.testing.assert_array_equal(cam.dist, np.pad(ref["dist"], (0, 5 - len(ref["dist"]))))
        assert (cam.width, cam.height) == (1920, 1080)


def test_import_calibration_toml_takes_the_rig_id_and_round_trips_through_json(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    (tmp_path / "calib.toml").write_text(anipose_toml(toml_cameras(rng), scale=1000.0))
    rig = import_calibration_toml(tmp_path / "calib.toml", units="mm", rig_id="lab-a")
    save_rig(rig, tmp_path / "lab-a.json")
    assert load_rig(tmp_path / "lab-a.json") == rig


def _toml_with(tmp_path: Path, rng: np.random.Generator, edit: str, replacement: str) -> Path:
    text = anipose_toml(toml_cameras(rng), scale=1000.0)
    assert edit in text
    path = tmp_path / "calib.toml"
    path.write_text(text.replace(edit, replacement, 1))
    return path


@pytest.mark.parametrize(("edit", "replacement", "parts"), [
    ("distortions = [ -0.11, 0.05, 0.001, -0.002, 0.01,]", "distortions = [ -0.11, 0, 0, 0, 0, 0.1,]",
     ["camera 'B'", "field 'distortions'", "at most 5"]),
    ('name = "A"\n', 'name = "A"\nfisheye = true\n', ["camera 'A'", "field 'fisheye'", "not supported"]),
    ("size = [ 1920, 1080,]", "size = [ 1920,]", ["camera 'B'", "field 'size'", "[width, height]"]),
    ("matrix = [ [ 1400.0, 0.0, 955.5,], ", "matrix = [ ", ["camera 'B'", "field 'matrix'", "shape (2, 3)"]),
    ("[cam_1]\nname", "[cam_1]\nname = \"X\"\nname", ["not valid TOML"]),
    ("rotation = [", "rotation_ = [", ["camera 'B'", "field 'rotation'", "missing key 'rotation' in section [cam_0]"]),
    ("matrix = [ [ 1400.0, 0.0, 955.5,]", "matrix = [ [ -1400.0, 0.0, 955.5,]",
     ["rig 'calib' camera 'B' field 'K'", "non-positive focal length"]),
])
def test_import_calibration_toml_rejects_bad_sections_naming_camera_and_field(
    tmp_path: Path, rng: np.random.Generator, edit: str, replacement: str, parts: list[str]
) -> None:
    path = _toml_with(tmp_path, rng, edit, replacement)
    with pytest.raises(RigError) as e:
        import_calibration_toml(path, units="mm")
    assert_one_line_naming(e.value, str(path), *parts)


def test_import_calibration_toml_rejects_unknown_units(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="units"):
        import_calibration_toml(tmp_path / "x.toml", units="cm")  # type: ignore[arg-type]


def test_import_calibration_toml_needs_two_camera_sections(tmp_path: Path, rng: np.random.Generator) -> None:
    text = anipose_toml(toml_cameras(rng)[:1], scale=1.0)
    (tmp_path / "one.toml").write_text(text)
    with pytest.raises(RigError, match="field 'cameras': 1 camera"):
        import_calibration_toml(tmp_path / "one.toml", units="m")


def test_capture_center_is_where_the_h36m_cameras_look() -> None:
    from rigpose.rig import load_rig

    centre = load_rig(rigs_dir() / "h36m-s1.json").capture_center()
    assert np.linalg.norm(centre[:2]) < 1.0 and 0.0 < centre[2] < 2.0  # near the origin, below the cameras
