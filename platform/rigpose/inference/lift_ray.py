"""Batch inference on Ray Data: a registered (or saved) lifter over a dataset split, predictions to one Parquet file.

`lift_dataset_ray(...)` writes the same file as `rigpose.inference.lift.lift_dataset` (columns, schema metadata, one
file published all at once, nothing left at `out_url` on failure), but the work is spread over a Ray cluster:

    the split's Parquet row groups (shards from the manifest; local or s3://; never the joints_3d column)
      -> map_batches(LiftBatches, actor pool of `concurrency`): each actor builds the model ONCE from the bytes the
         driver put in the object store, and turns every Arrow batch into `Frames` and then into prediction rows
         (`rigpose.inference.lift.lift_frames`, the in-process path's own code)
      -> the driver streams the prediction blocks into one ParquetWriter.

The model is loaded once, by the driver: a registry URI (`models:/NAME@ALIAS` pinned to the version the alias
points at when the run starts; the driver's MLflow URIs, nothing set process-wide) or a model file / run folder.
Its weights go to the actors as one model file's bytes (`rigpose.model.checkpoint.lifter_to_bytes`) through Ray's
object store, so every actor runs exactly the weights the driver loaded, needs no MLflow (neither its import, about
1 s per actor, nor registry credentials) and no shared storage for a model file on a multi-node cluster.

Rows keep the order of the in-process path (`preserve_order`), so the file equals `lift_dataset`'s for single-view
lifts and fusion. Refinement and adaptation work per batch, so they depend on how rows are batched there as here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from rigpose.config import MultiViewConfig
from rigpose.data.pipeline import ReadRowGroups, row_groups
from rigpose.data.schema import ARROW_SCHEMA, EVAL_ONLY_COLUMNS, frames_from_table
from rigpose.inference.drop import check_dataset_drop
from rigpose.inference.lift import (
    DEFAULT_BATCH_SIZE,
    check_mode,
    dataset_floors,
    lift_frames,
    open_dataset,
    output_schema,
    published_parquet,
)
from rigpose.inference.models import load_model
from rigpose.model.checkpoint import lifter_from_bytes, lifter_to_bytes
from rigpose.tracking.runs import is_model_uri

#: Columns the lifter's batches are read with: every column but the 3D labels.
READ_COLUMNS = tuple(f.name for f in ARROW_SCHEMA if f.name not in EVAL_ONLY_COLUMNS)
#: Ray Data block size: ~16k frames a block (Ray's default, 128 MiB, makes ~125k-frame blocks: a few blocks per
#: dataset, idle actors while one finishes the last block).
BLOCK_BYTES = 16 * 2**20
#: Ray CPUs a read task reserves (not the actors' 1: see `_predictions`)
READ_CPUS = 0.5


class LiftBatches:
    """Ray Data `map_batches` callable: one per actor, the model built once in `__init__` from `model` (a model
    file's bytes, `lifter_to_bytes`, or a Ray object reference to them); Arrow rows of the dataset (without
    joints_3d) in, prediction rows of `mode` out (`rigpose.inference.lift.lift_frames`)."""

    def __init__(self, model: Any, *, mode: str, multi_view: MultiViewConfig, num_joints: int,
                 num_views: int, num_threads: int, floors: dict[str, float | None] | None = None,
                 drop_cameras: tuple[str, ...] = ()) -> None:
        torch.set_num_threads(num_threads)
        if not isinstance(model, bytes):
            import ray

            model = ray.get(model)
        self.model, self.skeleton, _ = lifter_from_bytes(model, where="the driver's model")
        self.mode, self.multi_view = mode, multi_view
        self.num_joints, self.num_views, self.floors = num_joints, num_views, floors
        self.drop_cameras = drop_cameras

    def __call__(self, table: pa.Table) -> pa.Table:
        frames = frames_from_table(table, num_joints=self.num_joints, num_views=self.num_views, with_3d=False)
        return lift_frames(self.model, self.skeleton, frames, mode=self.mode, multi_view=self.multi_view,
                           floors=self.floors, drop_cameras=self.drop_cameras)


def lift_dataset_ray(model_uri: str, data_url: str, *, split: str, out_url: str, mode: str = "single",
                     multi_view: MultiViewConfig | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                     max_rows: int | None = None, concurrency: int | None = None, num_threads: int = 1,
                     connect: Callable[[], None] | None = None, drop_cameras: Iterable[str] = ()
                     ) -> dict[str, Any]:
    """Lift `split` of the dataset at `data_url` with `model_uri` on Ray Data; write Parquet to `out_url`.

    `model_uri`: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or a local model file / run folder.
    `concurrency`: actors (each holds one model and uses `num_threads` torch threads); default
    `default_concurrency()`. `connect`: called once the model and dataset have been checked (so bad input fails
    before Ray starts), to connect Ray (the CLI passes `rigpose.cluster.connect.init_ray`); without it, Ray must
    already be connected.
    Modes, `drop_cameras` and the file: as `rigpose.inference.lift.lift_dataset`. Returns {"out", "rows", "frames",
    "model" (the pinned URI or the path), "concurrency", "dropped_cameras"}.
    """
    check_mode(mode)
    multi_view = multi_view or MultiViewConfig()
    for name, value in (("batch_size", batch_size), ("max_rows", max_rows), ("concurrency", concurrency),
                        ("num_threads", num_threads)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    tracking_uri = registry_uri = None
    if is_model_uri(model_uri):
        import mlflow

        from rigpose.tracking.registry import absolute_mlflow_uri, pin_model_uri

        # this process's MLflow URIs, passed on explicitly (never set process-wide: see
        # rigpose.tracking.runs.mlflow_uri)
        tracking_uri = absolute_mlflow_uri(mlflow.get_tracking_uri())
        registry_uri = absolute_mlflow_uri(mlflow.get_registry_uri())
        model = pin_model_uri(model_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    else:
        model = model_uri if "://" in model_uri else str(Path(model_uri).resolve())  # as recorded in the result
    # a bad URI or file fails here, before Ray starts; these weights are the ones every actor runs
    lifter, skeleton, meta = load_model(model, tracking_uri=tracking_uri, registry_uri=registry_uri)
    weights = lifter_to_bytes(lifter, skeleton, meta=meta)
    ds = open_dataset(data_url, skeleton, split=split, model=model_uri)
    dropped = check_dataset_drop(ds, drop_cameras, split=split, modes=(mode,))
    schema = output_schema(mode, skeleton=skeleton, model=model_uri, split=split, drop_cameras=dropped)
    frames = ds.manifest.splits()[split]["rows"]
    frames = min(frames, max_rows) if max_rows is not None else frames

    import ray

    if connect is not None:
        connect()
    if not ray.is_initialized():
        raise RuntimeError("lift_dataset_ray needs a connected Ray: call rigpose.cluster.connect.init_ray first")
    concurrency = concurrency or default_concurrency()
    rd = _predictions(ds, split, ray.put(weights), mode=mode, multi_view=multi_view, batch_size=batch_size,
                      max_rows=max_rows, concurrency=concurrency, num_threads=num_threads, drop_cameras=dropped)
    plain = pa.schema(list(schema))  # the writer's schema without the file metadata, which the writer adds
    rows = 0
    with published_parquet(out_url, schema) as writer:
        for table in rd.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.write_table(table.cast(plain))
            rows += table.num_rows
    return {"out": out_url, "rows": rows, "frames": frames, "model": model, "concurrency": concurrency,
            "dropped_cameras": list(dropped)}


def _predictions(ds: Any, split: str, weights: Any, *, mode: str, multi_view: MultiViewConfig,
                 batch_size: int, max_rows: int | None, concurrency: int, num_threads: int,
                 drop_cameras: tuple[str, ...] = ()) -> Any:
    """The Ray dataset of prediction rows (lazy: nothing runs until iterated), in the split's row order.
    `weights`: a Ray object reference to the model file's bytes (`LiftBatches`)."""
    import ray.data
    from ray.data import DataContext

    groups = row_groups(ds, split)
    if not groups:
        raise ValueError(f"{ds.root}: split {split!r} has no shards")
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_progress_bars and sys.stderr.isatty()  # piped logs: no cursor codes
    # the manifest's files, one read task per row group, in order (`read_parquet` lists them first: ~2 s here).
    # Half a CPU per read task keeps the reads apart from the actors (Ray Data fuses a task into the next actor
    # pool when their resources match, and the fused pool then ran one actor: half the throughput).
    rd = ray.data.from_items(groups, override_num_blocks=len(groups)).map_batches(
        ReadRowGroups(list(READ_COLUMNS)), batch_size=1, batch_format="numpy", num_cpus=READ_CPUS)
    if max_rows is not None:
        rd = rd.limit(max_rows)
    rd = rd.map_batches(
        LiftBatches, batch_size=batch_size, batch_format="pyarrow", num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        fn_constructor_kwargs={"model": weights, "mode": mode, "multi_view": multi_view,
                               "num_joints": ds.skeleton.num_joints, "num_views": ds.manifest.max_views,
                               "num_threads": num_threads, "floors": dataset_floors(ds),
                               "drop_cameras": drop_cameras})
    rd.context.execution_options.preserve_order = True  # the first max_rows rows; the in-process path's order
    rd.context.target_max_block_size = BLOCK_BYTES
    return rd


def default_concurrency() -> int:
    """Actors when none are asked for: one per CPU of the Ray cluster but one (left for reading; all of them on 1-2
    CPUs), counting at most this machine's cores when the cluster is this machine alone (a local Ray
    oversubscribes logical CPUs, see `init_ray`)."""
    import os

    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    local = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {ray.util.get_node_ip_address()}
    if local:
        cpus = min(cpus, os.cpu_count() or 1)
    return max(1, cpus - 1) if cpus > 2 else cpus
