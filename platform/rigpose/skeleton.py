"""Joint sets known to RigPose (h36m17, coco17, humaneva15, deepmimic16): names, parents, left/right, conversions.

Root = joint 0 of the skeleton (the pelvis), except coco17 whose root is derived as the mid-hip (COCO has no
pelvis keypoint). `root_of` and `root_relative` hide that difference from the rest of the code.
Shape letters: J joints, D coordinate dims (2 or 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """A named joint set. `parents[j]` is j's parent index, -1 for a root-attached joint (the tree's top)."""

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    root_joints: tuple[int, ...] = (0,)  # joints averaged to give the root: (0,) or the two hips for coco17
    description: str = ""
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        J = len(self.joint_names)
        if len(self.parents) != J:
            raise ValueError(f"skeleton {self.name!r}: {len(self.parents)} parents for {J} joints")
        if len(self.left) != len(self.right):
            raise ValueError(f"skeleton {self.name!r}: left and right lists differ in length")
        if len(set(self.joint_names)) != J:
            raise ValueError(f"skeleton {self.name!r}: duplicate joint names")
        for j in range(J):  # every chain of parents must end at -1 (a tree, no cycles)
            seen, k = set(), j
            while k != -1:
                if not -1 <= self.parents[k] < J or k in seen:
                    raise ValueError(f"skeleton {self.name!r}: joint {j}'s parent chain is not a tree")
                seen.add(k)
                k = self.parents[k]
        self._index.update({n: i for i, n in enumerate(self.joint_names)})

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(child, parent) pairs of the tree, root-attached joints excluded."""
        return tuple((j, p) for j, p in enumerate(self.parents) if p >= 0)

    @property
    def symmetric_bones(self) -> tuple[tuple[int, int], ...]:
        """Pairs of indices into `bones` that are left/right mirror images (for bone-symmetry priors)."""
        mirror = {**dict(zip(self.left, self.right, strict=True)), **dict(zip(self.right, self.left, strict=True))}
        bones = self.bones
        index = {b: i for i, b in enumerate(bones)}
        pairs = []
        for i, (c, p) in enumerate(bones):
            if c in self.left:
                m = (mirror[c], mirror.get(p, p))
                if m in index:
                    pairs.append((i, index[m]))
        return tuple(pairs)

    @property
    def flip_permutation(self) -> tuple[int, ...]:
        """Index permutation that swaps left and right joints (for flip augmentation, left/right swaps)."""
        perm = list(range(self.num_joints))
        for a, b in zip(self.left, self.right, strict=True):
            perm[a], perm[b] = b, a
        return tuple(perm)

    def index(self, joint_name: str) -> int:
        """Index of `joint_name`; ValueError naming the skeleton and the known names otherwise."""
        try:
            return self._index[joint_name]
        except KeyError:
            raise ValueError(
                f"skeleton {self.name!r} has no joint {joint_name!r}; known: {', '.join(self.joint_names)}"
            ) from None


def _lr(names: tuple[str, ...], left_prefix: str, right_prefix: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    left, right = [], []
    for i, n in enumerate(names):
        if n.startswith(left_prefix):
            left.append(i)
            right.append(names.index(right_prefix + n[len(left_prefix):]))
    return tuple(left), tuple(right)


# Human3.6M, 17 joints as VideoPose3D keeps them (../shared/data/h36m_skeleton.json)
_H36M_NAMES = ("Hip", "RHip", "RKnee", "RFoot", "LHip", "LKnee", "LFoot", "Spine", "Thorax", "Neck/Nose", "Head",
               "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist")
H36M17 = Skeleton(
    name="h36m17",
    joint_names=_H36M_NAMES,
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    left=(4, 5, 6, 11, 12, 13),
    right=(1, 2, 3, 14, 15, 16),
    description="Human3.6M 17 joints (VideoPose3D order); root = Hip (pelvis)",
)
# Indices of the 17 kept joints in the original 32-joint Human3.6M skeleton.
H36M32_TO_17: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)

# COCO keypoints, 17 joints in COCO order; root derived as the mid-hip.
_COCO_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
               "right_knee", "left_ankle", "right_ankle")
COCO17 = Skeleton(
    name="coco17",
    joint_names=_COCO_NAMES,
    # a tree over the derived mid-hip: hips and nose hang from it, shoulders from the hips, face from the nose
    parents=(-1, 0, 0, 1, 2, 11, 12, 5, 6, 7, 8, -1, -1, 11, 12, 13, 14),
    left=_lr(_COCO_NAMES, "left_", "right_")[0],
    right=_lr(_COCO_NAMES, "left_", "right_")[1],
    root_joints=(11, 12),
    description="COCO 17 keypoints (COCO order); root = mid-hip (derived)",
)

# HumanEva-I, 15 joints as in VideoPose3D (../shared/data/humaneva_cameras.json)
_HUMANEVA_NAMES = ("pelvis", "thorax", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
                   "right_elbow", "right_wrist", "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee",
                   "right_ankle", "head")
HUMANEVA15 = Skeleton(
    name="humaneva15",
    joint_names=_HUMANEVA_NAMES,
    parents=(-1, 0, 1, 2, 3, 1, 5, 6, 0, 8, 9, 0, 11, 12, 1),
    left=(2, 3, 4, 8, 9, 10),
    right=(5, 6, 7, 11, 12, 13),
    description="HumanEva-I 15 joints (VideoPose3D order); root = pelvis",
)

# DeepMimic humanoid (pybullet's motion-capture clips), 16 joints
_DEEPMIMIC_NAMES = ("pelvis", "chest", "neck", "head", "right_hip", "right_knee", "right_ankle", "right_shoulder",
                    "right_elbow", "right_wrist", "left_hip", "left_knee", "left_ankle", "left_shoulder",
                    "left_elbow", "left_wrist")
DEEPMIMIC16 = Skeleton(
    name="deepmimic16",
    joint_names=_DEEPMIMIC_NAMES,
    parents=(-1, 0, 1, 2, 0, 4, 5, 1, 7, 8, 0, 10, 11, 1, 13, 14),
    left=(10, 11, 12, 13, 14, 15),
    right=(4, 5, 6, 7, 8, 9),
    description="DeepMimic humanoid of pybullet's motion clips; root = pelvis",
)

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (H36M17, COCO17, HUMANEVA15, DEEPMIMIC16)}


def get_skeleton(name: str) -> Skeleton:
    """The skeleton called `name`; ValueError listing the known ones otherwise."""
    try:
        return SKELETONS[name]
    except KeyError:
        raise ValueError(f"unknown skeleton {name!r}; known: {', '.join(SKELETONS)}") from None


def skeleton_from_joint_names(joint_names: Any) -> Skeleton:
    """The known skeleton whose joint names are exactly `joint_names` (order included)."""
    names = tuple(str(n) for n in joint_names)
    for skel in SKELETONS.values():
        if skel.joint_names == names:
            return skel
    raise ValueError(
        f"joint names {list(names)} match no skeleton known to rigpose ({', '.join(SKELETONS)}); "
        "pass the skeleton explicitly"
    )


def root_of(points: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Root position [..., D] of points [..., J, D]: joint 0, or the mean of `root_joints` (coco17 mid-hip)."""
    points = np.asarray(points)
    if points.shape[-2] != skeleton.num_joints:
        raise ValueError(
            f"points have {points.shape[-2]} joints, skeleton {skeleton.name!r} has {skeleton.num_joints}"
        )
    return points[..., list(skeleton.root_joints), :].mean(-2)


def root_relative(points: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Points [..., J, D] minus their root [..., D]."""
    points = np.asarray(points)
    return points - root_of(points, skeleton)[..., None, :]


def bone_lengths(points: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Lengths [..., num_bones] of `skeleton.bones` for points [..., J, D] (same units as the points)."""
    points = np.asarray(points)
    child = [c for c, _ in skeleton.bones]
    parent = [p for _, p in skeleton.bones]
    return np.linalg.norm(points[..., child, :] - points[..., parent, :], axis=-1)


def h36m32_to_h36m17(points: np.ndarray) -> np.ndarray:
    """Human3.6M 32-joint array [..., 32, D] -> the 17 joints of `H36M17` [..., 17, D]."""
    points = np.asarray(points)
    if points.shape[-2] != 32:
        raise ValueError(f"expected 32 Human3.6M joints in axis -2, got shape {points.shape}")
    return points[..., list(H36M32_TO_17), :]
