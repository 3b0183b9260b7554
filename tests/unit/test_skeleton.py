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


# ---------------------------------------------------------------------------------------------- halpe26

# HALPE-26 as RTMPose body8-halpe26 / AlphaPose / Pose2Sim number it (typed from their documentation).
HALPE26_ORDER = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                 "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                 "right_knee", "left_ankle", "right_ankle", "head", "neck", "hip", "left_big_toe", "right_big_toe",
                 "left_small_toe", "right_small_toe", "left_heel", "right_heel"]


def test_halpe26_has_the_published_order_and_pose2sims_tree_with_the_face_kept() -> None:
    s = sk.HALPE26
    assert list(s.joint_names) == HALPE26_ORDER and s.joint_names[:17] == sk.COCO17.joint_names
    named = {(s.joint_names[c], s.joint_names[p]) for c, p in s.bones}
    # Pose2Sim's HALPE_26 tree: Hip -> hips -> knees -> ankles -> feet; Hip -> Neck -> Head -> Nose; Neck -> arms
    for bone in [("left_hip", "hip"), ("right_knee", "right_hip"), ("left_ankle", "left_knee"), ("neck", "hip"),
                 ("head", "neck"), ("nose", "head"), ("left_shoulder", "neck"), ("right_wrist", "right_elbow"),
                 ("left_big_toe", "left_ankle"), ("right_heel", "right_ankle"), ("left_eye", "nose")]:
        assert bone in named, bone
    assert len(s.bones) == 25 and s.parents[s.index("hip")] == -1  # one tree over all 26 joints
    assert s.root_joints == (s.index("left_hip"), s.index("right_hip"))
    assert sk.skeleton_from_joint_names(HALPE26_ORDER) is s


def test_halpe26_symmetric_bones_pair_each_left_foot_bone_with_its_right_mirror() -> None:
    s = sk.HALPE26
    names = {(s.joint_names[s.bones[a][0]], s.joint_names[s.bones[b][0]]) for a, b in s.symmetric_bones}
    assert {("left_big_toe", "right_big_toe"), ("left_small_toe", "right_small_toe"), ("left_heel", "right_heel"),
            ("left_hip", "right_hip"), ("left_ear", "right_ear")} <= names
    assert len(names) == 11  # every left joint's bone: 2 face, 3 arm, 3 leg, 3 foot


def test_ingest_formats_read_the_halpe26_order_from_the_skeleton() -> None:
    from rigpose.data.ingest.detectors import KEYPOINT_FORMATS

    assert KEYPOINT_FORMATS["halpe26"].joint_names == tuple(HALPE26_ORDER)


@pytest.mark.parametrize("skel", [sk.COCO17, sk.HALPE26], ids=["coco17", "halpe26"])
def test_mid_hip_root_is_missing_when_a_hip_is_nan_or_has_score_zero(skel: sk.Skeleton) -> None:
    pts = np.zeros((3, skel.num_joints, 2))
    pts[:, skel.index("left_hip")] = [10.0, 20.0]
    pts[:, skel.index("right_hip")] = [30.0, 20.0]
    scores = np.ones((3, skel.num_joints))
    pts[1, skel.index("left_hip")] = np.nan
    scores[2, skel.index("right_hip")] = 0.0
    np.testing.assert_array_equal(sk.root_seen(pts, skel, scores), [True, False, False])
    root = sk.root_of(pts, skel, scores)
    np.testing.assert_allclose(root[0], [20.0, 20.0])
    assert np.isnan(root[1:]).all()  # never the one hip that is left
    assert np.isnan(sk.root_of(pts, skel)[1]).all()  # NaN without scores too


@pytest.mark.parametrize("skel", [sk.COCO17, sk.HALPE26], ids=["coco17", "halpe26"])
def test_model_inputs_drop_the_triangulated_root_of_a_frame_whose_hip_no_two_views_see(skel: sk.Skeleton) -> None:
    from rigpose import geometry as g
    from rigpose.model.inputs import prepare_arrays
    from rigpose.resources import rig_path
    from rigpose.rig import load_rig

    rig = load_rig(rig_path("h36m-s1"))
    X = np.random.default_rng(0).normal(0.0, 0.3, (3, skel.num_joints, 3)) + [0.0, 0.0, 1.0]
    kp = np.stack([g.project(X, cam) for cam in rig.cameras], 1)  # [3, 4, J, 2]
    scores = np.ones(kp.shape[:-1])
    hip = skel.index("right_hip")
    scores[1, 0, hip] = 0.0  # frame 1: one view misses the hip, three still see it
    kp[2, 1:, hip] = np.nan  # frame 2: only one view sees it
    cams = rig.arrays()
    cams = g.CameraArrays(*(np.broadcast_to(a, (3, *a.shape)) for a in cams))
    with np.errstate(invalid="ignore"):
        out = prepare_arrays(kp, scores, cams, np.ones((3, 4), bool), root_joints=skel.root_joints)
    np.testing.assert_array_equal(out["root_ok"], [1.0, 1.0, 0.0])  # no root: the frame has no root-anchored loss
    np.testing.assert_allclose(out["root_world"][:2], sk.root_of(X, skel)[:2], atol=1e-4)
    assert out["w"][1, 0, hip] == 0 and (out["w"][2, 1:, hip] == 0).all()  # the missing hips weigh nothing


# ---------------------------------------------------------------------------------------------- conversions


def test_halpe26_to_coco17_keeps_the_first_17_joints_and_back_marks_the_rest_missing(rng) -> None:
    pts, scores = rng.normal(size=(5, 26, 3)), rng.uniform(0.1, 1.0, (5, 26))
    coco, coco_scores = sk.convert(pts, "halpe26", "coco17", scores)
    np.testing.assert_array_equal(coco, pts[:, :17])
    np.testing.assert_array_equal(coco_scores, scores[:, :17])
    np.testing.assert_array_equal(sk.halpe26_to_coco17(pts), pts[:, :17])
    back, back_scores = sk.convert(coco, sk.COCO17, sk.HALPE26, coco_scores)
    np.testing.assert_array_equal(back[:, :17], pts[:, :17])
    assert np.isnan(back[:, 17:]).all() and (back_scores[:, 17:] == 0).all()
    np.testing.assert_array_equal(sk.coco17_to_halpe26(coco), back)
    assert sk.conversion("coco17", "halpe26").missing == tuple(HALPE26_ORDER[17:])


def test_halpe26_to_h36m17_derives_hip_spine_and_thorax_by_hand_computed_means(rng) -> None:
    pts = rng.normal(size=(4, 26, 3))
    scores = rng.uniform(0.1, 1.0, (4, 26))
    h36m, h36m_scores = sk.convert(pts, "halpe26", "h36m17", scores)
    H, C = sk.H36M17.index, sk.HALPE26.index
    mid_hip = (pts[:, C("left_hip")] + pts[:, C("right_hip")]) / 2
    np.testing.assert_allclose(h36m[:, H("Hip")], mid_hip)  # the mid-hip, so both skeletons keep one root
    np.testing.assert_allclose(sk.root_of(h36m, sk.H36M17), sk.root_of(pts, sk.HALPE26))
    np.testing.assert_allclose(h36m[:, H("Thorax")], pts[:, C("neck")])
    np.testing.assert_allclose(h36m[:, H("Spine")], (mid_hip + pts[:, C("neck")]) / 2)
    np.testing.assert_allclose(h36m[:, H("Head")], pts[:, C("head")])
    np.testing.assert_allclose(h36m[:, H("RFoot")], pts[:, C("right_ankle")])
    np.testing.assert_allclose(h36m[:, H("LWrist")], pts[:, C("left_wrist")])
    np.testing.assert_allclose(h36m_scores[:, H("Spine")],
                               scores[:, [C("left_hip"), C("right_hip"), C("neck")]].min(-1))  # the weakest source
    np.testing.assert_allclose(h36m_scores[:, H("Head")], scores[:, C("head")])


def test_coco17_to_h36m17_has_no_head_top_and_takes_the_thorax_between_the_shoulders(rng) -> None:
    pts = rng.normal(size=(3, 17, 2))
    h36m, h36m_scores = sk.convert(pts, "coco17", "h36m17", np.ones((3, 17)))
    H, C = sk.H36M17.index, sk.COCO17.index
    np.testing.assert_allclose(h36m[:, H("Thorax")], (pts[:, C("left_shoulder")] + pts[:, C("right_shoulder")]) / 2)
    np.testing.assert_allclose(h36m[:, H("Neck/Nose")], pts[:, C("nose")])
    assert np.isnan(h36m[:, H("Head")]).all() and (h36m_scores[:, H("Head")] == 0).all()


def test_h36m17_to_coco17_and_halpe26_copy_limbs_and_leave_the_face_and_feet_missing(rng) -> None:
    pts = rng.normal(size=(2, 17, 3))
    H = sk.H36M17.index
    coco, _ = sk.convert(pts, sk.H36M17, sk.COCO17)
    halpe, halpe_scores = sk.convert(pts, sk.H36M17, sk.HALPE26, np.ones((2, 17)))
    for out, s in ((coco, sk.COCO17), (halpe, sk.HALPE26)):
        np.testing.assert_array_equal(out[:, s.index("right_ankle")], pts[:, H("RFoot")])
        np.testing.assert_array_equal(out[:, s.index("left_shoulder")], pts[:, H("LShoulder")])
        np.testing.assert_array_equal(out[:, s.index("nose")], pts[:, H("Neck/Nose")])
        assert np.isnan(out[:, [s.index("left_eye"), s.index("right_ear")]]).all()
    np.testing.assert_array_equal(halpe[:, sk.HALPE26.index("hip")], pts[:, H("Hip")])
    np.testing.assert_array_equal(halpe[:, sk.HALPE26.index("neck")], pts[:, H("Thorax")])
    np.testing.assert_array_equal(halpe[:, sk.HALPE26.index("head")], pts[:, H("Head")])
    assert (halpe_scores[:, 20:] == 0).all()  # no toes or heels in Human3.6M's 17


def test_a_derived_joint_is_missing_where_any_of_its_sources_is(rng) -> None:
    pts, scores = rng.normal(size=(2, 26, 2)), np.ones((2, 26))
    pts[1, sk.HALPE26.index("left_hip")] = np.nan
    scores[1, sk.HALPE26.index("left_hip")] = 0.0
    h36m, h36m_scores = sk.convert(pts, "halpe26", "h36m17", scores)
    for name in ("Hip", "Spine"):
        j = sk.H36M17.index(name)
        assert np.isfinite(h36m[0, j]).all() and h36m_scores[0, j] == 1
        assert np.isnan(h36m[1, j]).all() and h36m_scores[1, j] == 0


def test_conversions_refuse_unknown_pairs_and_wrong_shapes(rng) -> None:
    with pytest.raises(ValueError, match="no conversion from skeleton 'humaneva15' to 'coco17'"):
        sk.convert(np.zeros((15, 3)), "humaneva15", "coco17")
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 26, D\] for skeleton 'halpe26'"):
        sk.convert(np.zeros((17, 3)), "halpe26", "coco17")
    with pytest.raises(ValueError, match="one per point"):
        sk.convert(np.zeros((26, 3)), "halpe26", "coco17", np.ones(17))
    np.testing.assert_array_equal(sk.convert(pts := rng.normal(size=(16, 3)), "deepmimic16", "deepmimic16")[0], pts)
