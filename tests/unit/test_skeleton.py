"""rigpose.skeleton: the joint sets match the published definitions and the helpers behave on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rigpose import skeleton as sk

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _shared(name: str) -> dict:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


def test_h36m17_matches_the_published_videopose3d_definition() -> None:
    ref = _shared("h36m_skeleton.json")
    assert list(sk.H36M17.joint_names) == ref["joint_names_17"]
    assert list(sk.H36M17.parents) == ref["parents_17"]
    assert list(sk.H36M17.left) == ref["joints_left_17"]
    assert list(sk.H36M17.right) == ref["joints_right_17"]
    assert [list(b) for b in sk.H36M17.bones] == ref["bones_17_child_parent"]
    assert list(sk.H36M32_TO_17) == ref["original_32_index_of_each_17_joint"]


def test_humaneva15_matches_the_published_videopose3d_definition() -> None:
    ref = _shared("humaneva_cameras.json")["skeleton"]
    assert list(sk.HUMANEVA15.joint_names) == ref["joint_names_15"]
    assert list(sk.HUMANEVA15.parents) == ref["parents_15"]
    assert list(sk.HUMANEVA15.left) == ref["joints_left_15"]
    assert list(sk.HUMANEVA15.right) == ref["joints_right_15"]


@pytest.mark.parametrize("skel", list(sk.SKELETONS.values()), ids=list(sk.SKELETONS))
def test_left_right_lists_name_mirror_joints(skel: sk.Skeleton) -> None:
    for a, b in zip(skel.left, skel.right, strict=True):
        left, right = skel.joint_names[a].lower(), skel.joint_names[b].lower()
        assert left.replace("left", "").lstrip("l_") == right.replace("right", "").lstrip("r_"), (left, right)
    perm = skel.flip_permutation
    assert sorted(perm) == list(range(skel.num_joints))
    assert tuple(perm[p] for p in perm) == tuple(range(skel.num_joints))  # an involution


def test_coco17_root_is_the_mid_hip() -> None:
    pts = np.zeros((17, 3))
    pts[sk.COCO17.index("left_hip")] = [0.1, 0.0, 1.0]
    pts[sk.COCO17.index("right_hip")] = [-0.1, 0.2, 1.0]
    np.testing.assert_allclose(sk.root_of(pts, sk.COCO17), [0.0, 0.1, 1.0])
    np.testing.assert_allclose(sk.root_relative(pts, sk.COCO17)[sk.COCO17.index("left_hip")], [0.1, -0.1, 0.0])


def test_root_relative_zeroes_joint_zero_for_pelvis_skeletons(rng: np.random.Generator) -> None:
    pts = rng.normal(size=(4, 17, 3))
    out = sk.root_relative(pts, sk.H36M17)
    np.testing.assert_allclose(out[:, 0], 0.0)
    np.testing.assert_allclose(out[:, 5] - out[:, 3], pts[:, 5] - pts[:, 3])


def test_symmetric_bones_pair_left_and_right_limbs_of_h36m() -> None:
    bones = sk.H36M17.bones
    names = sk.H36M17.joint_names
    pairs = {(names[bones[a][0]], names[bones[b][0]]) for a, b in sk.H36M17.symmetric_bones}
    assert ("LKnee", "RKnee") in pairs and ("LWrist", "RWrist") in pairs and ("LShoulder", "RShoulder") in pairs
    assert len(pairs) == 6


def test_bone_lengths_of_a_hand_built_pose() -> None:
    pts = np.zeros((16, 3))
    pts[sk.DEEPMIMIC16.index("chest")] = [0, 0, 0.3]
    lengths = sk.bone_lengths(pts, sk.DEEPMIMIC16)
    chest_bone = sk.DEEPMIMIC16.bones.index((1, 0))
    assert lengths[chest_bone] == pytest.approx(0.3)


def test_skeleton_from_joint_names_finds_the_known_set_and_rejects_others() -> None:
    assert sk.skeleton_from_joint_names(list(sk.COCO17.joint_names)) is sk.COCO17
    with pytest.raises(ValueError, match="match no skeleton"):
        sk.skeleton_from_joint_names(["a", "b"])
    with pytest.raises(ValueError, match="unknown skeleton 'h36m32'"):
        sk.get_skeleton("h36m32")
    with pytest.raises(ValueError, match="has no joint 'Pelvis'"):
        sk.H36M17.index("Pelvis")


def test_skeleton_rejects_a_cyclic_parent_list() -> None:
    with pytest.raises(ValueError, match="not a tree"):
        sk.Skeleton(name="bad", joint_names=("a", "b"), parents=(1, 0), left=(), right=())


def test_h36m32_to_17_selects_the_kept_joints(rng: np.random.Generator) -> None:
    pts = rng.normal(size=(3, 32, 3))
    out = sk.h36m32_to_h36m17(pts)
    np.testing.assert_array_equal(out[:, 11], pts[:, 17])
    with pytest.raises(ValueError, match="32"):
        sk.h36m32_to_h36m17(pts[:, :17])
