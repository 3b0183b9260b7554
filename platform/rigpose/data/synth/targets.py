"""Training skeletons from the motion capture: a recipe's `skeleton:` (deepmimic16, coco17, halpe26, h36m17).

The motion (pybullet's DeepMimic clips, or procedural motion on the same humanoid) gives 16 joints and the rotation
of every link. The joints a detector skeleton has and the motion capture lacks are points fixed on the head and the
feet (`MARKERS`, carried by the rotation of the neck link and of each ankle link, so they follow the head's and the
foot's orientation in the clip), added after the 16 joints in the motion bank; each target skeleton then picks its
joints from those 16 + 11 points (`TARGET_POINTS`). Nothing is left missing: every target joint is placed.

Geometry, in the rest pose's axes (x forward, y the character's left, z up; at rest the humanoid's links are aligned
with the world), metres at subject scale 1. The humanoid stands 1.62 m at rest (the top of its head sphere; pelvis
0.88 m, ankle joints 0.05 m above the soles of pybullet's foot boxes). The head sphere (radius 0.1025 m, centred
0.175 m along the neck link) has its centre at eye height (1.52 m). Offsets from the head centre:

| point      | x      | y       | z       | why                                                                   |
|------------|--------|---------|---------|-----------------------------------------------------------------------|
| nose (tip) | 0.105  | 0       | -0.035  | just outside the sphere's front, 3.5 cm below the eyes               |
| eyes       | 0.075  | +-0.032 | 0       | 6.4 cm between the pupils, at the centre's height                    |
| ears       | -0.005 | +-0.075 | -0.015  | ear canals at the sphere's sides (head breadth 0.15 m), below the eyes |
| head top   | 0      | 0       | 0.1025  | the sphere's top: HALPE-26 `head`, Human3.6M `Head`                  |

The feet use human proportions, not pybullet's foot boxes (0.177 m long, shorter than a human foot, and detectors are
trained on human feet): foot length 0.152 x stature = 0.246 m and breadth 0.055 x stature = 0.089 m (Drillis and
Contini's segment proportions, as tabulated in Winter's Biomechanics and Motor Control of Human Movement), the ankle
joint a fifth of the foot length ahead of the back of the heel, the sole 0.05 m below the ankle joint (the boxes'
soles, which the clips keep on the floor). Offsets from the ankle joint, for the left foot (the right one mirrors
y); medial is -y for the left foot:

| point     | x     | y      | z      | why                                                                    |
|-----------|-------|--------|--------|------------------------------------------------------------------------|
| heel      | -0.05 | 0      | -0.04  | back of the heel, a fifth of the foot behind the ankle, 1 cm up        |
| big toe   | 0.195 | -0.02  | -0.035 | tip of the big toe: the foot's full length ahead of the heel, medial   |
| small toe | 0.15  | 0.035  | -0.035 | tip of the fifth toe, 0.8 foot lengths from the heel, lateral edge     |

A subject's bone scaling (`subjects.scale`, `bone_jitter`) scales the head points with the bone that ends at the
head (neck to head) and the foot points with the shin, so the foot stays proportional to the body.

Correspondences (the motion's joints where a target has them):

| target      | from the 16 joints                                               | from the points above          |
|-------------|------------------------------------------------------------------|--------------------------------|
| coco17      | shoulders, elbows, wrists, hips, knees, ankles                   | nose, eyes, ears               |
| halpe26     | as coco17; neck = neck (base of the neck), hip = pelvis          | as coco17; head = head top; feet |
| h36m17      | Hip = pelvis, Spine = chest, Thorax = neck, limbs (Foot = ankle) | Neck/Nose = nose, Head = head top |
| deepmimic16 | all (no points added; the default, as before `skeleton:` existed) |                               |

The hips are the humanoid's hip-joint centres (0.17 m apart), which COCO annotators place a few centimetres further
out; the coco17 and halpe26 root (the mid-hip) is the pelvis (exactly, unless `subjects.symmetric: false` gives
the two hip bones different lengths). The foot points follow the clips' ankle rotations as recorded: flat on the
floor in stance; in the swing of DeepMimic's walk the ankle barely flexes, so the foot hangs from the inclined shin
with its toes down to about 80 degrees from the floor. Human3.6M's Neck/Nose sits a little
lower and further back than a nose tip, and its Spine lower than DeepMimic's chest joint: h36m17 here is close to,
not equal to, Human3.6M's definition.

Shape letters: J joints, M markers, S subjects.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from rigpose.data.synth.mocap import Marker
from rigpose.skeleton import DEEPMIMIC16, Skeleton, get_skeleton

SkeletonName = Literal["deepmimic16", "coco17", "halpe26", "h36m17"]  # what a recipe's `skeleton:` may name
TARGETS: tuple[str, ...] = get_args(SkeletonName)
_FACE = {"nose": (0.105, 0.0, -0.035), "left_eye": (0.075, 0.032, 0.0), "right_eye": (0.075, -0.032, 0.0),
         "left_ear": (-0.005, 0.075, -0.015), "right_ear": (-0.005, -0.075, -0.015), "head_top": (0.0, 0.0, 0.1025)}
_LEFT_FOOT = {"big_toe": (0.195, -0.02, -0.035), "small_toe": (0.15, 0.035, -0.035), "heel": (-0.05, 0.0, -0.04)}
# name -> marker: face points ride on the head (the neck link's rotation), foot points on each ankle link
MARKERS: dict[str, Marker] = {
    **{name: Marker("head", "neck", xyz) for name, xyz in _FACE.items()},
    **{f"{side}_{name}": Marker(f"{side}_ankle", f"{side}_ankle", (x, y if side == "left" else -y, z))
       for side in ("left", "right") for name, (x, y, z) in _LEFT_FOOT.items()},
}
POINT_NAMES: tuple[str, ...] = (*DEEPMIMIC16.joint_names, *MARKERS)  # the motion bank's points with markers
# The deepmimic16 joint whose bone's scale factor each marker takes: the head's bone, or the shin (ending at the ankle).
_SCALED_WITH = {name: m.joint for name, m in MARKERS.items()}
# target skeleton -> {target joint: motion point}; the rest of each target's joints keep their own names.
_RENAMED: dict[str, dict[str, str]] = {
    "coco17": {},
    "halpe26": {"head": "head_top", "hip": "pelvis"},
    "h36m17": {"Hip": "pelvis", "RHip": "right_hip", "RKnee": "right_knee", "RFoot": "right_ankle",
               "LHip": "left_hip", "LKnee": "left_knee", "LFoot": "left_ankle", "Spine": "chest", "Thorax": "neck",
               "Neck/Nose": "nose", "Head": "head_top", "LShoulder": "left_shoulder", "LElbow": "left_elbow",
               "LWrist": "left_wrist", "RShoulder": "right_shoulder", "RElbow": "right_elbow",
               "RWrist": "right_wrist"},
}


def target_skeleton(name: str) -> Skeleton:
    """The skeleton a recipe's `skeleton: name` builds; ValueError naming the choices otherwise."""
    if name not in TARGETS:
        raise ValueError(f"skeleton {name!r}: a synthetic dataset is built as one of {', '.join(TARGETS)}")
    return get_skeleton(name)


def markers_for(skeleton: Skeleton) -> tuple[Marker, ...]:
    """The markers the motion bank needs for `skeleton`: none for deepmimic16, else all of `MARKERS`."""
    return () if skeleton.name == "deepmimic16" else tuple(MARKERS.values())


def point_parents() -> tuple[int, ...]:
    """[16 + M] parent of each motion point: deepmimic16's tree, each marker hanging from its joint."""
    return (*DEEPMIMIC16.parents, *(DEEPMIMIC16.index(m.joint) for m in MARKERS.values()))


def point_factors(factors_SJ: np.ndarray) -> np.ndarray:
    """Subjects' bone factors [S, 16] (deepmimic16) -> [S, 16 + M]: each marker takes the factor of the bone that
    ends at its joint (the head's, or the shin's for the foot points)."""
    factors_SJ = np.asarray(factors_SJ)
    if factors_SJ.shape[-1] != DEEPMIMIC16.num_joints:
        raise ValueError(f"bone factors have shape {list(factors_SJ.shape)}, expected [S, {DEEPMIMIC16.num_joints}]")
    extra = [DEEPMIMIC16.index(_SCALED_WITH[name]) for name in MARKERS]
    return np.concatenate([factors_SJ, factors_SJ[:, extra]], axis=1)


def target_points(skeleton: Skeleton) -> np.ndarray:
    """[J] index into the motion points (`POINT_NAMES`) of each joint of `skeleton` (module docstring's table)."""
    if skeleton.name == "deepmimic16":
        return np.arange(DEEPMIMIC16.num_joints)
    renamed = _RENAMED[skeleton.name]
    return np.array([POINT_NAMES.index(renamed.get(n, n)) for n in skeleton.joint_names])
