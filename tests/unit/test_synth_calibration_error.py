"""The recipe's `calibration_error`: a dataset whose stated calibration drifted from the rig that made its 2D."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rigpose.data.reader import Dataset
from rigpose.data.schema import Frames
from rigpose.data.synth.build import Synthesis, build_dataset, miscalibrate_rig, parse_recipe
from rigpose.data.synth.recipe import CalibrationError, Recipe
from rigpose.resources import rigs_dir
from rigpose.rig import Rig, load_rig, validate_rig

RIGS = [str(rigs_dir() / "h36m-s1.json"), str(rigs_dir() / "humaneva-s2.json")]


def recipe(frames: int = 240, **calibration_error: float) -> Recipe:
    """Procedural motion (no pybullet needed) through two shipped rigs, exact projections and 3D labels."""
    return parse_recipe({"seed": 3, "frames": frames, "rigs": RIGS, "calibration_error": calibration_error,
                         "motion": {"source": "procedural", "num_sequences": 3, "seconds": 2, "fps": 30},
                         "splits": {"fractions": {"train": 0.5, "val": 0.5}}})


def generate(r: Recipe) -> list[tuple[Rig, Frames]]:
    """(the stated rig, its rows) of every batch, in generation order (rigs of 4 and 3 views: not concatenated)."""
    return list(Synthesis.from_recipe(r).batches())


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle (degrees) of the rotation taking R_b to R_a, from the trace of R_a @ R_b^T."""
    return math.degrees(math.acos(np.clip((np.trace(R_a @ R_b.T) - 1) / 2, -1.0, 1.0)))


def test_zero_error_writes_exactly_the_true_cameras(tmp_path: Path) -> None:
    out = str(tmp_path / "exact")
    build_dataset(recipe(rotation_deg=0.0, translation_m=0.0, focal_rel=0.0), out, progress=False)
    ds = Dataset(out)
    for path in RIGS:
        true = load_rig(path)
        assert ds.rig(true.rig_id) == true  # the rig file the dataset records
        rows = ds.read_frames(rig_ids=[true.rig_id])
        cams = true.arrays()
        V = len(true.cameras)
        for key in ("K", "dist", "R", "t"):  # every row carries the calibration as given, bit for bit
            np.testing.assert_array_equal(getattr(rows.cameras, key)[:, :V],
                                          np.broadcast_to(getattr(cams, key), (len(rows), *getattr(cams, key).shape)))


def test_zero_error_is_the_default_and_builds_the_same_rows() -> None:
    assert recipe().calibration_error == CalibrationError()
    for (_, default), (_, zero) in zip(generate(recipe()), generate(recipe(rotation_deg=0.0, translation_m=0.0,
                                                                         focal_rel=0.0)), strict=True):
        for key in ("K", "R", "t"):
            np.testing.assert_array_equal(getattr(default.cameras, key), getattr(zero.cameras, key))
        np.testing.assert_array_equal(default.keypoints, zero.keypoints)


def test_each_camera_moves_by_the_stated_angle_offset_and_focal_scale() -> None:
    batches = generate(recipe(rotation_deg=2.0, translation_m=0.05, focal_rel=0.03))
    for stated in {r.rig_id: r for r, _ in batches}.values():
        true = load_rig(next(p for p in RIGS if Path(p).stem == stated.rig_id))
        assert stated.camera_names == true.camera_names and stated.floor_z == true.floor_z
        validate_rig(stated)  # R is still a rotation, K still a camera matrix
        axes = []
        for s, t in zip(stated.cameras, true.cameras, strict=True):
            np.testing.assert_allclose(s.R @ s.R.T, np.eye(3), atol=1e-12)
            assert np.linalg.det(s.R) == pytest.approx(1.0, abs=1e-12)
            assert rotation_angle_deg(s.R, t.R) == pytest.approx(2.0, abs=1e-6)
            assert np.linalg.norm(s.center - t.center) == pytest.approx(0.05, abs=1e-9)
            ratio = s.K[0, 0] / t.K[0, 0]
            assert min(abs(ratio - 1.03), abs(ratio - 0.97)) < 1e-12
            assert s.K[1, 1] / t.K[1, 1] == pytest.approx(ratio, abs=1e-12)
            assert s.principal_point == t.principal_point and (s.width, s.height) == (t.width, t.height)
            np.testing.assert_array_equal(s.dist, t.dist)
            dR = s.R @ t.R.T
            axes.append(np.array([dR[2, 1] - dR[1, 2], dR[0, 2] - dR[2, 0], dR[1, 0] - dR[0, 1]]))
        unit = np.stack(axes) / np.linalg.norm(np.stack(axes), axis=1, keepdims=True)
        cosines = unit @ unit.T  # each camera turns about an axis of its own
        assert (np.abs(cosines[~np.eye(len(axes), dtype=bool)]) < 0.999).all()


def test_miscalibration_leaves_the_2d_and_3d_as_the_true_rigs_make_them() -> None:
    pairs = list(zip(generate(recipe()), generate(recipe(rotation_deg=3.0, translation_m=0.1, focal_rel=0.02)),
                     strict=True))
    for (_, exact), (_, drifted) in pairs:
        np.testing.assert_array_equal(drifted.keypoints, exact.keypoints)
        np.testing.assert_array_equal(drifted.scores, exact.scores)
        np.testing.assert_array_equal(drifted.joints_3d, exact.joints_3d)
        np.testing.assert_array_equal(drifted.rig_id, exact.rig_id)  # the same rig_id, a different calibration
        assert not np.array_equal(drifted.cameras.R, exact.cameras.R)
    assert {rig.rig_id for (_, _), (rig, _) in pairs} == {"h36m-s1", "humaneva-s2"}


def test_the_dataset_records_the_stated_calibration_under_the_same_rig_id(tmp_path: Path) -> None:
    r = recipe(rotation_deg=1.5, translation_m=0.02)
    out = str(tmp_path / "drifted")
    build_dataset(r, out, progress=False)
    ds = Dataset(out)
    stated = {rig.rig_id: rig for rig, _ in Synthesis.from_recipe(r).batches()}
    assert sorted(ds.manifest.rigs) == sorted(stated)
    for rig_id, rig in stated.items():
        assert ds.rig(rig_id) == rig
        rows = ds.read_frames(rig_ids=[rig_id])
        np.testing.assert_allclose(rows.cameras.R[0, :len(rig.cameras)], rig.arrays().R)


def test_the_same_seed_draws_the_same_drift_and_a_larger_error_moves_the_same_way() -> None:
    true = load_rig(RIGS[0])
    small, big = CalibrationError(rotation_deg=1.0, translation_m=0.01), CalibrationError(rotation_deg=4.0,
                                                                                          translation_m=0.04)
    a = miscalibrate_rig(true, small, np.random.default_rng(7))
    assert a == miscalibrate_rig(true, small, np.random.default_rng(7))
    b = miscalibrate_rig(true, big, np.random.default_rng(7))
    for ca, cb, ct in zip(a.cameras, b.cameras, true.cameras, strict=True):
        np.testing.assert_allclose(cb.center - ct.center, 4 * (ca.center - ct.center), atol=1e-12)
    assert miscalibrate_rig(true, CalibrationError(), np.random.default_rng(7)) is true


@pytest.mark.parametrize(("key", "value"), [("rotation_deg", -1.0), ("translation_m", -0.01), ("focal_rel", -0.1),
                                            ("focal_rel", 1.0), ("rotation_deg", 181.0)])
def test_bad_calibration_error_is_refused_naming_the_field(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"calibration_error\.{key}: "):
        recipe(**{key: value})


def test_unknown_calibration_error_key_is_refused() -> None:
    with pytest.raises(ValueError, match=r"calibration_error\.rotation: unknown key"):
        recipe(rotation=1.0)


def test_camera_offsets_see_a_drifted_calibration_and_not_detector_noise() -> None:
    """`noise_residuals.camera_offsets` (what the retraining gate checks a new rig with) on the same 2D with a
    noisy detector: a few px with the calibration as given, over the gate's 10 px for some camera of every rig
    once the cameras drifted by 2 degrees and 3 cm."""
    from rigpose.data.noise_residuals import camera_offsets

    noisy = {"pixel_std": 12.0, "outlier_rate": 0.05}

    def offsets(**error: float) -> dict[str, dict[str, float]]:
        r = recipe(1200, **error).model_copy(update={"noise": recipe().noise.model_copy(update=noisy)})
        return {rig.rig_id: camera_offsets(frames) for rig, frames in generate(r)}

    exact, drifted = offsets(), offsets(rotation_deg=2.0, translation_m=0.03)
    assert sorted(exact) == sorted(drifted) == ["h36m-s1", "humaneva-s2"]
    for rig in exact:
        assert len(exact[rig]) >= 2  # a camera is seen where the others' rays cross well enough to place a joint
        assert max(exact[rig].values()) < 6.0, exact  # 3 cameras, 600 rows: the median itself varies a few px
        assert max(drifted[rig].values()) > 10.0, drifted


def test_camera_offsets_refuse_a_bad_inlier_threshold() -> None:
    from rigpose.data.noise_residuals import camera_offsets

    with pytest.raises(ValueError, match="inlier_px must be positive"):
        camera_offsets(generate(recipe())[0][1], inlier_px=0)
