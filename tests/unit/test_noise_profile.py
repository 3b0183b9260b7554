"""rigpose.data.noise_profile: a detector's noise measured from multi-view 2D alone, and recipes that draw from it.

References: noise-free synthetic 2D (exact projections of known 3D) plus noise of a known std per camera and joint
and known outlier rates; and a profile written by hand that a recipe's detector draws from, measured again.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from rigpose.cli.main import app
from rigpose.data.noise_profile import (
    NoiseProfile,
    NoiseStats,
    estimate_noise_profile,
    load_noise_profile,
    profile_dataset,
    save_noise_profile,
    view_noise,
)
from rigpose.data.schema import Frames
from rigpose.data.synth.build import Synthesis, build_dataset, parse_recipe
from rigpose.data.synth.detector import DetectorNoise, ViewNoise, detect
from rigpose.resources import rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import DEEPMIMIC16

RIG = load_rig(rigs_dir() / "h36m-s1.json")
CAMERAS = [c.name for c in RIG.cameras]
J = DEEPMIMIC16.num_joints
MOTION = {"source": "procedural", "num_sequences": 6, "seconds": 10}  # no pybullet needed


def clean_frames(num_frames: int, *, seed: int = 0, rigs: list[str] | None = None) -> Frames:
    """Exact projections (score 1) of procedural motion in the H36M S1 rig (4 cameras), with joints_3d."""
    r = parse_recipe({"seed": seed, "frames": num_frames, "rigs": rigs or ["h36m-s1"], "motion": MOTION})
    return Frames.concat([f for _, f in Synthesis.from_recipe(r).batches()])


@pytest.fixture(scope="module")
def known_noise() -> dict[str, Any]:
    """2,500 rows: Gaussian noise of a known std per camera and joint (3-8 px by joint, x0.8-1.25 by camera) and
    3% outliers moved 20-100 px, added to exact projections; and the profile estimated from them."""
    frames = clean_frames(2500)
    N, V, _, _ = frames.keypoints.shape
    rng = np.random.default_rng(7)
    std_VJ = rng.uniform(3, 8, J)[None] * rng.uniform(0.8, 1.25, V)[:, None]
    kp = frames.keypoints + rng.standard_normal(frames.keypoints.shape) * std_VJ[..., None]
    out = rng.random((N, V, J)) < 0.03
    dist, angle = rng.uniform(20, 100, out.sum()), rng.uniform(0, 2 * np.pi, out.sum())
    kp[out] += np.stack([dist * np.cos(angle), dist * np.sin(angle)], -1)
    noisy = replace(frames, keypoints=kp.astype(np.float32), joints_3d=None)  # 2D only
    return {"std_VJ": std_VJ, "profile": estimate_noise_profile(noisy, DEEPMIMIC16)}


def per_camera(profile: NoiseProfile, key: str) -> np.ndarray:
    """[V, J] (or [V]) `key` of the profile's cameras, in the rig's camera order."""
    return np.array([getattr(profile.cameras[c], key) for c in CAMERAS], dtype=float)


# ---------------------------------------------------------------------------------------------- estimation


def test_recovers_each_camera_and_joints_noise_within_15_percent(known_noise: dict[str, Any]) -> None:
    ratio = per_camera(known_noise["profile"], "pixel_std") / known_noise["std_VJ"]
    assert np.abs(ratio - 1).max() < 0.18 and np.abs(ratio - 1).mean() < 0.06, np.round(ratio, 2)


def test_the_triangulation_correction_removes_the_leave_one_out_inflation(known_noise: dict[str, Any]) -> None:
    # the residual against the point from the other views carries their error too: ~30% too high on this rig
    loo = per_camera(known_noise["profile"], "pixel_std_loo") / known_noise["std_VJ"]
    fixed = per_camera(known_noise["profile"], "pixel_std") / known_noise["std_VJ"]
    assert loo.mean() > 1.2 and abs(fixed.mean() - 1) < 0.05


def test_noisier_joints_rank_higher(known_noise: dict[str, Any]) -> None:
    truth_J = known_noise["std_VJ"].mean(0)
    est_J = np.array(known_noise["profile"].overall.pixel_std)
    ranks = [np.argsort(np.argsort(x)) for x in (truth_J, est_J)]
    assert np.corrcoef(*ranks)[0, 1] > 0.9  # Spearman
    assert np.argmax(est_J) in np.argsort(truth_J)[-2:] and np.argmin(est_J) in np.argsort(truth_J)[:2]


def test_outlier_rate_is_near_the_injected_rate(known_noise: dict[str, Any]) -> None:
    p = known_noise["profile"]
    # outliers within 4 robust stds (20-30 px here) go uncounted: ~10% of them
    assert 0.8 * 0.03 < np.mean(p.overall.outlier_rate) < 1.1 * 0.03
    lo, hi = p.overall.outlier_px
    assert 20 < lo < 35 and 90 < hi < 110
    assert max(p.overall.missing_rate) < 0.005 and p.overall.swap_rate < 0.005  # none injected


def test_exact_projections_give_zero_noise() -> None:
    p = estimate_noise_profile(clean_frames(200), DEEPMIMIC16)
    assert max(p.overall.pixel_std) < 0.01 and p.rows_used == 200


def test_rows_without_three_cameras_or_any_joint_are_refused() -> None:
    frames = clean_frames(50)
    two = replace(frames, view_mask=np.broadcast_to([True, True, False, False], (len(frames), 4)))
    with pytest.raises(ValueError, match="at least 3 cameras"):
        estimate_noise_profile(two, DEEPMIMIC16)
    blank = replace(frames, keypoints=np.full_like(frames.keypoints, np.nan), scores=np.zeros_like(frames.scores))
    with pytest.raises(ValueError, match="no usable residuals"):
        estimate_noise_profile(blank, DEEPMIMIC16)


# ---------------------------------------------------------------------------------------------- recipes


def stats(std: float | np.ndarray, *, outlier: float | np.ndarray = 0.0, missing: float | np.ndarray = 0.0,
          swap: float | None = None, missing_view: float | None = None,
          outlier_px: tuple[float, float] | None = None) -> NoiseStats:
    """Hand-written `NoiseStats`: per-joint values from scalars or [J] arrays."""
    def joints(x: float | np.ndarray) -> list[float | None]:
        return [float(a) for a in np.broadcast_to(x, J)]

    return NoiseStats(pixel_std=joints(std), pixel_std_loo=[None] * J, outlier_rate=joints(outlier),
                      missing_rate=joints(missing), residuals=[0] * J, swap_rate=swap, missing_view_rate=missing_view,
                      outlier_px=outlier_px)


def hand_profile(cameras: dict[str, NoiseStats], overall: NoiseStats, joint_names: list[str] | None = None
                 ) -> NoiseProfile:
    return NoiseProfile(skeleton="deepmimic16", joint_names=joint_names or list(DEEPMIMIC16.joint_names),
                        cameras=cameras, overall=overall, rows_used=0)


def test_cameras_take_their_named_entry_or_overall_and_written_keys_win() -> None:
    profile = hand_profile({"A": stats(2.0, outlier=0.01, swap=0.05)},
                           stats(7.0, outlier=0.03, missing=0.02, swap=0.0, missing_view=0.04))
    views = view_noise(DetectorNoise(profile="p.json"), profile, ["A", "B"], DEEPMIMIC16)
    np.testing.assert_array_equal(views.pixel_std, [[2.0] * J, [7.0] * J])
    np.testing.assert_array_equal(views.outlier_rate, [[0.01] * J, [0.03] * J])
    np.testing.assert_array_equal(views.swap_rate, [0.05, 0.0])
    np.testing.assert_array_equal(views.missing_view_rate, [0.04, 0.04])  # A has none of its own: overall's
    written = DetectorNoise(profile="p.json", pixel_std=3.0, swap_rate=0.0, outlier_px=(40, 50))
    views = view_noise(written, profile, ["A", "B"], DEEPMIMIC16)
    np.testing.assert_array_equal(views.pixel_std, np.full((2, J), 3.0))
    np.testing.assert_array_equal(views.swap_rate, [0.0, 0.0])
    np.testing.assert_array_equal(views.outlier_rate, [[0.01] * J, [0.03] * J])  # not written: the profile's
    assert views.outlier_px == (40, 50)


def test_a_profile_lacking_a_joint_of_the_recipes_skeleton_is_refused_naming_it(tmp_path: Path) -> None:
    save_noise_profile(hand_profile({}, stats(5.0)), tmp_path / "p.json")
    r = parse_recipe({"frames": 10, "rigs": ["h36m-s1"], "motion": MOTION, "skeleton": "coco17",
                      "noise": {"profile": str(tmp_path / "p.json")}})
    with pytest.raises(ValueError, match=r"no joint\(s\) \['nose', .*recipe's skeleton coco17"):
        Synthesis.from_recipe(r)
    r = parse_recipe({"frames": 10, "rigs": ["h36m-s1"], "motion": MOTION, "noise": {"profile": "nowhere.json"}})
    with pytest.raises(ValueError, match=r"noise.profile: no file .nowhere.json."):
        Synthesis.from_recipe(r)
    (tmp_path / "other.json").write_text(json.dumps({"rig_id": "x"}))
    with pytest.raises(ValueError, match=r"other.json: not a noise profile"):
        load_noise_profile(tmp_path / "other.json")


def test_the_detector_draws_each_view_and_joints_std_and_a_uniform_one_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    clean = rng.uniform(200, 800, (20000, 2, J, 2)).astype(np.float32)
    size = np.full((2, 2), 1000)
    std_VJ = np.linspace(1, 8, 2 * J).reshape(2, J)
    views = replace(ViewNoise.uniform(DetectorNoise(), 2, J), pixel_std=std_VJ)
    kp, _ = detect(clean, size, DetectorNoise(), np.random.default_rng(1), skeleton=DEEPMIMIC16, views=views)
    np.testing.assert_allclose((kp - clean).std(axis=(0, 3)), std_VJ, rtol=0.03)
    noise = DetectorNoise(pixel_std=4, outlier_rate=0.05, swap_rate=0.1, occlusion_rate=0.1, missing_view_rate=0.1)
    a = detect(clean, size, noise, np.random.default_rng(2), skeleton=DEEPMIMIC16)
    b = detect(clean, size, noise, np.random.default_rng(2), skeleton=DEEPMIMIC16,
               views=ViewNoise.uniform(noise, 2, J))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_recipe_with_a_profile_builds_a_dataset_whose_profile_matches_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    std_J = rng.uniform(3, 8, J)
    cameras = {name: stats(std_J * rng.uniform(0.8, 1.25), outlier=rng.uniform(0.01, 0.04, J),
                           missing=rng.uniform(0, 0.04, J), swap=0.02, missing_view=0.03) for name in CAMERAS}
    overall = stats(std_J, outlier=0.02, outlier_px=(25.0, 90.0))  # the outliers' range comes from overall
    truth = hand_profile(cameras, overall)
    save_noise_profile(truth, tmp_path / "truth.json")
    recipe = {"seed": 1, "frames": 3000, "rigs": ["h36m-s1"], "motion": MOTION, "noise": {"profile": "truth.json"}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))  # the profile's path: beside the recipe
    build_dataset(tmp_path / "recipe.yaml", str(tmp_path / "ds"), progress=False)
    recorded = json.loads((tmp_path / "ds" / "manifest.json").read_text())["history"][-1]["recipe"]
    assert recorded["noise_profile"]["cameras"][CAMERAS[0]]["pixel_std"] == truth.cameras[CAMERAS[0]].pixel_std

    r = CliRunner().invoke(app, ["datasets", "noise-profile", str(tmp_path / "ds"), "--out",
                                 str(tmp_path / "again.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "noisiest joints" in r.output
    again = load_noise_profile(tmp_path / "again.json")
    assert again.rows_used == 3000 and again.command.startswith("rigpose datasets noise-profile")
    ratio = per_camera(again, "pixel_std") / per_camera(truth, "pixel_std")
    assert np.abs(ratio - 1).max() < 0.2 and np.abs(ratio - 1).mean() < 0.07, np.round(ratio, 2)
    out_est, out_true = per_camera(again, "outlier_rate"), per_camera(truth, "outlier_rate")
    assert np.abs(out_est.mean(1) / out_true.mean(1) - 1).max() < 0.2
    assert np.corrcoef(out_est.ravel(), out_true.ravel())[0, 1] > 0.6  # per joint: 30-120 outliers each
    np.testing.assert_allclose(per_camera(again, "missing_rate").mean(1), per_camera(truth, "missing_rate").mean(1),
                               atol=0.006)
    np.testing.assert_allclose(per_camera(again, "missing_view_rate"), 0.03, atol=0.01)
    assert 0.75 * 0.02 < again.overall.swap_rate < 1.2 * 0.02
    assert profile_dataset(str(tmp_path / "ds"), max_rows=400).rows_used == 400  # spread over the shards


def test_the_command_refuses_an_unknown_split_and_a_rig_of_two_cameras(tmp_path: Path) -> None:
    rig = json.loads((rigs_dir() / "h36m-s1.json").read_text())
    rig.update(rig_id="two-cameras", cameras=rig["cameras"][:2])
    (tmp_path / "two.json").write_text(json.dumps(rig))
    build_dataset(parse_recipe({"frames": 60, "rigs": [str(tmp_path / "two.json")], "motion": MOTION}),
                  str(tmp_path / "ds"), progress=False)
    runner = CliRunner()
    r = runner.invoke(app, ["datasets", "noise-profile", str(tmp_path / "ds"), "--split", "val", "--out", "x.json"])
    assert r.exit_code == 1 and "no split ['val']" in r.output
    r = runner.invoke(app, ["datasets", "noise-profile", str(tmp_path / "ds"), "--out", "x.json"])
    assert r.exit_code == 1 and "two-cameras (2 camera(s))" in r.output
    assert not Path("x.json").exists()
