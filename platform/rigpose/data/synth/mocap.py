"""Real motion: DeepMimic motion-capture clips shipped with pybullet, turned into 3D joint positions (deepmimic16).

A clip (`pybullet_data/data/motions/humanoid3d_<name>.txt`) is JSON with `Loop` ("wrap" or "none") and `Frames`,
one row of 44 numbers per key frame (quaternions w, x, y, z; DeepMimic world, y up):

    [dt, root_pos(3), root_quat(4), chest(4), neck(4), right_hip(4), right_knee(1), right_ankle(4),
     right_shoulder(4), right_elbow(1), left_hip(4), left_knee(1), left_ankle(4), left_shoulder(4), left_elbow(1)]

`dt` is the time from this key frame to the next (the last row's is unused). Root positions are already in metres:
pybullet's DeepMimic environment loads `humanoid/humanoid.urdf` with `globalScaling=0.25` and puts the base at the
frame's root position unscaled; its floor is the plane y = 0. Spherical joints take the quaternion as the joint
rotation, knees and elbows one angle (rad) about the URDF joint axis.

`forward_kinematics` redoes pybullet's forward kinematics in NumPy from the URDF (joint origins scaled by 0.25) and
agrees with pybullet's link frames to float32 precision (tests/unit/test_motion.py). Joint -> URDF link (link frame
origin = joint position, pybullet `getLinkState(...)[4]`, unless said otherwise):

    pelvis: root (the base; the URDF joint "root" is fixed at the base origin)   chest: chest   neck: neck
    head: centre of the head sphere = link neck's inertial origin (`getLinkState(...)[0]`), 0.175 m up the neck
    {right,left}_{hip,knee,ankle,shoulder,elbow,wrist}: the link of the same name (wrist: a fixed joint)

`markers` adds points fixed on links after the 16 joints (`Marker`: a joint, the link whose rotation carries the
point, and its offset in the rest pose's z-up axes); rigpose.data.synth.targets puts the face and foot points of the
training skeletons there.

World convention: DeepMimic's (x forward, y up, z to the character's right) is turned into RigPose's right-handed
z-up world by `Y_UP_TO_Z_UP` = +90 degrees about x: (x, y, z) -> (x, -z, y), a proper rotation (det +1), so the
character faces +x with its left on +y. DeepMimic's floor y = 0 becomes z = 0 and no shift is applied (the floor
is known, and a per-clip shift would move clips apart): each clip's lowest ankle joint lies between -0.007 m (run)
and 0.06 m (kick), against 0.05 m from ankle joint to sole in the rest pose, so feet touch z = 0 to within a few cm.
Scale (fixed by the URDF): pelvis 0.85 m and head centre 1.48-1.51 m high when walking (head-sphere top about
1.6 m); femur 0.422 m, shin 0.410 m, upper arm 0.275 m, forearm 0.259 m, hip width 0.170 m, shoulder width 0.366 m.

Shape letters: T key frames, S resampled frames, F frame values (44), J joints (16), Q quaternion (4, w x y z).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

DEEPMIMIC16_JOINTS: tuple[str, ...] = (
    "pelvis", "chest", "neck", "head",
    "right_hip", "right_knee", "right_ankle", "right_shoulder", "right_elbow", "right_wrist",
    "left_hip", "left_knee", "left_ankle", "left_shoulder", "left_elbow", "left_wrist",
)  # fmt: skip
FRAME_WIDTH = 44
URDF_SCALE = 0.25  # pybullet's DeepMimic setup: loadURDF("humanoid/humanoid.urdf", globalScaling=0.25)
# Shipped clips hold hand-keyed quaternions with norms from 0.58 to 1.12 (DeepMimic normalises them on load, and so
# does pybullet's resetJointStateMultiDof), so quaternions are normalised; only norms off 1 by more than this fail.
QUAT_NORM_TOLERANCE = 0.5
# DeepMimic (y up) -> RigPose (z up): +90 degrees about x, (x, y, z) -> (x, -z, y).
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

_ROOT_POS = slice(1, 4)
_ROOT_QUAT = 4
# URDF joint (= its child link) -> (type, first column in a frame), in DeepMimic's frame order.
FRAME_LAYOUT: dict[str, tuple[str, int]] = {
    "chest": ("spherical", 8), "neck": ("spherical", 12),
    "right_hip": ("spherical", 16), "right_knee": ("revolute", 20), "right_ankle": ("spherical", 21),
    "right_shoulder": ("spherical", 25), "right_elbow": ("revolute", 29),
    "left_hip": ("spherical", 30), "left_knee": ("revolute", 34), "left_ankle": ("spherical", 35),
    "left_shoulder": ("spherical", 39), "left_elbow": ("revolute", 43),
}  # fmt: skip
QUAT_COLUMNS: tuple[int, ...] = (_ROOT_QUAT, *(c for k, c in FRAME_LAYOUT.values() if k == "spherical"))
ANGLE_COLUMNS: tuple[int, ...] = tuple(c for k, c in FRAME_LAYOUT.values() if k == "revolute")
_QUAT_NAMES = {_ROOT_QUAT: "root", **{c: n for n, (k, c) in FRAME_LAYOUT.items() if k == "spherical"}}
_HEAD_LINK = "neck"  # the head is this link's inertial origin (centre of its sphere)
_CLIP_PREFIX = "humanoid3d_"


def _pybullet_data_dir() -> Path:
    try:
        import pybullet_data
    except ImportError as e:
        raise ImportError("DeepMimic clips come with pybullet: install rigpose's 'mocap' extra") from e
    return Path(pybullet_data.getDataPath())


def motions_dir() -> Path:
    """Folder holding pybullet's DeepMimic clips (`humanoid3d_*.txt`)."""
    return _pybullet_data_dir() / "data" / "motions"


def humanoid_urdf() -> Path:
    """pybullet's DeepMimic humanoid (`humanoid/humanoid.urdf`), unscaled units."""
    return _pybullet_data_dir() / "humanoid" / "humanoid.urdf"


# ---------------------------------------------------------------------------------------------------------- clips
@dataclass(frozen=True, eq=False)
class Clip:
    """One DeepMimic clip. `frames` [T, 44] as in the file, quaternions normalised to unit length."""

    name: str
    path: Path
    frames: np.ndarray  # [T, 44]; column 0 = dt (s) to the next frame
    loop: bool  # "Loop": "wrap" (the last frame leads back into the first) vs "none"

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def durations(self) -> np.ndarray:
        """[T - 1] seconds from each key frame to the next."""
        return self.frames[:-1, 0]

    @property
    def times(self) -> np.ndarray:
        """[T] seconds of each key frame from the clip's start."""
        return np.concatenate([[0.0], np.cumsum(self.durations)])

    @property
    def duration(self) -> float:
        """Seconds from the first to the last key frame."""
        return float(self.durations.sum())

    @property
    def fps(self) -> float:
        """Native frame rate: 1 / median key-frame duration (one clip, roll, mixes two durations)."""
        return float(1.0 / np.median(self.durations))


def list_clips() -> list[str]:
    """Names of the shipped humanoid clips (`walk`, `run`, `jump`, ...), sorted."""
    return sorted(p.stem.removeprefix(_CLIP_PREFIX) for p in motions_dir().glob(f"{_CLIP_PREFIX}*.txt"))


def _clip_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix or len(path.parts) > 1:
        return path
    path = motions_dir() / f"{_CLIP_PREFIX}{str(name_or_path).removeprefix(_CLIP_PREFIX)}.txt"
    if not path.is_file():
        raise ValueError(f"no DeepMimic clip {name_or_path!r}; known: {', '.join(list_clips())}")
    return path


def load_clip(name_or_path: str | Path) -> Clip:
    """Load a shipped clip by name (`"walk"`) or a DeepMimic motion file by path; ValueError names file and frame."""
    path = _clip_path(name_or_path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Frames"), list):
        raise ValueError(f"{path}: no 'Frames' list")
    loop = doc.get("Loop", "none")
    if loop not in ("wrap", "none"):
        raise ValueError(f"{path}: 'Loop' is {loop!r}, expected 'wrap' or 'none'")
    rows = doc["Frames"]
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != FRAME_WIDTH:
            size = len(row) if isinstance(row, list) else type(row).__name__
            raise ValueError(f"{path}: frame {i} has {size} values, expected {FRAME_WIDTH}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row):
            raise ValueError(f"{path}: frame {i} holds a non-number")
    frames_TF = check_frames(np.asarray(rows, dtype=np.float64).reshape(-1, FRAME_WIDTH), source=str(path))
    return Clip(name=path.stem.removeprefix(_CLIP_PREFIX), path=path, frames=frames_TF, loop=loop == "wrap")


def check_frames(frames_TF: np.ndarray, *, source: str = "frames") -> np.ndarray:
    """Validate [T, 44] DeepMimic frames; return a copy with unit quaternions. ValueError names source and frame."""
    frames_TF = np.array(frames_TF, dtype=np.float64)
    if frames_TF.ndim != 2 or frames_TF.shape[1] != FRAME_WIDTH:
        raise ValueError(f"{source}: frames have shape {frames_TF.shape}, expected [T, {FRAME_WIDTH}]")
    if frames_TF.shape[0] < 2:
        raise ValueError(f"{source}: {frames_TF.shape[0]} frame(s), a clip needs at least 2")
    bad_t, bad_c = np.nonzero(~np.isfinite(frames_TF))
    if bad_t.size:
        raise ValueError(f"{source}: frame {bad_t[0]} column {bad_c[0]} is {frames_TF[bad_t[0], bad_c[0]]}")
    bad = np.flatnonzero(frames_TF[:-1, 0] <= 0)
    if bad.size:
        raise ValueError(f"{source}: frame {bad[0]} has duration {frames_TF[bad[0], 0]} s, expected > 0")
    for c in QUAT_COLUMNS:
        norm_T = np.linalg.norm(frames_TF[:, c : c + 4], axis=1)
        bad = np.flatnonzero(np.abs(norm_T - 1.0) > QUAT_NORM_TOLERANCE)
        if bad.size:
            raise ValueError(
                f"{source}: frame {bad[0]} {_QUAT_NAMES[c]} quaternion has norm {norm_T[bad[0]]:.3g}, "
                f"expected 1 +- {QUAT_NORM_TOLERANCE}"
            )
        frames_TF[:, c : c + 4] /= norm_T[:, None]
    return frames_TF


# ----------------------------------------------------------------------------------------------------- rotations
def quat_to_matrix(q_Q: np.ndarray) -> np.ndarray:
    """[..., 4] quaternions (w, x, y, z; normalised here) -> [..., 3, 3] rotation matrices."""
    q_Q = q_Q / np.linalg.norm(q_Q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q_Q, -1, 0)
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1)  # fmt: skip
    return R.reshape(*q_Q.shape[:-1], 3, 3)


def _axis_angle_to_matrix(axis_3: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Unit `axis_3`, [...] angles (rad) -> [..., 3, 3] (Rodrigues)."""
    K = np.array([[0, -axis_3[2], axis_3[1]], [axis_3[2], 0, -axis_3[0]], [-axis_3[1], axis_3[0], 0]])
    s, c = np.sin(angle)[..., None, None], np.cos(angle)[..., None, None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def _rpy_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """URDF origin rpy (fixed-axis roll about x, pitch about y, yaw about z) -> R = Rz Ry Rx."""
    rx, ry, rz = (_axis_angle_to_matrix(np.eye(3)[i], np.asarray(a)) for i, a in enumerate(rpy))
    return rz @ ry @ rx


def slerp(q0_Q: np.ndarray, q1_Q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit quaternions [..., 4] at fraction `w` [...] (0 -> q0, 1 -> q1).

    Takes the short way (q1 negated where q0 . q1 < 0) and falls back to normalised lerp for nearly equal rotations.
    """
    dot = np.sum(q0_Q * q1_Q, axis=-1)
    q1_Q = np.where(dot[..., None] < 0, -q1_Q, q1_Q)
    dot = np.clip(np.abs(dot), 0.0, 1.0)
    theta = np.arccos(dot)
    near = theta < 1e-6
    sin_theta = np.where(near, 1.0, np.sin(theta))
    a = np.where(near, 1 - w, np.sin((1 - w) * theta) / sin_theta)
    b = np.where(near, w, np.sin(w * theta) / sin_theta)
    q_Q = a[..., None] * q0_Q + b[..., None] * q1_Q
    return q_Q / np.linalg.norm(q_Q, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------------------ URDF
@dataclass(frozen=True)
class _UrdfJoint:
    name: str
    kind: str  # URDF type: spherical, revolute, fixed
    parent: str  # parent link
    child: str  # child link
    offset_3: np.ndarray  # joint origin in the parent link frame, metres after scaling
    R_origin_33: np.ndarray
    axis_3: np.ndarray  # unit rotation axis (revolute)


def _floats(element: ET.Element | None, key: str, default: str, *, where: str) -> np.ndarray:
    text = default if element is None else element.get(key, default)
    try:
        values = np.array([float(v) for v in text.split()])
    except ValueError:
        raise ValueError(f"{where}: {key}={text!r} is not 3 numbers") from None
    if values.shape != (3,) or not np.isfinite(values).all():
        raise ValueError(f"{where}: {key}={text!r} is not 3 finite numbers")
    return values


@cache
def _parse_urdf(path: Path, scale: float) -> tuple[str, tuple[_UrdfJoint, ...], dict[str, np.ndarray]]:
    """(base link, joints parents-first, link -> scaled inertial origin) of a URDF."""
    try:  # pybullet's humanoid.urdf ends in a NUL byte after </robot>, which expat refuses
        root = ET.fromstring(path.read_bytes().rstrip(b"\x00\r\n\t "))
    except ET.ParseError as e:
        raise ValueError(f"{path}: not a URDF ({e})") from None
    inertial = {
        link.get("name", ""): scale * _floats(link.find("inertial/origin"), "xyz", "0 0 0", where=f"{path} link")
        for link in root.iter("link")
    }
    joints = {}
    for el in root.iter("joint"):
        name, where = el.get("name", ""), f"{path} joint {el.get('name')!r}"
        parent, child = el.find("parent"), el.find("child")
        if parent is None or child is None:
            raise ValueError(f"{where}: needs <parent> and <child>")
        origin = el.find("origin")
        axis = _floats(el.find("axis"), "xyz", "1 0 0", where=where)
        joints[child.get("link", "")] = _UrdfJoint(
            name=name, kind=el.get("type", ""), parent=parent.get("link", ""), child=child.get("link", ""),
            offset_3=scale * _floats(origin, "xyz", "0 0 0", where=where),
            R_origin_33=_rpy_to_matrix(_floats(origin, "rpy", "0 0 0", where=where)),
            axis_3=axis / np.linalg.norm(axis),
        )  # fmt: skip
    bases = [name for name in inertial if name not in joints]
    if len(bases) != 1:
        raise ValueError(f"{path}: expected one base link, found {bases}")
    ordered, frontier = [], [bases[0]]
    while frontier:  # breadth-first from the base: every parent comes before its children
        link = frontier.pop(0)
        children = [j for j in joints.values() if j.parent == link]
        ordered += children
        frontier += [j.child for j in children]
    for name, (kind, _) in FRAME_LAYOUT.items():
        if joints.get(name) is None or joints[name].kind != kind:
            raise ValueError(f"{path}: needs a {kind} joint whose child link is {name!r} (DeepMimic layout)")
    return bases[0], tuple(ordered), inertial


# ---------------------------------------------------------------------------------------------------- kinematics
class Marker(NamedTuple):
    """A point fixed on a link: `joint` (a deepmimic16 joint) + R_link @ `offset_3`, where `link` names the
    deepmimic16 joint whose link's rotation carries it ("neck" for the head) and `offset_3` (metres) is given in the
    rest pose's axes, RigPose's z-up world (x forward, y the character's left, z up: at rest every link is aligned
    with it)."""

    joint: str
    link: str
    offset_3: tuple[float, float, float]


def forward_kinematics(frames_TF: np.ndarray, *, urdf_path: str | Path | None = None,
                       markers: Sequence[Marker] = ()) -> np.ndarray:
    """DeepMimic frames [T, 44] (or [..., 44]) -> deepmimic16 joint positions, then `markers`, [T, 16 + M, 3],
    metres, z-up world.

    Quaternions are normalised here; column 0 (dt) is ignored. `urdf_path` defaults to pybullet's humanoid,
    scaled by `URDF_SCALE` as pybullet's DeepMimic environment does.
    """
    frames_TF = np.asarray(frames_TF, dtype=np.float64)
    if frames_TF.shape[-1:] != (FRAME_WIDTH,):
        raise ValueError(f"frames have shape {frames_TF.shape}, expected [..., {FRAME_WIDTH}]")
    lead, frames_TF = frames_TF.shape[:-1], frames_TF.reshape(-1, FRAME_WIDTH)
    base, joints, inertial = _parse_urdf(Path(urdf_path or humanoid_urdf()), URDF_SCALE)
    R = {base: quat_to_matrix(frames_TF[:, _ROOT_QUAT : _ROOT_QUAT + 4])}  # link -> world rotation [T, 3, 3]
    p = {base: frames_TF[:, _ROOT_POS]}  # link -> world frame origin [T, 3]
    for joint in joints:
        R_parent = R[joint.parent]
        p[joint.child] = p[joint.parent] + R_parent @ joint.offset_3
        R_child = R_parent @ joint.R_origin_33
        kind, col = FRAME_LAYOUT.get(joint.child, ("fixed", -1))
        if kind == "spherical":
            R_child = R_child @ quat_to_matrix(frames_TF[:, col : col + 4])
        elif kind == "revolute":
            R_child = R_child @ _axis_angle_to_matrix(joint.axis_3, frames_TF[:, col])
        R[joint.child] = R_child
    p["pelvis"], R["pelvis"] = p[base], R[base]
    p["head"] = p[_HEAD_LINK] + R[_HEAD_LINK] @ inertial[_HEAD_LINK]
    points = [p[name] for name in DEEPMIMIC16_JOINTS]
    for m in markers:  # the offset in DeepMimic's rest axes is Y_UP_TO_Z_UP^T @ offset
        if m.joint not in p or m.link not in R:
            raise ValueError(f"marker on joint {m.joint!r}, link {m.link!r}: expected deepmimic16 joint names")
        points.append(p[m.joint] + R[m.link] @ (Y_UP_TO_Z_UP.T @ np.asarray(m.offset_3, np.float64)))
    X_TJ3 = np.stack(points, axis=1) @ Y_UP_TO_Z_UP.T
    return X_TJ3.reshape(*lead, len(points), 3)


def resample(clip: Clip, fps: float) -> np.ndarray:
    """Frames [T', 44] at `fps` over the clip's span (t = k / fps <= duration), column 0 set to 1 / fps.

    Follows each key frame's own duration; slerp for quaternions (short way), linear for root position and the
    knee/elbow angles.
    """
    fps = float(fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    times_T = clip.times
    t_S = np.arange(math.floor(clip.duration * fps + 1e-6) + 1) / fps
    i_S = np.clip(np.searchsorted(times_T, t_S, side="right") - 1, 0, clip.num_frames - 2)
    w_S = np.clip((t_S - times_T[i_S]) / clip.durations[i_S], 0.0, 1.0)
    f0_SF, f1_SF = clip.frames[i_S], clip.frames[i_S + 1]
    out_SF = f0_SF + w_S[:, None] * (f1_SF - f0_SF)  # positions and angles; quaternions overwritten below
    for c in QUAT_COLUMNS:
        out_SF[:, c : c + 4] = slerp(f0_SF[:, c : c + 4], f1_SF[:, c : c + 4], w_S)
    out_SF[:, 0] = 1.0 / fps
    return out_SF


def clip_joints(name_or_path: str | Path, *, fps: float | None = None, markers: Sequence[Marker] = ()) -> np.ndarray:
    """Joint positions, then `markers`, [T, 16 + M, 3] (metres, z-up world) of a clip, at its key frames or
    resampled to `fps`."""
    clip = load_clip(name_or_path)
    return forward_kinematics(clip.frames if fps is None else resample(clip, fps), markers=markers)
