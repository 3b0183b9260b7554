"""Motion for the synthetic builder: a bank of clips (DeepMimic or procedural), subject bone scaling, placement.

All of it works on whole arrays: a clip's joints are computed once (forward kinematics), and every placement of
it is a bone rescaling plus a rotation about z and a floor translation of the whole [N, J, 3] array.

Procedural motion (for scale tests only): each joint's rotation in its parent's frame is roll (about x), pitch
(about y) and twist (about z), each a smooth sum of a bias and three sinusoids (0.1-1 Hz) kept inside the joint's
anatomical range (`JOINT_LIMITS_DEG`); bones are the DeepMimic humanoid's (`REST_OFFSETS_J3`); the root wanders
smoothly within +-0.5 m, and each frame is lifted so its lowest joint is `FOOT_CLEARANCE` above the floor (z = 0).

Both sources can carry `markers` (points fixed on links, `rigpose.data.synth.mocap.Marker`) after the 16 joints:
the face and foot points that rigpose.data.synth.targets maps onto the training skeletons.

Shape letters: T frames of one clip, M frames of all clips, N rows, J joints (deepmimic16, then any markers),
S subjects, C clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rigpose.skeleton import DEEPMIMIC16

if TYPE_CHECKING:
    from rigpose.data.synth.mocap import Marker

SKELETON = DEEPMIMIC16
URDF_SCALE = 0.25  # pybullet's DeepMimic setup, as rigpose.data.synth.mocap.URDF_SCALE
# Rest pose of pybullet's DeepMimic humanoid (every joint rotation identity) in RigPose's z-up world, facing +x
# with its left on +y: each joint's offset from its parent, metres (URDF joint origins x 0.25). Equal to
# `motion.forward_kinematics` of the identity frame (tests/unit/test_synth.py checks it), so procedural motion
# needs no pybullet.
REST_OFFSETS_J3 = URDF_SCALE * np.array([
    [0.0, 0.0, 0.0],                                                                       # pelvis (root)
    [0.0, 0.0, 0.944604], [0.0, 0.0, 0.895576], [0.0, 0.0, 0.7],                           # chest, neck, head
    [0.0, -0.339548, 0.0], [0.0, 0.0, -1.686184], [0.0, 0.0, -1.63948],                    # right leg
    [-0.0962, -0.73244, 0.974], [0.0, 0.0, -1.099152], [0.0, 0.0, -1.035788],              # right arm
    [0.0, 0.339548, 0.0], [0.0, 0.0, -1.686184], [0.0, 0.0, -1.63948],                     # left leg
    [-0.0962, 0.73244, 0.974], [0.0, 0.0, -1.099152], [0.0, 0.0, -1.035788],               # left arm
])  # fmt: skip
FOOT_CLEARANCE = 0.05  # m: ankle joint to sole in the rest pose
# (roll about x, pitch about y, twist about z) ranges in degrees of a joint's rotation in its parent's frame, for
# the centre line and the right side; the left side mirrors them (roll and twist negated). Pitch > 0 leans the
# trunk forward and swings a hanging limb backward. Joints not listed (head, ankles, wrists) end a chain.
JOINT_LIMITS_DEG: dict[str, tuple[tuple[float, float], ...]] = {
    "pelvis": ((-10, 10), (-10, 15), (-45, 45)),
    "chest": ((-20, 20), (-15, 45), (-30, 30)),
    "neck": ((-20, 20), (-30, 40), (-50, 50)),
    "right_hip": ((-40, 10), (-100, 25), (-20, 20)),
    "right_knee": ((0, 0), (0, 130), (0, 0)),
    "right_shoulder": ((-150, 10), (-160, 50), (-60, 60)),
    "right_elbow": ((0, 0), (-145, 0), (0, 0)),
}


@dataclass(frozen=True)
class MotionBank:
    """Clips concatenated: clip c is rows `offsets[c]:offsets[c + 1]` of `joints` [M, J, 3] (world metres, z up)."""

    names: tuple[str, ...]
    joints: np.ndarray  # [M, J, 3] float64
    offsets: np.ndarray  # [C + 1] int64
    fps: float

    @property
    def lengths(self) -> np.ndarray:
        """[C] frames per clip."""
        return np.diff(self.offsets)

    @property
    def joints_3JM(self) -> np.ndarray:
        """`joints` in the coordinates-first layout [3, J, M] that `scale_bones` and `place` take."""
        return np.ascontiguousarray(self.joints.transpose(2, 1, 0))

    @property
    def centers_C2(self) -> np.ndarray:
        """[C, 2] mean root (x, y) of each clip: the point a placement puts at its floor position."""
        return np.stack([self.joints[a:b, 0, :2].mean(0) for a, b in zip(self.offsets[:-1], self.offsets[1:],
                                                                              strict=True)])

    @staticmethod
    def from_clips(names: list[str], joints: list[np.ndarray], fps: float) -> MotionBank:
        lengths = [len(j) for j in joints]
        return MotionBank(names=tuple(names), joints=np.concatenate(joints).astype(np.float64),
                          offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), fps=float(fps))


def deepmimic_bank(names: list[str], fps: float, *, markers: Sequence[Marker] = ()) -> MotionBank:
    """The named DeepMimic clips resampled to `fps`, joints then `markers` (needs pybullet, the `mocap` extra)."""
    from rigpose.data.synth.mocap import clip_joints

    return MotionBank.from_clips(names, [clip_joints(n, fps=fps, markers=markers) for n in names], fps)


# ---------------------------------------------------------------------------------------------- procedural


def _rotations(roll: np.ndarray, pitch: np.ndarray, twist: np.ndarray) -> np.ndarray:
    """Angles [...] (rad) -> Rz(twist) @ Ry(pitch) @ Rx(roll) [..., 3, 3]."""
    cr, sr, cp, sp, ct, st = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(twist), np.sin(twist)
    R = np.stack([
        ct * cp, ct * sp * sr - st * cr, ct * sp * cr + st * sr,
        st * cp, st * sp * sr + ct * cr, st * sp * cr - ct * sr,
        -sp, cp * sr, cp * cr,
    ], axis=-1)  # fmt: skip
    return R.reshape(*roll.shape, 3, 3)


def _smooth_unit(rng: np.random.Generator, num_frames: int, num_signals: int, fps: float) -> np.ndarray:
    """[T, K] smooth signals in [-1, 1]: a bias plus three sinusoids of 0.1-1 Hz, weights summing to <= 1."""
    t_T = np.arange(num_frames) / fps
    freq, phase = rng.uniform(0.1, 1.0, (3, num_signals)), rng.uniform(0, 2 * np.pi, (3, num_signals))
    w = rng.random((4, num_signals))
    w *= rng.uniform(0.6, 1.0, num_signals) / w.sum(0)
    s = w[0] * rng.uniform(-1, 1, num_signals)
    return s + np.einsum("kc,tkc->tc", w[1:], np.sin(2 * np.pi * freq * t_T[:, None, None] + phase))


def _limits_rad() -> np.ndarray:
    """[J, 3, 2] (lo, hi) of (roll, pitch, twist) per deepmimic16 joint, radians; zeros for chain ends."""
    lim = np.zeros((SKELETON.num_joints, 3, 2))
    for name, ranges in JOINT_LIMITS_DEG.items():
        lim[SKELETON.index(name)] = ranges
        if name.startswith("right_"):
            (r0, r1), pitch, (t0, t1) = ranges
            lim[SKELETON.index("left_" + name.removeprefix("right_"))] = ((-r1, -r0), pitch, (-t1, -t0))
    return np.deg2rad(lim)


def procedural_clip(rng: np.random.Generator, num_frames: int, fps: float, *,
                    markers: Sequence[Marker] = ()) -> np.ndarray:
    """One random, anatomically bounded, smooth motion: joints, then `markers`, [T, 16 + M, 3], metres, z up,
    lowest joint on the floor."""
    J, lim = SKELETON.num_joints, _limits_rad()
    u_TJ3 = (_smooth_unit(rng, num_frames, J * 3, fps).reshape(num_frames, J, 3) + 1) / 2
    angles_TJ3 = lim[..., 0] + (lim[..., 1] - lim[..., 0]) * u_TJ3
    L_TJ33 = _rotations(angles_TJ3[..., 0], angles_TJ3[..., 1], angles_TJ3[..., 2])
    X_TJ3 = np.zeros((num_frames, J, 3))
    X_TJ3[:, 0, :2] = 0.5 * _smooth_unit(rng, num_frames, 2, fps)
    G = [L_TJ33[:, 0]] + [None] * (J - 1)  # world rotation of each joint's frame [T, 3, 3]
    for j in range(1, J):  # deepmimic16 lists parents before children
        p = SKELETON.parents[j]
        X_TJ3[:, j] = X_TJ3[:, p] + G[p] @ REST_OFFSETS_J3[j]
        G[j] = G[p] @ L_TJ33[:, j]
    if markers:  # a joint's position is its parent's plus the parent link's rotation of the rest offset: likewise
        M_TM3 = np.stack([X_TJ3[:, SKELETON.index(m.joint)] + G[SKELETON.index(m.link)] @ np.asarray(m.offset_3)
                          for m in markers], axis=1)
        X_TJ3 = np.concatenate([X_TJ3, M_TM3], axis=1)
    X_TJ3[..., 2] += FOOT_CLEARANCE - X_TJ3[:, :J, 2].min(1, keepdims=True)
    return X_TJ3


def procedural_bank(seed: int, *, num_sequences: int, num_frames: int, fps: float,
                    markers: Sequence[Marker] = ()) -> MotionBank:
    """`num_sequences` procedural clips `proc0000`, ... of `num_frames` frames each; clip i from seed (seed, i)."""
    names = [f"proc{i:04d}" for i in range(num_sequences)]
    clips = [procedural_clip(np.random.default_rng([seed, 5, i]), num_frames, fps, markers=markers)
             for i in range(num_sequences)]
    return MotionBank.from_clips(names, clips, fps)


# ---------------------------------------------------------------------------------------------- subjects


def subject_bone_factors(rng: np.random.Generator, num_subjects: int, *, scale: tuple[float, float],
                         bone_jitter: float, symmetric: bool = True) -> np.ndarray:
    """[S, J] length factor of the bone ending at each joint (1 for the root): U(scale) x (1 + N(0, jitter)).

    The jitter is clipped to +-3 sigma; with `symmetric`, a left bone takes its right mirror's jitter.
    """
    J = SKELETON.num_joints
    overall_S = rng.uniform(scale[0], scale[1], num_subjects)
    jitter_SJ = np.clip(rng.standard_normal((num_subjects, J)), -3, 3) * bone_jitter
    if symmetric:
        jitter_SJ[:, list(SKELETON.left)] = jitter_SJ[:, list(SKELETON.right)]
    factors_SJ = overall_S[:, None] * (1 + jitter_SJ)
    factors_SJ[:, 0] = 1.0
    return factors_SJ


def root_height_factors(factors_SJ: np.ndarray) -> np.ndarray:
    """[S] pelvis height factor that keeps the feet on the floor: the mean leg (thigh + shin) length factor."""
    legs = [("right_knee", "right_ankle"), ("left_knee", "left_ankle")]
    out = np.zeros(len(factors_SJ))
    for knee, ankle in legs:
        k, a = SKELETON.index(knee), SKELETON.index(ankle)
        thigh, shin = np.linalg.norm(REST_OFFSETS_J3[k]), np.linalg.norm(REST_OFFSETS_J3[a])
        out += (factors_SJ[:, k] * thigh + factors_SJ[:, a] * shin) / (thigh + shin) / len(legs)
    return out


def scale_bones(X_3JN: np.ndarray, factors_JN: np.ndarray, root_height_N: np.ndarray, *,
                parents: Sequence[int] = SKELETON.parents) -> np.ndarray:
    """Scale each bone (child - parent) by its factor, rebuilding the tree from the root outward.

    Coordinates-first layout [3, J, N] (each coordinate of each joint contiguous over the N rows: NumPy is slow on
    a trailing axis of 3). The root keeps its (x, y); its height is multiplied by `root_height_N` so scaled legs
    still reach the floor. `parents` [J] lists every parent before its children (deepmimic16's; markers hang from
    their joint).
    """
    out = np.empty_like(X_3JN)
    out[:2, 0] = X_3JN[:2, 0]
    out[2, 0] = X_3JN[2, 0] * root_height_N
    for j in range(1, X_3JN.shape[1]):
        p = parents[j]
        out[:, j] = out[:, p] + factors_JN[j] * (X_3JN[:, j] - X_3JN[:, p])
    return out


# ---------------------------------------------------------------------------------------------- placement


def place(X_3JN: np.ndarray, center_2N: np.ndarray, yaw_N: np.ndarray, target_2N: np.ndarray) -> np.ndarray:
    """Rotate each row [3, J, N] about the vertical through `center_2N` by `yaw_N` (rad), then move that point
    to `target_2N` (floor x, y, metres). Heights are kept, so feet stay on the floor."""
    c, s = np.cos(yaw_N), np.sin(yaw_N)
    x, y = X_3JN[0] - center_2N[0], X_3JN[1] - center_2N[1]
    out = np.empty_like(X_3JN)
    out[0] = c * x - s * y + target_2N[0]
    out[1] = s * x + c * y + target_2N[1]
    out[2] = X_3JN[2]
    return out
