"""ONNX export of the lifter: ONNX Runtime agrees with PyTorch, dynamic batch, metadata, atomic writes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from rigpose_testing import synthetic_batch

import rigpose.inference.export as export_module
from rigpose.config import ModelConfig
from rigpose.inference.export import INPUT_NAMES, OUTPUT_NAMES, export_onnx, onnx_lift
from rigpose.model.checkpoint import load_lifter, save_lifter
from rigpose.model.lifter import Lifter, LiftOutput
from rigpose.skeleton import DEEPMIMIC16, H36M17

J = DEEPMIMIC16.num_joints
ATOL_M = 1e-4  # metres (and normalised image units for the 2D outputs)


def _lifter(output: str, seed: int = 0, frame: str = "camera") -> Lifter:
    """A small random lifter whose output layer matters: the shipped init (std 1e-3) makes the pose nearly constant,
    which would hide a wrong graph, so the last layer is redrawn larger."""
    torch.manual_seed(seed)
    model = Lifter(ModelConfig(width=32, num_blocks=2, output=output, frame=frame), num_joints=J,
                   root_joints=DEEPMIMIC16.root_joints)
    torch.nn.init.normal_(model.out.weight, std=0.05)
    torch.nn.init.normal_(model.out.bias, std=0.05)
    return model.eval()


@pytest.fixture(scope="module")
def views() -> tuple[np.ndarray, np.ndarray]:
    """Realistic inputs [B, J, 2], [B, J]: DeepMimic poses seen by the h36m rig, ~20% of joints hidden (score 0,
    half of them with NaN coordinates), one view with every joint hidden."""
    batch = synthetic_batch(6, seed=3)
    xy = batch["xy"].reshape(-1, J, 2).astype(np.float32)
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.3, 1.0, xy.shape[:2]).astype(np.float32)
    hidden = rng.random(scores.shape) < 0.2
    scores[hidden] = 0.0
    xy[hidden & (rng.random(scores.shape) < 0.5)] = np.nan
    scores[-1] = 0.0
    return xy, scores


def _max_abs_diff(model: Lifter, path: Path, xy: np.ndarray, scores: np.ndarray) -> float:
    with torch.no_grad():
        ref = model(torch.from_numpy(xy), torch.from_numpy(scores))
    got = onnx_lift(path, xy, scores)
    assert set(got) == set(LiftOutput._fields)
    worst = 0.0
    for name in LiftOutput._fields:
        expected = getattr(ref, name).numpy()
        assert got[name].shape == expected.shape and np.isfinite(got[name]).all(), name
        np.testing.assert_allclose(got[name], expected, atol=ATOL_M, rtol=0, err_msg=name)
        worst = max(worst, float(np.abs(got[name] - expected).max()))
    return worst


@pytest.mark.parametrize(("output", "frame"), [("ray", "camera"), ("denoised", "camera"), ("free", "camera"),
                                               ("ray", "person"), ("denoised", "person")])
def test_onnx_runtime_matches_pytorch_at_two_batch_sizes(output: str, frame: str, tmp_path: Path,
                                                         views: tuple[np.ndarray, np.ndarray]) -> None:
    model = _lifter(output, frame=frame)
    path = export_onnx(model, tmp_path / "lifter.onnx", skeleton=DEEPMIMIC16)
    assert path == tmp_path / "lifter.onnx" and path.is_file()
    xy, scores = views
    for B in (len(xy), 3, 1):  # the batch axis is dynamic (traced at B = 2)
        assert _max_abs_diff(model, path, xy[:B], scores[:B]) < ATOL_M


def test_exported_file_declares_the_input_contract_and_skeleton(tmp_path: Path) -> None:
    model = _lifter("ray")
    proto = onnx.load(export_onnx(model, tmp_path / "lifter.onnx", skeleton=DEEPMIMIC16))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    xy_dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert xy_dims[0].dim_param == "B" and [d.dim_value for d in xy_dims[1:]] == [J, 2]
    assert "K^-1" in proto.doc_string and "undistorted" in proto.doc_string
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["rigpose.format"] == "rigpose-lifter-onnx"
    assert meta["rigpose.skeleton"] == "deepmimic16"
    assert json.loads(meta["rigpose.joint_names"]) == list(DEEPMIMIC16.joint_names)
    assert json.loads(meta["rigpose.parents"]) == list(DEEPMIMIC16.parents)
    assert json.loads(meta["rigpose.lifter_config"])["output"] == "ray"


def test_export_without_a_skeleton_omits_skeleton_metadata(tmp_path: Path) -> None:
    proto = onnx.load(export_onnx(_lifter("free"), tmp_path / "lifter.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "rigpose.skeleton" not in meta and meta["rigpose.output"] == "free"


def test_export_uses_eval_mode_and_leaves_the_model_as_it_was(tmp_path: Path,
                                                              views: tuple[np.ndarray, np.ndarray]) -> None:
    model = _lifter("ray").train()  # dropout on: an exported training graph would not match eval outputs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_onnx(model, tmp_path / "lifter.onnx")
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert _max_abs_diff(model.eval(), path, *views) < ATOL_M


def test_a_checkpoint_round_trip_exports_and_matches(tmp_path: Path, views: tuple[np.ndarray, np.ndarray]) -> None:
    save_lifter(tmp_path / "model.pt", _lifter("ray", seed=4), DEEPMIMIC16, meta={"steps": 1})
    model, skeleton, _ = load_lifter(tmp_path)
    path = export_onnx(model, tmp_path / "from_checkpoint.onnx", skeleton=skeleton)
    assert _max_abs_diff(model, path, *views) < ATOL_M


def test_the_newest_supported_opset_exports_too(tmp_path: Path, views: tuple[np.ndarray, np.ndarray]) -> None:
    model = _lifter("free")
    path = export_onnx(model, tmp_path / "lifter.onnx", opset=20)
    assert onnx.load(path).opset_import[0].version == 20
    assert _max_abs_diff(model, path, *views) < ATOL_M


@pytest.mark.parametrize("name", ["lifter.pt", "s3://bucket/lifter.onnx", "a_folder.onnx"])
def test_export_rejects_bad_paths(name: str, tmp_path: Path) -> None:
    (tmp_path / "a_folder.onnx").mkdir()
    target = name if "://" in name else tmp_path / name
    with pytest.raises(ValueError, match=r"\.onnx|local files|directory"):
        export_onnx(_lifter("ray"), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder.onnx"]


def test_export_rejects_bad_models_and_options(tmp_path: Path) -> None:
    path = tmp_path / "lifter.onnx"
    with pytest.raises(TypeError, match="Lifter"):
        export_onnx(torch.nn.Linear(2, 2), path)  # type: ignore[arg-type]
    broken = _lifter("ray")
    with torch.no_grad():
        broken.out.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        export_onnx(broken, path)
    with pytest.raises(ValueError, match="17 joints"):
        export_onnx(_lifter("ray"), path, skeleton=H36M17)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(_lifter("ray"), path, opset=9)
    assert not path.exists()


@pytest.mark.parametrize("stage", ["trace", "check"])
def test_a_failed_export_leaves_no_file_and_keeps_the_previous_one(stage: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"simulated {stage} failure")

    if stage == "trace":
        monkeypatch.setattr(export_module.torch.onnx, "export", boom)
    else:
        monkeypatch.setattr(export_module.onnx.checker, "check_model", boom)
    (tmp_path / "new").mkdir()
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(_lifter("ray"), tmp_path / "new" / "lifter.onnx")
    assert list((tmp_path / "new").iterdir()) == []
    old = tmp_path / "old.onnx"
    old.write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(_lifter("ray"), old)
    assert old.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old.onnx"]


def test_onnx_lift_rejects_bad_inputs(tmp_path: Path, views: tuple[np.ndarray, np.ndarray]) -> None:
    path = export_onnx(_lifter("ray"), tmp_path / "lifter.onnx")
    xy, scores = views
    with pytest.raises(ValueError, match="xy"):
        onnx_lift(path, xy[:, :5], scores[:, :5])
    with pytest.raises(ValueError, match="scores"):
        onnx_lift(path, xy, scores[:2])
    with pytest.raises(ValueError, match="no such"):
        onnx_lift(tmp_path / "missing.onnx", xy, scores)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable"):
        onnx_lift(tmp_path / "junk.onnx", xy, scores)
