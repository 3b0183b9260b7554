"""The per-worker training loop, written once and rank-agnostic: no Ray in here, only iterables and callbacks.

`rigpose.train.trainer` feeds it Ray Data shards and reports through `ray.train.report`; tests feed it lists of
batches. Every rank runs the same number of steps per epoch only if its shard has the same number of batches:
Ray Data's `streaming_split(equal=True)` guarantees that.

Validation reports the label-free held-out-view reprojection error and, where the validation batches carry
`joints_3d` (evaluation only, never a loss input), single-view MPJPE / PA-MPJPE with `rigpose.metrics`'s
definitions. Shape letters: B frames, V views, J joints.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rigpose.config import LossConfig
from rigpose.geometry import CameraArrays, world_to_camera
from rigpose.metrics import finite_sum_count, heldout_view_px, mpjpe, pa_mpjpe, root_relative
from rigpose.model.lifter import Lifter
from rigpose.model.objective import lift_views, loss_terms, total_loss
from rigpose.skeleton import Skeleton
from rigpose.train.schedule import dropout_at

Batch = dict[str, torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EpochResult:
    """What one epoch did: mean of each loss term, validation metric(s), throughput. `steps`: optimizer steps of
    this epoch; `step`: the run's steps after it, of `total_steps`; `lr`, `dropout`: those of its last step."""

    epoch: int
    steps: int
    frames: int
    seconds: float
    lr: float
    dropout: float
    step: int
    total_steps: int
    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {"epoch": self.epoch, "steps": self.steps, "step": self.step, "total_steps": self.total_steps,
               "frames_per_s": self.frames / max(self.seconds, 1e-9),
               "lr": self.lr, "dropout": self.dropout, "epoch_s": self.seconds}
        out.update({f"train/{k}": v for k, v in self.train.items()})
        out.update({f"val/{k}": v for k, v in self.val.items()})
        return out


# validate's accumulators, in this order: (sum, count) per metric; one fixed-size tensor for `reduce`
VAL_METRICS = ("reprojection_px", "mpjpe_mm", "pa_mpjpe_mm")


def _np64(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def single_view_3d_sums(rel_BVJ3: torch.Tensor, view_ok_BV: torch.Tensor, batch: Batch,
                        root_joints: Sequence[int]) -> torch.Tensor:
    """[mpjpe sum, poses, pa_mpjpe sum, poses] (mm, float64, CPU) of every view's lift against the 3D labels.

    `rigpose.metrics.mpjpe` / `pa_mpjpe` themselves (NumPy, on CPU, once per validation batch), as
    `rigpose.inference.evaluate`'s "single" section uses them: each view's root-relative lift vs the labels brought
    into that view's camera frame and made relative to their root (the mean of `root_joints`); a pose is one
    (frame, view), views without 2D or padding (`view_ok_BV` 0) do not count, nor do joints outside `joints_3d_ok`
    [B, J] (when the batch has it) or non-finite; PA-MPJPE over poses with >= 3 usable joints (the metric's rule).
    batch["joints_3d"] [B, J, 3] world metres.
    """
    X = _np64(batch["joints_3d"])
    ok_BJ = np.isfinite(X).all(-1)
    if "joints_3d_ok" in batch:
        ok_BJ &= _np64(batch["joints_3d_ok"]) > 0
    X = np.where(ok_BJ[..., None], X, np.nan)
    gt = root_relative(world_to_camera(X[:, None], _np64(batch["R"]), _np64(batch["t"])), tuple(root_joints))
    pred = np.where(_np64(view_ok_BV)[..., None, None] > 0, _np64(rel_BVJ3), np.nan)
    sums = [*finite_sum_count(mpjpe(pred, gt)), *finite_sum_count(pa_mpjpe(pred, gt))]
    return torch.tensor(sums, dtype=torch.float64)


def heldout_sums(rel_BVJ3: torch.Tensor, batch: Batch, root_joints: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) float64 of `rigpose.metrics.heldout_view_px` over a batch: the one held-out-view definition,
    computed with the metric's own NumPy code (on CPU, once per validation batch) so that it cannot drift.

    Views without 2D or padding are not lifted (NaN), as in `rigpose evaluate`; the root each lift is placed at is
    triangulated from the other views only (not `root_world`, the training loss's all-view root).
    """
    view_ok = ((batch["w"].sum(-1) > 0) & (batch["view_mask"] > 0)).cpu().numpy()
    rel = np.where(view_ok[..., None, None], _np64(rel_BVJ3), np.nan)
    cams = CameraArrays(*(_np64(batch[k]) for k in ("K", "dist", "R", "t")))
    kp, w = _np64(batch["kp"]), _np64(batch["w"])
    s, n = finite_sum_count(heldout_view_px(rel, kp, w, cams, tuple(root_joints)))
    return torch.tensor(s, dtype=torch.float64), torch.tensor(float(n), dtype=torch.float64)


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[Batch], *, root_joints: Sequence[int],
             reduce: Reduce = lambda x: x) -> dict[str, float]:
    """Validation metrics over `batches` (all ranks together when `reduce` is an all-reduce sum).

    reprojection_px, label-free: held-out-view reprojection error, pixels, `rigpose.metrics.heldout_view_px` (the
    figure `rigpose evaluate` reports as single-view heldout_px; see `heldout_sums`). mpjpe_mm, pa_mpjpe_mm:
    only when batches carry `joints_3d` (see `single_view_3d_sums`), means over
    every labelled (frame, view) pose; a key is left out when no rank had a pose to average (no labels, or a split
    whose rows all lack them); with labels on only some rows, the means are over the labelled rows.

    Every rank calls `reduce` exactly once, with the same [6] float64 tensor of (sum, count) pairs whether or not
    its own batches had labels, so the collective matches across ranks; presence follows the reduced counts.
    """
    was_training = model.training
    model.eval()
    parts: list[torch.Tensor] = []
    for batch in batches:
        out = lift_views(model, batch["xy"], batch["w"])
        s, c = heldout_sums(out.rel, batch, root_joints)
        sums_3d = torch.zeros(4, dtype=torch.float64, device=s.device)
        if "joints_3d" in batch:
            view_ok = (batch["w"].sum(-1) > 0) & (batch["view_mask"] > 0)
            sums_3d = single_view_3d_sums(out.rel, view_ok, batch, root_joints)
        parts.append(torch.cat([torch.stack([s, c]).to(torch.float64), sums_3d]))  # summed once, after the loop
    model.train(was_training)
    total = torch.stack(parts).sum(0).cpu() if parts else torch.zeros(2 * len(VAL_METRICS), dtype=torch.float64)
    total = reduce(total)
    out_metrics = {"reprojection_px": float(total[0] / total[1].clamp_min(1.0))}
    for i, name in enumerate(VAL_METRICS[1:], start=1):
        if total[2 * i + 1] > 0:
            out_metrics[name] = float(total[2 * i] / total[2 * i + 1])
    return out_metrics


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    skeleton: Skeleton,
    *,
    loss_cfg: LossConfig,
    supervision: str,
    step0: int,
    grad_clip: float,
    scheduler: Any = None,
    max_steps: int | None = None,
    before_step: Callable[[int], None] | None = None,
    reduce: Reduce = lambda x: x,
    num_replicas: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[int, int, dict[str, float]]:
    """One pass over `batches`, or its first `max_steps` (the budget ends inside this epoch; no batch beyond them is
    drawn). Returns (steps, frames, mean of each loss term over the epoch).

    `before_step(global step)` runs before every step (the per-step dropout); `scheduler.step()` after every
    optimizer step (a per-step learning-rate schedule). Under DDP (`num_replicas` > 1, `reduce` an all-reduce) each
    rank's loss is its share of the global mean (its sums over the all-reduced counts); DDP averages gradients over
    the ranks, so backpropagating `num_replicas` x that share gives every rank the gradient of the global mean: the
    same step as one process on the union of the ranks' batches (tests/unit/test_distributed.py checks it with two
    gloo processes).
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    steps = frames = 0
    for batch in batches if max_steps is None else itertools.islice(batches, max_steps):
        if before_step is not None:
            before_step(step0 + steps)
        terms = loss_terms(model, batch, skeleton, loss_cfg=loss_cfg, supervision=supervision, step=step0 + steps,
                           train=True, generator=generator)
        loss, means = total_loss(terms, loss_cfg, reduce=reduce)
        optimizer.zero_grad(set_to_none=True)
        (loss * num_replicas).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
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
    total_steps: int,
    max_epochs: int | None = None,
    start_epoch: int = 0,
    start_step: int = 0,
    loss_cfg: LossConfig,
    supervision: str,
    dropout: float,
    dropout_mode: str,
    grad_clip: float,
    on_epoch: Callable[[EpochResult, int], bool | None],
    reduce: Reduce = lambda x: x,
    num_replicas: int = 1,
    seed: int = 0,
) -> int:
    """Train from optimizer step `start_step` (the start of epoch `start_epoch`) to the budget of `total_steps` steps
    (the last epoch stops part-way where the budget ends inside it), or to the end of epoch `max_epochs` - 1 when
    that comes first (an epochs budget). `scheduler` (or None) is stepped after every optimizer step, the dropout
    (`rigpose.train.schedule.dropout_at`, mode `dropout_mode`) set before every step. Calls `on_epoch(result,
    global_step)` after each epoch, the last partial one too; when it returns True, training ends after that epoch
    (early stopping: every rank must return the same). Returns the global step reached.

    ValueError when an epoch has no full batch (it would never reach the budget).
    """
    generator = torch.Generator().manual_seed(seed + 7919 * start_epoch)
    lifter: Lifter = getattr(model, "module", model)
    step, epoch = start_step, start_epoch
    last = {"lr": optimizer.param_groups[0]["lr"], "dropout": -1.0}  # of the latest step taken

    def before_step(global_step: int) -> None:
        p = dropout_at(global_step, total_steps, start=dropout, mode=dropout_mode)
        if p != last["dropout"]:
            lifter.set_dropout(p)
        last.update(lr=optimizer.param_groups[0]["lr"], dropout=p)

    while step < total_steps and (max_epochs is None or epoch < max_epochs):
        t0 = time.perf_counter()
        steps, frames, train_means = train_epoch(
            model, optimizer, train_batches(epoch), skeleton, loss_cfg=loss_cfg, supervision=supervision,
            step0=step, grad_clip=grad_clip, scheduler=scheduler, max_steps=total_steps - step,
            before_step=before_step, reduce=reduce, num_replicas=num_replicas, generator=generator)
        if steps == 0:
            raise ValueError(f"epoch {epoch}: the training data gave no full batch (lower data.batch_size or "
                             "scaling.num_workers, or use more rows)")
        step += steps
        seconds = time.perf_counter() - t0
        frames = int(reduce(torch.tensor([float(frames)]))[0])  # all ranks: frames_per_s is the job's throughput
        val = (validate(model, val_batches(), root_joints=skeleton.root_joints, reduce=reduce)
               if val_batches is not None else {})
        if not math.isfinite(train_means.get("loss", 0.0)):
            raise FloatingPointError(f"epoch {epoch}: the training loss is not finite ({train_means}); lower the "
                                     "learning rate (optim.lr) or check the data with `rigpose datasets validate`")
        stop = on_epoch(EpochResult(epoch=epoch, steps=steps, frames=frames, seconds=seconds, lr=last["lr"],
                                    dropout=last["dropout"], step=step, total_steps=total_steps,
                                    train=train_means, val=val), step)
        epoch += 1
        if stop:
            break
    return step
