"""`--drop-camera`: the named cameras' 2D never reaches the method (rigpose.inference.drop), `lift` records them and
`evaluate` still scores against them (dropped_px: the error into a camera the method did not see)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rigpose_testing import rest_pose_deepmimic16
from typer.testing import CliRunner

from rigpose import geometry as g
from rigpose import metrics as ev
from rigpose.cli.evaluate import app as evaluate_app
from rigpose.config import ModelConfig, MultiViewConfig
from rigpose.data.schema import Frames, frames_for_rig, frames_from_table, frames_to_table
from rigpose.data.writer import DatasetWriter
from rigpose.inference.drop import check_drop_cameras, mask_cameras
from rigpose.inference.evaluate import evaluate
from rigpose.inference.lift import lift_dataset
from rigpose.model.checkpoint import save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import rig_path
from rigpose.rig import Rig, load_rig
from rigpose.skeleton import DEEPMIMIC16

RIG = load_rig(rig_path("h36m-s1"))  # cameras 54138969, 55011271, 58860488, 60457274
DROP = RIG.camera_names[1]
NUM_FRAMES = 24


def _poses(num_frames: int, seed: int) -> np.ndarray:
    """[T, 16, 3] world metres: the rest pose turned about z, bent a little, near the capture centre."""
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(0, 2 * np.pi, num_frames)
    c, s, zero, one = np.cos(yaw), np.sin(yaw), np.zeros(num_frames), np.ones(num_frames)
    Rz = np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2)
    X = np.einsum("nij,kj->nki", Rz, rest_pose_deepmimic16()) + rng.normal(0, 0.03, (num_frames, 16, 3))
    return X + np.c_[rng.uniform(-0.4, 0.4, (num_frames, 2)), zero][:, None]


def _write(root: Path, rig: Rig, keypoints: np.ndarray, scores: np.ndarray, X: np.ndarray) -> str:
    frames = frames_for_rig(rig, sequence="walk", keypoints=keypoints, scores=scores, joints_3d=X, subject="S1")
    with DatasetWriter(str(root), skeleton=DEEPMIMIC16, command="test_drop_camera") as writer:
        writer.add(frames, rig, split="test")
        writer.commit()
    return str(root)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One scene written four ways: all four cameras ("full"); the same with camera DROP's 2D wildly wrong
    ("wild") or shifted 40 px ("shifted"); and the rig without camera DROP ("three"). A tiny untrained model."""
    root = tmp_path_factory.mktemp("drop_camera")
    rng = np.random.default_rng(1)
    X = _poses(NUM_FRAMES, seed=0)
    kp = g.project(X[:, None], RIG.arrays()) + rng.normal(0, 2.0, (NUM_FRAMES, len(RIG), 16, 2))
    kp = kp.astype(np.float32).astype(np.float64)  # as stored, so that the references below see the same 2D
    scores = rng.uniform(0.6, 1.0, kp.shape[:-1]).astype(np.float32).astype(np.float64)
    d = RIG.camera_names.index(DROP)
    wild_kp, wild_scores = kp.copy(), scores.copy()
    wild_kp[:, d] += rng.normal(0, 300.0, wild_kp[:, d].shape)
    wild_scores[:, d] = rng.uniform(0.9, 1.0, wild_scores[:, d].shape)
    shifted = kp.copy()
    shifted[:, d, :, 0] += 40.0
    kept = [i for i in range(len(RIG)) if i != d]
    three = dataclasses.replace(RIG, cameras=tuple(RIG.cameras[i] for i in kept))
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=16, root_joints=(0,))
    save_lifter(root / "model.pt", model, DEEPMIMIC16, meta={"test": True})
    return {"X": X, "kp": kp, "scores": scores, "shifted_kp": shifted, "d": d, "kept": kept, "dir": root,
            "model": str(root / "model.pt"),
            "full": _write(root / "full", RIG, kp, scores, X),
            "wild": _write(root / "wild", RIG, wild_kp, wild_scores, X),
            "shifted": _write(root / "shifted", RIG, shifted, scores, X),
            "three": _write(root / "three", three, kp[:, kept], scores[:, kept], X)}


def _lift(world: dict, data: str, name: str, **kwargs) -> tuple[dict, pq.Table]:
    out = str(Path(world["dir"]) / "out" / f"{name}.parquet")
    info = lift_dataset(world["model"], world[data], split="test", out_url=out, **{"batch_size": 16, **kwargs})
    return info, pq.read_table(out)


def _column(t: pq.Table, name: str) -> np.ndarray:
    return np.asarray([np.nan * np.ones(16 * 3) if v is None else v for v in t.column(name).to_pylist()], float)


# ---------------------------------------------------------------------------------------------- the mask


def test_mask_cameras_blanks_exactly_the_named_cameras_in_every_rig_and_leaves_the_rest_untouched() -> None:
    rng = np.random.default_rng(0)
    four = frames_for_rig(RIG, sequence="a", keypoints=rng.uniform(0, 900, (3, 4, 16, 2)))
    small = dataclasses.replace(RIG, rig_id="small", cameras=RIG.cameras[1:])  # 3 cameras: padded to 4 below
    three = frames_for_rig(small, sequence="b", keypoints=rng.uniform(0, 900, (2, 3, 16, 2)))
    padded = frames_from_table(frames_to_table(three), num_joints=16, num_views=4)
    frames = Frames.concat([four, padded])
    before = dataclasses.replace(frames, keypoints=frames.keypoints.copy(), scores=frames.scores.copy())
    names = [RIG.camera_names[1], RIG.camera_names[3]]
    masked = mask_cameras(frames, names)
    hit = np.isin(frames.camera_names.astype(str), names) & frames.view_mask  # rig h36m-s1: views 1, 3; small: 0, 2
    assert hit.sum() == 3 * 2 + 2 * 2
    assert np.isnan(masked.keypoints[hit]).all() and (masked.scores[hit] == 0).all()
    np.testing.assert_array_equal(masked.keypoints[~hit], before.keypoints[~hit])  # padding (NaN) included
    np.testing.assert_array_equal(masked.scores[~hit], before.scores[~hit])
    for a, b in zip(masked.cameras, before.cameras, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(masked.view_mask, before.view_mask)
    np.testing.assert_array_equal(frames.keypoints, before.keypoints)  # the input is not modified
    assert mask_cameras(frames, []) is frames


def test_an_unknown_camera_is_refused_naming_it_and_listing_the_rigs_cameras(world: dict) -> None:
    with pytest.raises(ValueError, match="'nope'") as e:
        check_drop_cameras([RIG], [DROP, "nope"])
    assert all(name in str(e.value) for name in RIG.camera_names) and "h36m-s1" in str(e.value)
    with pytest.raises(ValueError, match="'nope'"):
        lift_dataset(world["model"], world["full"], split="test", out_url=str(world["dir"] / "x.parquet"),
                     drop_cameras=["nope"])
    assert not (world["dir"] / "x.parquet").exists()
    assert check_drop_cameras([RIG], [DROP, DROP]) == (DROP,)


def test_dropping_every_camera_or_leaving_a_multi_view_answer_one_is_refused() -> None:
    for min_cameras in (1, 2):
        with pytest.raises(ValueError, match="every camera of rig 'h36m-s1'"):
            check_drop_cameras([RIG], RIG.camera_names, min_cameras=min_cameras)
    three_dropped = RIG.camera_names[:3]
    assert check_drop_cameras([RIG], three_dropped, min_cameras=1) == three_dropped  # one view lifts alone
    with pytest.raises(ValueError, match="needs at least 2"):
        check_drop_cameras([RIG], three_dropped, min_cameras=2)


# ---------------------------------------------------------------------------------------------- lift


@pytest.mark.parametrize("method", ["posterior", "refinement"])
def test_a_dropped_camera_has_no_influence_on_the_multi_view_lift(world: dict, method: str) -> None:
    mv = MultiViewConfig(method=method, refine_steps=10)
    info, dropped = _lift(world, "full", f"drop_{method}", mode="multi", multi_view=mv, drop_cameras=[DROP])
    _, wild = _lift(world, "wild", f"wild_{method}", mode="multi", multi_view=mv, drop_cameras=[DROP])
    _, three = _lift(world, "three", f"three_{method}", mode="multi", multi_view=mv)
    _, wild_seen = _lift(world, "wild", f"wild_seen_{method}", mode="multi", multi_view=mv)
    assert info["dropped_cameras"] == [DROP]
    assert json.loads(dropped.schema.metadata[b"rigpose.dropped_cameras"]) == [DROP]
    assert json.loads(three.schema.metadata[b"rigpose.dropped_cameras"]) == []
    assert dropped.column("num_views").to_pylist() == [3] * NUM_FRAMES
    for name in ("joints_world", "joints_world_rel"):
        X = _column(dropped, name)
        assert np.isfinite(X).all()
        np.testing.assert_allclose(_column(wild, name), X, rtol=0, atol=1e-6)  # its 2D, however wrong: no effect
        np.testing.assert_allclose(_column(three, name), X, rtol=0, atol=1e-4)  # as if the rig had no such camera
    # the wild 2D does matter when the camera is not dropped (so the comparisons above can fail)
    assert np.abs(_column(wild_seen, "joints_world_rel") - _column(dropped, "joints_world_rel")).max() > 0.01


def test_single_view_lift_leaves_the_dropped_cameras_rows_null_and_the_others_as_without_dropping(
        world: dict) -> None:
    info, dropped = _lift(world, "full", "single_drop", drop_cameras=[DROP])
    _, full = _lift(world, "full", "single_full")
    assert info["rows"] == full.num_rows == NUM_FRAMES * len(RIG)
    is_dropped = np.asarray(dropped.column("camera_name").to_pylist()) == DROP
    assert dropped.column("camera_name").to_pylist() == full.column("camera_name").to_pylist()
    assert all(v is None for v in np.asarray(dropped.column("joints_cam").to_pylist(), object)[is_dropped])
    np.testing.assert_allclose(_column(dropped, "joints_cam")[~is_dropped], _column(full, "joints_cam")[~is_dropped],
                               rtol=0, atol=1e-6)


def test_the_ray_data_batches_leave_the_dropped_camera_out_as_the_in_process_lift_does(world: dict) -> None:
    from rigpose.data.reader import Dataset
    from rigpose.inference.lift_ray import READ_COLUMNS, LiftBatches, lift_dataset_ray
    from rigpose.model.checkpoint import lifter_to_bytes, load_lifter

    mv = MultiViewConfig(method="fusion")
    lifter, skeleton, _ = load_lifter(world["model"])
    batches = LiftBatches(lifter_to_bytes(lifter, skeleton), mode="multi", multi_view=mv, num_joints=16,
                          num_views=len(RIG), num_threads=1, drop_cameras=(DROP,))  # each Ray actor's, without Ray
    got = batches(Dataset(world["wild"]).read_table(columns=list(READ_COLUMNS)))
    _, want = _lift(world, "full", "ray_ref", mode="multi", multi_view=mv, drop_cameras=[DROP], batch_size=64)
    np.testing.assert_allclose(_column(got, "joints_world_rel"), _column(want, "joints_world_rel"), rtol=0,
                               atol=1e-6)
    with pytest.raises(ValueError, match="'nope'"):  # checked before Ray is connected
        lift_dataset_ray(world["model"], world["full"], split="test", out_url=str(world["dir"] / "r.parquet"),
                         drop_cameras=["nope"], connect=lambda: pytest.fail("connected Ray for a bad camera"))


# ---------------------------------------------------------------------------------------------- evaluate


def _errors_into(X: np.ndarray, kp: np.ndarray, view: int) -> np.ndarray:
    """[T, J] px: world poses [T, J, 3] projected into rig view `view` vs the 2D kp [T, V, J, 2]."""
    cam = g.CameraArrays(*(np.broadcast_to(a[view], (len(X), *a[view].shape)) for a in RIG.arrays()))
    return ev.reprojection_errors(X, kp[:, view], np.ones(X.shape[:2]), cam)


def test_evaluate_scores_the_3d_estimated_without_the_dropped_camera_against_its_own_2d(world: dict) -> None:
    d, kept, key = world["d"], world["kept"], f"{RIG.rig_id}/{DROP}"
    res = evaluate(world["model"], world["full"], split="test", batch_size=16, drop_cameras=[DROP])
    assert res["dropped_cameras"] == [DROP]
    # the method's answer (what `lift` writes without the camera), projected into it, vs its 2D
    _, lifted = _lift(world, "full", "eval_ref", mode="multi", drop_cameras=[DROP])
    X = _column(lifted, "joints_world").reshape(-1, 16, 3)
    errors = {res["multi_mode"]: _errors_into(X, world["kp"], d)}
    # weighted DLT from the kept cameras only, with and without the dropped one
    cams = g.CameraArrays(*(np.broadcast_to(a, (NUM_FRAMES, *a.shape)) for a in RIG.arrays()))
    w = world["scores"].copy()
    w[:, d] = 0
    errors["dlt"] = _errors_into(g.triangulate(world["kp"], cams, w), world["kp"], d)
    in_sample = _errors_into(g.triangulate(world["kp"], cams, world["scores"]), world["kp"], d)
    for method, err in errors.items():
        for where in (res["multi"][method]["overall"], res["multi"][method]["per_camera"][key]):
            np.testing.assert_allclose(where["dropped_px"], np.median(err), rtol=1e-4)
            assert where["num_dropped"] == err.size
        # a dropped camera is a held-out view the answer never saw: its held-out px is the mean of the same errors
        np.testing.assert_allclose(res["multi"][method]["per_camera"][key]["heldout_px"], err.mean(), rtol=1e-4)
    assert res["multi"]["dlt"]["overall"]["dropped_px"] > np.median(in_sample)  # unseen is harder than seen
    single = res["single"]["per_camera"][key]  # each kept view's lift, into the dropped camera
    assert np.isfinite(single["dropped_px"]) and single["num_dropped"] == NUM_FRAMES * len(kept) * 16
    # the 2D of the dropped camera is the reference and nothing else: moving it changes dropped_px alone
    moved = evaluate(world["model"], world["shifted"], split="test", batch_size=16, drop_cameras=[DROP],
                     modes=("multi",), multi_heldout=False)
    for method in errors:
        np.testing.assert_allclose(moved["multi"][method]["overall"]["mpjpe_mm"],
                                   res["multi"][method]["overall"]["mpjpe_mm"], rtol=1e-6)
    np.testing.assert_allclose(moved["multi"]["dlt"]["overall"]["dropped_px"],
                               np.median(_errors_into(g.triangulate(world["kp"], cams, w), world["shifted_kp"], d)),
                               rtol=1e-4)


def test_cli_drop_camera_is_repeatable_reported_and_refuses_an_unknown_camera_in_one_line(world: dict) -> None:
    runner = CliRunner(env={"COLUMNS": "220"})
    out = world["dir"] / "cli.json"
    base = ["--model", world["model"], "--data", world["full"], "--split", "test"]
    r = runner.invoke(evaluate_app, ["evaluate", *base, "--mode", "multi", "--multi", "fusion", "--no-multi-heldout",
                                     "--drop-camera", DROP, "--drop-camera", RIG.camera_names[3], "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "dropped px" in r.output and "cameras left out" in r.output
    res = json.loads(out.read_text())
    assert res["dropped_cameras"] == [DROP, RIG.camera_names[3]]
    assert res["multi"]["fusion"]["overall"]["num_dropped"] == 2 * NUM_FRAMES * 16
    pq_out = world["dir"] / "cli.parquet"
    r = runner.invoke(evaluate_app, ["lift", *base, "--out", str(pq_out), "--drop-camera", DROP])
    assert r.exit_code == 0, r.output
    assert f"cameras left out: {DROP}" in r.output
    assert json.loads(pq.read_schema(pq_out).metadata[b"rigpose.dropped_cameras"]) == [DROP]
    for command in (["evaluate", *base], ["lift", *base, "--out", str(world["dir"] / "no.parquet")]):
        r = runner.invoke(evaluate_app, [*command, "--drop-camera", "nope"])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
        assert "'nope'" in r.output and all(name in r.output for name in RIG.camera_names)
    three = [x for name in RIG.camera_names[:3] for x in ("--drop-camera", name)]
    r = runner.invoke(evaluate_app, ["lift", *base, "--out", str(pq_out), "--mode", "multi", *three])
    assert r.exit_code == 1 and "needs at least 2" in r.output and len(r.output.strip().splitlines()) == 1, r.output
