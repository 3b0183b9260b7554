"""rigpose.inference.plots: PNG bytes of the figure's size, one bar per joint, NaN drawn as missing, hidden joints
not drawn,
bad shapes refused, and run_figures' numbers against an independent computation and against evaluate_run."""

from __future__ import annotations

import dataclasses
import io

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from rigpose_testing import rest_pose_deepmimic16

from rigpose.config import ModelConfig
from rigpose.data.reader import Dataset, iter_frames
from rigpose.data.schema import Frames
from rigpose.data.synth.build import build_dataset, load_recipe
from rigpose.data.synth.recipe import ProceduralMotion
from rigpose.inference import errors, plots
from rigpose.inference.evaluate import evaluate
from rigpose.model.checkpoint import save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import recipes_dir
from rigpose.skeleton import DEEPMIMIC16, H36M17

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
J = DEEPMIMIC16.num_joints


def decoded(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return mpimg.imread(io.BytesIO(png), format="png")


def pixel_size(fig: Figure) -> tuple[int, int]:
    """(height, width) in pixels that the figure renders to."""
    w, h = fig.get_size_inches() * fig.dpi
    return round(h), round(w)


# ---------------------------------------------------------------------------------------------- bars


def test_per_joint_png_decodes_to_the_figure_size_and_leaves_no_pyplot_figure() -> None:
    import matplotlib.pyplot as plt

    errors = np.linspace(10.0, 80.0, J)
    before = plt.get_fignums()
    png = plots.per_joint_error_png(DEEPMIMIC16.joint_names, errors, unit="mm", title="per-joint MPJPE")
    image = decoded(png)
    fig = plots.per_joint_error_figure(DEEPMIMIC16.joint_names, errors, unit="mm", title="per-joint MPJPE")
    assert image.shape[:2] == pixel_size(fig)
    assert plots.figure_png(fig) == png  # deterministic bytes: no version or date stamp
    assert plt.get_fignums() == before


def test_per_joint_figure_has_one_bar_per_joint_and_shows_nan_joints_as_missing() -> None:
    errors = np.arange(1.0, J + 1)
    errors[[3, 7]] = np.nan
    fig = plots.per_joint_error_figure(DEEPMIMIC16.joint_names, errors, unit="px", title="t")
    (ax,) = fig.axes
    bars = ax.containers[0]
    assert len(bars) == J
    widths = np.array([b.get_width() for b in bars])
    np.testing.assert_allclose(widths, np.nan_to_num(errors))  # NaN -> a zero-length bar
    labels = [t.get_text() for t in ax.texts]
    assert labels.count("n/a") == 2 and labels[0] == "1.0"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(DEEPMIMIC16.joint_names)
    assert ax.get_xlabel() == "error (px)"
    all_nan = plots.per_joint_error_png(["a", "b"], np.array([np.nan, np.nan]), unit="mm", title="empty")
    assert decoded(all_nan).size > 0


def test_bars_figure_draws_one_panel_per_series_over_the_same_cameras() -> None:
    labels = ["rig/cam0", "rig/cam1", "rig/cam2"]
    series = [plots.Bars(np.array([3.0, 4.0, 5.0]), "px", "held-out"), plots.Bars(np.array([90.0, np.nan, 70.0]),
                                                                                  "mm", "MPJPE")]
    fig = plots.bars_figure(labels, series, title="per camera")
    assert len(fig.axes) == 2 and all(len(ax.containers[0]) == 3 for ax in fig.axes)
    assert [ax.get_xlabel() for ax in fig.axes] == ["held-out (px)", "MPJPE (mm)"]
    png = plots.per_camera_error_png(labels, np.array([3.0, 4.0, 5.0]), unit="px", title="per camera")
    assert decoded(png).shape[:2] == pixel_size(plots.per_camera_error_figure(labels, np.ones(3), unit="px",
                                                                              title="per camera"))


@pytest.mark.parametrize("labels, errors, unit, match", [
    (["a", "b"], np.ones(3), "mm", "expected shape \\[2\\]"),
    (["a", "b"], np.ones((2, 1)), "mm", "expected shape \\[2\\]"),
    (["a", "b"], np.array([1.0, -1.0]), "mm", "must be >= 0"),
    (["a", "b"], np.array([1.0, np.inf]), "mm", "must be >= 0"),
    ([], np.ones(0), "mm", "labels"),
    ("ab", np.ones(2), "mm", "labels"),
    (["a", "b"], np.ones(2), "", "unit"),
])
def test_bad_bar_inputs_raise_value_error(labels: list[str], errors: np.ndarray, unit: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plots.per_joint_error_png(labels, errors, unit=unit, title="t")


# ---------------------------------------------------------------------------------------------- skeletons


def two_examples() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kp [2, J, 2] px, scores [2, J], root-relative camera-frame poses [2, J, 3] m) of the rest pose."""
    X = rest_pose_deepmimic16() - rest_pose_deepmimic16()[0]
    cam = np.stack([X[:, 1], -X[:, 2], X[:, 0] + 3.0], -1)  # camera 3 m in front, y down
    kp = 1000 * cam[:, :2] / cam[:, 2:] + [500, 500]
    X_cam = cam - cam[0]
    return np.stack([kp, kp]), np.ones((2, J)), np.stack([X_cam, X_cam])


def lines(ax: Axes, gid: str) -> int:
    return sum(line.get_gid() == gid for line in ax.lines)


def test_skeletons_draw_only_the_bones_whose_joints_are_seen() -> None:
    kp, scores, X = two_examples()
    scores[0, DEEPMIMIC16.index("left_knee")] = 0.0  # hidden: two bones gone
    kp[0, DEEPMIMIC16.index("head")] = np.nan  # missing: one bone gone
    X[1, DEEPMIMIC16.index("right_wrist")] = np.nan  # one bone gone from the lift
    fig = plots.skeletons_figure(kp, scores, X, DEEPMIMIC16, titles=["a", "b"], truth_3d=X + 0.01)
    ax2d_0, ax3d_0, ax2d_1, ax3d_1 = fig.axes
    num_bones = len(DEEPMIMIC16.bones)
    assert lines(ax2d_0, "bone") == num_bones - 3 and lines(ax2d_1, "bone") == num_bones
    assert lines(ax3d_0, "pred") == num_bones and lines(ax3d_1, "pred") == num_bones - 1
    assert lines(ax3d_0, "truth") == num_bones and lines(ax3d_1, "truth") == num_bones - 1
    assert ax2d_0.yaxis_inverted() and ax2d_0.get_title() == "a: input 2D"
    assert ax3d_0.name == "3d"
    assert decoded(plots.figure_png(fig)).shape[:2] == pixel_size(fig)


def test_skeletons_draw_an_all_missing_example_without_failing() -> None:
    kp, scores, X = two_examples()
    png = plots.skeletons_png(np.full_like(kp[:1], np.nan), np.zeros_like(scores[:1]), np.full_like(X[:1], np.nan),
                              DEEPMIMIC16)
    assert decoded(png).shape[:2] == (400, 900)  # one row: 9 x 4 inches at 100 dpi


@pytest.mark.parametrize("change, match", [
    ({"kp_2d": np.zeros((2, J, 3))}, "kp_2d"),
    ({"kp_2d": np.zeros((2, J - 1, 2))}, "kp_2d"),
    ({"kp_2d": np.zeros((0, J, 2))}, "examples"),
    ({"kp_2d": np.zeros((plots.MAX_EXAMPLES + 1, J, 2))}, "examples"),
    ({"scores": np.ones((2, J, 1))}, "scores"),
    ({"joints_3d": np.zeros((2, J, 2))}, "joints_3d"),
    ({"truth_3d": np.zeros((1, J, 3))}, "truth_3d"),
    ({"titles": ["only one"]}, "titles"),
    ({"skeleton": H36M17}, "kp_2d"),
])
def test_skeletons_refuse_bad_shapes(change: dict, match: str) -> None:
    kp, scores, X = two_examples()
    args = {"kp_2d": kp, "scores": scores, "joints_3d": X, "skeleton": DEEPMIMIC16, **change}
    with pytest.raises(ValueError, match=match):
        plots.skeletons_png(args.pop("kp_2d"), args.pop("scores"), args.pop("joints_3d"), args.pop("skeleton"),
                            **args)


# ---------------------------------------------------------------------------------------------- one run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny recipe with procedural motion (no mocap clips needed), its test split, a tiny untrained model."""
    root = tmp_path_factory.mktemp("plots")
    recipe = load_recipe(recipes_dir() / "tiny.yaml")
    recipe = recipe.model_copy(update={
        "frames": 160,
        "motion": ProceduralMotion(source="procedural", num_sequences=4, seconds=4),
        "splits": recipe.splits.model_copy(update={"held_out_clips": []}),
    })
    build_dataset(recipe, str(root / "tiny"), progress=False)
    frames = Frames.concat(list(iter_frames(Dataset(str(root / "tiny")), split="test", batch_size=10_000,
                                            with_3d=True)))
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=J)
    save_lifter(root / "model.pt", model, DEEPMIMIC16, meta={"test": True})
    return {"data": str(root / "tiny"), "model_path": str(root / "model.pt"), "model": model, "frames": frames}


def test_run_figures_returns_three_decodable_pictures_and_keeps_the_train_mode(tiny: dict) -> None:
    model = tiny["model"].train()
    pics = plots.run_figures(model, tiny["frames"], DEEPMIMIC16, max_frames=40, examples=2)
    assert set(pics) == {"per_joint_error.png", "per_camera_error.png", "skeletons.png"}
    assert all(decoded(png).size > 0 for png in pics.values())
    assert model.training
    no_examples = plots.run_figures(model.eval(), tiny["frames"], DEEPMIMIC16, max_frames=20, examples=0)
    assert set(no_examples) == {"per_joint_error.png", "per_camera_error.png"} and not model.training


def test_per_joint_mpjpe_equals_an_independent_computation(tiny: dict) -> None:
    frames: Frames = tiny["frames"]
    errs = errors.lifter_errors(tiny["model"], frames, DEEPMIMIC16)
    assert errs.joint_unit == "mm" and errs.num_frames == len(frames)
    # independent: every view's lift vs the truth moved into that camera (x_cam = R X + t), both minus the pelvis
    from rigpose.inference.lift import lift_single, model_batch

    rel, _ = lift_single(tiny["model"], model_batch(frames, DEEPMIMIC16))  # [B, V, J, 3]
    R, t = frames.cameras.R, frames.cameras.t
    gt = np.einsum("bvik,bjk->bvji", R, frames.joints_3d.astype(np.float64)) + t[:, :, None]
    gt = gt - gt[:, :, :1]
    d_mm = 1000 * np.linalg.norm(rel - gt, axis=-1)  # [B, V, J], NaN for missing views
    np.testing.assert_allclose(errs.joint_error, np.nanmean(d_mm, (0, 1)), rtol=1e-6)
    np.testing.assert_array_equal(errs.joint_count, np.isfinite(d_mm).sum((0, 1)))
    assert errs.joint_error[0] == 0.0  # the pelvis is the root: zero by construction
    assert errs.joint_count[0] < frames.view_mask.sum()  # the recipe drops some views: they are not counted


def test_per_camera_numbers_match_evaluate_run_on_the_same_frames(tiny: dict) -> None:
    frames: Frames = tiny["frames"]
    res = evaluate(tiny["model_path"], tiny["data"], split="test", modes=("single",), batch_size=10_000)
    assert res["num_frames"] == len(frames)
    errs = errors.lifter_errors(tiny["model"], frames, DEEPMIMIC16)
    per_camera = res["single"]["per_camera"]
    assert list(errs.camera_labels) == sorted(per_camera)
    np.testing.assert_allclose(errs.camera_px, [per_camera[k]["heldout_px"] for k in errs.camera_labels], rtol=1e-6)
    np.testing.assert_allclose(errs.camera_mm, [per_camera[k]["mpjpe_mm"] for k in errs.camera_labels], rtol=1e-6)
    # every pose has all joints labelled, so the count-weighted per-joint mean is the overall MPJPE
    overall = res["single"]["overall"]
    np.testing.assert_allclose((errs.joint_error * errs.joint_count).sum() / errs.joint_count.sum(),
                               overall["mpjpe_mm"], rtol=1e-6)
    # without 3D labels the per-joint picture falls back to the held-out-view pixels, from 2D only
    px = errors.lifter_errors(tiny["model"], dataclasses.replace(frames, joints_3d=None), DEEPMIMIC16)
    assert px.joint_unit == "px" and px.camera_mm is None
    np.testing.assert_allclose(np.nansum(px.joint_error * px.joint_count) / px.joint_count.sum(),
                               overall["heldout_px"], rtol=1e-6)
    assert px.joint_count.sum() == overall["num_heldout"]


def test_run_sample_is_at_most_max_frames_spread_over_the_split(tiny: dict) -> None:
    errs = errors.lifter_errors(tiny["model"], tiny["frames"], DEEPMIMIC16, max_frames=10)
    assert errs.num_frames == 10
    sample = errors.sample_frames(tiny["frames"], 10)
    assert sample.frame[0] == tiny["frames"].frame[0] and sample.frame[-1] == tiny["frames"].frame[-1]


@pytest.mark.parametrize("kwargs, match", [
    ({"max_frames": 0}, "max_frames"),
    ({"examples": -1}, "examples"),
    ({"examples": plots.MAX_EXAMPLES + 1}, "examples"),
    ({"skeleton": H36M17}, "joints"),
    ({"frames": "empty"}, "no rows"),
])
def test_run_figures_refuse_bad_arguments(tiny: dict, kwargs: dict, match: str) -> None:
    args = {"frames": tiny["frames"], "skeleton": DEEPMIMIC16, **kwargs}
    if isinstance(args["frames"], str):
        args["frames"] = tiny["frames"].take(slice(0, 0))
    with pytest.raises(ValueError, match=match):
        plots.run_figures(tiny["model"], args.pop("frames"), args.pop("skeleton"), **args)


def test_run_figures_on_frames_without_any_2d_draw_missing_bars_and_no_skeletons(tiny: dict) -> None:
    frames: Frames = tiny["frames"].take(slice(0, 8))
    blind = dataclasses.replace(frames, scores=np.zeros_like(frames.scores))
    errs = errors.lifter_errors(tiny["model"], blind, DEEPMIMIC16)
    assert np.isnan(errs.joint_error).all() and (errs.joint_count == 0).all() and np.isnan(errs.camera_px).all()
    pics = plots.run_figures(tiny["model"], blind, DEEPMIMIC16)
    assert set(pics) == {"per_joint_error.png", "per_camera_error.png"}
