"""Test-time adaptation: a copy of the lifter fine-tuned a few steps on the test frames' own multi-view 2D.

The steps minimise the 2D-supervised training losses (`rigpose.model.objective`), never `joints_3d`; fusion and
refinement then run with the adapted copy (`rigpose.model.multiview`). Shape letters: B frames.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from rigpose.config import LossConfig
from rigpose.model.fusion import FUSE_KEYS, Batch, check_batch
from rigpose.model.objective import loss_terms, total_loss
from rigpose.model.refine import REFINE_KEYS
from rigpose.skeleton import Skeleton


def _label_free(batch: Batch) -> dict[str, torch.Tensor]:
    """The batch without its 3D labels: adaptation must never see `joints_3d`."""
    return {k: v for k, v in batch.items() if k != "joints_3d"}


def _batches(data: Batch | Iterable[Batch]) -> Iterator[Batch]:
    """Endless stream of batches: one batch repeated, or an iterable of batches cycled."""
    if isinstance(data, Mapping):
        return itertools.repeat(data)
    return itertools.cycle(data)


def adapt(
    model: nn.Module,
    data: Batch | Iterable[Batch],
    skeleton: Skeleton,
    *,
    steps: int,
    lr: float,
    batch_size: int | None,
    loss_cfg: LossConfig | None = None,
    seed: int = 0,
) -> nn.Module:
    """Test-time adaptation: a deep copy of `model` fine-tuned on the test frames' own multi-view 2D; eval mode.

    `data` is one prepared batch (dict of [B, ...] tensors; `batch_size` frames drawn from it per step, None = all)
    or an iterable of them (cycled). Each step minimises the 2D-supervised training losses (`loss_terms(...,
    supervision="2d")`, default `LossConfig()`) with Adam at `lr`, dropout 0. `joints_3d` is removed from every
    batch before use. The original model is left untouched.
    """
    if steps < 0 or lr <= 0:
        raise ValueError(f"adapt: steps must be >= 0 and lr > 0, got {steps}, {lr}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"adapt: batch_size must be >= 1 or None, got {batch_size}")
    loss_cfg = loss_cfg or LossConfig()
    tuned = copy.deepcopy(model)
    tuned.train()
    if hasattr(tuned, "set_dropout"):
        tuned.set_dropout(0.0)
    for p in tuned.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    stream = _batches(data)
    gen: torch.Generator | None = None
    for step in range(steps):
        batch = _label_free(next(stream))
        num_frames = check_batch(batch, FUSE_KEYS + REFINE_KEYS, "adapt")[0]
        if gen is None:
            gen = torch.Generator(device=batch["w"].device).manual_seed(seed)
        if batch_size is not None and num_frames > batch_size:
            idx = torch.randperm(num_frames, generator=gen, device=batch["w"].device)[:batch_size]
            batch = {k: v[idx] for k, v in batch.items()}
        terms = loss_terms(tuned, batch, skeleton, loss_cfg=loss_cfg, supervision="2d", step=step, train=True,
                           generator=gen)
        loss, _ = total_loss(terms, loss_cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()

