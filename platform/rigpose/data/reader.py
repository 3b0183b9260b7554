"""Reading a committed dataset: `Dataset` (manifest, rigs, shards as Arrow or `Frames`) and `iter_frames`.

Only the shards the manifest lists are read; each is checked against its listed row count (and sha256 with
`verify=True`). Layout and manifest format: `rigpose.data.manifest`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rigpose.data.manifest import MANIFEST, DatasetError, ShardInfo, read_manifest
from rigpose.data.schema import ARROW_SCHEMA, Frames, frames_from_table
from rigpose.rig import Rig, rig_from_dict
from rigpose.skeleton import get_skeleton
from rigpose.storage import protocol_url, url_to_fs


def read_shard(fs: fsspec.AbstractFileSystem, root: str, shard: ShardInfo, columns: list[str] | None = None,
               *, verify: bool = False) -> pa.Table:
    """One listed shard under the dataset path `root` of `fs` as Arrow; `DatasetError` if missing, corrupt, or
    not the row count (with `verify`, the sha256) the manifest lists."""
    path = posixpath.join(root, shard.path)
    url = protocol_url(fs, path)
    try:
        if isinstance(fs, LocalFileSystem):  # mapped, not copied into Python bytes; read by Arrow's own threads
            data = pa.memory_map(path).read_buffer()
        else:
            with fs.open(path, "rb") as f:
                data = pa.py_buffer(f.read())
    except FileNotFoundError:
        raise DatasetError(f"shard {url} is listed in the manifest but missing") from None
    if verify and hashlib.sha256(data).hexdigest() != shard.sha256:
        raise DatasetError(f"shard {url}: sha256 does not match the manifest (corrupt or modified)")
    try:
        table = pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise DatasetError(f"shard {url} is truncated or corrupt: {e}") from None
    if table.num_rows != shard.rows:
        raise DatasetError(f"shard {url}: {table.num_rows} rows, the manifest says {shard.rows}")
    return table


class Dataset:
    """A committed dataset: its manifest, rigs, and readers for its shards."""

    def __init__(self, root: str, version: int | None = None) -> None:
        """The dataset at `root` as its latest committed manifest lists it (or as its version `version` did)."""
        self.root = str(root).rstrip("/")
        self.fs, self.path = url_to_fs(self.root)
        manifest = read_manifest(self.root, version)
        if manifest is None:
            raise DatasetError(
                f"{self.root}: no {MANIFEST}; not a RigPose dataset (or a write that never committed)"
            )
        self.manifest = manifest
        self.skeleton = get_skeleton(manifest.skeleton)

    def shards(self, *, splits: Iterable[str] | None = None, rig_ids: Iterable[str] | None = None) -> list[ShardInfo]:
        """Committed shards, optionally filtered by split and rig."""
        sp = None if splits is None else set([splits] if isinstance(splits, str) else splits)
        rg = None if rig_ids is None else set([rig_ids] if isinstance(rig_ids, str) else rig_ids)
        if sp is not None and not sp <= set(self.manifest.splits()):
            raise DatasetError(f"{self.root}: no split {sorted(sp - set(self.manifest.splits()))}; "
                               f"has {sorted(self.manifest.splits())}")
        return [s for s in self.manifest.shards
                if (sp is None or s.split in sp) and (rg is None or s.rig_id in rg)]

    def shard_urls(self, **filters: Any) -> list[str]:
        """Full URLs of the selected shards (what Ray Data's read_parquet takes)."""
        return [protocol_url(self.fs, posixpath.join(self.path, s.path)) for s in self.shards(**filters)]

    def rig(self, rig_id: str) -> Rig:
        info = self.manifest.rigs.get(rig_id)
        if info is None:
            raise DatasetError(f"{self.root}: no rig {rig_id!r}; has {sorted(self.manifest.rigs)}")
        with self.fs.open(posixpath.join(self.path, info["path"]), "rb") as f:
            return rig_from_dict(json.loads(f.read()), source=protocol_url(self.fs, info["path"]))

    def iter_tables(self, *, columns: list[str] | None = None, verify: bool = False,
                    **filters: Any) -> Iterator[tuple[ShardInfo, pa.Table]]:
        for s in self.shards(**filters):
            yield s, read_shard(self.fs, self.path, s, columns, verify=verify)

    def read_table(self, *, columns: list[str] | None = None, **filters: Any) -> pa.Table:
        """All selected shards as one Arrow table (the schema is checked)."""
        tables = [t for _, t in self.iter_tables(columns=columns, **filters)]
        if not tables:
            return ARROW_SCHEMA.empty_table() if columns is None else ARROW_SCHEMA.empty_table().select(columns)
        return pa.concat_tables(tables)

    def read_frames(self, *, with_3d: bool = True, num_views: int | None = None, **filters: Any) -> Frames:
        """Selected rows as padded `Frames` (V = `num_views` or the dataset's largest rig)."""
        columns = None if with_3d else [f.name for f in ARROW_SCHEMA if f.name != "joints_3d"]
        table = self.read_table(columns=columns, **filters)
        return frames_from_table(table, num_joints=self.skeleton.num_joints,
                                 num_views=num_views or self.manifest.max_views, with_3d=with_3d)


def iter_frames(ds: Dataset, *, split: str, batch_size: int, max_rows: int | None = None,
                with_3d: bool = False, rig_ids: Iterable[str] | None = None) -> Iterator[Frames]:
    """Blocks of at most `batch_size` rows of `split` (of the rigs `rig_ids`, default all), one shard in memory at
    a time, at most `max_rows` in all.

    `with_3d=False` never reads the `joints_3d` column (prediction); evaluation asks for it for metrics only.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    columns = None if with_3d else [f.name for f in ARROW_SCHEMA if f.name != "joints_3d"]
    left = max_rows if max_rows is not None else float("inf")
    for _, table in ds.iter_tables(columns=columns, splits=split, rig_ids=rig_ids):
        frames = frames_from_table(table, num_joints=ds.skeleton.num_joints, num_views=ds.manifest.max_views,
                                   with_3d=with_3d)
        for i in range(0, len(frames), batch_size):
            n = int(min(batch_size, left, len(frames) - i))
            if n <= 0:
                return
            yield frames.take(slice(i, i + n))
            left -= n
        if left <= 0:
            return
