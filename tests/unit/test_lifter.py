"""The lifter: shapes, exact self-view reprojection of the ray parameterisation, masking of missing joints."""

from __future__ import annotations

import pytest
import torch

from rigpose.config import ModelConfig
from rigpose.model.lifter import Lifter, dropout_schedule, normalise_2d, person_rotation


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
    model = Lifter(ModelConfig(width=32, num_blocks=1, dropout=0.25, output="free", frame="camera"), num_joints=16)
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


def _axis_rotation(axis: torch.Tensor, angle: float) -> torch.Tensor:
    n = axis / axis.norm()
    K = torch.tensor([[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]])
    return torch.eye(3) + torch.sin(torch.tensor(angle)) * K + (1 - torch.cos(torch.tensor(angle))) * K @ K


def _person_in_view(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 16, 3, generator=g) * 0.3 + torch.tensor([0.6, 0.4, 4.0])  # off the optical axis


def test_person_rotation_turns_the_optical_axis_onto_the_person() -> None:
    X = _person_in_view()
    xy, valid = X[..., :2] / X[..., 2:], torch.ones(4, 16, dtype=torch.bool)
    Q = person_rotation(xy, valid)
    torch.testing.assert_close(Q @ Q.transpose(-1, -2), torch.eye(3).expand(4, 3, 3), atol=1e-6, rtol=0)
    rays = X / X.norm(dim=-1, keepdim=True)
    mean = (Q @ rays.mean(1)[..., None])[..., 0]  # the person's mean ray, in the virtual camera
    torch.testing.assert_close(mean[:, :2], torch.zeros(4, 2), atol=1e-6, rtol=0)
    assert (mean[:, 2] > 0).all()
    none = person_rotation(xy, torch.zeros(4, 16, dtype=torch.bool))  # nothing visible: no turn
    torch.testing.assert_close(none, torch.eye(3).expand(4, 3, 3))


@pytest.mark.parametrize("output", ["ray", "denoised", "free"])
def test_person_frame_lift_turns_with_the_camera_where_the_camera_frame_lift_does_not(output: str) -> None:
    """Turning the camera about its centre so that the person slides along the image line through the principal
    point (axis: the person's direction x the optical axis) must turn the person-frame lift with it, exactly, for
    any weights; the camera-frame lift sees the person's position in the image and changes its answer."""
    X = _person_in_view()
    xy, scores = X[..., :2] / X[..., 2:], torch.ones(4, 16)
    torch.manual_seed(1)
    lifters = {frame: Lifter(ModelConfig(width=32, num_blocks=1, output=output, frame=frame), num_joints=16).eval()
               for frame in ("person", "camera")}
    errors = {}
    for frame, model in lifters.items():
        with torch.no_grad():
            model.out.weight.normal_(0.0, 0.05)  # a network that reads its input, as after training
            model.out.bias.normal_(0.0, 0.1)
            before = model(xy, scores)
            for b in range(4):
                a = X[b] / X[b].norm(dim=-1, keepdim=True)
                P = _axis_rotation(torch.linalg.cross(a.mean(0), torch.tensor([0.0, 0.0, 1.0])), 0.3)
                Xb = X[b] @ P.T
                after = model((Xb[..., :2] / Xb[..., 2:])[None], scores[:1])
                errors[frame, b] = (before.X[b] @ P.T - after.X[0]).abs().max().item()
                if frame == "person":
                    torch.testing.assert_close(after.X[0], before.X[b] @ P.T, atol=1e-5, rtol=0)
                    xy_turned = before.xy[b] @ P[:2, :2].T + P[:2, 2]
                    xy_turned = xy_turned / (before.xy[b] @ P[2, :2] + P[2, 2])[:, None]
                    torch.testing.assert_close(after.xy[0], xy_turned, atol=1e-5, rtol=0)
    assert max(errors["camera", b] for b in range(4)) > 1e-3


def test_person_frame_ray_output_still_reprojects_exactly_onto_the_visible_input() -> None:
    model = Lifter(ModelConfig(width=32, num_blocks=1, output="ray", frame="person"), num_joints=16).eval()
    X = _person_in_view()
    xy, scores = X[..., :2] / X[..., 2:], torch.ones(4, 16)
    scores[:, 3] = 0.0
    with torch.no_grad():
        model.out.bias.normal_(0.0, 0.5)
        out = model(xy, scores)
    keep = scores > 0
    torch.testing.assert_close((out.X[..., :2] / out.X[..., 2:])[keep], xy[keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.xy[~keep], out.xy_pred[~keep], atol=1e-5, rtol=0)


def test_model_files_record_the_person_frame_and_old_files_load_in_the_camera_frame(tmp_path) -> None:
    from rigpose.model.checkpoint import load_lifter, save_lifter
    from rigpose.skeleton import DEEPMIMIC16

    model = Lifter(ModelConfig(width=32, num_blocks=1, frame="person"), num_joints=16)
    save_lifter(str(tmp_path / "person.pt"), model, DEEPMIMIC16)
    stored = torch.load(str(tmp_path / "person.pt"), weights_only=True)
    assert stored["config"]["extra"] == {"frame": "person"}
    assert load_lifter(str(tmp_path / "person.pt"))[0].config.frame == "person"
    stored["config"]["extra"] = {}  # a file written before frames existed
    torch.save(stored, str(tmp_path / "old.pt"))
    assert load_lifter(str(tmp_path / "old.pt"))[0].config.frame == "camera"
    stored["config"]["extra"] = {"frame": "person", "future_setting": 1}
    torch.save(stored, str(tmp_path / "future.pt"))
    with pytest.raises(ValueError, match="future_setting"):
        load_lifter(str(tmp_path / "future.pt"))
