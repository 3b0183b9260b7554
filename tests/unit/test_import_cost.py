"""What Ray workers import: a Ray Data read task (`rigpose.data.pipeline`) preprocesses with NumPy and
must not pay torch's import (about 0.7 s in every new worker process, on the streaming start-up's path)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from rigpose import geometry as g


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return set(out.split())


def test_the_streaming_read_path_imports_no_torch() -> None:
    loaded = _modules_after("import rigpose.data.pipeline, rigpose.model.inputs, rigpose.geometry")
    assert "rigpose.data.pipeline" in loaded
    assert not {m for m in loaded if m == "torch" or m.startswith("torch.")}


def test_geometry_on_numpy_arrays_needs_no_torch() -> None:
    code = ("import numpy as np\nfrom rigpose import geometry as g\n"
            "cam = g.CameraArrays(K=np.diag([600.0, 600.0, 1.0]), dist=np.zeros(5), R=np.eye(3), t=np.zeros(3))\n"
            "xy = g.undistort(np.array([[320.0, 240.0]]), cam)\n"
            "assert isinstance(xy, np.ndarray)")
    assert "torch" not in _modules_after(code)


def test_geometry_keeps_torch_tensors_torch_and_agrees_with_numpy() -> None:
    K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])
    dist = np.array([-0.2, 0.05, 0.001, -0.001, 0.0])
    pts = np.array([[100.0, 50.0], [320.0, 240.0], [600.0, 450.0]])
    cam = g.CameraArrays(K=K, dist=dist, R=np.eye(3), t=np.zeros(3))
    ref = g.undistort(pts, cam)
    out = g.undistort(torch.as_tensor(pts), g.CameraArrays(*(torch.as_tensor(a) for a in cam)))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9)
    assert all(isinstance(a, torch.Tensor) and a.dtype == torch.float32 for a in cam.to_torch())


def test_a_batch_inference_actor_imports_no_mlflow() -> None:
    # each Ray Data actor unpickles rigpose.inference.lift_ray.LiftBatches; the driver loads the registry model
    loaded = _modules_after("import rigpose.inference.lift_ray")
    assert "rigpose.inference.lift_ray" in loaded
    assert "mlflow" not in loaded
