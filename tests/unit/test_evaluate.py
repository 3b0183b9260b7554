"""rigpose.metrics / evaluate_run / predict / eval_cli: metrics vs hand-computed references, the label-free metric,
the evaluator and the Parquet writer end to end on the tiny dataset, and the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
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
from rigpose.data.reader import Dataset
from rigpose.data.synth.build import build_dataset, load_recipe
from rigpose.data.synth.recipe import ProceduralMotion, Recipe
from rigpose.data.writer import DatasetWriter
from rigpose.inference.evaluate import evaluate
from rigpose.inference.lift import lift_dataset
from rigpose.model.checkpoint import save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import recipes_dir, rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import DEEPMIMIC16

ROOTS = DEEPMIMIC16.root_joints


def rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


# ---------------------------------------------------------------------------------------------- metrics


def test_mpjpe_is_the_mean_joint_distance_in_mm_and_ignores_nan_joints() -> None:
    gt = np.zeros((4, 3))
    pred = np.array([[0.01, 0, 0], [0, 0.02, 0], [0, 0, 0.03], [np.nan, 0, 0]])
    np.testing.assert_allclose(ev.mpjpe(pred, gt), 20.0)
    np.testing.assert_allclose(ev.mpjpe(np.full((2, 4, 3), np.nan), np.zeros((2, 4, 3))), [np.nan, np.nan])


def test_pa_mpjpe_is_zero_for_a_rotated_scaled_translated_pose() -> None:
    gt = root_rel(rest_pose_deepmimic16())
    pred = 1.3 * gt @ (rot_x(0.4) @ rot_z(1.1)).T + [0.2, -0.5, 3.0]
    assert ev.mpjpe(pred, gt) > 100
    np.testing.assert_allclose(ev.pa_mpjpe(pred, gt), 0.0, atol=1e-6)
    np.testing.assert_allclose(ev.pa_mpjpe(np.stack([pred, gt]), np.stack([gt, gt])), [0.0, 0.0], atol=1e-6)


def test_n_mpjpe_removes_scale_only_and_equals_the_rotation_error() -> None:
    # planar pose (z = 0), rotated by theta about z: the best scale is cos(theta), each joint then misses by
    # sin(theta) * |g_j| (hand-derived); the plain MPJPE of the rotation alone is 2 sin(theta / 2) * |g_j|.
    rng = np.random.default_rng(0)
    gt = np.c_[rng.normal(0, 0.3, (16, 2)), np.zeros(16)]
    theta = 0.3
    rotated = gt @ rot_z(theta).T
    radius = np.linalg.norm(gt, axis=-1).mean()
    np.testing.assert_allclose(ev.mpjpe(rotated, gt), 1000 * 2 * math.sin(theta / 2) * radius, rtol=1e-9)
    np.testing.assert_allclose(ev.n_mpjpe(rotated, gt), 1000 * math.sin(theta) * radius, rtol=1e-9)
    np.testing.assert_allclose(ev.n_mpjpe(2.5 * rotated, gt), ev.n_mpjpe(rotated, gt), rtol=1e-9)
    np.testing.assert_allclose(ev.n_mpjpe(0.5 * gt, gt), 0.0, atol=1e-9)


def test_pck_counts_joints_within_the_threshold() -> None:
    gt = np.zeros((5, 3))
    pred = np.array([[0.10, 0, 0], [0, 0.149, 0], [0, 0, 0.151], [0.3, 0, 0], [np.nan] * 3])
    np.testing.assert_allclose(ev.pck(pred, gt), 0.5)  # 2 of the 4 usable joints
    np.testing.assert_allclose(ev.pck(pred, gt, threshold=0.2), 0.75)
    with pytest.raises(ValueError, match="threshold"):
        ev.pck(pred, gt, threshold=0.0)


def test_metrics_name_the_bad_input() -> None:
    with pytest.raises(ValueError, match="gt"):
        ev.mpjpe(np.zeros((2, 16, 3)), np.zeros((2, 15, 3)))
    with pytest.raises(ValueError, match="pred"):
        ev.pa_mpjpe(np.zeros((2, 16, 2)), np.zeros((2, 16, 2)))


def root_rel(X: np.ndarray) -> np.ndarray:
    return ev.root_relative(X, ROOTS)


# ---------------------------------------------------------------------------------------------- label-free


def oracle_views(num_frames: int = 6) -> tuple[np.ndarray, np.ndarray, g.CameraArrays, np.ndarray]:
    """(kp [B, V, J, 2] exact projections, w, cameras [B, V, ...], perfect root-relative lifts [B, V, J, 3])."""
    rng = np.random.default_rng(1)
    rig = load_rig(rigs_dir() / "h36m-s1.json")
    X = np.stack([rest_pose_deepmimic16() @ rot_z(a).T for a in rng.uniform(0, 6.28, num_frames)])
    X = X + np.c_[rng.uniform(-0.5, 0.5, (num_frames, 2)), np.zeros(num_frames)][:, None]
    cams1 = rig.arrays()
    cams = g.CameraArrays(*(np.broadcast_to(a, (num_frames, *a.shape)).copy() for a in cams1))
    kp = g.project(X[:, None], cams)
    rel = root_rel(g.world_to_camera(X[:, None], cams.R, cams.t))
    return kp, np.ones(kp.shape[:-1]), cams, rel


def test_heldout_view_error_is_zero_for_an_oracle_lift() -> None:
    kp, w, cams, rel = oracle_views()
    roots = ev.leave_one_out_roots(kp, w, cams, ROOTS)
    err = ev.heldout_view_errors(rel, roots, kp, w, cams)  # [B, S, T, J]
    V = kp.shape[1]
    assert np.isnan(err[:, np.arange(V), np.arange(V)]).all()  # never the source view itself
    assert np.isfinite(err).sum() == err.shape[0] * V * (V - 1) * err.shape[-1]
    assert np.nanmax(err) < 1e-3


def test_heldout_view_error_grows_when_a_views_calibration_is_off() -> None:
    kp, w, cams, rel = oracle_views()
    bad = cams._replace(R=cams.R.copy(), t=cams.t.copy())
    turn = rot_x(math.radians(2.0))  # camera 2 turned by 2 degrees about its own centre
    bad.R[:, 2] = turn @ bad.R[:, 2]
    bad.t[:, 2] = bad.t[:, 2] @ turn.T
    roots = ev.leave_one_out_roots(kp, w, bad, ROOTS)
    err = ev.heldout_view_errors(rel, roots, kp, w, bad)
    assert np.nanmean(err) > 5.0
    into_2 = np.nanmean(err[:, [0, 1, 3], 2])
    among_others = np.nanmean(err[:, [0, 1, 3]][:, :, [0, 1, 3]])
    assert into_2 > 1.3 * among_others  # the bad view stands out in its own column


def test_heldout_root_never_uses_the_source_view() -> None:
    kp, w, cams, _ = oracle_views(2)
    kp_bad = kp.copy()
    kp_bad[:, 1] += 40.0  # view 1's 2D is wrong
    roots = ev.leave_one_out_roots(kp_bad, w, cams, ROOTS)
    truth = ev.leave_one_out_roots(kp, w, cams, ROOTS)
    np.testing.assert_allclose(roots[:, 1], truth[:, 1], atol=1e-6)  # held out: unaffected
    assert np.linalg.norm(roots[:, 0] - truth[:, 0], axis=-1).min() > 1e-3  # the others see the bad view


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tiny dataset, a copy of its test split without 3D labels, and a tiny untrained model."""
    root = tmp_path_factory.mktemp("evaluate")
    recipe = load_recipe(recipes_dir() / "tiny.yaml")
    if importlib.util.find_spec("pybullet_data") is None:  # no mocap clips here: procedural motion instead
        recipe = _procedural(recipe)
    build_dataset(recipe, str(root / "tiny"), progress=False)
    ds = Dataset(str(root / "tiny"))
    frames = ds.read_frames(splits="test")
    with DatasetWriter(str(root / "no3d"), skeleton=DEEPMIMIC16, command="test") as writer:
        writer.add(dataclasses.replace(frames, joints_3d=None), ds.rig(str(frames.rig_id[0])), split="test")
        writer.commit()
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=16, root_joints=(0,))
    save_lifter(root / "model.pt", model, DEEPMIMIC16, meta={"test": True})
    return {"data": str(root / "tiny"), "no3d": str(root / "no3d"), "model": str(root / "model.pt"),
            "dir": str(root)}


def _procedural(recipe: Recipe) -> Recipe:
    """The same recipe with procedural motion (no pybullet needed) and no held-out clips."""
    splits = recipe.splits.model_copy(update={"held_out_clips": []})
    return recipe.model_copy(update={"motion": ProceduralMotion(source="procedural", num_sequences=4, seconds=4),
                                     "splits": splits})


def finite_numbers(x: object) -> bool:
    if isinstance(x, dict):
        return all(finite_numbers(v) for v in x.values())
    if isinstance(x, list):
        return all(finite_numbers(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


def test_evaluate_reports_every_section_with_finite_numbers(tiny: dict[str, str]) -> None:
    out = Path(tiny["dir"]) / "result.json"
    res = evaluate(tiny["model"], tiny["data"], split="test", json_path=str(out))
    assert json.loads(out.read_text()) == res
    assert res["has_3d"] and res["num_frames"] == Dataset(tiny["data"]).manifest.splits()["test"]["rows"]
    metrics = {"mpjpe_mm", "pa_mpjpe_mm", "n_mpjpe_mm", "pck150", "mpjpe_abs_mm", "heldout_px"}
    assert metrics <= set(res["single"]["overall"])
    assert len(res["single"]["per_camera"]) == 4
    assert res["multi_mode"] == MultiViewConfig().method  # the one default
    assert set(res["multi"]) == {res["multi_mode"], "dlt", "robust"}
    assert res["multi_view"] == MultiViewConfig().model_dump(exclude_none=True)
    for method in res["multi"].values():
        assert metrics | {"coverage"} <= set(method["overall"])
        assert all("heldout_px" in cam for cam in method["per_camera"].values())
    assert finite_numbers(res) and "null" not in out.read_text()
    # clean-ish 2D (5 px noise, a few outliers) from four views: triangulation is close to the truth
    assert res["multi"]["dlt"]["overall"]["mpjpe_abs_mm"] < 80
    assert res["multi"]["robust"]["overall"]["mpjpe_abs_mm"] < 60
    assert res["multi"]["dlt"]["overall"]["heldout_px"] < 25


def test_evaluate_without_3d_labels_reports_the_label_free_metric_only(tiny: dict[str, str]) -> None:
    res = evaluate(tiny["model"], tiny["no3d"], split="test", max_rows=20, batch_size=8,
                   multi_view=MultiViewConfig(method="fusion"))  # the metrics, not the method: the fast one
    assert not res["has_3d"] and res["num_frames"] == 20
    assert set(res["single"]["overall"]) == {"heldout_px", "num_heldout"}
    for method in res["multi"].values():
        assert set(method["overall"]) == {"heldout_px", "num_heldout"}
        assert method["overall"]["heldout_px"] > 0


def test_evaluate_with_test_time_adaptation_leaves_the_saved_model_untouched(tiny: dict[str, str]) -> None:
    before = Path(tiny["model"]).read_bytes()
    res = evaluate(tiny["model"], tiny["data"], split="test", multi_view=MultiViewConfig(method="adaptation",
                                                                                        adapt_steps=2), max_rows=8)
    assert res["adapt_steps"] == 2 and set(res["multi"]) == {"adaptation", "dlt", "robust"}
    assert finite_numbers(res) and res["multi"]["adaptation"]["overall"]["mpjpe_mm"] is not None
    assert Path(tiny["model"]).read_bytes() == before


def test_lift_dataset_writes_the_documented_columns_in_both_modes(tiny: dict[str, str]) -> None:
    rows = Dataset(tiny["data"]).manifest.splits()["test"]["rows"]
    single = str(Path(tiny["dir"]) / "out" / "single.parquet")
    info = lift_dataset(tiny["model"], tiny["data"], split="test", out_url=single, batch_size=16)
    t = pq.read_table(single)
    assert t.column_names == ["rig_id", "sequence", "frame", "view", "camera_name", "joints_cam", "root_cam",
                              "body_scale"]
    assert t.num_rows == info["rows"] == 4 * rows and info["frames"] == rows
    scales = np.asarray(t.column("body_scale").drop_null().to_pylist())  # the shipped rig's floor is known
    assert ((scales >= 0.5) & (scales <= 2.0)).all()
    cams = t.column("joints_cam").drop_null().to_pylist()
    assert len(cams) >= 0.9 * t.num_rows and {len(c) for c in cams} == {16 * 3}
    assert np.allclose(np.asarray(cams).reshape(-1, 16, 3)[:, 0], 0.0)  # root-relative
    assert t.schema.metadata[b"rigpose.skeleton"] == b"deepmimic16"
    multi = str(Path(tiny["dir"]) / "out" / "multi.parquet")
    info = lift_dataset(tiny["model"], tiny["data"], split="test", out_url=multi, mode="multi")
    t = pq.read_table(multi)
    assert t.column_names == ["rig_id", "sequence", "frame", "num_views", "joints_world_rel", "joints_world",
                              "uncertainty"]
    assert t.num_rows == info["rows"] == rows
    absolute = np.asarray(t.column("joints_world").drop_null().to_pylist()).reshape(-1, 16, 3)
    rel = np.asarray(t.column("joints_world_rel").to_pylist()).reshape(-1, 16, 3)
    assert len(absolute) > 0.9 * rows and np.isfinite(rel).all()
    sigma = np.asarray(t.column("uncertainty").to_pylist())  # the default method states one per joint, metres
    assert sigma.shape == (rows, 16) and (sigma > 0).all() and (sigma < 1.0).all()
    assert sorted(p.name for p in (Path(tiny["dir"]) / "out").iterdir()) == ["multi.parquet", "single.parquet"]


def test_lift_dataset_leaves_no_file_when_it_fails(tiny: dict[str, str]) -> None:
    out = Path(tiny["dir"]) / "failed"
    with pytest.raises(ValueError, match="mode"):
        lift_dataset(tiny["model"], tiny["data"], split="test", out_url=str(out / "x.parquet"), mode="both")
    with pytest.raises(ValueError, match="no split 'nope'"):
        lift_dataset(tiny["model"], tiny["data"], split="nope", out_url=str(out / "x.parquet"))
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_evaluate_and_lift(tiny: dict[str, str]) -> None:
    app = evaluate_app
    runner = CliRunner(env={"COLUMNS": "200"})  # rich sizes the table to the terminal
    out = str(Path(tiny["dir"]) / "cli.json")
    r = runner.invoke(app, ["evaluate", "--model", tiny["model"], "--data", tiny["data"], "--split", "test",
                            "--mode", "multi", "--multi", "fusion", "--max-rows", "16", "--json", out])
    assert r.exit_code == 0, r.output
    assert "baseline: dlt" in r.output and json.loads(Path(out).read_text())["num_frames"] == 16
    pq_out = str(Path(tiny["dir"]) / "cli.parquet")
    r = runner.invoke(app, ["lift", "--model", tiny["model"], "--data", tiny["data"], "--out", pq_out,
                            "--max-rows", "5"])
    assert r.exit_code == 0, r.output
    assert pq.read_table(pq_out).num_rows == 20


def test_cli_takes_a_job_file_with_set_overrides_and_options_that_override_both(tiny: dict[str, str],
                                                                                tmp_path: Path) -> None:
    job = tmp_path / "evaluate.yaml"
    job.write_text(f"data: {tiny['data']}\nsplit: nope\nmulti_view: {{method: fusion}}\nevaluate: {{mode: multi}}\n")
    out = tmp_path / "e.json"
    runner = CliRunner(env={"COLUMNS": "200"})
    r = runner.invoke(evaluate_app, ["evaluate", "--model", tiny["model"], "--config", str(job), "--split", "test",
                                     "--set", "max_rows=8", "--set", "multi_view.refine_steps=0", "--json", str(out),
                                     "--no-multi-heldout"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert (res["data"], res["split"], res["num_frames"], res["modes"]) == (tiny["data"], "test", 8, ["multi"])
    assert res["multi_mode"] == "fusion" and res["multi_view"]["refine_steps"] == 0
    r = runner.invoke(evaluate_app, ["evaluate", "--model", tiny["model"], "--config", str(job), "--split", "test",
                                     "--set", "max_rows=4", "--multi", "refinement", "--json", str(out),
                                     "--no-multi-heldout", "--set", "multi_view.refine_steps=2"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["multi_mode"] == "refinement"
    pq_out = tmp_path / "lift.parquet"
    r = runner.invoke(evaluate_app, ["lift", "--model", tiny["model"], "--config", str(job), "--out", str(pq_out),
                                     "--split", "test", "--set", "lift.mode=multi", "--max-rows", "3"])
    assert r.exit_code == 0, r.output
    assert pq.read_table(pq_out).schema.metadata[b"rigpose.mode"] == b"multi"
    for args, message in ((["--set", "multi_view.method=median"], "field multi_view.method"),
                          (["--config", str(tmp_path / "none.yaml")], "no such job file")):
        r = runner.invoke(evaluate_app, ["evaluate", "--model", tiny["model"], "--data", tiny["data"], *args])
        assert r.exit_code == 1 and message in r.output, r.output
    r = runner.invoke(evaluate_app, ["evaluate", "--model", tiny["model"]])
    assert r.exit_code == 1 and "--data" in r.output


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model.pt"], "no such model file"),
    (["--split", "nope"], "no split 'nope'"),
])
def test_cli_errors_print_one_line_and_exit_1(tiny: dict[str, str], args: list[str], message: str) -> None:
    app = evaluate_app
    base = {"--model": tiny["model"], "--data": tiny["data"], "--split": "test"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    r = CliRunner().invoke(app, ["evaluate", *[x for kv in base.items() for x in kv]])
    assert r.exit_code == 1
    assert message in r.output and len(r.output.strip().splitlines()) == 1
