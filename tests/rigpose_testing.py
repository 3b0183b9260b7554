"""Helpers shared by the tests (imported as `rigpose_testing`; conftest.py files cannot be imported by name)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for services the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_batch(num_frames: int = 32, *, seed: int = 0, noise_px: float = 0.0, with_3d: bool = True,
                    rig_name: str = "h36m-s1") -> dict:
    """Model inputs (rigpose.model.inputs.prepare_arrays) for random DeepMimic-sized poses seen by a shipped rig.

    Poses: a fixed T-ish skeleton (deepmimic16) randomly rotated about z and placed near the capture centre.
    """
    from rigpose.model.inputs import prepare_arrays
    from rigpose.rig import load_rig
    from rigpose.skeleton import DEEPMIMIC16

    rng = np.random.default_rng(seed)
    rig = load_rig(REPO / "datasets" / "rigs" / f"{rig_name}.json")
    base = rest_pose_deepmimic16()
    yaw = rng.uniform(0, 2 * np.pi, num_frames)
    c, s = np.cos(yaw), np.sin(yaw)
    Rz = np.stack([np.stack([c, -s, 0 * c], -1), np.stack([s, c, 0 * c], -1),
                   np.stack([0 * c, 0 * c, 1 + 0 * c], -1)], -2)
    bend = rng.normal(0, 0.05, (num_frames, 16, 3))
    X = np.einsum("nij,kj->nki", Rz, base) + bend + np.c_[rng.uniform(-0.5, 0.5, (num_frames, 2)),
                                                           np.zeros(num_frames)][:, None]
    cams = rig.arrays()
    from rigpose import geometry as g

    pix = g.project(X[:, None], cams) + rng.normal(0, noise_px, (num_frames, len(rig.cameras), 16, 2))
    scores = np.ones(pix.shape[:-1])
    N, V = num_frames, len(rig.cameras)
    full = g.CameraArrays(*(np.broadcast_to(a, (N, *a.shape)) for a in cams))
    arrays = prepare_arrays(pix, scores, full, np.ones((N, V), bool), root_joints=DEEPMIMIC16.root_joints,
                            joints_3d=X if with_3d else None)
    return arrays


def rest_pose_deepmimic16() -> np.ndarray:
    """A standing deepmimic16 pose [16, 3], metres, pelvis at 0.9 m height, facing +x, left on +y."""
    return np.array([
        [0, 0, 0.90], [0, 0, 1.14], [0, 0, 1.36], [0, 0, 1.53],  # pelvis, chest, neck, head
        [0, -0.09, 0.90], [0, -0.09, 0.48], [0, -0.09, 0.07],  # right hip, knee, ankle
        [0, -0.18, 1.32], [0, -0.20, 1.05], [0.05, -0.21, 0.80],  # right shoulder, elbow, wrist
        [0, 0.09, 0.90], [0, 0.09, 0.48], [0, 0.09, 0.07],  # left hip, knee, ankle
        [0, 0.18, 1.32], [0, 0.20, 1.05], [0.05, 0.21, 0.80],  # left shoulder, elbow, wrist
    ], dtype=np.float64)


def to_torch(batch: dict) -> dict:
    import torch

    return {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in batch.items()}
