"""Budgets and schedules in optimizer steps: the same steps whatever the dataset size, warm-up, cosine, resume."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from rigpose_testing import REPO, synthetic_batch, to_torch

from rigpose.config import LossConfig, ModelConfig, OptimConfig, load_job
from rigpose.data.manifest import ShardInfo
from rigpose.model.lifter import Lifter
from rigpose.skeleton import DEEPMIMIC16
from rigpose.train.loop import fit
from rigpose.train.schedule import (
    dropout_at,
    epoch_limit,
    lr_factor,
    lr_scheduler,
    num_epochs,
    resume_scheduler,
    total_steps,
    warmup_length,
)
from rigpose.train.trainer import steps_per_epoch


def test_the_default_budget_is_the_same_number_of_steps_for_a_small_and_a_large_dataset() -> None:
    cfg = OptimConfig()
    assert cfg.steps == 3000 and cfg.epochs is None
    assert total_steps(cfg, 10) == total_steps(cfg, 1000) == 3000
    assert (num_epochs(3000, 10), num_epochs(3000, 1000)) == (300, 3)  # the large dataset's last epoch is partial


def test_an_epochs_override_gives_epochs_times_steps_per_epoch_and_clears_steps() -> None:
    cfg = load_job(REPO / "jobs" / "train.yaml", ["optim.epochs=2"]).optim
    assert (cfg.epochs, cfg.steps) == (2, None)
    assert total_steps(cfg, 37) == 74 and num_epochs(74, 37) == 2
    assert load_job(None, ["optim.steps=500"]).optim.steps == 500


def test_a_job_without_any_budget_or_with_a_bad_one_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"field optim: .*optim\.steps and optim\.epochs are both null"):
        load_job(None, ["optim.steps=null"])
    with pytest.raises(ValueError, match=r"field optim\.epochs: .*greater than or equal to 1"):
        load_job(None, ["optim.epochs=0"])
    with pytest.raises(ValueError, match=r"field optim\.schedule"):
        load_job(None, ["optim.schedule=linear"])
    with pytest.raises(ValueError, match="no full batch"):
        total_steps(OptimConfig(epochs=3), 0)


def test_min_steps_lifts_a_small_datasets_epochs_budget_and_leaves_a_large_ones_alone() -> None:
    cfg = load_job(REPO / "jobs" / "train.yaml", ["optim.epochs=3", "optim.min_steps=100"]).optim
    assert (total_steps(cfg, 5), epoch_limit(cfg, 100, 5)) == (100, 20)  # 3 epochs of 5 steps: too few
    assert (total_steps(cfg, 7), epoch_limit(cfg, 100, 7)) == (100, 15)  # the 15th epoch stops at step 100
    assert (total_steps(cfg, 50), epoch_limit(cfg, 150, 50)) == (150, 3)  # 3 epochs are more than enough
    assert total_steps(OptimConfig(epochs=3), 5) == 15  # no minimum by default
    steps = OptimConfig(steps=50, min_steps=80)
    assert (total_steps(steps, 10), epoch_limit(steps, 80, 10)) == (80, None)  # a steps budget: at least min_steps
    with pytest.raises(ValueError, match=r"field optim\.min_steps"):
        load_job(None, ["optim.min_steps=-1"])


def test_warm_up_rises_linearly_to_the_peak_learning_rate() -> None:
    cfg = OptimConfig(warmup_steps=100)
    factors = np.array([lr_factor(k, 3000, cfg) for k in range(100)])
    np.testing.assert_allclose(factors, np.arange(1, 101) / 100)
    assert lr_factor(100, 3000, cfg) == pytest.approx(1.0)
    assert warmup_length(50, cfg) == 5  # a short run warms up for a tenth of it, then reaches the full rate
    assert lr_factor(4, 50, cfg) == pytest.approx(1.0)


def test_cosine_falls_steadily_to_min_lr_at_the_last_step() -> None:
    cfg = OptimConfig(warmup_steps=200, min_lr_ratio=0.05)
    factors = np.array([lr_factor(k, 3000, cfg) for k in range(200, 3000)])
    assert factors[0] == pytest.approx(1.0) and np.all(np.diff(factors) <= 1e-12)
    assert lr_factor(2999, 3000, cfg) == pytest.approx(0.05)
    assert lr_factor(1599, 3000, cfg) == pytest.approx(0.05 + 0.95 * 0.5, abs=1e-3)  # half way down at mid-decay
    assert lr_factor(5000, 3000, cfg) == pytest.approx(0.05)  # held at the floor beyond the budget


def test_exponential_is_the_former_per_epoch_staircase_and_constant_stays_at_the_peak() -> None:
    old = OptimConfig(schedule="exponential", warmup_steps=0, lr_decay=0.9, epochs=12)
    assert [lr_factor(k, 12 * 77, old, steps_per_epoch=77) for k in (0, 76, 77, 160)] == pytest.approx(
        [1.0, 1.0, 0.9, 0.81])
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lr_factor(5, 100, old)
    assert lr_factor(2999, 3000, OptimConfig(schedule="constant")) == 1.0


def test_half_dropout_switches_off_at_half_the_steps() -> None:
    assert [dropout_at(k, 3000, start=0.5, mode="half") for k in (0, 1499, 1500, 2999)] == [0.5, 0.5, 0.0, 0.0]
    assert dropout_at(2999, 3000, start=0.5, mode="constant") == 0.5
    with pytest.raises(ValueError, match="dropout_schedule"):
        dropout_at(0, 10, start=0.5, mode="third")


@dataclass
class _Dataset:
    """What `steps_per_epoch` reads of a `rigpose.data.reader.Dataset`: its shards."""

    rows: dict[str, int]

    def shards(self, *, splits: list[str], rig_ids: list[str] | None = None) -> list[ShardInfo]:
        return [ShardInfo(f"{rig}.parquet", rig, "train", n, 0, "", []) for rig, n in self.rows.items()
                if rig_ids is None or rig in rig_ids]


def test_the_driver_counts_each_ranks_full_batches_of_the_selected_rows() -> None:
    ds = _Dataset({"a": 1000, "b": 600})
    job = load_job(None, ["data.batch_size=64", "scaling.num_workers=2"])
    assert steps_per_epoch(job, ds) == 1600 // 2 // 64  # type: ignore[arg-type]
    assert steps_per_epoch(load_job(None, ["data.batch_size=64", "data.rig_ids=[a]"]), ds) == 15  # type: ignore[arg-type]
    assert steps_per_epoch(load_job(None, ["data.batch_size=64", "data.max_rows=500"]), ds) == 7  # type: ignore[arg-type]
    per_epoch = [steps_per_epoch(job, _Dataset({"a": rows})) for rows in (640, 64_000)]  # type: ignore[arg-type]
    assert per_epoch == [5, 500] and [total_steps(job.optim, n) for n in per_epoch] == [3000, 3000]
    mixed = load_job(None, ["data.batch_size=64", "data.mix_url=synth", "data.mix_ratio=0.25"])
    assert steps_per_epoch(mixed, ds) == (1600 + 533) // 64  # type: ignore[arg-type]  # + a quarter of the rows


class _StopError(Exception):
    """Ends a training attempt after an epoch, as a failed worker would."""


class _Batches:
    """An epoch's batches that counts how many were drawn from it."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches, self.drawn = batches, 0

    def __iter__(self) -> Any:
        for b in self.batches:
            self.drawn += 1
            yield b


def _train(num_batches: int, num_steps: int, *, cfg: OptimConfig | None = None, start: dict[str, Any] | None = None,
           stop_after_epoch: int | None = None, max_epochs: int | None = None) -> dict[str, Any]:
    """`fit` on `num_batches` tiny batches per epoch for a budget of `num_steps`, as the worker wires it: a LambdaLR
    stepped per step, half dropout; `start`: a checkpoint to resume from; `stop_after_epoch`: end the attempt
    there (as a failed worker would), returning the checkpoint of that epoch."""
    cfg = cfg or OptimConfig(steps=num_steps, warmup_steps=4)
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=16, num_blocks=1), num_joints=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = lr_scheduler(optimizer, cfg, num_steps, steps_per_epoch=num_batches)
    epoch0 = step0 = 0
    if start is not None:
        model.load_state_dict(start["model"])
        optimizer.load_state_dict(start["optimizer"])
        epoch0, step0 = start["epoch"] + 1, start["step"]
        resume_scheduler(scheduler, start["scheduler"], step=step0)
    lrs: list[float] = []  # the learning rate of every optimizer step taken
    optimizer.register_step_post_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    data = [to_torch(synthetic_batch(num_frames=4, seed=s)) for s in range(num_batches)]
    epochs: list[_Batches] = []
    history: list[dict[str, float]] = []
    out: dict[str, Any] = {"lrs": lrs, "history": history, "epochs": epochs}

    def on_epoch(result: Any, step: int) -> None:
        history.append(result.metrics())
        if result.epoch == stop_after_epoch:
            out["checkpoint"] = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "epoch": result.epoch, "step": step}
            raise _StopError

    def batches(epoch: int) -> _Batches:
        epochs.append(_Batches(data))
        return epochs[-1]

    with contextlib.suppress(_StopError):
        out["step"] = fit(model, optimizer, scheduler, DEEPMIMIC16, train_batches=batches, val_batches=None,
                          total_steps=num_steps, max_epochs=max_epochs, start_epoch=epoch0, start_step=step0,
                          loss_cfg=LossConfig(),
                          supervision="2d", dropout=0.5, dropout_mode="half", grad_clip=1.0, on_epoch=on_epoch)
    return out


def test_training_takes_the_same_optimizer_steps_on_a_small_and_a_large_dataset() -> None:
    small, large = _train(2, 20), _train(7, 20)
    assert len(small["lrs"]) == len(large["lrs"]) == 20 and small["step"] == large["step"] == 20
    assert [h["steps"] for h in small["history"]] == [2] * 10
    assert [h["steps"] for h in large["history"]] == [7, 7, 6]  # the last epoch stops at the budget...
    assert [b.drawn for b in large["epochs"]] == [7, 7, 6]  # ...without drawing a batch beyond it
    assert large["history"][-1]["step"] == large["history"][-1]["total_steps"] == 20
    np.testing.assert_allclose(small["lrs"], large["lrs"])  # one schedule of steps, whatever the epochs
    assert small["lrs"][-1] == pytest.approx(1e-3 * OptimConfig().min_lr_ratio)
    assert [h["dropout"] for h in large["history"]] == [0.5, 0.0, 0.0]  # switched off at step 10 of 20


def test_an_epochs_budget_with_min_steps_trains_those_steps_on_a_small_dataset() -> None:
    cfg = OptimConfig(epochs=2, min_steps=11, warmup_steps=0)
    budget = total_steps(cfg, 3)  # 2 epochs of 3 batches would be 6 steps
    run = _train(3, budget, cfg=cfg, max_epochs=epoch_limit(cfg, budget, 3))
    assert run["step"] == 11 and [h["steps"] for h in run["history"]] == [3, 3, 3, 2]
    assert run["lrs"][-1] == pytest.approx(1e-3 * cfg.min_lr_ratio)  # the schedule spans the 11 steps
    plain = OptimConfig(epochs=2, warmup_steps=0)
    assert [h["steps"] for h in _train(3, 6, cfg=plain, max_epochs=epoch_limit(plain, 6, 3))["history"]] == [3, 3]


def test_a_resumed_run_continues_the_schedule_where_it_stopped() -> None:
    straight = _train(7, 20)
    first = _train(7, 20, stop_after_epoch=0)
    resumed = _train(7, 20, start=first["checkpoint"])
    assert len(first["lrs"]) == 7 and len(resumed["lrs"]) == 13 and resumed["step"] == 20
    np.testing.assert_allclose(first["lrs"] + resumed["lrs"], straight["lrs"])
    assert [int(h["epoch"]) for h in resumed["history"]] == [1, 2]


def test_a_checkpoint_of_the_former_per_epoch_scheduler_resumes_at_its_step() -> None:
    model = torch.nn.Linear(2, 2)
    old_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    old = torch.optim.lr_scheduler.ExponentialLR(old_opt, gamma=0.9)
    for _ in range(2):  # two epochs of the former schedule
        old_opt.step()
        old.step()
    cfg = OptimConfig(steps=100, warmup_steps=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = lr_scheduler(optimizer, cfg, 100)
    optimizer.load_state_dict(old_opt.state_dict())
    resume_scheduler(scheduler, old.state_dict(), step=14)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(14, 100, cfg))
    optimizer.step()  # step 14 (no gradients: a no-op), then the schedule moves on
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(15, 100, cfg))
