"""The lifter: shapes, exact self-view reprojection of the ray parameterisation, masking of missing joints."""

from __future__ import annotations

import pytest
import torch

from rigpose.config import ModelConfig
from rigpose.model.lifter import Lifter, dropout_schedule, normalise_2d


def _inputs(B: int = 8, J: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.randn(B, J, 2, generator=g) * 0.1
    return xy, torch.ones(B, J)


@pytest.mark.parametrize("output", ["ray", "denoised", "free"])
def test_lifter_outputs_root_relative_camera_frame_poses(output: str) -> None:
    model = Lifter(ModelConfig(width=32, num_blocks=1, output=output), num_joints=16).eval()
    out = model(*_inputs())
    assert out.X.shape == (8, 16, 3) and out.rel.shape == (8, 16, 3) and out.root.shape == (8, 3)
    torch.testing.assert_close(out.rel[:, 0], torch.zeros(8, 3), atol=1e-6, rtol=0)  # root joint 0
    assert (out.X[..., 2] > 0).all()  # in front of the camera


def test_ray_output_reprojects_exactly_onto_the_visible_input_joints() -> None:
    model = Lifter(ModelConfig(width=32, num_blocks=1, output="ray"), num_joints=16).eval()
    xy, scores = _inputs()
    out = model(xy, scores)
    torch.testing.assert_close(out.X[..., :2] / out.X[..., 2:], xy, atol=1e-5, rtol=0)


def test_denoised_output_reprojects_onto_its_own_2d_estimate_not_the_noisy_input() -> None:
    model = Lifter(ModelConfig(width=32, num_blocks=1, output="denoised"), num_joints=16).eval()
    xy, scores = _inputs()
    with torch.no_grad():
        model.out.bias.normal_(0.0, 0.5)  # the 2D residual is not zero, as after training on noisy detections
        out = model(xy, scores)
    reprojected = out.X[..., :2] / out.X[..., 2:]
    torch.testing.assert_close(reprojected, out.xy, atol=1e-5, rtol=0)
    assert (reprojected - xy).abs().max() > 1e-2  # the input's 2D is not passed through


def test_missing_joints_are_masked_not_read() -> None:
    model = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=16).eval()
    xy, scores = _inputs()
    scores[:, 5] = 0.0
    a = model(xy, scores)
    xy2 = xy.clone()
    xy2[:, 5] = 123.0  # garbage where the detector said "missing"
    xy2[0, 7] = float("nan")
    scores2 = scores.clone()
    scores2[0, 7] = 0.0
    b = model(xy2, scores2)
    torch.testing.assert_close(a.X[1:], b.X[1:])
    assert torch.isfinite(b.X).all()
    # the missing joint is placed on the lifter's own 2D estimate, not on the garbage input
    torch.testing.assert_close(b.xy[:, 5], b.xy_pred[:, 5])


def test_normalise_2d_centres_and_scales_visible_joints() -> None:
    xy = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [100.0, 100.0]]])
    c, s, u = normalise_2d(xy, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(c, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(s, torch.tensor([1.0]))
    torch.testing.assert_close(u, torch.tensor([[[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]))


def test_lifter_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ValueError, match="output"):
        ModelConfig(output="mesh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="root_joints"):
        Lifter(ModelConfig(), num_joints=16, root_joints=(20,))
    with pytest.raises(ValueError, match="num_joints"):
        Lifter(ModelConfig(), num_joints=1)
    with pytest.raises(TypeError, match="ModelConfig"):
        Lifter({"width": 32}, num_joints=16)  # type: ignore[arg-type]
    model = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=16)
    with pytest.raises(ValueError, match="xy: expected"):
        model(torch.zeros(2, 17, 2), torch.ones(2, 17))


def test_dropout_is_on_for_the_first_half_only() -> None:
    assert [dropout_schedule(e, 4, start=0.5) for e in range(4)] == [0.5, 0.5, 0.0, 0.0]
    model = Lifter(ModelConfig(width=32, num_blocks=1, dropout=0.5), num_joints=16)
    model.set_dropout(0.0)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_model_files_keep_the_version_1_layout_both_ways(tmp_path) -> None:
    import io

    from rigpose.model.checkpoint import FORMAT, VERSION, load_lifter, save_lifter
    from rigpose.skeleton import DEEPMIMIC16

    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=32, num_blocks=1, dropout=0.25, output="free"), num_joints=16)
    old = {"format": FORMAT, "version": VERSION, "skeleton": DEEPMIMIC16.name, "meta": {"steps": 3},
           "config": {"num_joints": 16, "root_joints": (0,), "width": 32, "num_blocks": 1, "dropout": 0.25,
                      "output": "free", "extra": {}},  # the LifterConfig dataclass's fields
           "state_dict": model.state_dict()}
    buf = io.BytesIO()
    torch.save(old, buf)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    loaded, skeleton, meta = load_lifter(str(tmp_path / "old.pt"))
    assert (loaded.config, loaded.num_joints, loaded.root_joints) == (model.config, 16, (0,))
    assert skeleton is DEEPMIMIC16 and meta == {"steps": 3}
    xy, scores = torch.randn(3, 16, 2) * 0.1, torch.ones(3, 16)
    torch.testing.assert_close(loaded(xy, scores).X, model.eval()(xy, scores).X)
    save_lifter(str(tmp_path / "new.pt"), loaded, skeleton)
    again, _, _ = load_lifter(str(tmp_path / "new.pt"))
    assert again.config == model.config and again.root_joints == (0,)
    stored = torch.load(str(tmp_path / "new.pt"), weights_only=True)["config"]
    assert stored == {"num_joints": 16, "root_joints": [0], "width": 32, "num_blocks": 1, "dropout": 0.25,
                      "output": "free", "extra": {}}  # the version-1 layout: older rigpose versions read new files
