"""The lifter: one view's undistorted, K^-1-normalised 2D keypoints + scores -> 3D joints in that camera's frame.

Pure PyTorch (no Ray, MLflow or storage). Shape letters: B batch (one view each), J joints.

Input normalisation makes one model serve any camera: keypoints arrive as normalised image coordinates
(undistorted, K^-1 applied), are centred on the mean of the visible joints and divided by their RMS spread `s`, so
the network sees the pose's shape; `s` (about body size / depth) and the centre are passed in as well.

Output parameterisations (`ModelConfig.output`):
- "denoised" (default): per joint a depth offset along a camera ray: X_j = (x_j, y_j, 1) * (Z + dz_j), with
  (x_j, y_j) the network's own 2D estimate of the joint (a residual on the input), so a detection's noise is not
  copied into the pose; Z = size / s from a learned size (metric scale). The cross-view loss trains that 2D
  through the other views. On the demo data it cut the single view's error by ~15% against "ray" (BENCHMARKS.md).
- "ray": the same, with (x_j, y_j) the input 2D when the joint is visible (self-view reprojection exact by
  construction, the input's noise passed through: ~50 mm of lateral error at 5 px) and the network's own estimate
  when it is missing.
- "free": per joint a free 3D offset from the root (the original report's formulation), root placed on the ray
  through the centre at depth Z.
The returned pose is in metres; `rel` is root-relative (root = mean of the skeleton's root joints).

Frames (`ModelConfig.frame`):
- "camera": the network sees the 2D as the camera sees it, so where the person stands in the image is an input. On
  one training rig that position tells the depth (a camera 1.5 m high pitched 13 deg down sees a farther person
  higher up), a cue that holds for that rig's height and pitch only.
- "person": the 2D is first turned into a virtual camera with the same centre whose optical axis passes through the
  person (`person_rotation`: the mean of the visible joints' unit rays, the smallest rotation), lifted there and
  the pose rotated back; rays are kept, so the ray parameterisations stay exact. Only the pose's own shape and
  apparent size reach the network (perspective-crop normalisation, as in Yu et al. 2021, "PCLs").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from rigpose.config import ModelConfig

BODY_SIZE_M = 0.35  # typical RMS distance of joints from their centroid, metres: sets the initial depth scale


class LiftOutput(NamedTuple):
    """X [B, J, 3] camera-frame metres; rel [B, J, 3] = X - root; root [B, 3]; xy [B, J, 2] the 2D used per joint
    (normalised coords: input where visible, predicted where missing; with output 'denoised' the predicted 2D
    everywhere); xy_pred [B, J, 2] the network's own 2D."""

    X: torch.Tensor
    rel: torch.Tensor
    root: torch.Tensor
    xy: torch.Tensor
    xy_pred: torch.Tensor


def _pose_outputs(output: str, num_joints: int) -> int:
    """Pose outputs of the network for `ModelConfig.output`: a depth per joint along its ray ("ray", "denoised") or
    a free 3D offset per joint ("free")."""
    return 3 * num_joints if output == "free" else num_joints


class _Block(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), nn.Dropout(dropout),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


def person_rotation(xy_BJ2: torch.Tensor, valid_BJ: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Q [B, 3, 3]: the rotation about the camera centre (virtual = Q @ camera) whose optical axis passes through the
    person, the mean of the visible joints' unit rays; the smallest such rotation (no roll added about the new axis).

    xy [B, J, 2] normalised image coordinates, valid [B, J]. Rows with no visible joint get the identity.
    """
    ray = torch.cat([xy_BJ2, torch.ones_like(xy_BJ2[..., :1])], -1)
    ray = ray / ray.norm(dim=-1, keepdim=True)
    w = valid_BJ.to(ray.dtype)[..., None]
    m = (torch.nan_to_num(ray) * w).sum(-2) + (w.sum(-2) == 0).to(ray.dtype) * ray.new_tensor([0.0, 0.0, 1.0])
    a = m / m.norm(dim=-1, keepdim=True).clamp_min(eps)  # [B, 3] unit direction of the person
    # Rodrigues for the rotation taking a onto e_z: v = a x e_z = (a_y, -a_x, 0), cos = a_z
    v = torch.stack([a[:, 1], -a[:, 0], torch.zeros_like(a[:, 0])], -1)
    zero = torch.zeros_like(a[:, 0])
    vx = torch.stack([torch.stack([zero, -v[:, 2], v[:, 1]], -1), torch.stack([v[:, 2], zero, -v[:, 0]], -1),
                      torch.stack([-v[:, 1], v[:, 0], zero], -1)], -2)
    eye = torch.eye(3, dtype=ray.dtype, device=ray.device).expand_as(vx)
    return eye + vx + vx @ vx / (1.0 + a[:, 2]).clamp_min(eps)[:, None, None]


def rotate_normalised(xy_BJ2: torch.Tensor, Q_B33: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates [B, J, 2] of the same rays seen by a camera turned by Q [B, 3, 3] (r' = Q r)."""
    r = torch.cat([xy_BJ2, torch.ones_like(xy_BJ2[..., :1])], -1) @ Q_B33.transpose(-1, -2)
    return r[..., :2] / r[..., 2:]


def normalise_2d(xy_BJ2: torch.Tensor, valid_BJ: torch.Tensor, eps: float = 1e-6
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre [B, 2] (mean of visible joints), spread s [B] (their RMS distance to it), u [B, J, 2] = (xy - c)/s.

    Missing joints (valid 0) get u = 0. Rows with no visible joint get c = 0, s = 1.
    """
    w = valid_BJ.to(xy_BJ2.dtype)
    n = w.sum(-1).clamp_min(1.0)
    xy0 = torch.where(w[..., None] > 0, xy_BJ2, torch.zeros_like(xy_BJ2))
    c = xy0.sum(-2) / n[..., None]
    d2 = (((xy0 - c[:, None]) ** 2).sum(-1) * w).sum(-1) / n
    s = torch.where(w.sum(-1) > 1, d2.sqrt(), torch.ones_like(d2)).clamp_min(eps)
    u = (xy0 - c[:, None]) / s[:, None, None] * w[..., None]
    return c, s, u


class Lifter(nn.Module):
    """Residual MLP lifter (in the spirit of Martinez et al. 2017) for a skeleton of `num_joints` joints whose root is
    the mean of `root_joints`; see the module docstring for the input normalisation and output parameterisation."""

    def __init__(self, config: ModelConfig, *, num_joints: int, root_joints: Sequence[int] = (0,)) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a rigpose.config.ModelConfig, got {type(config).__name__}")
        if num_joints < 2:
            raise ValueError(f"num_joints must be >= 2, got {num_joints}")
        root_joints = tuple(int(j) for j in root_joints)
        if not root_joints or any(not 0 <= j < num_joints for j in root_joints):
            raise ValueError(f"root_joints {root_joints} out of range for {num_joints} joints")
        self.config = config
        self.num_joints = num_joints
        self.root_joints = root_joints
        J = num_joints
        in_dim = 2 * J + J + 2 + 1  # u, scores, centre, log spread
        out_dim = _pose_outputs(config.output, J) + 2 * J + 1  # pose, 2D residual, log size
        self.inp = nn.Sequential(nn.Linear(in_dim, config.width), nn.LayerNorm(config.width), nn.ReLU(),
                                 nn.Dropout(config.dropout))
        self.blocks = nn.Sequential(*[_Block(config.width, config.dropout) for _ in range(config.num_blocks)])
        self.out = nn.Linear(config.width, out_dim)
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    def set_dropout(self, p: float) -> None:
        """Change the dropout probability of every dropout layer (e.g. 0.5 for the first half of training, then 0)."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p

    def forward(self, xy_BJ2: torch.Tensor, scores_BJ: torch.Tensor) -> LiftOutput:
        """xy [B, J, 2] undistorted normalised image coordinates, scores [B, J] in [0, 1] (0 = missing)."""
        if xy_BJ2.ndim != 3 or xy_BJ2.shape[1:] != (self.num_joints, 2):
            raise ValueError(f"xy: expected [B, {self.num_joints}, 2], got {tuple(xy_BJ2.shape)}")
        if scores_BJ.shape != xy_BJ2.shape[:2]:
            raise ValueError(f"scores: expected {tuple(xy_BJ2.shape[:2])}, got {tuple(scores_BJ.shape)}")
        J = self.num_joints
        valid = (scores_BJ > 0) & torch.isfinite(xy_BJ2).all(-1)
        scores = torch.where(valid, scores_BJ, torch.zeros_like(scores_BJ))
        xy_in = torch.where(valid[..., None], xy_BJ2, torch.zeros_like(xy_BJ2))
        Q = person_rotation(xy_in, valid) if self.config.frame == "person" else None
        if Q is not None:  # lift in the virtual camera that looks at the person
            xy_in = torch.where(valid[..., None], rotate_normalised(xy_in, Q), torch.zeros_like(xy_in))
        c, s, u = normalise_2d(xy_in, valid)
        feats = torch.cat([u.flatten(1), scores, c, torch.log(s)[:, None]], -1)
        h = self.blocks(self.inp(feats))
        o = self.out(h)
        n_pose = _pose_outputs(self.config.output, J)
        u_pred = o[:, n_pose:n_pose + 2 * J].reshape(-1, J, 2) + u  # residual on the (zeroed where missing) input
        Z = BODY_SIZE_M * torch.exp(o[:, -1]) / s  # [B] depth of the centre, metres
        xy_pred = c[:, None] + s[:, None, None] * u_pred
        xy = xy_pred if self.config.output == "denoised" else torch.where(valid[..., None], xy_in, xy_pred)
        if n_pose == J:  # depths along rays
            depth = (Z[:, None] + o[:, :J]).clamp_min(0.05)  # keep every joint in front of the camera
            X = torch.cat([xy, torch.ones_like(xy[..., :1])], -1) * depth[..., None]
        else:
            centre = torch.cat([c, torch.ones_like(c[:, :1])], -1) * Z[:, None]
            X = centre[:, None] + o[:, :n_pose].reshape(-1, J, 3)
        if Q is not None:  # back to the real camera: X = Q^T X_virtual, the 2D through the same rays
            X = X @ Q
            xy_pred = rotate_normalised(xy_pred, Q.transpose(-1, -2))
            xy = rotate_normalised(xy, Q.transpose(-1, -2))
            if self.config.output == "ray":  # exact input 2D where visible, as in the camera frame
                xy = torch.where(valid[..., None], torch.nan_to_num(xy_BJ2), xy)
        root = X[:, list(self.root_joints)].mean(1)
        return LiftOutput(X=X, rel=X - root[:, None], root=root, xy=xy, xy_pred=xy_pred)


def num_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dropout_schedule(step: int, num_steps: int, *, start: float, switch_at: float = 0.5) -> float:
    """The report's trick: dropout `start` for the first `switch_at` fraction of training, then 0."""
    return start if step < math.floor(switch_at * num_steps) else 0.0


def lift_views(model: Lifter | torch.nn.Module, xy_BVJ2: torch.Tensor, w_BVJ: torch.Tensor) -> LiftOutput:
    """Lift every view of every frame: the lifter on [B*V] rows, reshaped back to [B, V, ...]."""
    B, V, J, _ = xy_BVJ2.shape
    out = model(xy_BVJ2.reshape(B * V, J, 2), w_BVJ.reshape(B * V, J))
    return LiftOutput(*(x.reshape(B, V, *x.shape[1:]) for x in out))
