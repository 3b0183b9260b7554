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

Shuffling, every epoch: the order of the row groups (streaming) or of the cached blocks changes with each execution
(`reseed_after_execution`), then `iter_torch_batches(local_shuffle_buffer_size=...)` mixes rows within a buffer.

Mixing (`data.mix_url`, `data.mix_ratio` r): every epoch takes all the training rows of `data.url` (n) and
`mix_rows(n, r)` rows of the mixed-in dataset's training split (all its rigs; repeated when it has fewer), so that
they are r of the epoch's rows (`epoch_rows`; the driver's steps per epoch count both). Which of its rows changes
every epoch with `data.shuffle_files`: the first rows of a new row-group order (streaming) or block order (cached: cut
into blocks of about 1/`MIX_BLOCKS` of an epoch's mixed-in rows, so that they are drawn from all over it);
both parts are padded to the larger of the two datasets' camera counts, and the cached blocks of both are put in one
new random order every epoch, before the local shuffle buffer mixes rows. `check_mix` refuses a dataset of another
skeleton. Validation reads `data.url` only.

Preprocessing (`Preprocess`, vectorised NumPy over a block of rows: undistortion, K^-1, the triangulated root) runs
in Ray Data tasks, not in the training workers, fused with the read: one task per Parquet row group
(`ReadPreprocess`; the writer makes groups of 16k rows, `rigpose.data.writer.ROW_GROUP_ROWS`). With `data.cache`
it runs once and the result stays in the object store; without it, it streams again every epoch (datasets larger
than the object store).
"""

from __future__ import annotations

import math
import posixpath
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rigpose.data.manifest import ShardInfo
from rigpose.data.reader import Dataset
from rigpose.data.schema import EVAL_ONLY_COLUMNS, joints_3d_from_table, observations_from_table
from rigpose.model.inputs import prepare_arrays
from rigpose.storage import protocol_url, url_to_fs

if TYPE_CHECKING:
    import ray.data

    from rigpose.config import DataConfig

# The only columns a lifter's training or inference needs (all numeric; the key columns stay on storage).
MODEL_COLUMNS = ("num_views", "K", "dist", "R", "t", "keypoints", "scores")
PREPROCESS_ROWS = 1024  # rows per Ray Data preprocessing call (one vectorised prepare_arrays)
MIX_BLOCKS = 16  # data.mix_url, cached: an epoch's mixed-in rows are at least this many blocks drawn at random


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


def mix_rows(num_rows: int, ratio: float) -> int:
    """Rows of the mixed-in dataset per epoch beside `num_rows` rows of the main one: `ratio` of the epoch's rows."""
    if not 0 < ratio < 1:
        raise ValueError(f"data.mix_ratio: expected 0 < ratio < 1, got {ratio!r}")
    return round(num_rows * ratio / (1.0 - ratio))


def epoch_rows(data: DataConfig, ds: Dataset) -> tuple[int, int]:
    """(rows of `ds`, rows of data.mix_url) one epoch trains on: the training split's rows of the selected rigs
    (`data.rig_ids`), at most `data.max_rows`, and `mix_rows` of them with a mix (0 without), from the manifest."""
    rows = sum(s.rows for s in ds.shards(splits=[data.train_split], rig_ids=data.rig_ids))
    rows = min(rows, data.max_rows) if data.max_rows else rows
    return rows, mix_rows(rows, data.mix_ratio) if data.mix_url is not None else 0


def check_mix(ds: Dataset, mix: Dataset, data: DataConfig) -> list[ShardInfo]:
    """The shards of the mixed-in dataset `mix` (data.mix_url) that training reads: its `data.train_split`, every
    rig. ValueError naming both datasets when its skeleton is not `ds`'s (data.url), or naming data.mix_url when
    it has no rows of that split."""
    if mix.skeleton.name != ds.skeleton.name:
        raise ValueError(f"data.mix_url {mix.root!r}: its skeleton is {mix.skeleton.name!r}, that of data.url "
                         f"{ds.root!r} is {ds.skeleton.name!r}; datasets mixed in training need the same skeleton")
    if data.train_split not in mix.manifest.splits():
        raise ValueError(f"data.mix_url {mix.root!r}: no split {data.train_split!r} (data.train_split) to mix in; it "
                         f"has {sorted(mix.manifest.splits())}")
    shards = mix.shards(splits=[data.train_split])
    if not sum(s.rows for s in shards):
        raise ValueError(f"data.mix_url {mix.root!r}: split {data.train_split!r} has no rows to mix in")
    return shards


def row_groups(ds: Dataset, split: str, *, rig_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """The Parquet row groups of a split's shards, in manifest order: {"url", "row_group", "rows"} each, from the
    shards' footers (one small read per shard). The units the streaming read is cut into (`ReadPreprocess`)."""
    out = []
    for shard in ds.shards(splits=[split], rig_ids=rig_ids):
        path = posixpath.join(ds.path, shard.path)
        meta = pq.read_metadata(path, filesystem=ds.fs)
        url = protocol_url(ds.fs, path)
        out.extend({"url": url, "row_group": i, "rows": meta.row_group(i).num_rows}
                   for i in range(meta.num_row_groups))
    return out


class ReadPreprocess:
    """Ray Data `map_batches` function, read and preprocessing fused in one task: row groups (`row_groups` items)
    -> their `columns` -> `Preprocess`d blocks of `rows` rows, yielded one by one, so the first batch of an epoch
    waits for one row group, not for whole shards."""

    def __init__(self, prep: Preprocess, columns: list[str], *, rows: int = PREPROCESS_ROWS) -> None:
        if rows < 1:
            raise ValueError(f"ReadPreprocess: rows must be >= 1, got {rows}")
        self.prep, self.columns, self.rows = prep, columns, rows

    def __call__(self, items: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for url, index in zip(items["url"], items["row_group"], strict=True):
            table = read_row_group(str(url), int(index), self.columns)
            for start in range(0, table.num_rows, self.rows):
                yield self.prep(table.slice(start, self.rows))


class ReadRowGroups:
    """Ray Data `map_batches` function: row groups (`row_groups` items) -> their `columns`, one Arrow table each,
    in order (batch inference's read, `rigpose.inference.lift_ray`: the manifest names the files, so nothing is
    listed, and the first rows wait for one row group)."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)

    def __call__(self, items: dict[str, np.ndarray]) -> Iterator[pa.Table]:
        for url, index in zip(items["url"], items["row_group"], strict=True):
            yield read_row_group(str(url), int(index), self.columns)


def read_row_group(url: str, index: int, columns: list[str]) -> pa.Table:
    """Row group `index` of the Parquet file at `url` (local path or s3://, credentials from the environment),
    only `columns`."""
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):  # Arrow's own file reader, memory mapped
        return pq.ParquetFile(path, memory_map=True).read_row_group(index, columns=columns)
    with fs.open(path, "rb") as f:  # range requests: the footer and this group's column chunks
        return pq.ParquetFile(f).read_row_group(index, columns=columns)


def read_split(ds: Dataset, split: str, *, rig_ids: list[str] | None = None, with_3d: bool = False,
               with_pseudo: bool = True, eval_3d: bool = False, shuffle_seed: int | None = None,
               max_rows: int | None = None, num_views: int | None = None) -> ray.data.Dataset:
    """A Ray dataset of preprocessed model inputs for one split (streaming: nothing is read until iterated).

    One Ray Data task per Parquet row group reads it and preprocesses it (`ReadPreprocess`): the read is as
    parallel as the split has row groups, and blocks come out `PREPROCESS_ROWS` rows at a time.
    `with_3d` / `eval_3d`: required / optional (validation) 3D labels, see `Preprocess`.
    `shuffle_seed`: shuffle the row-group order anew on every execution (epoch), reproducibly from this seed.
    `num_views`: pad every row to this many views (default: the dataset's largest rig; a mix: the larger one's).
    """
    import ray.data
    from ray.data import RandomSeedConfig

    check_rig_ids(ds, rig_ids)
    groups = row_groups(ds, split, rig_ids=rig_ids)
    if not groups:
        raise ValueError(f"{ds.root}: split {split!r} has no shards for rigs {rig_ids or 'any'}")
    columns = [*MODEL_COLUMNS, *(EVAL_ONLY_COLUMNS if with_3d or eval_3d else ())]
    rd = ray.data.from_items(groups, override_num_blocks=len(groups))
    if shuffle_seed is not None:
        rd = rd.randomize_block_order(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
    prep = Preprocess(num_joints=ds.skeleton.num_joints, num_views=num_views or ds.manifest.max_views,
                      root_joints=ds.skeleton.root_joints, with_3d=with_3d, with_pseudo=with_pseudo,
                      eval_3d=eval_3d)
    rd = rd.map_batches(ReadPreprocess(prep, columns), batch_format="numpy", batch_size=1)
    return rd.limit(max_rows) if max_rows else rd


def build_datasets(data: DataConfig, ds: Dataset, *, with_3d: bool, seed: int, with_pseudo: bool = True,
                   mix: Dataset | None = None) -> dict[str, Any]:
    """{"train": ..., "val": ...} Ray datasets for a TorchTrainer (val only when `data.val_split` is set).

    `with_3d`: the training split carries joints_3d (the 3D-supervised baseline); otherwise it never reads it.
    The val split carries joints_3d / joints_3d_ok for validation metrics whenever its shards hold labels
    (`split_has_3d`), whatever the supervision. `with_pseudo=False` (no pseudo-3D loss term) preprocesses without
    the per-joint triangulation. `mix`: the dataset data.mix_url names (checked with `check_mix`), mixed into
    every epoch's training rows (see the module docstring).
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_progress_bars and sys.stderr.isatty()  # piped logs: no cursor codes
    out: dict[str, Any] = {"train": _train_dataset(data, ds, with_3d=with_3d, seed=seed, with_pseudo=with_pseudo,
                                                   mix=mix)}
    if data.val_split is not None:
        rd = read_split(ds, data.val_split, rig_ids=data.rig_ids, with_3d=False, with_pseudo=with_pseudo,
                        eval_3d=split_has_3d(ds, data.val_split, rig_ids=data.rig_ids))
        out["val"] = rd.materialize() if data.cache else rd
    return out


def _train_dataset(data: DataConfig, ds: Dataset, *, with_3d: bool, seed: int, with_pseudo: bool,
                   mix: Dataset | None) -> ray.data.Dataset:
    """The training split of `ds`, with `mix`'s rows mixed in when given; reshuffled every epoch (`data.cache`:
    materialised once, then a new block order every epoch; streaming: a new shard order)."""
    from ray.data import RandomSeedConfig

    def reshuffled(rd: ray.data.Dataset, offset: int = 0) -> ray.data.Dataset:
        if not (data.cache and data.shuffle_files):
            return rd
        return rd.randomize_block_order(seed=RandomSeedConfig(seed=seed + offset, reseed_after_execution=True))

    def read(source: Dataset, offset: int = 0, **kw: Any) -> ray.data.Dataset:
        shuffle_seed = seed + offset if (data.shuffle_files and not data.cache) else None
        return read_split(source, data.train_split, with_3d=with_3d, with_pseudo=with_pseudo, eval_3d=False,
                          shuffle_seed=shuffle_seed, num_views=views, **kw)

    views = max(ds.manifest.max_views, mix.manifest.max_views) if mix is not None else None
    main = read(ds, rig_ids=data.rig_ids, max_rows=data.max_rows)
    main = main.materialize() if data.cache else main  # each epoch re-executes what follows
    num_mix = epoch_rows(data, ds)[1] if mix is not None else 0
    if mix is None or num_mix == 0:
        return reshuffled(main)
    have = sum(s.rows for s in check_mix(ds, mix, data))
    extra = read(mix, offset=1)
    if data.cache:  # blocks of about num_mix / MIX_BLOCKS rows: an epoch's rows come from all over the dataset
        block_rows = min(PREPROCESS_ROWS, max(1, math.ceil(num_mix / MIX_BLOCKS)))
        extra = extra.repartition(math.ceil(have / block_rows)).materialize()
    if num_mix > have:  # the mixed-in dataset has fewer rows than an epoch takes: repeat it
        extra = extra.union(*[extra] * (math.ceil(num_mix / have) - 1))
    extra = reshuffled(extra, 1).limit(num_mix)  # the first rows of a new block order: other rows every epoch
    return reshuffled(main.union(extra))
