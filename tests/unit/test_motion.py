"""rigpose.data.synth.mocap against pybullet's own forward kinematics (DeepMimic's setup) and hand-built clips."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rigpose.data.synth import mocap as m

pybullet = pytest.importorskip("pybullet")  # the 'mocap' extra ships the clips, the URDF and the reference FK

J = {name: i for i, name in enumerate(m.DEEPMIMIC16_JOINTS)}
# Bone lengths fixed by humanoid.urdf at globalScaling 0.25 (metres), read off pybullet's link frames.
BONES = {
    ("right_hip", "right_knee"): 0.421546, ("right_knee", "right_ankle"): 0.40987,
    ("right_shoulder", "right_elbow"): 0.274788, ("right_elbow", "right_wrist"): 0.258947,
    ("pelvis", "chest"): 0.236151, ("chest", "neck"): 0.223894, ("neck", "head"): 0.175,
    ("right_hip", "left_hip"): 0.169774, ("right_shoulder", "left_shoulder"): 0.36622,
}  # fmt: skip
HEAD_RADIUS = 0.41 * m.URDF_SCALE


def _xyzw(q_wxyz: np.ndarray) -> list[float]:
    return [q_wxyz[1], q_wxyz[2], q_wxyz[3], q_wxyz[0]]


@pytest.fixture(scope="module")
def humanoid() -> Iterator[tuple[int, int, dict[str, int]]]:
    """pybullet DIRECT with the humanoid loaded as pybullet's DeepMimic env loads its kinematic model."""
    client = pybullet.connect(pybullet.DIRECT)
    body = pybullet.loadURDF(
        str(m.humanoid_urdf()), [0, 0.85, 0], globalScaling=0.25, useFixedBase=True,
        flags=pybullet.URDF_MAINTAIN_LINK_ORDER, physicsClientId=client,
    )  # fmt: skip
    links = {
        pybullet.getJointInfo(body, j, physicsClientId=client)[12].decode(): j
        for j in range(pybullet.getNumJoints(body, physicsClientId=client))
    }
    yield client, body, links
    pybullet.disconnect(client)


def _pybullet_joints(humanoid: tuple[int, int, dict[str, int]], frame_F: np.ndarray) -> np.ndarray:
    """[16, 3] joints from pybullet's link states for one frame, in RigPose's z-up world."""
    client, body, links = humanoid
    pybullet.resetBasePositionAndOrientation(body, frame_F[1:4], _xyzw(frame_F[4:8]), physicsClientId=client)
    names = list(m.FRAME_LAYOUT)
    targets = [
        _xyzw(frame_F[c : c + 4]) if kind == "spherical" else [frame_F[c]] for kind, c in m.FRAME_LAYOUT.values()
    ]
    pybullet.resetJointStatesMultiDof(body, [links[n] for n in names], targets, physicsClientId=client)
    X_J3 = []
    for name in m.DEEPMIMIC16_JOINTS:
        if name == "pelvis":
            X_J3.append(pybullet.getBasePositionAndOrientation(body, physicsClientId=client)[0])
            continue
        link, field = (links["neck"], 0) if name == "head" else (links[name], 4)  # head: neck link's inertial origin
        state = pybullet.getLinkState(body, link, computeForwardKinematics=True, physicsClientId=client)
        X_J3.append(state[field])
    return np.asarray(X_J3) @ m.Y_UP_TO_Z_UP.T


@pytest.mark.parametrize("name", ["walk", "run", "backflip", "cartwheel", "kick", "roll", "crawl"])
def test_forward_kinematics_matches_pybullet_within_a_hundredth_of_a_millimetre(humanoid, name: str) -> None:
    # kick and roll hold quaternions far from unit norm (0.58 and 0.81): both sides must normalise them alike
    frames_TF = m.load_clip(name).frames
    picks = np.linspace(0, len(frames_TF) - 1, 6).astype(int)
    X_TJ3 = m.forward_kinematics(frames_TF)
    ref_TJ3 = np.stack([_pybullet_joints(humanoid, frames_TF[t]) for t in picks])
    np.testing.assert_allclose(X_TJ3[picks], ref_TJ3, rtol=0, atol=1e-5)


def test_forward_kinematics_keeps_leading_dimensions() -> None:
    frames_TF = m.load_clip("walk").frames[:6]
    X_TJ3 = m.forward_kinematics(frames_TF)
    np.testing.assert_array_equal(m.forward_kinematics(frames_TF.reshape(2, 3, -1)), X_TJ3.reshape(2, 3, 16, 3))
    with pytest.raises(ValueError, match="expected"):
        m.forward_kinematics(frames_TF[:, :43])


def test_world_is_z_up_right_handed_with_walk_heading_plus_x_and_left_on_plus_y() -> None:
    R = m.Y_UP_TO_Z_UP
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    X_TJ3 = m.clip_joints("walk")
    assert X_TJ3[-1, J["pelvis"], 0] - X_TJ3[0, J["pelvis"], 0] > 1.0  # ~1.24 m forward over the clip
    assert (X_TJ3[:, J["left_hip"], 1] > X_TJ3[:, J["right_hip"], 1]).all()
    assert (X_TJ3[:, J["head"], 2] > X_TJ3[:, J["pelvis"], 2] + 0.5).all()


def test_every_clip_loads_with_finite_joints_and_the_urdfs_rigid_bone_lengths() -> None:
    names = m.list_clips()
    assert len(names) >= 15 and {"walk", "run", "jump", "backflip"} <= set(names)
    for name in names:
        X_TJ3 = m.clip_joints(name)
        assert X_TJ3.shape[1:] == (16, 3) and np.isfinite(X_TJ3).all(), name
        for (a, b), length in BONES.items():
            bone_T = np.linalg.norm(X_TJ3[:, J[a]] - X_TJ3[:, J[b]], axis=-1)
            np.testing.assert_allclose(bone_T, length, atol=1e-6, err_msg=f"{name} {a}-{b}")
        assert 0.3 < BONES[("right_hip", "right_knee")] < 0.6
        # the DeepMimic floor is z = 0: every clip's lowest ankle lies within a few cm of it (ankle to sole 5 cm)
        assert -0.02 < X_TJ3[:, [J["right_ankle"], J["left_ankle"]], 2].min() < 0.08, name


def test_walking_humanoid_stands_about_1_6_metres_tall() -> None:
    X_TJ3 = m.clip_joints("walk")
    height_T = X_TJ3[:, J["head"], 2] + HEAD_RADIUS
    assert height_T.min() > 1.55 and height_T.max() < 1.65
    pelvis_T = X_TJ3[:, J["pelvis"], 2]
    assert pelvis_T.min() > 0.82 and pelvis_T.max() < 0.9


def _geodesic(q0_TQ: np.ndarray, q1_TQ: np.ndarray) -> np.ndarray:
    return 2 * np.arccos(np.clip(np.abs(np.sum(q0_TQ * q1_TQ, axis=-1)), 0, 1))


@pytest.mark.parametrize("name", ["walk", "run", "dance_b", "kick"])
def test_resample_at_native_fps_reproduces_the_key_frames(name: str) -> None:
    clip = m.load_clip(name)
    out_TF = m.resample(clip, clip.fps)
    assert out_TF.shape == clip.frames.shape
    quat = np.zeros(m.FRAME_WIDTH, dtype=bool)
    for c in m.QUAT_COLUMNS:
        quat[c : c + 4] = True
        np.testing.assert_allclose(_geodesic(out_TF[:, c : c + 4], clip.frames[:, c : c + 4]), 0, atol=1e-6)
    np.testing.assert_allclose(out_TF[:, ~quat][:, 1:], clip.frames[:, ~quat][:, 1:], atol=1e-9)
    np.testing.assert_allclose(m.forward_kinematics(out_TF), m.forward_kinematics(clip.frames), atol=1e-9)


def test_half_step_resample_lies_halfway_between_neighbouring_key_frames() -> None:
    clip = m.load_clip("walk")
    out_SF = m.resample(clip, 2 * clip.fps)
    assert len(out_SF) == 2 * clip.num_frames - 1
    k0_TF, k1_TF, mid_TF = clip.frames[:-1], clip.frames[1:], out_SF[1::2]
    for c in m.ANGLE_COLUMNS:
        np.testing.assert_allclose(mid_TF[:, c], (k0_TF[:, c] + k1_TF[:, c]) / 2, atol=1e-9)
    np.testing.assert_allclose(mid_TF[:, 1:4], (k0_TF[:, 1:4] + k1_TF[:, 1:4]) / 2, atol=1e-9)
    for c in m.QUAT_COLUMNS:
        q0, q1, qm = k0_TF[:, c : c + 4], k1_TF[:, c : c + 4], mid_TF[:, c : c + 4]
        np.testing.assert_allclose(_geodesic(q0, qm), _geodesic(qm, q1), atol=1e-6)  # on the arc, at its middle
        np.testing.assert_allclose(_geodesic(q0, qm) + _geodesic(qm, q1), _geodesic(q0, q1), atol=1e-6)
    np.testing.assert_allclose(out_SF[:, 0], 1 / (2 * clip.fps))


def _still_frames(durations: list[float]) -> np.ndarray:
    """Identity pose standing at x = frame index, one frame per duration (the last one unused)."""
    frames_TF = np.zeros((len(durations), m.FRAME_WIDTH))
    frames_TF[:, 0] = durations
    frames_TF[:, 1] = np.arange(len(durations))
    frames_TF[:, 2] = 0.85
    frames_TF[:, list(m.QUAT_COLUMNS)] = 1.0
    return frames_TF


def test_resample_follows_each_key_frames_own_duration() -> None:
    clip = m.Clip(name="uneven", path=Path("uneven"), frames=m.check_frames(_still_frames([0.1, 0.3, 0.0])), loop=False)
    out_SF = m.resample(clip, 10.0)  # t = 0, 0.1, 0.2, 0.3, 0.4 over key frames at 0, 0.1, 0.4
    np.testing.assert_allclose(out_SF[:, 1], [0, 1, 1 + 1 / 3, 1 + 2 / 3, 2], atol=1e-12)
    with pytest.raises(ValueError, match="fps"):
        m.resample(clip, 0)


def test_slerp_takes_the_short_way_when_signs_disagree() -> None:
    half = np.pi / 4  # 90 degrees about z, stored with the opposite sign
    q1 = -np.array([np.cos(half), 0, 0, np.sin(half)])
    q_mid = m.slerp(np.array([1.0, 0, 0, 0]), q1, np.array(0.5))
    np.testing.assert_allclose(np.abs(q_mid), [np.cos(np.pi / 8), 0, 0, np.sin(np.pi / 8)], atol=1e-12)


def test_clip_joints_resamples_to_the_requested_rate() -> None:
    clip = m.load_clip("walk")
    X_SJ3 = m.clip_joints("walk", fps=60)
    assert X_SJ3.shape == (int(np.floor(clip.duration * 60 + 1e-6)) + 1, 16, 3)
    np.testing.assert_allclose(X_SJ3[0], m.clip_joints("walk")[0], atol=1e-12)


def test_load_clip_by_name_or_path_with_loop_flag_and_native_rate() -> None:
    walk = m.load_clip("walk")
    assert walk.loop and walk.fps == pytest.approx(30, abs=0.01) and walk.frames.shape == (39, 44)
    np.testing.assert_array_equal(m.load_clip(walk.path).frames, walk.frames)
    assert not m.load_clip("kick").loop
    with pytest.raises(ValueError, match=r"known: .*walk"):
        m.load_clip("moonwalk")


def _write(tmp_path: Path, rows: list, *, loop: str = "wrap") -> Path:
    path = tmp_path / "bad_clip.txt"
    path.write_text(json.dumps({"Loop": loop, "Frames": rows}))
    return path


@pytest.mark.parametrize(
    ("frame", "edit", "message"),
    [
        (2, lambda row: row[:-1], "frame 2 has 43 values"),
        (1, lambda row: [*row[:5], float("nan"), *row[6:]], "frame 1 column 5 is nan"),
        (3, lambda row: [*row[:8], 0.0, 0.0, 0.0, 0.0, *row[12:]], "frame 3 chest quaternion has norm 0"),
        (0, lambda row: [-0.1, *row[1:]], "frame 0 has duration -0.1"),
    ],
)
def test_malformed_frames_are_refused_naming_file_and_frame(tmp_path: Path, frame: int, edit, message: str) -> None:
    rows = _still_frames([0.1, 0.1, 0.1, 0.1, 0.0]).tolist()
    rows[frame] = edit(rows[frame])
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match=message) as info:
        m.load_clip(path)
    assert str(path) in str(info.value)


def test_malformed_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "not_json.txt"
    path.write_text("{Frames: ")
    with pytest.raises(ValueError, match="not JSON"):
        m.load_clip(path)
    with pytest.raises(ValueError, match="Loop"):
        m.load_clip(_write(tmp_path, _still_frames([0.1, 0.0]).tolist(), loop="forever"))
    with pytest.raises(ValueError, match="at least 2"):
        m.load_clip(_write(tmp_path, _still_frames([0.1]).tolist()))
