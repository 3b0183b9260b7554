"""rigpose.data.synth.targets: a recipe's `skeleton:` builds the user's detector skeleton (coco17, halpe26, h36m17)
through the user's own rig file, with the joints the motion capture lacks fixed on its head and feet."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from rigpose_testing import to_torch

from rigpose import skeleton as sk
from rigpose.config import LossConfig, ModelConfig
from rigpose.data.pipeline import Preprocess
from rigpose.data.reader import Dataset
from rigpose.data.schema import Frames
from rigpose.data.synth import mocap, targets
from rigpose.data.synth.build import Synthesis, build_dataset, load_recipe, parse_recipe
from rigpose.geometry import look_at, project
from rigpose.model.lifter import Lifter
from rigpose.rig import Camera, Rig, load_rig, save_rig
from rigpose.train.loop import fit

needs_pybullet = pytest.mark.skipif(importlib.util.find_spec("pybullet_data") is None,
                                    reason="DeepMimic clips need pybullet (the mocap extra)")

RECIPE = """\
name: my-lab-halpe26
seed: 3
frames: {frames}
skeleton: {skeleton}
motion: {{source: deepmimic, clips: [walk, run], fps: 30}}
subjects: {{count: 2, scale: [0.9, 1.1], bone_jitter: 0.02}}
placement: {{radius: 0.5}}
rigs: [rigs/my-lab.json]
splits: {{by: placement, fractions: {{train: 0.75, test: 0.25}}}}
"""


def _user_rig() -> Rig:
    """A user's own 4-camera rig (not a shipped one): a ring of cameras 3.5 m out, 1.6 m up."""
    cams = []
    for i in range(4):
        a = np.deg2rad(45 + 90 * i)
        R, t = look_at([3.5 * np.cos(a), 3.5 * np.sin(a), 1.6], [0.0, 0.0, 0.9])
        cams.append(Camera(name=f"cam{i}", width=1280, height=720, K=[[900, 0, 640], [0, 900, 360], [0, 0, 1]],
                           dist=[0.0] * 5, R=R, t=t))
    return Rig(rig_id="my-lab", cameras=tuple(cams))


def _write_recipe(folder: Path, *, skeleton: str, frames: int = 240) -> Path:
    """The recipe in `folder` with the user's rig file beside it (`rigs/my-lab.json`, a relative path)."""
    (folder / "rigs").mkdir(parents=True, exist_ok=True)
    save_rig(_user_rig(), folder / "rigs" / "my-lab.json")
    path = folder / f"{skeleton}.yaml"
    path.write_text(RECIPE.format(frames=frames, skeleton=skeleton))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    if importlib.util.find_spec("pybullet_data") is None:
        pytest.skip("DeepMimic clips need pybullet (the mocap extra)")
    root = tmp_path_factory.mktemp("targets")
    out = {}
    for name in ("halpe26", "coco17", "h36m17"):
        build_dataset(_write_recipe(root / "recipes", skeleton=name), str(root / name), progress=False)
        out[name] = Dataset(str(root / name))
    return out


# ---------------------------------------------------------------------------------------------- building


def test_a_halpe26_recipe_through_a_rig_file_builds_rows_of_26_joints_seen_by_that_rig(built) -> None:
    ds = built["halpe26"]
    assert ds.skeleton is sk.HALPE26 and ds.manifest.joint_names == list(sk.HALPE26.joint_names)
    assert list(ds.manifest.rigs) == ["my-lab"]
    frames = ds.read_frames()
    assert frames.keypoints.shape[1:] == (4, 26, 2) and frames.joints_3d.shape[1:] == (26, 3)
    assert np.isfinite(frames.joints_3d).all()  # every target joint is placed, none masked
    rig = load_rig(Path(ds.path) / "rigs" / "my-lab.json")
    clean = np.stack([project(frames.joints_3d.astype(np.float64), cam) for cam in rig.cameras], 1)
    seen = frames.scores > 0
    assert seen.mean() > 0.9  # the rig's cameras see the subject
    np.testing.assert_allclose(frames.keypoints[seen], clean[seen], atol=1e-3)  # no noise: the exact projection


def test_rigid_bones_keep_their_length_over_each_sequence_and_the_bending_spine_nearly(built) -> None:
    frames = built["halpe26"].read_frames()
    spine = sk.HALPE26.bones.index((sk.HALPE26.index("neck"), sk.HALPE26.index("hip")))
    for seq in np.unique(frames.sequence):
        L = sk.bone_lengths(frames.joints_3d[frames.sequence == seq].astype(np.float64), sk.HALPE26)
        spread = (L.max(0) - L.min(0)) / L.mean(0)
        assert np.delete(spread, spine).max() < 1e-4, seq  # float32 storage
        assert spread[spine] < 0.05, seq  # neck-hip crosses DeepMimic's chest joint, which bends


def _body_axes(X_TJ3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(walking direction, the subject's left, up) of a sequence: from the pelvis's travel, z up."""
    travel = X_TJ3[-1, sk.HALPE26.index("hip"), :2] - X_TJ3[0, sk.HALPE26.index("hip"), :2]
    forward = np.r_[travel / np.linalg.norm(travel), 0.0]
    up = np.array([0.0, 0.0, 1.0])
    return forward, np.cross(up, forward), up


def test_walking_halpe26_is_anatomically_plausible(built) -> None:
    frames = built["halpe26"].read_frames()
    J = sk.HALPE26.index
    walks = [s for s in np.unique(frames.sequence) if s.startswith("walk")]
    assert walks
    for seq in walks:
        X = frames.joints_3d[frames.sequence == seq].astype(np.float64)
        forward, left, up = _body_axes(X)
        for side in ("left", "right"):
            ankle, heel, toe = (X[:, J(f"{side}_{n}")] for n in ("ankle", "heel", "big_toe"))
            stance = ankle[:, 2] < ankle[:, 2].min() + 0.02  # the foot on the floor
            assert stance.sum() >= 5
            assert ((heel - ankle) @ up < 0)[stance].all() and ((heel - ankle) @ forward < 0)[stance].all()
            assert ((toe - ankle) @ forward > 0)[stance].all()
            assert ((heel - ankle) @ forward < 0).mean() > 0.95 and ((toe - ankle) @ forward > 0).mean() > 0.9
            assert (X[:, J(f"{side}_heel"), 2] > -0.01).all()  # feet stand on the floor, not in it
        eyes = X[:, [J("left_eye"), J("right_eye")]].mean(1)
        ears = X[:, [J("left_ear"), J("right_ear")]].mean(1)
        assert ((eyes - ears) @ forward > 0).all() and ((X[:, J("nose")] - eyes) @ forward > 0).all()
        assert ((X[:, J("head")] - X[:, J("nose")]) @ up > 0).all() and ((X[:, J("head")] - X[:, J("neck")]) @ up
                                                                         > 0.2).all()
        for a in ("eye", "ear", "big_toe", "small_toe", "heel", "shoulder", "hip"):  # the subject's own left
            assert ((X[:, J(f"left_{a}")] - X[:, J(f"right_{a}")]) @ left > 0).all(), a
        assert ((X[:, J("left_small_toe")] - X[:, J("left_big_toe")]) @ left > 0).all()  # little toe outside


def test_coco17_and_h36m17_builds_take_the_same_points_as_halpe26(built) -> None:
    halpe = built["halpe26"].read_frames().joints_3d
    coco = built["coco17"].read_frames().joints_3d
    h36m = built["h36m17"].read_frames().joints_3d
    np.testing.assert_array_equal(coco, halpe[:, :17])  # the same motion, subjects and placements
    # the copies of skeleton.convert's halpe26 -> h36m17 table; its derived Hip (mid-hip) is the pelvis here
    ref, _ = sk.convert(halpe.astype(np.float64), sk.HALPE26, sk.H36M17)
    copied = [sk.H36M17.index(n) for n in sk.H36M17.joint_names if n != "Spine"]
    np.testing.assert_allclose(h36m[:, copied], ref[:, copied], atol=1e-5)
    # Spine = DeepMimic's chest joint, between the pelvis and the thorax
    H = sk.H36M17.index
    assert (h36m[:, H("Hip"), 2] < h36m[:, H("Spine"), 2]).mean() > 0.95
    assert (h36m[:, H("Spine"), 2] < h36m[:, H("Thorax"), 2]).mean() > 0.95


def test_a_tiny_training_on_the_halpe26_dataset_runs_and_lowers_its_loss(built) -> None:
    ds = built["halpe26"]
    prep = Preprocess(num_joints=26, num_views=ds.manifest.max_views, root_joints=sk.HALPE26.root_joints,
                      with_3d=False)
    table = ds.read_table(splits=["train"])
    batches = [to_torch(prep(table.slice(a, 32))) for a in range(0, min(table.num_rows, 64), 32)]
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=32, num_blocks=1, dropout=0.0), num_joints=26,
                   root_joints=sk.HALPE26.root_joints)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history: list[dict] = []
    fit(model, opt, None, sk.HALPE26, train_batches=lambda e: batches, val_batches=None, total_steps=8 * len(batches),
        max_epochs=8, loss_cfg=LossConfig(), supervision="2d", dropout=0.0, dropout_mode="constant", grad_clip=1.0,
        on_epoch=lambda r, step: history.append(r.metrics()))
    assert len(history) == 8 and all(np.isfinite(v) for h in history for v in h.values())
    assert history[-1]["train/cross_view"] < history[0]["train/cross_view"]
    assert "train/bone_symmetry" in history[0]  # halpe26's mirror bones, feet included, feed the prior


# ---------------------------------------------------------------------------------------------- markers


@needs_pybullet
def test_markers_ride_on_their_links_in_the_rest_pose_and_turn_with_the_head() -> None:
    frame = np.zeros(mocap.FRAME_WIDTH)
    frame[0], frame[1:4] = 1 / 30, [0.0, 0.9, 0.0]
    frame[list(mocap.QUAT_COLUMNS)] = 1.0  # every quaternion the identity: the rest pose, facing +x
    markers = tuple(targets.MARKERS.values())
    rest = mocap.forward_kinematics(frame[None], markers=markers)[0]
    for i, m in enumerate(markers):
        np.testing.assert_allclose(rest[16 + i] - rest[sk.DEEPMIMIC16.index(m.joint)], m.offset_3, atol=1e-12)
    turned = frame.copy()
    neck = mocap.FRAME_LAYOUT["neck"][1]
    turned[neck:neck + 4] = [np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4), 0.0]  # +90 degrees about DeepMimic's up
    X = mocap.forward_kinematics(turned[None], markers=markers)[0]
    nose = 16 + list(targets.MARKERS).index("nose")
    x, _, z = targets.MARKERS["nose"].offset_3
    np.testing.assert_allclose(X[nose] - X[3], [0.0, x, z], atol=1e-12)  # the face turned to the left (+y)
    np.testing.assert_allclose(X[3], rest[3], atol=1e-12)  # the head centre stays on the neck link's axis


def test_procedural_motion_carries_the_markers_rigidly_too() -> None:
    r = parse_recipe({"seed": 1, "frames": 120, "skeleton": "halpe26", "rigs": ["h36m-s1"],
                      "motion": {"source": "procedural", "num_sequences": 2, "seconds": 2, "fps": 30}})
    frames = Frames.concat([f for _, f in Synthesis.from_recipe(r).batches()])
    assert frames.keypoints.shape[2] == 26
    foot = [(sk.HALPE26.index(n), sk.HALPE26.index("left_ankle")) for n in ("left_big_toe", "left_heel")]
    for seq in np.unique(frames.sequence):
        X = frames.joints_3d[frames.sequence == seq].astype(np.float64)
        for a, b in foot:
            d = np.linalg.norm(X[:, a] - X[:, b], axis=-1)
            assert d.max() - d.min() < 1e-5


def test_foot_points_scale_with_the_subject() -> None:
    factors = np.ones((2, 16))
    factors[1] *= 1.1
    scaled = targets.point_factors(factors)
    foot = [16 + list(targets.MARKERS).index(n) for n in ("left_big_toe", "right_heel")]
    face = [16 + list(targets.MARKERS).index(n) for n in ("nose", "head_top")]
    np.testing.assert_allclose(scaled[:, foot + face], [[1.0] * 4, [1.1] * 4])
    assert targets.point_parents()[foot[0]] == sk.DEEPMIMIC16.index("left_ankle")
    assert targets.point_parents()[face[0]] == sk.DEEPMIMIC16.index("head")


def test_recipe_skeleton_must_be_one_the_builder_makes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"skeleton: Input should be 'deepmimic16', 'coco17', 'halpe26' or "
                                         r"'h36m17'"):
        parse_recipe({"skeleton": "humaneva15", "rigs": ["h36m-s1"]})
    assert parse_recipe({"rigs": ["h36m-s1"]}).skeleton == "deepmimic16"  # the default, as before
    path = _write_recipe(tmp_path, skeleton="coco17")
    assert load_recipe(path).rigs == ["rigs/my-lab.json"]
