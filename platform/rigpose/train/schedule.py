"""Training budget and per-step schedules (learning rate, dropout) as pure functions of the optimizer step.

Everything counts optimizer steps, 0-based: step k is the k-th `optimizer.step()` of the run. `total_steps` turns
`optim.steps` / `optim.epochs` (at least `optim.min_steps`) into the run's step budget, `lr_factor` is the
multiplier of `optim.lr` that step k uses (what `torch.optim.lr_scheduler.LambdaLR`, stepped once per optimizer
step, takes), `dropout_at` the dropout probability of step k. No Ray and no torch state here:
`rigpose.train.worker` builds the scheduler from them, `rigpose.train.loop` applies them, the tests call them
directly. Early stopping (`rigpose.train.early_stop`) may end a run before its budget: the schedule stays the whole
budget's (a cosine stopped early has not reached min_lr_ratio), so a run is the same with or without it up to there.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch

from rigpose.config import OptimConfig
from rigpose.model.lifter import dropout_schedule

WARMUP_MAX_FRACTION = 0.1  # optim.warmup_steps is capped at this fraction of the run: short runs still reach lr


def total_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    """The run's budget in optimizer steps: `cfg.steps`, or `cfg.epochs` x `steps_per_epoch` when epochs is set;
    at least `cfg.min_steps` either way (a small dataset's few epochs are not a small budget).

    `steps_per_epoch`: each rank's full batches per pass over the training split (every rank takes the same).
    ValueError when an epochs budget meets an epoch without a single full batch.
    """
    if cfg.epochs is None:
        assert cfg.steps is not None  # OptimConfig resolves exactly one budget
        return max(cfg.steps, cfg.min_steps)
    if steps_per_epoch < 1:
        raise ValueError(f"optim.epochs={cfg.epochs} with {steps_per_epoch} steps per epoch: the training split has "
                         "no full batch (lower data.batch_size or scaling.num_workers)")
    return max(cfg.epochs * steps_per_epoch, cfg.min_steps)


def epoch_limit(cfg: OptimConfig, num_steps: int, steps_per_epoch: int) -> int | None:
    """The last epoch (exclusive) of an epochs budget of `num_steps` (`total_steps`): `cfg.epochs`, or the epochs
    `cfg.min_steps` needs when it is the larger; None for a steps budget (it ends at its step, inside an epoch)."""
    return None if cfg.epochs is None else num_epochs(num_steps, steps_per_epoch)


def num_epochs(num_steps: int, steps_per_epoch: int) -> int:
    """Passes over the data that `num_steps` steps need: the last one partial when they do not divide evenly."""
    if steps_per_epoch < 1:
        raise ValueError(f"{steps_per_epoch} steps per epoch: the training split has no full batch (lower "
                         "data.batch_size or scaling.num_workers)")
    return math.ceil(num_steps / steps_per_epoch)


def warmup_length(num_steps: int, cfg: OptimConfig) -> int:
    """Steps of linear warm-up in a run of `num_steps`: optim.warmup_steps, at most WARMUP_MAX_FRACTION of the run."""
    return min(cfg.warmup_steps, int(WARMUP_MAX_FRACTION * num_steps))


def lr_factor(step: int, num_steps: int, cfg: OptimConfig, *, steps_per_epoch: int | None = None) -> float:
    """Multiplier of optim.lr at optimizer step `step` (0-based) of a run of `num_steps` steps.

    Warm-up (`warmup_length` steps W): (step + 1) / W, so the first step is not taken at 0 and step W - 1 reaches 1.
    Then by `cfg.schedule`: 'constant' 1; 'cosine' half a cosine from 1 at step W to `cfg.min_lr_ratio` at the
    last step (num_steps - 1), held there beyond; 'exponential' `cfg.lr_decay` ** (epochs finished), which needs
    `steps_per_epoch` (the former per-epoch ExponentialLR when warmup_steps is 0).
    """
    if step < 0 or num_steps < 1:
        raise ValueError(f"lr_factor: step {step} of {num_steps}: expected step >= 0 and num_steps >= 1")
    warmup = warmup_length(num_steps, cfg)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "exponential":
        if steps_per_epoch is None or steps_per_epoch < 1:
            raise ValueError(f"optim.schedule 'exponential' decays per epoch: it needs steps_per_epoch >= 1, got "
                             f"{steps_per_epoch!r}")
        return cfg.lr_decay ** (step // steps_per_epoch)
    progress = min((step - warmup) / max(num_steps - 1 - warmup, 1), 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def dropout_at(step: int, num_steps: int, *, start: float, mode: str) -> float:
    """Dropout probability of optimizer step `step`: `start` throughout for mode 'constant'; for 'half' `start`
    during the first half of the run's `num_steps` steps, then 0 (`rigpose.model.lifter.dropout_schedule`)."""
    if mode == "constant":
        return start
    if mode == "half":
        return dropout_schedule(step, num_steps, start=start)
    raise ValueError(f"model.dropout_schedule: expected 'constant' or 'half', got {mode!r}")


def lr_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, num_steps: int, *,
                 steps_per_epoch: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR of `lr_factor` over a run of `num_steps`, to be stepped once after every optimizer step (its
    `last_epoch` is then the number of steps taken). Built before an optimizer state is loaded into `optimizer`."""
    factor = partial(lr_factor, num_steps=num_steps, cfg=cfg, steps_per_epoch=steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


def resume_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any] | None, *,
                     step: int) -> None:
    """Put `scheduler` (from `lr_scheduler`, its optimizer already restored) at optimizer step `step` of a resumed
    run: the base learning rates of its saved `state`, then the position and the learning rate of that step on the
    current schedule. So a run resumed with another budget continues on the new schedule from where it stopped, and
    a checkpoint whose scheduler was stepped per epoch (ExponentialLR, before step budgets) resumes at its step."""
    if state is not None and "base_lrs" in state:
        scheduler.base_lrs = list(state["base_lrs"])
    scheduler.last_epoch = step  # LambdaLR's name for the number of scheduler steps taken
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() and the next state_dict() report, as step() would set it
