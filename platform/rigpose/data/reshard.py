"""Resharding a committed dataset (`rigpose datasets reshard`): merge small shards, rewrite shards whose Parquet
row groups are too big, and commit the result as a new manifest version.

What it rewrites, per (rig, split) partition: every shard with a row group of more than `row_group_rows` rows
(written before the writer cut groups of 16,384 rows; streaming reads one task per group), and the shards of fewer
than half `rows_per_shard` rows (left by many small appends) when there are two or more of them to merge. Input
shards are never split: each new shard holds whole input shards, packed in manifest order up to `rows_per_shard`
rows (an input shard that alone holds more is rewritten as it is, in smaller row groups). So a sequence is never
cut into more shards than it was, and each new shard knows exactly which shards, as ingests first wrote them, its
rows come from (`ShardInfo.sources`, flattened through earlier reshards), for `rigpose.retrain.detect`.

Rows are copied as Arrow values, never converted: each new shard holds the same rows with the same values as its
inputs, in their order (sorted by sequence and frame only where merged inputs would leave a sequence's frames out
of order). Input shards are checked against the manifest (rows and sha256) as they are read.

Commit: the new shards are written under a writer token with a heartbeat (as `rigpose.data.writer` does, so that
vacuum leaves them alone while it runs), then the next manifest version is created (`rigpose.data.commit.publish`):
the base version without the rewritten shards, plus the new ones. When another writer committed since the version
the plan read, nothing is committed: the new shards are deleted and `DatasetError` names the dataset and the other
writer. The old shard files are left in place for readers of the old version; the next commit's clean-up, or
`rigpose datasets vacuum`, removes them once its grace period (an hour) has passed since the reshard's commit.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rigpose.data.checks import distinct, sequence_codes, unordered_sequences
from rigpose.data.commit import Heartbeat, publish
from rigpose.data.manifest import DatasetError, Manifest, ShardInfo, latest_version, read_manifest
from rigpose.data.reader import read_shard
from rigpose.data.schema import ARROW_SCHEMA
from rigpose.data.writer import ROW_GROUP_ROWS, new_token, shard_rows_for, utc_now, write_shard_file
from rigpose.storage import protocol_url, url_to_fs

FOOTER_THREADS = 8  # shard footers read at once while planning (object storage: latency-bound)


@dataclass
class Rewrite:
    """One new shard: the rows of `inputs` (shards of one rig/split partition, in manifest order), and why."""

    rig_id: str
    split: str
    inputs: list[ShardInfo]
    reason: str  # "merge" (small shards) or "row groups" (a group of more rows than the limit)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.inputs)

    def sources(self) -> dict[str, int]:
        """The shards as first written whose rows the new shard holds -> rows of each."""
        out: dict[str, int] = {}
        for s in self.inputs:
            for path, rows in s.origins().items():
                out[path] = out.get(path, 0) + rows
        return out


@dataclass
class ReshardPlan:
    """What `reshard` would do to the dataset at `root`, read off manifest version `base.version`."""

    root: str
    base: Manifest
    rows_per_shard: dict[str, int]  # rig_id -> target rows of a merged shard
    row_group_rows: int
    rewrites: list[Rewrite] = field(default_factory=list)
    shards_checked: int = 0

    @property
    def shards_in(self) -> int:
        return sum(len(r.inputs) for r in self.rewrites)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.rewrites)

    def partitions(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(rig_id, split) -> (shards now, shards after, rows rewritten), for the partitions it changes."""
        shards = Counter((s.rig_id, s.split) for s in self.base.shards)
        out: dict[tuple[str, str], tuple[int, int, int]] = {}
        for r in self.rewrites:
            now = shards[(r.rig_id, r.split)]
            _, after, rows = out.get((r.rig_id, r.split), (now, now, 0))
            out[(r.rig_id, r.split)] = (now, after - len(r.inputs) + 1, rows + r.rows)
        return dict(sorted(out.items()))


def plan_reshard(root: str, *, rows_per_shard: int | None = None, row_group_rows: int | None = None,
                 rig_ids: list[str] | None = None, advance: Callable[[int], None] | None = None) -> ReshardPlan:
    """The rewrites that bring the dataset at `root` (its latest version) to shards of up to `rows_per_shard` rows
    (default: the writer's size for the rig, ~128 MB) in row groups of at most `row_group_rows` (default the
    writer's, 16,384), for the rigs `rig_ids` (default all). Reads every selected shard's Parquet footer;
    `advance(1)` after each. ValueError for bad arguments, DatasetError when there is no dataset at `root`."""
    root = str(root).rstrip("/")
    if rows_per_shard is not None and rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    group = row_group_rows if row_group_rows is not None else ROW_GROUP_ROWS
    if group < 1:
        raise ValueError(f"row_group_rows must be >= 1, got {group}")
    base = read_manifest(root)
    if base is None:
        raise DatasetError(f"{root}: no manifest; not a RigPose dataset, nothing to reshard")
    if rig_ids is not None and (unknown := sorted(set(rig_ids) - set(base.rigs))):
        raise ValueError(f"{root}: no rig {', '.join(unknown)}; the dataset has {', '.join(sorted(base.rigs))}")
    rigs = sorted(base.rigs) if rig_ids is None else sorted(set(rig_ids))
    targets = {r: rows_per_shard or shard_rows_for(int(base.rigs[r]["num_cameras"]), len(base.joint_names))
               for r in rigs}
    plan = ReshardPlan(root=root, base=base, rows_per_shard=targets, row_group_rows=group)
    shards = [s for s in base.shards if s.rig_id in targets]
    biggest = _largest_row_groups(root, shards, advance=advance)
    plan.shards_checked = len(shards)
    partitions: dict[tuple[str, str], list[ShardInfo]] = {}
    for s in shards:
        partitions.setdefault((s.rig_id, s.split), []).append(s)
    for (rig_id, split), members in partitions.items():
        plan.rewrites += _pack(rig_id, split, members, biggest, target=targets[rig_id], group=group)
    return plan


def _largest_row_groups(root: str, shards: list[ShardInfo], *,
                        advance: Callable[[int], None] | None) -> dict[str, int]:
    """shard path -> rows of its largest row group, from the Parquet footers (one small read per shard)."""
    fs, path = url_to_fs(root)

    def largest(s: ShardInfo) -> int:
        full = posixpath.join(path, s.path)
        try:
            meta = pq.read_metadata(full, filesystem=fs)
        except FileNotFoundError:
            raise DatasetError(f"shard {protocol_url(fs, full)} is listed in the manifest but missing") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"shard {protocol_url(fs, full)} is truncated or corrupt: {e}") from None
        if advance is not None:
            advance(1)
        return max((meta.row_group(i).num_rows for i in range(meta.num_row_groups)), default=0)

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        return dict(zip((s.path for s in shards), pool.map(largest, shards), strict=True))


def _pack(rig_id: str, split: str, members: list[ShardInfo], biggest: dict[str, int], *, target: int,
          group: int) -> list[Rewrite]:
    """One partition's rewrites: shards with too big row groups, and small shards (< target / 2 rows) packed in
    manifest order into new shards of at most `target` rows; a lone small shard is left as it is."""
    out: list[Rewrite] = []
    pending: list[ShardInfo] = []

    def close() -> None:
        if len(pending) > 1 or (pending and biggest[pending[0].path] > group):
            reason = "merge" if len(pending) > 1 else "row groups"
            out.append(Rewrite(rig_id=rig_id, split=split, inputs=list(pending), reason=reason))
        pending.clear()

    for s in members:
        small = s.rows < target / 2
        if not small:
            if biggest[s.path] > group:
                out.append(Rewrite(rig_id=rig_id, split=split, inputs=[s], reason="row groups"))
            continue
        if pending and sum(p.rows for p in pending) + s.rows > target:
            close()
        pending.append(s)
    close()
    return out


def reshard(plan: ReshardPlan, *, command: str, compression: str = "snappy",
            advance: Callable[[int], None] | None = None) -> Manifest | None:
    """Carry out `plan`: write its new shards, then commit the next manifest version; returns it (None when the
    plan rewrites nothing: no new version). `advance(rows)` after each new shard. DatasetError, with nothing
    committed and the new shards deleted, when another writer committed since the plan's version."""
    if not plan.rewrites:
        return None
    fs, path = url_to_fs(plan.root)
    token = new_token()
    heartbeat = Heartbeat(fs, path, token, command)
    written: list[ShardInfo] = []
    try:
        for i, rewrite in enumerate(plan.rewrites):
            _check_unchanged(plan, fs, path)  # fail early, before the work of a long reshard is lost
            heartbeat.beat()  # before the shard: a live writer's files are never collected
            written.append(_write(fs, path, rewrite, f"part-{i:05d}-{token}.parquet", group=plan.row_group_rows,
                                  compression=compression))
            if advance is not None:
                advance(rewrite.rows)
        manifest, _ = publish(plan.root, plan.base, _builder(plan, written, command, token), token=token)
    except BaseException:
        for s in written:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(posixpath.join(path, s.path))
        raise
    finally:
        heartbeat.end()
    return manifest


def _check_unchanged(plan: ReshardPlan, fs: Any, path: str) -> None:
    if (latest_version(fs, path) or 0) != plan.base.version:
        _refuse(plan, read_manifest(plan.root))


def _refuse(plan: ReshardPlan, now: Manifest | None) -> None:
    others = now.history[len(plan.base.history):] if now is not None else []
    who = "; ".join(f"{h.get('command')!r} at {h.get('time')}" for h in others) or "another writer"
    version = now.version if now is not None else "?"
    raise DatasetError(f"{plan.root}: {who} committed manifest version {version} while this reshard of version "
                       f"{plan.base.version} ran; nothing of the reshard was committed; run it again")


def _write(fs: Any, path: str, rewrite: Rewrite, name: str, *, group: int, compression: str) -> ShardInfo:
    """The new shard of `rewrite`: its inputs' rows, checked against their manifest entries, as one Parquet file."""
    tables = []
    for s in rewrite.inputs:
        table = read_shard(fs, path, s, verify=True)
        if not table.schema.equals(ARROW_SCHEMA, check_metadata=False):
            raise DatasetError(f"shard {protocol_url(fs, posixpath.join(path, s.path))}: its Arrow schema differs "
                               "from schema v1; refusing to reshard it (`rigpose datasets validate` says more)")
        tables.append(table.cast(ARROW_SCHEMA))
    table = pa.concat_tables(tables)
    sequence = table.column("sequence").to_numpy(zero_copy_only=False)
    frame = table.column("frame").to_numpy()
    if len(tables) > 1 and unordered_sequences(sequence, frame):
        _, code = sequence_codes(sequence)
        table = table.take(pa.array(np.lexsort((frame, code))))  # stable: rows keep their order within a frame
        sequence = table.column("sequence").to_numpy(zero_copy_only=False)
    rel = f"rig_id={rewrite.rig_id}/split={rewrite.split}/{name}"
    size, sha256 = write_shard_file(fs, posixpath.join(path, rel), table, compression=compression,
                                    row_group_rows=group)
    return ShardInfo(path=rel, rig_id=rewrite.rig_id, split=rewrite.split, rows=table.num_rows, bytes=size,
                     sha256=sha256, sequences=[str(q) for q in distinct(sequence)], sources=rewrite.sources())


def _builder(plan: ReshardPlan, written: list[ShardInfo], command: str,
             token: str) -> Callable[[Manifest | None], Manifest]:
    """`publish`'s build step: the plan's base version with the rewritten shards replaced by `written`; refuses a
    newer base (another writer committed meanwhile)."""
    replaced = {s.path for r in plan.rewrites for s in r.inputs}

    def build(base: Manifest | None) -> Manifest:
        if base is None or base.version != plan.base.version:
            _refuse(plan, base)
        assert base is not None  # _refuse raised otherwise
        kept = [s for s in base.shards if s.path not in replaced]
        now = utc_now()
        history = [*base.history, {"time": now, "command": command, "recipe": None, "rows_added": 0,
                                   "rows_quarantined": 0, "replaced": [], "writer": token,
                                   "resharded": {"shards_in": len(replaced), "shards_out": len(written),
                                                 "rows": sum(s.rows for s in written)}}]
        return Manifest(skeleton=base.skeleton, joint_names=list(base.joint_names), rigs=dict(base.rigs),
                        shards=kept + written, created=base.created, updated=now, history=history,
                        schema_version=base.schema_version)

    return build
