"""The per-worker training loop, written once and rank-agnostic: no Ray in here, only iterables and callbacks.

`rigpose.train.trainer` feeds it Ray Data shards and reports through `ray.train.report`; tests feed it lists of
batches. Every rank runs the same number of steps per epoch only if its shard has the same number of batches:
Ray Data's `streaming_split(equal=True)` guarantees that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from rigpose.model.lifter import Lifter, dropout_schedule
from rigpose.model.losses import cross_view_reprojection
from rigpose.skeleton import Skeleton
from rigpose.train.step import LossWeights, batch_cameras, lift_views, loss_terms, total_loss

Batch = dict[str, torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EpochResult:
    """What one epoch did: mean of each loss term, validation metric(s), throughput."""

    epoch: int
    steps: int
    frames: int
    seconds: float
    lr: float
    dropout: float
    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {"epoch": self.epoch, "steps": self.steps, "frames_per_s": self.frames / max(self.seconds, 1e-9),
               "lr": self.lr, "dropout": self.dropout, "epoch_s": self.seconds}
        out.update({f"train/{k}": v for k, v in self.train.items()})
        out.update({f"val/{k}": v for k, v in self.val.items()})
        return out


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[Batch], *, reduce: Reduce = lambda x: x) -> dict[str, float]:
    """Label-free validation: held-out-view reprojection error, pixels (lift each view, project into the others)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2)
    for batch in batches:
        out = lift_views(model, batch["xy"], batch["w"])
        s, c = cross_view_reprojection(out.rel, batch["root_world"], batch["root_ok"], batch["kp"], batch["w"],
                                       batch_cameras(batch), huber_px=None)
        total += torch.stack([s.detach().cpu().double(), c.detach().cpu().double()]).float()
    model.train(was_training)
    total = reduce(total)
    return {"reprojection_px": float(total[0] / total[1].clamp_min(1.0))}


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    skeleton: Skeleton,
    *,
    weights: LossWeights,
    supervision: str,
    step0: int,
    grad_clip: float,
    reduce: Reduce = lambda x: x,
    num_replicas: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[int, int, dict[str, float]]:
    """One pass over `batches`. Returns (steps, frames, mean of each loss term over the epoch).

    Under DDP (`num_replicas` > 1, `reduce` an all-reduce) each rank's loss is its share of the global mean (its
    sums over the all-reduced counts); DDP averages gradients over the ranks, so backpropagating `num_replicas` x
    that share gives every rank the gradient of the global mean: the same step as one process on the union of
    the ranks' batches (tests/unit/test_distributed.py checks it with two gloo processes).
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    steps = frames = 0
    for batch in batches:
        terms = loss_terms(model, batch, skeleton, weights=weights, supervision=supervision, step=step0 + steps,
                           train=True, generator=generator)
        loss, means = total_loss(terms, weights, reduce=reduce)
        optimizer.zero_grad(set_to_none=True)
        (loss * num_replicas).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        for k, v in means.items():  # kept as tensors: no .item() (and no sync) inside the step
            sums[k] = sums.get(k, torch.zeros(())) + v.cpu()
        sums["loss"] = sums.get("loss", torch.zeros(())) + loss.detach().cpu()
        steps += 1
        frames += int(batch["kp"].shape[0])
    # each rank's means are its share of the global mean (local sums / global counts): their sum over ranks is it
    names = sorted(sums)
    totals = reduce(torch.stack([sums[n] for n in names])) if names else torch.zeros(0)
    return steps, frames, {n: float(totals[i]) / max(steps, 1) for i, n in enumerate(names)}


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    skeleton: Skeleton,
    *,
    train_batches: Callable[[int], Iterable[Batch]],
    val_batches: Callable[[], Iterable[Batch]] | None,
    epochs: int,
    start_epoch: int = 0,
    start_step: int = 0,
    weights: LossWeights,
    supervision: str,
    dropout: float,
    dropout_mode: str,
    grad_clip: float,
    on_epoch: Callable[[EpochResult, int], None],
    reduce: Reduce = lambda x: x,
    num_replicas: int = 1,
    seed: int = 0,
) -> int:
    """Train from `start_epoch` to `epochs`; calls `on_epoch(result, global_step)` after each. Returns the step."""
    generator = torch.Generator().manual_seed(seed + 7919 * start_epoch)
    lifter: Lifter = getattr(model, "module", model)
    step = start_step
    for epoch in range(start_epoch, epochs):
        p = dropout if dropout_mode == "constant" else dropout_schedule(epoch, epochs, start=dropout)
        lifter.set_dropout(p)
        t0 = time.perf_counter()
        steps, frames, train_means = train_epoch(
            model, optimizer, train_batches(epoch), skeleton, weights=weights, supervision=supervision,
            step0=step, grad_clip=grad_clip, reduce=reduce, num_replicas=num_replicas, generator=generator)
        step += steps
        seconds = time.perf_counter() - t0
        frames = int(reduce(torch.tensor([float(frames)]))[0])  # all ranks: frames_per_s is the job's throughput
        val = validate(model, val_batches(), reduce=reduce) if val_batches is not None else {}
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        if not math.isfinite(train_means.get("loss", 0.0)):
            raise FloatingPointError(f"epoch {epoch}: the training loss is not finite ({train_means}); lower the "
                                     "learning rate (optim.lr) or check the data with `rigpose datasets validate`")
        on_epoch(EpochResult(epoch=epoch, steps=steps, frames=frames, seconds=seconds, lr=lr, dropout=p,
                             train=train_means, val=val), step)
    return step
