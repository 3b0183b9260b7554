"""Ray Data input pipeline of training: Parquet shards (local or s3://) -> preprocessed, shuffled model batches.

What it reads: only the shards the manifest lists for the chosen split and rigs (the manifest, not a directory
listing, decides), and only `MODEL_COLUMNS` of them, plus `joints_3d` in two cases: the training split of the
3D-supervised baseline, and the validation split when its shards hold any labels (`split_has_3d`, from the Parquet
footers), for validation metrics only. The 2D-supervised training split never reads it. Rows of rigs with
different camera counts train together: every row is padded to the dataset's largest rig with a view mask
(`rigpose.data.schema.observations_from_table`). `training_shards` lists a job's shards, refusing a split or rig
it names that the dataset lacks; the trainer checks them against the manifest before Ray starts (`verify_shards`
in `rigpose.data.validate`).

Validation labels are optional per row: every validation batch then carries `joints_3d` [N, J, 3] (world metres,
0 where unknown) and `joints_3d_ok` [N, J] (1 = labelled), so blocks with and without labels have the same
columns (what `iter_torch_batches` needs); a split where only some shards or rows are labelled is measured on the
labelled ones (`rigpose.train.loop.validate`).

Shuffling, every epoch: the order of the shards (streaming) or of the cached blocks changes with each execution
(`reseed_after_execution`), then `iter_torch_batches(local_shuffle_buffer_size=...)` mixes rows within a buffer.

Preprocessing (`Preprocess`, vectorised NumPy over a block of rows: undistortion, K^-1, the triangulated root) runs
in Ray Data tasks, not in the training workers. With `data.cache` it runs once and the result stays in the object
store; without it, it streams again every epoch (datasets larger than the object store).
"""

from __future__ import annotations

import posixpath
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rigpose.data.manifest import ShardInfo
from rigpose.data.reader import Dataset
from rigpose.data.schema import EVAL_ONLY_COLUMNS, joints_3d_from_table, observations_from_table
from rigpose.model.inputs import prepare_arrays

if TYPE_CHECKING:
    import ray.data

    from rigpose.config import DataConfig

# The only columns a lifter's training or inference needs (all numeric; the key columns stay on storage).
MODEL_COLUMNS = ("num_views", "K", "dist", "R", "t", "keypoints", "scores")
PREPROCESS_ROWS = 1024  # rows per Ray Data preprocessing call (one vectorised prepare_arrays)


class Preprocess:
    """Ray Data `map_batches` function: Arrow rows -> padded arrays -> model inputs (rigpose.model.inputs).

    `with_3d`: the rows must carry joints_3d (3D-supervised training); `eval_3d`: add the optional validation
    labels `joints_3d` and `joints_3d_ok` (see `labels_3d`) to every block, labelled or not.
    """

    def __init__(self, *, num_joints: int, num_views: int, root_joints: tuple[int, ...], with_3d: bool,
                 with_pseudo: bool = True, eval_3d: bool = False) -> None:
        if with_3d and eval_3d:
            raise ValueError("Preprocess: with_3d (required labels, training) and eval_3d (optional labels, "
                             "validation) are for different splits; ask for one")
        self.num_joints, self.num_views, self.root_joints, self.with_3d = num_joints, num_views, root_joints, with_3d
        self.with_pseudo = with_pseudo  # triangulate every joint (pseudo_world), or the root only (~6x faster)
        self.eval_3d = eval_3d

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        kp, scores, cameras, view_mask = observations_from_table(table, num_joints=self.num_joints,
                                                                 num_views=self.num_views)
        joints_3d = None
        if self.with_3d:
            joints_3d = joints_3d_from_table(table, num_joints=self.num_joints)
            if joints_3d is None:
                raise ValueError("supervision: 3d needs joints_3d, and these rows have none")
        out = prepare_arrays(kp, scores, cameras, view_mask, root_joints=self.root_joints, joints_3d=joints_3d,
                             pseudo_3d=self.with_pseudo)
        if self.eval_3d:
            out.update(labels_3d(table, num_joints=self.num_joints))
        return out


def labels_3d(table: pa.Table, *, num_joints: int) -> dict[str, np.ndarray]:
    """Validation labels of a block, the same keys whether or not it has any: joints_3d [N, J, 3] float32 world
    metres (0 where unknown) and joints_3d_ok [N, J] float32 (1 where the joint is labelled and finite)."""
    N = table.num_rows
    X = joints_3d_from_table(table, num_joints=num_joints)  # NaN where unknown; None when no row has labels
    if X is None:
        return {"joints_3d": np.zeros((N, num_joints, 3), np.float32),
                "joints_3d_ok": np.zeros((N, num_joints), np.float32)}
    ok = np.isfinite(X).all(-1)
    return {"joints_3d": np.where(ok[..., None], X, 0.0).astype(np.float32), "joints_3d_ok": ok.astype(np.float32)}


def split_has_3d(ds: Dataset, split: str, *, rig_ids: list[str] | None = None) -> bool:
    """Whether any row of `split` (of `rig_ids`) has joints_3d, from the shards' Parquet footers (no data read).

    A footer says so when the column's values outnumber its nulls; a shard written without statistics counts as
    labelled (its rows' `joints_3d_ok` decides later). Stops at the first labelled shard.
    """
    for shard in ds.shards(splits=[split], rig_ids=rig_ids):
        meta = pq.read_metadata(posixpath.join(ds.path, shard.path), filesystem=ds.fs)
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        cols = [i for i, n in enumerate(names) if n.split(".")[0] == EVAL_ONLY_COLUMNS[0]]
        for rg in range(meta.num_row_groups):
            for i in cols:
                chunk = meta.row_group(rg).column(i)
                stats = chunk.statistics
                if stats is None or not stats.has_null_count or chunk.num_values > stats.null_count:
                    return True
    return False


def check_rig_ids(ds: Dataset, rig_ids: list[str] | None) -> None:
    """ValueError naming `data.rig_ids` when it asks for rigs the dataset does not have."""
    if rig_ids is None:
        return
    if not rig_ids:
        raise ValueError("data.rig_ids: an empty list selects nothing; use null for all rigs")
    unknown = sorted(set(rig_ids) - set(ds.manifest.rigs))
    if unknown:
        raise ValueError(f"data.rig_ids: {ds.root} has no rig {unknown}; it has {sorted(ds.manifest.rigs)}")


def training_shards(ds: Dataset, data: DataConfig) -> list[ShardInfo]:
    """The shards a training job reads: its train and val splits (distinct, TrainJob checks) of the selected rigs.

    First checks what the job names against the dataset: `ValueError` naming the key (`data.rig_ids`,
    `data.train_split`, `data.val_split`) for a rig or split the dataset lacks, or a split with no shards of the
    selected rigs; the cheap checks that would otherwise fail only once Ray has started.
    """
    check_rig_ids(ds, data.rig_ids)
    have = sorted(ds.manifest.splits())
    out: list[ShardInfo] = []
    for key, split in (("data.train_split", data.train_split), ("data.val_split", data.val_split)):
        if split is None:
            continue
        if split not in have:
            raise ValueError(f"{key}: split {split!r} is not in dataset {ds.root} (it has: {', '.join(have)})")
        shards = ds.shards(splits=[split], rig_ids=data.rig_ids)
        if not shards:
            raise ValueError(f"{key}: split {split!r} of dataset {ds.root} has no shards of the rigs "
                             f"data.rig_ids selects ({', '.join(data.rig_ids or [])})")
        out += shards
    return out


def read_split(ds: Dataset, split: str, *, rig_ids: list[str] | None = None, with_3d: bool = False,
               with_pseudo: bool = True, eval_3d: bool = False, shuffle_seed: int | None = None,
               max_rows: int | None = None) -> ray.data.Dataset:
    """A Ray dataset of preprocessed model inputs for one split (streaming: nothing is read until iterated).

    `with_3d` / `eval_3d`: required / optional (validation) 3D labels, see `Preprocess`.
    `shuffle_seed`: shuffle the shard order anew on every execution (epoch), reproducibly from this seed.
    """
    import ray.data
    from ray.data import FileShuffleConfig

    check_rig_ids(ds, rig_ids)
    urls = ds.shard_urls(splits=[split], rig_ids=rig_ids)
    if not urls:
        raise ValueError(f"{ds.root}: split {split!r} has no shards for rigs {rig_ids or 'any'}")
    columns = [*MODEL_COLUMNS, *(EVAL_ONLY_COLUMNS if with_3d or eval_3d else ())]
    shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
    rd = ray.data.read_parquet(urls, partitioning=None, shuffle=shuffle).select_columns(columns)
    if max_rows:
        rd = rd.limit(max_rows)
    prep = Preprocess(num_joints=ds.skeleton.num_joints, num_views=ds.manifest.max_views,
                      root_joints=ds.skeleton.root_joints, with_3d=with_3d, with_pseudo=with_pseudo,
                      eval_3d=eval_3d)
    return rd.map_batches(prep, batch_format="pyarrow", batch_size=PREPROCESS_ROWS)


def build_datasets(data: DataConfig, ds: Dataset, *, with_3d: bool, seed: int, with_pseudo: bool = True
                   ) -> dict[str, Any]:
    """{"train": ..., "val": ...} Ray datasets for a TorchTrainer (val only when `data.val_split` is set).

    `with_3d`: the training split carries joints_3d (the 3D-supervised baseline); otherwise it never reads it.
    The val split carries joints_3d / joints_3d_ok for validation metrics whenever its shards hold labels
    (`split_has_3d`), whatever the supervision. `with_pseudo=False` (no pseudo-3D loss term) preprocesses without
    the per-joint triangulation.
    """
    from ray.data import DataContext, RandomSeedConfig

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_progress_bars and sys.stderr.isatty()  # piped logs: no cursor codes
    splits = {"train": data.train_split}
    if data.val_split is not None:
        splits["val"] = data.val_split
    out: dict[str, Any] = {}
    for name, split in splits.items():
        train = name == "train"
        shuffle_seed = seed if (train and data.shuffle_files and not data.cache) else None
        eval_3d = not train and split_has_3d(ds, split, rig_ids=data.rig_ids)
        rd = read_split(ds, split, rig_ids=data.rig_ids, with_3d=with_3d and train, with_pseudo=with_pseudo,
                        eval_3d=eval_3d, shuffle_seed=shuffle_seed, max_rows=data.max_rows if train else None)
        if data.cache:
            rd = rd.materialize()
            if train and data.shuffle_files:  # a new block order every epoch (each epoch re-executes this op)
                rd = rd.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
        out[name] = rd
    return out
