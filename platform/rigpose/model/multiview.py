"""Multi-view inference, all stages: optional test-time adaptation, then fusion, then refinement or the posterior.

`MultiViewConfig.method` (rigpose.config) picks the stages: "posterior" (the default: fusion as the prior of
`rigpose.model.posterior`, with a per-joint uncertainty), "fusion" (`rigpose.model.fusion`), "refinement"
(+ `rigpose.model.refine`), "adaptation" (`rigpose.model.adapt`, then fusion and refinement).
Shape letters: B frames, J joints.
"""

from __future__ import annotations

import torch
from torch import nn

from rigpose.config import MultiViewConfig
from rigpose.model.adapt import adapt
from rigpose.model.fusion import Batch, fuse
from rigpose.model.posterior import PosteriorResult, posterior
from rigpose.model.refine import refine
from rigpose.skeleton import Skeleton


def adapt_for(model: nn.Module, batch: Batch, skeleton: Skeleton, config: MultiViewConfig, *,
              multi: bool = True) -> nn.Module:
    """`model` itself when `config.steps_to_adapt(multi=multi)` is 0, else a copy adapted to this batch's 2D."""
    steps = config.steps_to_adapt(multi=multi)
    if steps == 0:
        return model
    with torch.enable_grad():
        return adapt(model, batch, skeleton, steps=steps, lr=config.adapt_lr, batch_size=config.adapt_batch_size)


def estimate(model: nn.Module, batch: Batch, skeleton: Skeleton, config: MultiViewConfig, *,
             groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(world poses [B, J, 3] metres, per-joint uncertainty [B, J] metres or None) of `config.method`, no
    adaptation (`model` is the lifter to use, already adapted where the caller adapts). Only "posterior" states an
    uncertainty."""
    if config.method == "posterior":
        result: PosteriorResult = posterior(model, batch, skeleton, config, groups=groups)
        return result.poses, result.sigma_m
    return fuse_and_refine(model, batch, skeleton, config, groups=groups), None


def fuse_and_refine(model: nn.Module, batch: Batch, skeleton: Skeleton, config: MultiViewConfig, *,
                    groups: torch.Tensor | None = None) -> torch.Tensor:
    """World poses [B, J, 3] (metres): fusion, then refinement unless `config.method` is "fusion"; method
    "posterior" is `estimate`'s (no adaptation: `model` is the lifter to use, already adapted where the caller
    adapts)."""
    if config.method == "posterior":
        return posterior(model, batch, skeleton, config, groups=groups).poses
    poses = fuse(model, batch, skeleton, config)
    if config.method == "fusion" or config.refine_steps == 0:
        return poses
    return refine(poses, batch, skeleton, config, groups=groups)


def lift_multiview(model: nn.Module, batch: Batch, skeleton: Skeleton, config: MultiViewConfig | None = None, *,
                   groups: torch.Tensor | None = None) -> torch.Tensor:
    """World poses [B, J, 3] (metres) by `config.method` (default `MultiViewConfig()`): the posterior; fusion;
    + refinement; or adaptation (`config.steps_to_adapt()` steps on this batch), fusion, refinement. `groups` [B]:
    sequence ids."""
    config = config or MultiViewConfig()
    return fuse_and_refine(adapt_for(model, batch, skeleton, config), batch, skeleton, config, groups=groups)
