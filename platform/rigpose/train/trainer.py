"""Ray wiring of training: Ray Data reads the Parquet shards, a `TorchTrainer` runs `rigpose.train.loop.fit`.

Driver side (`train`): opens the dataset (manifest), builds Ray datasets of preprocessed batches, starts the
trainer, and after `fit()` writes `<run_dir>/model.pt` (what `evaluate` and `lift` take as `--model`) and
`<run_dir>/history.json`. Worker side (`_train_func`): the model, DDP (gloo on CPU, nccl on GPU via
`ray.train.torch.prepare_model`), resume from `ray.train.get_checkpoint()`, and one `ray.train.report` per epoch on
every rank (rank 0 alone attaches the checkpoint).

The 2D-supervised path selects only `TRAINING_COLUMNS` from the Parquet files: `joints_3d` is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from rigpose.config import TrainJob
from rigpose.data.schema import EVAL_ONLY_COLUMNS, TRAINING_COLUMNS, frames_from_table
from rigpose.data.store import Dataset
from rigpose.model.batch import prepare_arrays
from rigpose.model.lifter import Lifter, LifterConfig
from rigpose.skeleton import Skeleton, get_skeleton
from rigpose.train.checkpoint import save_lifter
from rigpose.train.loop import EpochResult, fit
from rigpose.train.step import LossWeights

STATE_FILE = "state.pt"


class Preprocess:
    """Ray Data `map_batches` function: Arrow rows -> padded arrays -> model inputs (rigpose.model.batch)."""

    def __init__(self, *, num_joints: int, num_views: int, root_joints: tuple[int, ...], with_3d: bool) -> None:
        self.num_joints, self.num_views, self.root_joints, self.with_3d = num_joints, num_views, root_joints, with_3d

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        f = frames_from_table(table, num_joints=self.num_joints, num_views=self.num_views, with_3d=self.with_3d)
        if self.with_3d and f.joints_3d is None:
            raise ValueError("supervision: 3d needs joints_3d, and these rows have none")
        return prepare_arrays(f.keypoints, f.scores, f.cameras, f.view_mask, root_joints=self.root_joints,
                              joints_3d=f.joints_3d if self.with_3d else None)


def manifest_sha256(ds: Dataset) -> str:
    """Hash of the dataset's manifest: what a checkpoint was trained on."""
    return hashlib.sha256(ds.manifest.to_json().encode()).hexdigest()


def build_ray_datasets(job: TrainJob, ds: Dataset) -> dict[str, Any]:
    """{"train": ray Dataset, "val": ...} of preprocessed batches read from the dataset's shards."""
    import ray.data

    with_3d = job.supervision == "3d"
    columns = list(TRAINING_COLUMNS) + (list(EVAL_ONLY_COLUMNS) if with_3d else [])
    prep = Preprocess(num_joints=ds.skeleton.num_joints, num_views=ds.manifest.max_views,
                      root_joints=ds.skeleton.root_joints, with_3d=with_3d)
    out = {}
    splits = {"train": job.data.train_split}
    if job.data.val_split is not None:
        splits["val"] = job.data.val_split
    for name, split in splits.items():
        urls = ds.shard_urls(splits=[split], rig_ids=job.data.rig_ids)
        if not urls:
            raise ValueError(f"{ds.root}: split {split!r} has no shards for rigs {job.data.rig_ids or 'any'}")
        rd = ray.data.read_parquet(urls, partitioning=None, shuffle="files" if name == "train" else None)
        rd = rd.select_columns(columns)
        if name == "train" and job.data.max_rows:
            rd = rd.limit(job.data.max_rows)
        rd = rd.map_batches(prep, batch_format="pyarrow", batch_size=1024)
        out[name] = rd.materialize() if job.data.cache else rd
    return out


def _lifter_config(job: TrainJob, skeleton: Skeleton) -> LifterConfig:
    return LifterConfig(num_joints=skeleton.num_joints, root_joints=skeleton.root_joints, width=job.model.width,
                        num_blocks=job.model.num_blocks, dropout=job.model.dropout, output=job.model.output)


def _loss_weights(job: TrainJob) -> LossWeights:
    return LossWeights(**job.loss.model_dump())


def _train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    job = TrainJob.model_validate(config["job"])
    skeleton = get_skeleton(config["skeleton"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(job.optim.seed)
    model = ray.train.torch.prepare_model(Lifter(_lifter_config(job, skeleton)))
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam(model.parameters(), lr=job.optim.lr, weight_decay=job.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=job.optim.lr_decay)
    start_epoch, step, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=False)
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
        if rank == 0:
            print(f"[rigpose] resuming from epoch {state['epoch']} (step {step})", flush=True)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if job.data.val_split is not None else None

    def batches(shard: Any, *, shuffle: bool) -> Any:
        return shard.iter_torch_batches(
            batch_size=job.data.batch_size, dtypes=torch.float32, device=device, drop_last=shuffle,
            local_shuffle_buffer_size=(job.data.shuffle_buffer or None) if shuffle else None)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if world > 1:
            x = x.to(device)
            torch.distributed.all_reduce(x)
        return x.cpu() if x.device.type != "cpu" else x

    def on_epoch(result: EpochResult, global_step: int) -> None:
        metrics = result.metrics()
        history.append(metrics)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save({"model": getattr(model, "module", model).state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": result.epoch, "step": global_step,
                            "history": history, "job": config["job"], "skeleton": skeleton.name,
                            "manifest_sha256": config["manifest_sha256"]}, Path(d) / STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(d)
                _print_epoch(metrics, job.optim.epochs)
            ray.train.report(metrics, checkpoint=ckpt)

    fit(model, optimizer, scheduler, skeleton,
        train_batches=lambda epoch: batches(train_shard, shuffle=True),
        val_batches=(lambda: batches(val_shard, shuffle=False)) if val_shard is not None else None,
        epochs=job.optim.epochs, start_epoch=start_epoch, start_step=step, weights=_loss_weights(job),
        supervision=job.supervision, dropout=job.model.dropout, dropout_mode=job.model.dropout_schedule,
        grad_clip=job.optim.grad_clip, on_epoch=on_epoch, reduce=reduce, seed=job.optim.seed + rank)


def _print_epoch(m: dict[str, Any], epochs: int) -> None:
    terms = " ".join(f"{k[6:]}={v:.3g}" for k, v in m.items() if k.startswith("train/") and k != "train/loss")
    val = f" val_reproj={m['val/reprojection_px']:.2f}px" if "val/reprojection_px" in m else ""
    print(f"[rigpose] epoch {int(m['epoch']) + 1}/{epochs} loss={m['train/loss']:.4g}{val} {terms} "
          f"lr={m['lr']:.2g} {m['frames_per_s']:.0f} frames/s", flush=True)


def init_ray(address: str | None) -> None:
    """Connect to `address`, or start a local Ray with logical CPU oversubscription (2-core machines)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=True, configure_logging=False)


def train(job: TrainJob) -> dict[str, Any]:
    """Run a training job; returns {"run_dir", "model", "history", "checkpoint"}."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ds = Dataset(job.data.url)
    skeleton = ds.skeleton
    run_dir = Path(job.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    init_ray(job.run.ray_address)
    datasets = build_ray_datasets(job, ds)
    metric = "val/reprojection_px" if "val" in datasets else "train/loss"
    trainer = TorchTrainer(
        _train_func,
        train_loop_config={"job": job.model_dump(), "skeleton": skeleton.name, "manifest_sha256": manifest_sha256(ds)},
        scaling_config=ScalingConfig(num_workers=job.scaling.num_workers, use_gpu=job.scaling.use_gpu,
                                     resources_per_worker={"CPU": job.scaling.cpus_per_worker}),
        run_config=RunConfig(
            name=job.run.name, storage_path=str(run_dir / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=job.run.checkpoints_to_keep,
                                               checkpoint_score_attribute=metric, checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=job.run.max_failures)),
        datasets=datasets,
    )
    result = trainer.fit()
    return _finish(job, result, run_dir, skeleton, ds)


def _finish(job: TrainJob, result: Any, run_dir: Path, skeleton: Skeleton, ds: Dataset) -> dict[str, Any]:
    """Write model.pt (latest checkpoint) and history.json into the run folder."""
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (see the Ray logs under {run_dir / 'ray'})")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    model = Lifter(_lifter_config(job, skeleton))
    model.load_state_dict(state["model"])
    meta = {"supervision": job.supervision, "dataset": job.data.url, "manifest_sha256": state["manifest_sha256"],
            "epochs": state["epoch"] + 1, "steps": state["step"], "run_name": job.run.name}
    save_lifter(run_dir / "model.pt", model, skeleton, meta=meta)
    (run_dir / "history.json").write_text(json.dumps(state["history"], indent=1))
    (run_dir / "job.json").write_text(json.dumps(job.model_dump(), indent=1))
    return {"run_dir": str(run_dir), "model": str(run_dir / "model.pt"), "history": state["history"],
            "checkpoint": result.checkpoint.path}
