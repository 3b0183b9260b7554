"""rigpose.data.synth.build / noise / synth_motion: recipes, determinism, geometry, detector statistics, splits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rigpose.data.reader import Dataset
from rigpose.data.schema import Frames
from rigpose.data.synth import motion_bank as sm
from rigpose.data.synth.build import Recipe, Synthesis, build_dataset, load_recipe, parse_recipe
from rigpose.data.synth.detector import DetectorNoise, detect, limb_pairs
from rigpose.geometry import project
from rigpose.resources import recipes_dir, rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import DEEPMIMIC16, bone_lengths

RIG = str(rigs_dir() / "h36m-s1.json")
needs_pybullet = pytest.mark.skipif(importlib.util.find_spec("pybullet_data") is None,
                                    reason="DeepMimic clips need pybullet (the mocap extra)")


def recipe(**overrides: Any) -> Recipe:
    """A small DeepMimic recipe in the H36M S1 rig; `overrides` replace top-level sections."""
    base: dict[str, Any] = {"seed": 0, "frames": 300, "rigs": [RIG],
                            "motion": {"source": "deepmimic", "clips": ["walk", "run", "jump"], "fps": 30}}
    return parse_recipe({**base, **overrides})


def generate(r: Recipe) -> Frames:
    return Frames.concat([f for _, f in Synthesis.from_recipe(r).batches()])


# ---------------------------------------------------------------------------------------------- building


@needs_pybullet
def test_tiny_recipe_builds_and_reads_back(tmp_path: Path) -> None:
    out = str(tmp_path / "tiny")
    manifest = build_dataset(recipes_dir() / "tiny.yaml", out, progress=False)
    frames = Dataset(out).read_frames()
    assert len(frames) == load_recipe(recipes_dir() / "tiny.yaml").frames
    assert frames.keypoints.shape[1:] == (4, DEEPMIMIC16.num_joints, 2)
    assert frames.joints_3d is not None and np.isfinite(frames.joints_3d).all()
    assert set(manifest.splits()) == {"train", "test", "test_clips"}
    last = json.loads((tmp_path / "tiny" / "manifest.json").read_text())["history"][-1]
    assert last["recipe"]["name"] == "tiny" and "tiny.yaml" in last["command"]
    for seq in np.unique(frames.sequence):  # frame indices strictly increase within every sequence
        assert (np.diff(frames.frame[frames.sequence == seq]) > 0).all()


@needs_pybullet
def test_noise_free_keypoints_are_the_projection_of_joints_3d() -> None:
    frames = generate(recipe())
    rig = load_rig(RIG)
    expected = project(frames.joints_3d.astype(np.float64)[:, None], rig.arrays())  # [N, V, J, 2]
    w, h = (np.array([[c.width, c.height] for c in rig.cameras], float)[:, None, i] for i in (0, 1))
    inside = (expected[..., 0] >= 0) & (expected[..., 0] < w) & (expected[..., 1] >= 0) & (expected[..., 1] < h)
    np.testing.assert_array_equal(frames.valid(), inside)  # missing exactly where outside the image
    assert np.abs(frames.keypoints - expected)[inside].max() < 1e-3
    assert (frames.scores[inside] == 1.0).all() and (frames.scores[~inside] == 0).all()


@needs_pybullet
def test_total_frames_is_reached_exactly_with_unique_sequences() -> None:
    frames = generate(recipe(frames=1234))
    assert len(frames) == 1234
    starts = np.flatnonzero(np.r_[True, frames.sequence[1:] != frames.sequence[:-1]])
    assert len(starts) == len(np.unique(frames.sequence))  # one contiguous block per sequence, names unique
    np.testing.assert_array_equal(frames.frame[starts], 0)  # numbered from the clip's first frame

# ---------------------------------------------------------------------------------------------- determinism


@needs_pybullet
def test_same_seed_gives_identical_arrays_and_another_seed_differs(tmp_path: Path) -> None:
    noise = {"pixel_std": 3, "outlier_rate": 0.05, "swap_rate": 0.05, "occlusion_rate": 0.05,
             "missing_view_rate": 0.05}
    subjects = {"count": 3, "scale": [0.9, 1.1], "bone_jitter": 0.03}
    r = recipe(noise=noise, subjects=subjects)
    build_dataset(r, str(tmp_path / "a"), progress=False)
    build_dataset(r, str(tmp_path / "b"), progress=False)
    a, b = Dataset(str(tmp_path / "a")).read_frames(), Dataset(str(tmp_path / "b")).read_frames()
    for field in ("keypoints", "scores", "joints_3d", "frame", "sequence", "subject", "split"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    c = generate(recipe(noise=noise, subjects=subjects, seed=1))
    assert not np.array_equal(a.joints_3d, c.joints_3d)
    assert not np.array_equal(np.nan_to_num(a.keypoints), np.nan_to_num(c.keypoints))


# ---------------------------------------------------------------------------------------------- detector model


def _clean(rng: np.random.Generator, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Clean keypoints well inside 1000 x 1000 images, [n, 4, 16, 2], and the image sizes."""
    clean = rng.uniform(200, 800, (n, 4, DEEPMIMIC16.num_joints, 2)).astype(np.float32)  # exact in float32
    return clean, np.full((4, 2), 1000)


def test_pixel_noise_matches_its_std(rng: np.random.Generator) -> None:
    clean, size = _clean(rng)
    kp, scores = detect(clean, size, DetectorNoise(pixel_std=5.0), rng, skeleton=DEEPMIMIC16)
    err = kp - clean
    assert np.std(err) == pytest.approx(5.0, rel=0.02)
    # |2D error| is Rayleigh(sigma): median sigma * sqrt(2 ln 2)
    assert np.median(np.linalg.norm(err, axis=-1)) == pytest.approx(5.0 * np.sqrt(2 * np.log(2)), rel=0.02)
    assert ((scores >= 0.75) & (scores <= 1.0)).all()
    big = np.linalg.norm(err, axis=-1) > 10
    assert scores[big].mean() < scores[~big].mean()  # detector-like: larger errors, lower confidence


def test_outliers_occlusions_and_missing_views_match_their_rates(rng: np.random.Generator) -> None:
    clean, size = _clean(rng)
    noise = DetectorNoise(pixel_std=1.0, outlier_rate=0.05, outlier_px=(30, 60), occlusion_rate=0.1,
                          occlusion_missing_fraction=0.5, occluded_px=0.0, missing_view_rate=0.1)
    kp, scores = detect(clean, size, noise, rng, skeleton=DEEPMIMIC16)
    missing = np.isnan(kp).any(-1)
    np.testing.assert_array_equal(missing, scores == 0)  # missing = NaN and score 0
    view_gone = missing.all(-1)
    assert view_gone.mean() == pytest.approx(0.1, abs=0.01)
    kept = ~view_gone[..., None] & np.ones_like(missing)
    assert missing[kept].mean() == pytest.approx(0.05, abs=0.005)  # occluded and reported missing
    err = np.linalg.norm(kp - clean, axis=-1)
    outlier = err > 20
    assert outlier[kept].mean() == pytest.approx(0.05 * (1 - 0.05), abs=0.005)
    assert (scores[outlier] <= 0.6).all()  # outlier range (0.2-0.6), or the occluded one if also occluded
    low = ~outlier & ~missing & (scores < 0.36)  # occluded, kept with a low score
    assert low[kept].mean() == pytest.approx(0.05 * (1 - 0.05), abs=0.005)


def test_left_right_swaps_exchange_whole_limbs_at_their_rate(rng: np.random.Generator) -> None:
    clean, size = _clean(rng)
    kp, _ = detect(clean, size, DetectorNoise(swap_rate=0.1), rng, skeleton=DEEPMIMIC16)
    limbs = limb_pairs(DEEPMIMIC16)
    assert sorted(len(left) for left, _ in limbs) == [3, 3]  # deepmimic16: an arm and a leg per side
    for left, right in limbs:
        swapped = (kp[..., left, :] == clean[..., right, :]).all((-1, -2))
        untouched = (kp[..., left, :] == clean[..., left, :]).all((-1, -2))
        assert (swapped ^ untouched).all()
        np.testing.assert_array_equal(kp[..., right, :][swapped], clean[..., left, :][swapped])
        assert swapped.mean() == pytest.approx(0.1, abs=0.01)


def test_joints_outside_the_image_or_behind_the_camera_are_missing(rng: np.random.Generator) -> None:
    clean = np.array([[[[10.0, 10.0], [-1.0, 5.0], [5.0, 1000.0], [np.nan, np.nan]] * 4]])  # [1, 1, 16, 2]
    kp, scores = detect(clean, np.array([[1000, 1000]]), DetectorNoise(), rng, skeleton=DEEPMIMIC16)
    np.testing.assert_array_equal(scores[0, 0, :4], [1.0, 0.0, 0.0, 0.0])
    assert np.isnan(kp[0, 0, 1:4]).all() and not np.isnan(kp[0, 0, 0]).any()


@needs_pybullet
def test_missing_views_in_a_dataset_are_nan_with_score_zero() -> None:
    frames = generate(recipe(frames=2000, noise={"missing_view_rate": 0.2}))
    view_gone = ~frames.valid().any(-1)
    assert view_gone.mean() == pytest.approx(0.2, abs=0.03)
    assert np.isnan(frames.keypoints[view_gone]).all() and (frames.scores[view_gone] == 0).all()


# ---------------------------------------------------------------------------------------------- subjects, placement


@needs_pybullet
def test_bone_scaling_changes_bone_lengths_by_the_configured_factor() -> None:
    from rigpose.data.synth.mocap import clip_joints

    frames = generate(recipe(subjects={"count": 2, "scale": [1.2, 1.2]}))
    clips = {n: clip_joints(n, fps=30) for n in ("walk", "run", "jump")}
    original = np.stack([clips[str(s).split("-")[0]][f] for s, f in zip(frames.sequence, frames.frame, strict=True)])
    ratio = bone_lengths(frames.joints_3d, DEEPMIMIC16) / bone_lengths(original, DEEPMIMIC16)
    np.testing.assert_allclose(ratio, 1.2, rtol=1e-4)
    jittered = generate(recipe(subjects={"count": 4, "scale": [0.9, 1.1], "bone_jitter": 0.05}))
    lengths = bone_lengths(jittered.joints_3d, DEEPMIMIC16)
    pairs = np.array(DEEPMIMIC16.symmetric_bones)
    np.testing.assert_allclose(lengths[:, pairs[:, 0]], lengths[:, pairs[:, 1]], rtol=1e-4)  # symmetric jitter
    assert len(np.unique(np.round(lengths[:, 4], 4))) > 1  # subjects differ


@needs_pybullet
def test_placements_stay_within_the_radius_and_keep_heights() -> None:
    r = recipe(frames=None, placement={"radius": 0.5, "per_clip": 10})
    frames = generate(r)
    centre = load_rig(RIG).capture_center()[:2]
    from rigpose.data.synth.mocap import clip_joints

    for seq in np.unique(frames.sequence):
        X = frames.joints_3d[frames.sequence == seq]
        assert np.linalg.norm(X[:, 0, :2].mean(0) - centre) <= 0.5 + 1e-4  # the clip's mean root position
        np.testing.assert_allclose(X[:, :, 2], clip_joints(str(seq).split("-")[0], fps=30)[:, :, 2], atol=1e-5)
    assert len(np.unique(frames.sequence)) == 30


def test_procedural_motion_keeps_deepmimic_bones_and_stands_on_the_floor() -> None:
    X = sm.procedural_clip(np.random.default_rng(0), 300, 30.0)
    rest = np.linalg.norm(sm.REST_OFFSETS_J3[[c for c, _ in DEEPMIMIC16.bones]], axis=-1)
    np.testing.assert_allclose(bone_lengths(X, DEEPMIMIC16), np.broadcast_to(rest, (300, len(rest))), rtol=1e-9)
    np.testing.assert_allclose(X[..., 2].min(1), sm.FOOT_CLEARANCE)
    assert np.abs(np.diff(X, axis=0)).max() < 0.15  # smooth: < 15 cm per frame at 30 fps


@needs_pybullet
def test_rest_offsets_match_deepmimic_forward_kinematics() -> None:
    from rigpose.data.synth.mocap import forward_kinematics

    frame = np.zeros(44)
    frame[[4, 8, 12, 16, 21, 25, 30, 35, 39]] = 1.0  # identity quaternions (w first)
    X = forward_kinematics(frame)
    offsets = X - X[[max(p, 0) for p in DEEPMIMIC16.parents]]
    np.testing.assert_allclose(offsets, sm.REST_OFFSETS_J3, atol=1e-7)


# ---------------------------------------------------------------------------------------------- recipes, splits


@pytest.mark.parametrize(("data", "path"), [
    ({"framez": 10}, "framez"),
    ({"noise": {"pixel_sd": 5}}, "noise.pixel_sd"),
    ({"noise": {"scores": {"clean": [0.5, 1.0], "bogus": 1}}}, "noise.scores.bogus"),
    ({"motion": {"source": "deepmimic", "clip": ["walk"]}}, "motion.clip"),
    ({"noise": {"outlier_rate": 1.5}}, "noise.outlier_rate"),
    ({"splits": {"fractions": {"train": 0.5, "val": 0.4}}}, "splits"),
])
def test_bad_recipe_keys_fail_naming_the_key_path(data: dict[str, Any], path: str) -> None:
    with pytest.raises(ValueError, match=rf"(?m)^\s+{path}\b"):
        parse_recipe({"rigs": [RIG], **data})


def test_shipped_recipes_parse() -> None:
    for name in ("tiny", "demo", "scale"):
        r = load_recipe(recipes_dir() / f"{name}.yaml")
        assert r.name == name


@needs_pybullet
def test_splits_are_disjoint_by_sequence_and_held_out_clips_stay_out() -> None:
    splits = {"by": "placement", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "held_out_clips": ["jump"]}
    frames = generate(recipe(frames=3000, splits=splits))
    pairs = set(zip(frames.sequence, frames.split, strict=True))
    assert len(pairs) == len({s for s, _ in pairs})  # every sequence in exactly one split
    clip = np.array([str(s).split("-")[0] for s in frames.sequence])
    assert set(frames.split[clip == "jump"]) == {"test_clips"} and "test_clips" not in set(frames.split[clip != "jump"])
    share = {s: np.mean(frames.split[clip != "jump"] == s) for s in ("train", "val", "test")}
    assert share == pytest.approx({"train": 0.6, "val": 0.2, "test": 0.2}, abs=0.05)


@needs_pybullet
def test_clip_and_time_splits() -> None:
    by_clip = generate(recipe(splits={"by": "clip", "fractions": {"train": 0.67, "test": 0.33}}))
    clip = np.array([str(s).split("-")[0] for s in by_clip.sequence])
    assert all(len(set(by_clip.split[clip == c])) == 1 for c in set(clip))  # whole clips
    by_time = generate(recipe(frames=None, splits={"by": "time", "fractions": {"train": 0.5, "val": 0.5}}))
    base = np.array([str(s).rsplit("-", 1)[0] for s in by_time.sequence])
    for b in set(base):
        train, val = (by_time.frame[(base == b) & (by_time.split == s)] for s in ("train", "val"))
        assert len(train) and len(val) and train.max() < val.min()  # first half train, second half val


@needs_pybullet
@pytest.mark.parametrize(("data", "message"), [
    ({"motion": {"source": "deepmimic", "clips": ["walkk"]}}, r"motion.clips: unknown clip\(s\) \['walkk'\]"),
    ({"splits": {"held_out_clips": ["nope"]}}, r"splits.held_out_clips: unknown clip\(s\) \['nope'\]"),
    ({"rigs": ["no/such/rig.json"]}, "rigs: no rig file 'no/such/rig.json'"),
])
def test_unknown_clips_and_rig_files_fail_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Synthesis.from_recipe(recipe(**data))


@needs_pybullet
def test_a_build_where_cameras_see_nobody_fails_and_leaves_no_dataset(tmp_path: Path) -> None:
    out = tmp_path / "far"
    with pytest.raises(ValueError, match=r"rows \(.*\) are bad"):
        build_dataset(recipe(placement={"radius": 200.0}), str(out), progress=False)
    assert not (out / "manifest.json").exists()


def test_procedural_recipe_generates_every_frame_across_two_rigs() -> None:
    rigs = [RIG, str(rigs_dir() / "h36m-s5.json")]
    r = parse_recipe({"frames": 2000, "rigs": rigs, "noise": {"pixel_std": 2},
                      "motion": {"source": "procedural", "num_sequences": 4, "seconds": 3},
                      "splits": {"by": "clip", "fractions": {"train": 0.75, "test": 0.25}}})
    parts = list(Synthesis.from_recipe(r).batches())
    assert {rig.rig_id for rig, _ in parts} == {"h36m-s1", "h36m-s5"}
    frames = Frames.concat([f for _, f in parts])
    assert len(frames) == 2000 and frames.valid().mean() > 0.9
    clip = np.array([str(s).split("-")[0] for s in frames.sequence])
    per_clip = {c: set(frames.split[clip == c]) for c in set(clip)}
    assert sorted(map(sorted, per_clip.values())) == [["test"], ["train"], ["train"], ["train"]]  # whole clips


def test_background_generation_reraises_errors_and_stops_when_closed() -> None:
    from contextlib import closing

    from rigpose.data.synth.build import _ahead

    def failing():
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), closing(_ahead(failing())) as items:
        assert next(items) == 1
        next(items)
    endless = _ahead(iter(range(10**9)))
    assert next(endless) == 0
    endless.close()  # returns: the producer thread stops instead of filling memory
