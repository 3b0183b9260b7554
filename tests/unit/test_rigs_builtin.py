"""rigpose.data.synth.rigs_builtin and rigpose/resources/rigs/*.json: the shipped rigs regenerate from the published
calibrations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rigpose import geometry as g
from rigpose.data.synth import rigs_builtin as rb
from rigpose.resources import rigs_dir
from rigpose.rig import Camera, Rig, RigError, load_rig, validate_rig

RIGS_DIR = rigs_dir()
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
EXPECTED_RIG_IDS = {*(f"h36m-s{s}" for s in (1, 5, 6, 7, 8, 9, 11)), "humaneva-s1", "humaneva-s2", "humaneva-s3",
                    "studio-8"}

needs_shared = pytest.mark.skipif(not (SHARED / "h36m_cameras.json").exists(),
                                  reason=f"published calibrations not found in {SHARED}")


@pytest.fixture(scope="module")
def fresh_rigs() -> dict[str, Rig]:
    if not (SHARED / "h36m_cameras.json").exists():
        pytest.skip(f"published calibrations not found in {SHARED}")
    return {rig.rig_id: rig for rig in rb.builtin_rigs(SHARED)}


def shipped_paths() -> list[Path]:
    return sorted(RIGS_DIR.glob("*.json"))


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate v [3] by unit quaternion q (w, x, y, z): v + 2w (u x v) + 2 u x (u x v)."""
    w, u = q[0], q[1:]
    uv = np.cross(u, v)
    return v + 2 * (w * uv + np.cross(u, uv))


# ---------------------------------------------------------------------------------------------- shipped files


def test_every_expected_rig_is_shipped() -> None:
    assert {p.stem for p in shipped_paths()} == EXPECTED_RIG_IDS


@pytest.mark.parametrize("path", shipped_paths(), ids=lambda p: p.stem)
def test_every_shipped_rig_validates_and_sees_the_capture_centre(path: Path) -> None:
    rig = load_rig(path)
    assert rig.rig_id == path.stem
    validate_rig(rig, source=str(path))
    rb.check_sees(rig)


@pytest.mark.parametrize("path", shipped_paths(), ids=lambda p: p.stem)
def test_shipped_rigs_know_the_floor_where_their_source_does(path: Path) -> None:
    # H36M's world and the synthetic studio stand people on z = 0; HumanEva-I's floor is only inferred
    expected = None if path.stem.startswith("humaneva") else 0.0
    assert load_rig(path).floor_z == expected


@needs_shared
def test_shipped_rig_files_equal_a_fresh_regeneration(tmp_path: Path) -> None:
    assert rb.main(["--out", str(tmp_path), "--shared", str(SHARED)]) == 0
    fresh = sorted(tmp_path.glob("*.json"))
    assert [p.name for p in fresh] == [p.name for p in shipped_paths()]
    for new, old in zip(fresh, shipped_paths(), strict=True):
        d_new, d_old = json.loads(new.read_text()), json.loads(old.read_text())
        assert d_new["rig_id"] == d_old["rig_id"] and d_new["units"] == d_old["units"]
        assert d_new.get("floor_z") == d_old.get("floor_z")
        assert [(c["name"], c["width"], c["height"]) for c in d_new["cameras"]] == \
               [(c["name"], c["width"], c["height"]) for c in d_old["cameras"]]
        # 12 significant digits written: allow a last-digit difference from another machine's floating point
        for a_new, a_old in zip(load_rig(new).arrays(), load_rig(old).arrays(), strict=True):
            np.testing.assert_allclose(a_new, a_old, rtol=1e-10, atol=1e-12,
                                       err_msg=f"{old} differs from a regeneration: "
                                               "python -m rigpose.data.synth.rigs_builtin")


# ---------------------------------------------------------------------------------------------- published rigs


def test_h36m_camera_centres_are_about_1_5_m_above_the_floor_around_the_origin(fresh_rigs: dict[str, Rig]) -> None:
    for rig_id in (r for r in fresh_rigs if r.startswith("h36m")):
        centers = np.stack([c.center for c in fresh_rigs[rig_id].cameras])
        np.testing.assert_allclose(centers[:, 2], 1.55, atol=0.15)
        assert np.all((np.linalg.norm(centers[:, :2], axis=1) > 3.5) & (np.linalg.norm(centers[:, :2], axis=1) < 6))
        assert np.linalg.norm(centers[:, :2].mean(0)) < 1.0  # around the origin: cameras on all sides
        assert {np.sign(c[0]) for c in centers} == {-1, 1} and {np.sign(c[1]) for c in centers} == {-1, 1}


def test_published_cameras_follow_videopose3d_world_to_camera(fresh_rigs: dict[str, Rig]) -> None:
    calib = json.loads((SHARED / "h36m_cameras.json").read_text())
    X = np.array([0.3, -0.7, 0.9])
    for v, ext in enumerate(calib["extrinsics"]["S9"]):
        q = np.asarray(ext["orientation"]) / np.linalg.norm(ext["orientation"])
        q_inv = q * [1, -1, -1, -1]
        expected = qrot(q_inv, X - np.asarray(ext["translation"]) / 1000)  # VideoPose3D world_to_camera
        cam = fresh_rigs["h36m-s9"].cameras[v]
        np.testing.assert_allclose(cam.R @ X + cam.t, expected, atol=1e-12)
        np.testing.assert_allclose(cam.center, np.asarray(ext["translation"]) / 1000, atol=1e-12)


def test_published_distortion_is_reordered_to_opencv_k1_k2_p1_p2_k3(fresh_rigs: dict[str, Rig]) -> None:
    cam = fresh_rigs["h36m-s1"].camera("54138969")
    np.testing.assert_allclose(cam.dist, [-0.2071, 0.2478, -0.00098, -0.00142, -0.0031], atol=1e-4)  # DESIGN.md
    np.testing.assert_allclose(cam.focal, (1145.05, 1143.78), atol=0.01)
    assert (cam.width, cam.height) == (1000, 1002)
    c3 = fresh_rigs["humaneva-s1"].camera("C3")
    np.testing.assert_allclose(c3.dist, [-0.327556, 1.277065, -0.006537, -0.00536, 0.0])


def test_humaneva_rigs_have_three_vga_cameras_around_a_z_up_world(fresh_rigs: dict[str, Rig]) -> None:
    for s in (1, 2, 3):
        rig = fresh_rigs[f"humaneva-s{s}"]
        assert rig.camera_names == ("C1", "C2", "C3")
        assert {(c.width, c.height) for c in rig.cameras} == {(640, 480)}
        centers = np.stack([c.center for c in rig.cameras])
        np.testing.assert_allclose(centers[:, 2], 1.5, atol=0.15)
        # the optical axes meet above the floor near the origin: the capture centre (0, 0, 1) m is in reach
        meet = g.closest_point_to_rays(centers, np.stack([c.viewing_direction for c in rig.cameras]))
        assert np.linalg.norm(meet - rb.CAPTURE_CENTER) < 0.3


def test_rotation_from_quaternion_matches_a_hand_computed_rotation() -> None:
    half = np.deg2rad(90) / 2
    R = rb.rotation_from_quaternion([np.cos(half), 0.0, 0.0, np.sin(half)])  # +90 deg about z
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(rb.rotation_from_quaternion([2.0, 0, 0, 0]), np.eye(3))  # normalised first
    q = np.array([0.4, -0.5, -0.6, 0.48])
    v = np.array([0.1, 2.0, -3.0])
    np.testing.assert_allclose(rb.rotation_from_quaternion(q) @ v, qrot(q / np.linalg.norm(q), v), atol=1e-14)


# ---------------------------------------------------------------------------------------------- studio and checks


def test_studio_rig_is_a_ring_at_alternating_heights_aimed_at_the_capture_centre() -> None:
    rig = rb.studio_rig()
    assert rig.rig_id == "studio-8" and rig.camera_names == tuple(f"cam{i}" for i in range(8))
    validate_rig(rig)
    centers = np.stack([c.center for c in rig.cameras])
    np.testing.assert_allclose(np.linalg.norm(centers[:, :2], axis=1), 4.5, atol=1e-12)
    np.testing.assert_allclose(centers[:, 2], [1.2, 2.6] * 4, atol=1e-12)
    for cam in rig.cameras:
        to_target = rb.CAPTURE_CENTER - cam.center
        np.testing.assert_allclose(cam.viewing_direction, to_target / np.linalg.norm(to_target), atol=1e-12)
        assert cam.R[0, 2] == pytest.approx(0.0, abs=1e-12)  # level: image x axis horizontal
        assert (cam.width, cam.height) == (1920, 1080) and 1350 < cam.focal[0] < 1450


def test_check_sees_rejects_a_camera_facing_away_naming_it() -> None:
    rig = rb.studio_rig()
    cam = rig.cameras[3]
    flip = np.diag([-1.0, 1.0, -1.0])  # turn 180 degrees about the camera's y axis
    turned = Camera(name=cam.name, width=cam.width, height=cam.height, K=cam.K, dist=cam.dist,
                    R=flip @ cam.R, t=flip @ cam.t)
    bad = Rig(rig_id=rig.rig_id, cameras=(*rig.cameras[:3], turned, *rig.cameras[4:]))
    with pytest.raises(RigError, match=r"rig 'studio-8' camera 'cam3' field 'R': capture centre .* behind"):
        rb.check_sees(bad)


def test_check_sees_rejects_a_capture_centre_outside_the_image() -> None:
    rig = rb.studio_rig()
    with pytest.raises(RigError, match=r"camera 'cam0'.*outside the 1920x1080 image"):
        rb.check_sees(rig, np.array([0.0, 4.0, 1.0]))  # far off to the side of cam0's view
