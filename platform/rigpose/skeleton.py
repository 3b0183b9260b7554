"""Joint sets known to RigPose (h36m17, coco17, halpe26, humaneva15, deepmimic16): names, parents, left/right,
conversions.

Root = joint 0 of the skeleton (the pelvis), except coco17 and halpe26 whose root is derived as the mid-hip, the
mean of left_hip and right_hip (COCO has no pelvis keypoint; HALPE-26's own `hip` point is left out of the root so
that a halpe26 pose and its coco17 subset share one root). `root_of` and `root_relative` hide that difference from
the rest of the code; a root joint that is missing (NaN, or score 0 where scores are given) makes the root NaN,
never the mean of the joints that remain.
Shape letters: J joints, D coordinate dims (2 or 3).

Conversions (`convert`, table `CONVERSIONS`): each target joint is a source joint, a weighted mean of source joints
(derived; its score the lowest of theirs), or missing (NaN, score 0). Derived and approximate joints:

- h36m17 from coco17 or halpe26: Hip = mean(left_hip, right_hip) (1); Thorax = mean(left_shoulder,
  right_shoulder) from coco17, neck from halpe26 (2); Spine = mean(Hip, Thorax) as above (3); Neck/Nose = nose (4);
  Head = halpe26's head (the head top), missing from coco17 (COCO has no head top); RFoot / LFoot = the ankles (5);
  the limbs by name (RHip = right_hip, LWrist = left_wrist, ...).
- coco17 or halpe26 from h36m17: nose = Neck/Nose (4); eyes and ears missing; halpe26's head = Head, neck = Thorax,
  hip = Hip; toes and heels missing.
- halpe26 -> coco17 keeps the first 17 joints (the same order); coco17 -> halpe26 leaves head, neck, hip and the
  six foot points missing.

(1) not halpe26's own `hip` point, so that the root (h36m17's Hip, halpe26's mid-hip) is the same point before and
after. (2) HALPE-26's `neck` is the base of the neck between the shoulders, where Human3.6M's Thorax joint sits
(by anatomy: both sit at the top of the sternum, below the cervical spine; Human3.6M's joint named Neck/Nose is
higher, at the face). (3) Human3.6M's Spine lies about halfway up the trunk. (4) Human3.6M's Neck/Nose joint sits
between chin and nose, so as a nose it is a few centimetres low and behind. (5) Human3.6M's "Foot" joints are the
ankles. Hips: Human3.6M's are hip-joint centres, COCO's annotated hips lie a few centimetres further out and lower;
the conversion copies them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    root_joints: tuple[int, ...] = (0,)  # joints averaged to give the root: (0,), or the two hips (coco17, halpe26)
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

# HALPE-26 (the body part of Halpe full-body), in the order RTMPose body8-halpe26, AlphaPose and Pose2Sim write it:
# the 17 COCO joints, then head (the top of the head), neck (its base, between the shoulders), hip (the pelvis centre)
# and six foot points; root derived as the mid-hip, as for coco17. The one definition of this order (the ingest
# converters read it from here).
_HALPE26_NAMES = (*_COCO_NAMES, "head", "neck", "hip", "left_big_toe", "right_big_toe", "left_small_toe",
                  "right_small_toe", "left_heel", "right_heel")
HALPE26 = Skeleton(
    name="halpe26",
    joint_names=_HALPE26_NAMES,
    # Pose2Sim's tree, with the face kept: hip -> hips -> legs -> ankle -> toes and heel; hip -> neck -> shoulders
    # -> arms; neck -> head -> nose -> eyes -> ears. Each foot point hangs from the ankle (the foot is one rigid
    # piece to a detector; toe to toe is no bone).
    parents=(17, 0, 0, 1, 2, 18, 18, 5, 6, 7, 8, 19, 19, 11, 12, 13, 14, 18, 19, -1, 15, 16, 15, 16, 15, 16),
    left=_lr(_HALPE26_NAMES, "left_", "right_")[0],
    right=_lr(_HALPE26_NAMES, "left_", "right_")[1],
    root_joints=(11, 12),
    description="HALPE-26 keypoints (RTMPose / AlphaPose order: COCO 17, head, neck, hip, 6 foot points); "
                "root = mid-hip (derived)",
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

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (H36M17, COCO17, HALPE26, HUMANEVA15, DEEPMIMIC16)}


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


def _check_joints(points: np.ndarray, skeleton: Skeleton, what: str = "points") -> None:
    if points.ndim < 2 or points.shape[-2] != skeleton.num_joints:
        raise ValueError(f"{what} have shape {list(points.shape)}: expected [..., {skeleton.num_joints}, D] for "
                         f"skeleton {skeleton.name!r}")


def root_seen(points: np.ndarray, skeleton: Skeleton, scores: np.ndarray | None = None) -> np.ndarray:
    """[...] bool: every root joint of points [..., J, D] is finite (and has score > 0 where scores [..., J] are
    given), so the root is known. For coco17 and halpe26 both hips must be seen."""
    points = np.asarray(points)
    _check_joints(points, skeleton)
    roots = list(skeleton.root_joints)
    seen = np.isfinite(points[..., roots, :]).all((-2, -1))
    if scores is not None:
        seen &= (np.asarray(scores)[..., roots] > 0).all(-1)
    return seen


def root_of(points: np.ndarray, skeleton: Skeleton, scores: np.ndarray | None = None) -> np.ndarray:
    """Root position [..., D] of points [..., J, D]: joint 0, or the mean of `root_joints` (the coco17 and halpe26
    mid-hip). NaN where a root joint is missing (`root_seen`: NaN, or score 0 in the optional scores [..., J]): a
    root is never guessed from one hip."""
    points = np.asarray(points)
    _check_joints(points, skeleton)
    root = points[..., list(skeleton.root_joints), :].mean(-2)
    if scores is not None:
        root = np.where(root_seen(points, skeleton, scores)[..., None], root, np.nan)
    return root


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


# ---------------------------------------------------------------------------------------------- conversions

# A target joint's source: a joint name, a weighted mean {name: weight} (derived), or None (missing).
Source = str | Mapping[str, float] | None


def _same_names(source: Skeleton, target: Skeleton) -> dict[str, Source]:
    """Target joint -> source: the joint of the same name where the source has one, else missing."""
    return {n: (n if n in source.joint_names else None) for n in target.joint_names}


_MID_HIP = {"left_hip": 0.5, "right_hip": 0.5}
_MID_SHOULDER = {"left_shoulder": 0.5, "right_shoulder": 0.5}
_COCO_TO_H36M_LIMBS: dict[str, Source] = {
    "RHip": "right_hip", "RKnee": "right_knee", "RFoot": "right_ankle", "LHip": "left_hip", "LKnee": "left_knee",
    "LFoot": "left_ankle", "Neck/Nose": "nose", "LShoulder": "left_shoulder", "LElbow": "left_elbow",
    "LWrist": "left_wrist", "RShoulder": "right_shoulder", "RElbow": "right_elbow", "RWrist": "right_wrist",
}
_H36M_TO_COCO: dict[str, Source] = {
    **{coco: h36m for h36m, coco in _COCO_TO_H36M_LIMBS.items()},
    **{n: None for n in ("left_eye", "right_eye", "left_ear", "right_ear")},
}

# (source, target) -> {target joint: source}; the module docstring explains the derived joints.
CONVERSIONS: dict[tuple[str, str], dict[str, Source]] = {
    ("halpe26", "coco17"): _same_names(HALPE26, COCO17),
    ("coco17", "halpe26"): _same_names(COCO17, HALPE26),
    ("coco17", "h36m17"): {
        "Hip": _MID_HIP, **_COCO_TO_H36M_LIMBS, "Thorax": _MID_SHOULDER, "Head": None,
        "Spine": {"left_hip": 0.25, "right_hip": 0.25, "left_shoulder": 0.25, "right_shoulder": 0.25},
    },
    ("halpe26", "h36m17"): {
        "Hip": _MID_HIP, **_COCO_TO_H36M_LIMBS, "Thorax": "neck", "Head": "head",
        "Spine": {"left_hip": 0.25, "right_hip": 0.25, "neck": 0.5},
    },
    ("h36m17", "coco17"): _H36M_TO_COCO,
    ("h36m17", "halpe26"): {**_same_names(H36M17, HALPE26), **_H36M_TO_COCO, "head": "Head", "neck": "Thorax",
                            "hip": "Hip"},
}


@dataclass(frozen=True)
class Conversion:
    """A conversion as arrays: target joint t = sum_k weight[t, k] * source joint index[t, k] (weight 0 = unused
    slot); a row of zero weights is a missing joint."""

    source: Skeleton
    target: Skeleton
    index: np.ndarray  # [J_target, K] int
    weight: np.ndarray  # [J_target, K] float, rows sum to 1 or are all 0

    @property
    def missing(self) -> tuple[str, ...]:
        """Target joints the source cannot give (always NaN, score 0)."""
        return tuple(n for n, w in zip(self.target.joint_names, self.weight, strict=True) if not w.any())


def conversion(source: Skeleton | str, target: Skeleton | str) -> Conversion:
    """The `CONVERSIONS` entry from `source` to `target` as arrays (identity for a skeleton to itself)."""
    src = get_skeleton(source) if isinstance(source, str) else source
    dst = get_skeleton(target) if isinstance(target, str) else target
    table = _same_names(src, dst) if src == dst else CONVERSIONS.get((src.name, dst.name))
    if table is None:
        known = ", ".join(f"{a} -> {b}" for a, b in CONVERSIONS)
        raise ValueError(f"no conversion from skeleton {src.name!r} to {dst.name!r}; known: {known}")
    rows = [{src.index(spec): 1.0} if isinstance(spec, str)
            else {src.index(k): float(w) for k, w in (spec or {}).items()}
            for spec in (table[n] for n in dst.joint_names)]
    K = max(1, *(len(r) for r in rows))
    index, weight = np.zeros((dst.num_joints, K), np.int64), np.zeros((dst.num_joints, K))
    for t, r in enumerate(rows):
        index[t, :len(r)], weight[t, :len(r)] = list(r), list(r.values())
    assert np.allclose(weight.sum(1)[weight.any(1)], 1.0), f"{src.name} -> {dst.name}: weights must sum to 1"
    return Conversion(src, dst, index, weight)


def convert(points: np.ndarray, source: Skeleton | str, target: Skeleton | str,
            scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Points [..., J_source, D] (2D pixels or 3D metres) on `source` -> (points [..., J_target, D] on `target`,
    scores [..., J_target] or None when no scores [..., J_source] are given). Missing target joints are NaN with
    score 0; a derived joint is NaN where any of its sources is, and its score is the lowest of theirs."""
    conv = conversion(source, target)
    points = np.asarray(points, dtype=np.result_type(np.asarray(points).dtype, np.float32))
    _check_joints(points, conv.source)
    used = conv.weight > 0  # [J_target, K]
    gathered = points[..., conv.index, :]  # [..., J_target, K, D]
    out = (np.where(used[..., None], gathered, 0.0) * conv.weight[..., None]).sum(-2)
    out = np.where(used.any(-1)[:, None], out, np.nan).astype(points.dtype)
    if scores is None:
        return out, None
    scores = np.asarray(scores)
    if scores.shape != points.shape[:-1]:
        raise ValueError(f"scores have shape {list(scores.shape)}, expected {list(points.shape[:-1])} (one per point)")
    s = np.where(used, scores[..., conv.index], np.inf).min(-1)
    s = np.where(used.any(-1) & np.isfinite(out).all(-1), s, 0.0).astype(scores.dtype)
    return out, s


def halpe26_to_coco17(points: np.ndarray) -> np.ndarray:
    """HALPE-26 points [..., 26, D] -> their COCO-17 subset [..., 17, D] (the first 17 joints)."""
    return convert(points, HALPE26, COCO17)[0]


def coco17_to_halpe26(points: np.ndarray) -> np.ndarray:
    """COCO-17 points [..., 17, D] -> HALPE-26 [..., 26, D]; head, neck, hip and the foot points NaN."""
    return convert(points, COCO17, HALPE26)[0]
