"""What every Ray Train worker runs: model + DDP, resume from the latest checkpoint, the training loop, reporting.

`train_func` is the `TorchTrainer` train function. The math lives in `rigpose.train.loop` (no Ray there); this
module only wires it to Ray Train:
- DDP through `ray.train.torch.prepare_model` (the TorchTrainer's backend: gloo on CPU, nccl on GPU);
- losses normalised by the all-reduced count of visible keypoints (`reduce`), gradients of the global mean
  (`num_replicas`, see `rigpose.train.loop.train_epoch`);
- batches from `ray.train.get_dataset_shard(...).iter_torch_batches(...)` with a local shuffle buffer;
- the budget in optimizer steps (`rigpose.train.schedule.total_steps` of the driver's `config["steps_per_epoch"]`),
  a `LambdaLR` of `lr_factor` stepped after every optimizer step, the dropout switched by step (`dropout_at`);
  training stops at the budget, inside an epoch if it ends there (that partial epoch reports and checkpoints);
- on (re)start, `ray.train.get_checkpoint()` restores model, optimizer, scheduler, epoch, step and history (the
  schedule continues at the checkpoint's step: `resume_scheduler`);
  without a checkpoint, `config["init"]` (the driver's `load_init_weights`: warm-start weights, in memory) replaces
  the random initialisation on every rank before DDP wraps the model (`warm_start`);
- every rank calls `ray.train.report` once per epoch; rank 0 alone attaches the checkpoint (STYLE habit 8);
- early stopping (`optim.early_stop_patience`, `rigpose.train.early_stop`): every rank decides from the same
  all-reduced validation metric, and one all-reduce of the decision makes sure they end at the same epoch; each
  epoch records `best_epoch` and `stopped_early`; rank 0 keeps a CPU copy of the best epoch's weights and every
  checkpoint holds it (`best`), so the driver writes model.pt from it (`best_weights`), also after a resume. A run
  that stopped early does nothing more when re-run, unless early stopping is switched off.

Tracking (rank 0 only): with `config["tracking"]` (a `rigpose.tracking.runs.RunSpec`), every epoch's metrics go to the
MLflow run of this training run (`RunLogger`: never fails training, queues while the server is down), once Ray Train
has registered the epoch's checkpoint (`REGISTERED_AFTER` reports later): an epoch that a failure makes the next
attempt train again is never logged twice. A resumed attempt first sends the epochs of its checkpoint's history that
the run lacks (the failed attempt's unsent ones); the driver sends the last epochs after `fit()` (`publish`).

Checkpoint = a folder holding `STATE_FILE`: a torch.save dict {model, optimizer, scheduler, epoch (0-based, last
finished), step, history (per-epoch metrics), job (the job config, scrubbed: `rigpose.tracking.secrets`), skeleton,
manifest_sha256, world_size, init_weights (the warm start's source, None after a random one), best (with early
stopping: {epoch, model}, model None when it is this checkpoint's own)}. The real config (its
tracking URI with a password, if any) stays in memory.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from rigpose.cluster.connect import verbose
from rigpose.config import TrainJob
from rigpose.model.lifter import Lifter
from rigpose.skeleton import Skeleton, get_skeleton
from rigpose.tracking.secrets import scrub, scrub_obj
from rigpose.train.early_stop import METRIC, early_stop
from rigpose.train.loop import Batch, EpochResult, fit
from rigpose.train.progress import progress_line
from rigpose.train.schedule import epoch_limit, lr_scheduler, num_epochs, resume_scheduler, total_steps

STATE_FILE = "state.pt"
#: reports after which an epoch's checkpoint is surely registered: rank 0's `ray.train.report` for epoch e + 2 passes
#: a barrier of all ranks, each of which had put its epoch e + 1 result into its worker's one-result queue, so Ray
#: Train's controller had taken every rank's epoch e result, and it registers a round once it has all ranks' results.
#: Logged earlier, an epoch could be lost with a node and trained (and logged) again by the next attempt.
REGISTERED_AFTER = 2


def build_lifter(job: TrainJob, skeleton: Skeleton) -> Lifter:
    """A new lifter of the architecture the job asks for (`job.model`), sized for the dataset's skeleton."""
    return Lifter(job.model, num_joints=skeleton.num_joints, root_joints=skeleton.root_joints)


def learning_rate(job: TrainJob, world_size: int) -> float:
    """optim.lr, times the number of workers when scaling.scale_lr (linear scaling for the larger global batch)."""
    return job.optim.lr * (world_size if job.scaling.scale_lr else 1)


def load_state(checkpoint: Any, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The state dict saved in a Ray Train checkpoint of this module (local or on object storage)."""
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location=map_location, weights_only=False)


def best_weights(state: dict[str, Any] | None) -> tuple[int, dict[str, torch.Tensor]] | None:
    """(epoch, CPU copy of its weights) of the best epoch a checkpoint's `state` records (early stopping); None for a
    checkpoint without (early stopping off, or older)."""
    best = state.get("best") if state is not None else None
    if best is None:
        return None
    weights = best["model"] if best["model"] is not None else state["model"]  # type: ignore[index]
    return int(best["epoch"]), {k: v.detach().cpu().clone() for k, v in weights.items()}


def warm_start(model: Lifter, init: dict[str, Any] | None, state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Load the warm-start weights `init` ({"state_dict", "source"}, see rigpose.train.trainer.load_init_weights)
    into the new `model`, unless the attempt resumes from a checkpoint's `state` (whose weights win: `model` is left
    alone). Returns the init source the checkpoints record: the resumed state's, `init`'s, or None (random init)."""
    if state is not None:
        return state.get("init_weights")
    if init is None:
        return None
    model.load_state_dict(init["state_dict"])
    return init["source"]


def say(message: str) -> None:
    """One line to the worker's stdout (Ray forwards it to the driver and the job logs).

    Not `print`: Ray Train patches print in workers to write both to stdout and to its logger (every line twice).
    """
    sys.stdout.write(f"[rigpose] {scrub(message)}\n")
    sys.stdout.flush()


class _StepProgress:
    """Rank 0: a `progress_line` every `every_s` seconds while an epoch runs (the driver's bar, see
    `rigpose.train.progress`). Counts steps and frames as batches pass; no sync, no `.item()`. `step0`: the run's
    steps before the current epoch (the worker moves it on after each)."""

    def __init__(self, epochs: int, total_steps: int, history: list[dict[str, Any]], *, step0: int,
                 every_s: float) -> None:
        self.epochs, self.total_steps, self.history, self.every_s = epochs, total_steps, history, every_s
        self.step0 = step0

    def wrap(self, batches: Iterable[Batch], epoch: int) -> Iterator[Batch]:
        last = self.history[-1] if self.history else {}
        t0 = t_said = time.perf_counter()
        frames = 0
        for step, batch in enumerate(batches, start=1):
            yield batch  # counted once the step on it is done
            frames += int(batch["kp"].shape[0])
            now = time.perf_counter()
            if now - t_said >= self.every_s:
                t_said = now
                sys.stdout.write(progress_line(epoch=epoch, epochs=self.epochs, step=step,
                                               steps=last.get("steps"), loss=last.get("train/loss"),
                                               frames_per_s=frames / max(now - t0, 1e-9),
                                               global_step=self.step0 + step, total_steps=self.total_steps) + "\n")
                sys.stdout.flush()


class _FirstBatchClock:
    """Wraps an iterable of batches; remembers the wall-clock time the first batch arrived."""

    def __init__(self) -> None:
        self.first: float | None = None

    def wrap(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        for batch in batches:
            if self.first is None:
                self.first = time.time()
            yield batch


class _InBackground:
    """Runs `fn` once in a daemon thread from construction; `wait()` joins it and re-raises what it raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as e:  # handed to wait()
                self._error = e

        self._thread = threading.Thread(target=run, name="rigpose-background", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. config: {"job", "skeleton", "manifest_sha256", "t_start", "tracking", "init",
    "steps_per_epoch"} (the last: each rank's full batches per epoch, `rigpose.train.trainer.steps_per_epoch`)."""
    import ray.train
    import ray.train.torch

    job = TrainJob.model_validate(config["job"])
    saved_job = scrub_obj(config["job"])  # what checkpoints hold: files, readable by whoever reads the run folder
    skeleton = get_skeleton(config["skeleton"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world > 1:  # where the ranks run (scaling.placement_strategy SPREAD: on different nodes)
        say(f"rank {rank} of {world} on node {ray.get_runtime_context().get_node_id()[:12]}")
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    state = load_state(checkpoint, map_location=device) if checkpoint is not None else None
    torch.manual_seed(job.optim.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    lifter = build_lifter(job, skeleton)
    init_source = warm_start(lifter, config.get("init"), state)  # every rank alike, before DDP's broadcast
    if rank == 0 and state is None and init_source is not None:
        say(f"warm start from {init_source['resolved']}")
    model = ray.train.torch.prepare_model(lifter)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate(job, world), weight_decay=job.optim.weight_decay)
    steps_per_epoch = int(config["steps_per_epoch"])
    budget = total_steps(job.optim, steps_per_epoch)
    epochs = num_epochs(budget, steps_per_epoch)  # the last one partial when the steps budget ends inside it
    max_epochs = epoch_limit(job.optim, budget, steps_per_epoch)
    patience = job.optim.early_stop_patience
    scheduler = lr_scheduler(optimizer, job.optim, budget, steps_per_epoch=steps_per_epoch)
    start_epoch, step, history = 0, 0, []
    if state is not None:
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
        resume_scheduler(scheduler, state["scheduler"], step=step)
        if rank == 0:
            ignored = "; model.init_weights ignored (the checkpoint's weights win)" if config.get("init") else ""
            say(f"resuming from the checkpoint of epoch {start_epoch}/{epochs} (step {step}/{budget}){ignored}")
    best = best_weights(state) if rank == 0 else None  # rank 0: (epoch, CPU weights) of the best epoch so far
    if patience is not None and history and history[-1].get("stopped_early"):
        max_epochs = start_epoch  # it stopped early: nothing more to train
        if rank == 0:
            say(f"run {job.run.name!r} stopped early after {start_epoch} epochs: nothing to do (set "
                "optim.early_stop_patience=null to train on)")
    elif rank == 0 and (step >= budget or (max_epochs is not None and start_epoch >= max_epochs)):
        say(f"run {job.run.name!r} has already trained {start_epoch} epochs ({step} steps): nothing to do")
    tracker, connected = None, None
    if rank == 0 and config.get("tracking") is not None:
        from rigpose.tracking.runs import RunLogger

        tracker = RunLogger(config["tracking"], warn=say)
        # connect (import mlflow, sqlite schema check, HTTP session) and send the checkpointed epochs a failed
        # attempt had not sent, in a thread while the data stream starts: start-up time, not the first epoch's,
        # and not added to it (about 3 s here). Only that thread touches the tracker until `connected.wait()`.
        connected = _InBackground(lambda: (tracker.backfill(history) if state is not None else None,
                                           tracker.flush()))
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if job.data.val_split is not None else None
    clock = _FirstBatchClock()
    # rank 0 feeds the driver's progress bar (other ranks pass their batches through); rarer with --verbose, where
    # the lines are shown raw among Ray's
    every_s = float("inf") if rank != 0 else 30.0 if verbose() else 2.0
    progress = _StepProgress(epochs, budget, history, step0=step, every_s=every_s)
    tracking_s = [0.0]
    unsent: list[tuple[int, dict[str, Any]]] = []  # (epoch, metrics) not yet known registered: REGISTERED_AFTER

    def batches(shard: Any, *, shuffle: bool) -> Iterable[Batch]:
        return shard.iter_torch_batches(
            batch_size=job.data.batch_size, dtypes=torch.float32, device=device, drop_last=shuffle,
            local_shuffle_buffer_size=(job.data.shuffle_buffer or None) if shuffle else None)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if world > 1:
            x = x.to(device)
            torch.distributed.all_reduce(x)
        return x.cpu() if x.device.type != "cpu" else x

    def early_stopping(result: EpochResult, metrics: dict[str, Any]) -> bool:
        """Records best_epoch and stopped_early in `metrics`, keeps the best weights (rank 0); True: stop now."""
        nonlocal best
        assert patience is not None
        es = early_stop([*history, metrics], patience=patience, min_delta=job.optim.early_stop_min_delta)
        stop = es.stop
        if world > 1:  # one decision for all ranks (each took it from the same all-reduced metric)
            stop = bool(reduce(torch.tensor([float(stop)]))[0] > 0)
        metrics["best_epoch"] = es.best_epoch if es.best_epoch is not None else -1
        metrics["stopped_early"] = float(stop)
        if rank == 0 and es.best_epoch == result.epoch:
            best = result.epoch, {k: v.detach().cpu().clone()
                                  for k, v in getattr(model, "module", model).state_dict().items()}
        return stop

    def on_epoch(result: EpochResult, global_step: int) -> bool:
        metrics = result.metrics()
        if result.epoch == start_epoch and clock.first is not None:  # this attempt's first epoch
            # seconds from `rigpose train` starting (driver clock) to this attempt's first batch: Ray, dataset and
            # worker start-up, and on a restart the time to recover
            metrics["startup_s"] = clock.first - config["t_start"]
        metrics["world_size"] = world
        stop = early_stopping(result, metrics) if patience is not None else False
        if connected is not None:
            connected.wait()
        if tracker is not None and result.epoch > start_epoch:
            metrics["tracking_s"] = tracking_s[0]  # rank 0's time logging to MLflow after the previous epoch
        history.append(metrics)
        progress.step0 = global_step
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save({"model": getattr(model, "module", model).state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": result.epoch, "step": global_step,
                            "history": history, "job": saved_job, "skeleton": skeleton.name,
                            "manifest_sha256": config["manifest_sha256"], "world_size": world,
                            "init_weights": init_source,
                            "best": None if best is None else {  # its own weights when this epoch is the best
                                "epoch": best[0], "model": None if best[0] == result.epoch else best[1]}},
                           Path(d) / STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(d)
                print_epoch(metrics, epochs)
            ray.train.report(metrics, checkpoint=ckpt)
        if rank == 0 and stop:
            b = int(metrics["best_epoch"])
            value = next((h.get(METRIC) for h in history if int(h["epoch"]) == b), None)
            there = f" ({value:.3g} px)" if value is not None else ""
            say(f"early stop after epoch {result.epoch + 1}: {METRIC} has not improved by "
                f"{job.optim.early_stop_min_delta:.1%} for {job.optim.early_stop_patience} epochs; model.pt gets the "
                f"weights of epoch {b + 1}{there}")
        if tracker is not None:  # after the checkpoint: a slow tracking server never delays it
            t0 = time.perf_counter()
            unsent.append((result.epoch, {k: v for k, v in metrics.items() if k != "epoch"}))
            while len(unsent) > REGISTERED_AFTER:
                epoch, values = unsent.pop(0)
                tracker.log_metrics(values, step=epoch)
            tracking_s[0] = time.perf_counter() - t0
        return stop

    fit(model, optimizer, scheduler, skeleton,
        train_batches=lambda epoch: progress.wrap(clock.wrap(batches(train_shard, shuffle=True)), epoch),
        val_batches=(lambda: batches(val_shard, shuffle=False)) if val_shard is not None else None,
        total_steps=budget, max_epochs=max_epochs, start_epoch=start_epoch, start_step=step, loss_cfg=job.loss,
        supervision=job.supervision, dropout=job.model.dropout, dropout_mode=job.model.dropout_schedule,
        grad_clip=job.optim.grad_clip, on_epoch=on_epoch, reduce=reduce, num_replicas=world,
        seed=job.optim.seed + rank)
    # the last REGISTERED_AFTER epochs stay unsent: the driver logs them from the final history (`publish`)
    if connected is not None:
        connected.wait()
    if tracker is not None and not tracker.flush_with_retries(attempts=3):
        say("MLflow tracking still unreachable at the end of training: the driver sends the missing epochs after "
            "training if it can")


def print_epoch(m: dict[str, Any], epochs: int) -> None:
    """One log line per epoch (rank 0): `epoch E/N step S/T ...` (the run's steps after it, of its budget)."""
    terms = " ".join(f"{k[6:]}={v:.3g}" for k, v in m.items() if k.startswith("train/") and k != "train/loss")
    val = f" val_reproj={m['val/reprojection_px']:.2f}px" if "val/reprojection_px" in m else ""
    if "val/mpjpe_mm" in m:
        val += f" val_mpjpe={m['val/mpjpe_mm']:.1f}mm"
    steps = f" step {int(m['step'])}/{int(m['total_steps'])}" if "step" in m else ""
    say(f"epoch {int(m['epoch']) + 1}/{epochs}{steps} loss={m['train/loss']:.4g}{val} {terms} lr={m['lr']:.2g} "
        f"{m['frames_per_s']:.0f} frames/s")
