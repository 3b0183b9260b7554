"""Writing a dataset: `DatasetWriter` adds frames as shards, then commits a new manifest version (the commit protocol).

In order: `add` checks rows (`rigpose.data.checks`), sets bad ones aside for quarantine and writes a shard
whenever a (rig, split) buffer fills; `commit` writes the quarantine file, refuses (and aborts) when the bad
fraction is over `max_bad_fraction`, writes the last shards, rewrites shards that mix kept and replaced sequences,
writes the rig files, then creates the next manifest version: the one step that publishes the change
(`rigpose.data.commit.publish`). Writers on one root may run at the same time: each writes shards under its own
token, and one that loses the race to a version re-bases on the winner's, refusing only a real conflict (the same
rig/sequence written by both). After the commit, the shards the new version dropped are deleted, and so are files
of failed writers older than the grace period. Before it, an exception or `abort()` deletes this writer's shards
and the dataset stays as it was. Layout and manifest format: `rigpose.data.manifest`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import posixpath
import secrets
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rigpose.data.buffer import RowBuffer
from rigpose.data.checks import QUARANTINE_REASONS, check_frames, distinct, quarantine_codes
from rigpose.data.commit import DEFAULT_GRACE_S, Heartbeat, collect_garbage, publish
from rigpose.data.manifest import DatasetError, Manifest, ShardInfo, read_manifest
from rigpose.data.reader import read_shard
from rigpose.data.schema import Frames, frames_from_table, frames_to_table
from rigpose.rig import Rig, rig_from_dict, rig_to_dict
from rigpose.skeleton import Skeleton, get_skeleton
from rigpose.storage import exclusive_writes_work, protocol_url, url_to_fs, write_bytes_atomic, write_bytes_exclusive

DEFAULT_SHARD_BYTES = 128 * 2**20  # DESIGN: ~64-256 MB shards
#: rows per Parquet row group: a shard of ~20k rows or more is several groups, so a reader can start on the first
#: group (streaming) instead of waiting for the whole shard (pyarrow's default is one group of up to 1Mi rows)
ROW_GROUP_ROWS = 16384
DEFAULT_MAX_BAD_FRACTION = 0.01


def utc_now() -> str:
    """The time a manifest records: UTC, ISO 8601, in seconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_token() -> str:
    """A writer's token: in its shard names (`part-NNNNN-<token>.parquet`) and heartbeat, unique per writer."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def shard_rows_for(num_views: int, num_joints: int, shard_bytes: int = DEFAULT_SHARD_BYTES) -> int:
    """Rows per shard so that a shard of a rig with `num_views` cameras holds about `shard_bytes` (uncompressed)."""
    # keypoints + scores, 3D, cameras, keys
    approx_row_bytes = num_views * num_joints * 12 + num_joints * 12 + num_views * 26 * 8 + 64
    return max(1, shard_bytes // approx_row_bytes)


def write_shard_file(fs: Any, full: str, table: pa.Table, *, compression: str = "snappy",
                     row_group_rows: int | None = None) -> tuple[int, str]:
    """Write `table` as the Parquet shard `full` of `fs` in row groups of `row_group_rows` (default
    `ROW_GROUP_ROWS`); returns (bytes, sha256) of the file, as its manifest entry lists them."""
    group = row_group_rows or ROW_GROUP_ROWS  # read at the call: tests set the module's value
    fs.makedirs(posixpath.dirname(full), exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        # Straight into the file, then hashed from the page cache: no in-memory copy of the shard at all.
        with pa.OSFile(full, "wb") as f:
            pq.write_table(table, f, compression=compression, row_group_size=group)
        with pa.memory_map(full) as f:
            data = f.read_buffer()
            return data.size, hashlib.sha256(data).hexdigest()
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, row_group_size=group)
    data = sink.getvalue()
    fs.pipe_file(full, data.to_pybytes())
    return data.size, hashlib.sha256(data).hexdigest()


class DatasetWriter:
    """Adds frames to a dataset root and commits a new manifest atomically (shards first, manifest last).

    Use as a context manager: an exception inside the block (or `abort()`) deletes the shards written so far
    and leaves the dataset exactly as it was. Refuses another skeleton or schema version than the dataset's,
    a (rig, sequence) already present unless `replace=True`, and a rig id whose calibration differs.
    """

    def __init__(
        self,
        root: str,
        *,
        skeleton: Skeleton | str,
        command: str,
        recipe: dict[str, Any] | None = None,
        replace: bool = False,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        shard_rows: int | None = None,
        compression: str = "snappy",
        orphan_grace_s: float = DEFAULT_GRACE_S,
    ) -> None:
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.root = str(root).rstrip("/")
        self.fs, self.path = url_to_fs(self.root)
        self.skeleton = get_skeleton(skeleton) if isinstance(skeleton, str) else skeleton
        self.command, self.recipe, self.replace = command, recipe, replace
        self.max_bad_fraction = max_bad_fraction
        self.shard_bytes, self.shard_rows_override, self.compression = shard_bytes, shard_rows, compression
        self.orphan_grace_s = orphan_grace_s
        self.token = new_token()
        self._heartbeat = Heartbeat(self.fs, self.path, self.token, command)
        self.base = read_manifest(self.root)
        if self.base is not None and self.base.skeleton != self.skeleton.name:
            raise DatasetError(
                f"{self.root}: dataset skeleton is {self.base.skeleton!r}, refusing to add {self.skeleton.name!r}"
            )
        self._existing = self.base.sequences() if self.base else {}
        self._rigs: dict[str, Rig] = {}
        self._buffers: dict[tuple[str, str], RowBuffer] = {}  # rows queued per (rig, split), in queue order
        self._spare: dict[tuple[str, str], RowBuffer] = {}  # flushed buffers, reused (memory already mapped)
        self._written: list[ShardInfo] = []
        self._seen: set[tuple[str, str]] = set()
        self._replaced: set[tuple[str, str]] = set()
        self._dropped: set[str] = set()  # base shards this commit removes (replaced sequences)
        self._num_rows = 0
        self._bad: list[pa.Table] = []
        self._num_bad = 0
        self._part = 0
        self._done = False

    # -- context manager
    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or not self._done:
            self.abort()

    # -- adding rows
    def add(self, frames: Frames, rig: Rig, *, split: str | None = None, source: str = "<input>") -> None:
        """Queue `frames` of `rig` (one rig, unpadded) for the split given or already set on `frames.split`."""
        if self._done:
            raise RuntimeError("DatasetWriter.add after commit/abort")
        if len(frames) == 0:
            return
        if frames.num_joints != self.skeleton.num_joints:
            raise DatasetError(
                f"{source}: {frames.num_joints} joints, the dataset skeleton {self.skeleton.name!r} has "
                f"{self.skeleton.num_joints}"
            )
        if frames.num_views != len(rig.cameras):
            raise DatasetError(f"{source}: {frames.num_views} views, rig {rig.rig_id!r} has {len(rig.cameras)}")
        if split is not None:
            frames = frames.with_split(split)
        if (frames.split == "").any():
            raise ValueError(f"{source}: rows without a split")
        self._register_rig(rig, source=source)
        check_frames(frames, source=source)
        for seq in distinct(frames.sequence):
            self._claim(rig.rig_id, str(seq), source=source)
        codes = quarantine_codes(frames)
        good = codes == 0
        if not good.all():
            self._quarantine(frames.take(~good), QUARANTINE_REASONS[codes[~good]], source=source)
        self._num_rows += int(good.sum())
        splits = distinct(frames.split[good])
        for sp in splits:
            rows = good & (frames.split == sp) if len(splits) > 1 else good
            key = (rig.rig_id, str(sp))
            if key not in self._buffers:
                self._buffers[key] = self._spare.pop(key, None) or RowBuffer()
            buffer = self._buffers[key]
            limit = self._shard_rows(frames)
            buffer.add(frames, None if rows.all() else np.flatnonzero(rows), min_capacity=limit)
            if buffer.num_rows >= limit:
                self._flush(key)

    def _claim(self, rig_id: str, seq: str, *, source: str) -> None:
        key = (rig_id, seq)
        if key in self._seen:
            return  # more rows of a sequence already claimed in this ingest
        if key in self._existing:
            if not self.replace:
                raise DatasetError(
                    f"{source}: sequence {seq!r} of rig {rig_id!r} is already in {self.root} "
                    f"(split {self._existing[key]!r}); pass replace to overwrite it"
                )
            self._replaced.add(key)
        self._seen.add(key)

    def _register_rig(self, rig: Rig, *, source: str) -> None:
        d = rig_to_dict(rig)
        known = self.base.rigs.get(rig.rig_id) if self.base else None
        if rig.rig_id in self._rigs:
            return
        if known is not None:
            with self.fs.open(posixpath.join(self.path, known["path"]), "rb") as f:
                old = rig_to_dict(rig_from_dict(json.loads(f.read()), source=known["path"]))
            if not _same_rig(old, d):
                raise DatasetError(
                    f"{source}: rig {rig.rig_id!r} differs from the calibration already in {self.root}; "
                    "give the new calibration a new rig_id"
                )
        self._rigs[rig.rig_id] = rig

    def _shard_rows(self, frames: Frames) -> int:
        if self.shard_rows_override:
            return self.shard_rows_override
        return shard_rows_for(frames.num_views, frames.num_joints, self.shard_bytes)

    def _flush(self, key: tuple[str, str]) -> None:
        buffer = self._buffers.pop(key, None)
        if buffer is None or not buffer.num_rows:
            return
        frames = buffer.frames()
        limit = self._shard_rows(frames)
        for start in range(0, len(frames), limit):
            self._write_shard(key, frames.take(slice(start, start + limit)))
        buffer.clear()  # the shards are written: nothing refers to the arrays any more
        self._spare[key] = buffer

    def _write_shard(self, key: tuple[str, str], frames: Frames) -> None:
        rig_id, split = key
        table = frames_to_table(frames)
        rel = f"rig_id={rig_id}/split={split}/part-{self._part:05d}-{self.token}.parquet"
        self._part += 1
        full = posixpath.join(self.path, rel)
        self._heartbeat.beat()  # before the shard: a live writer's files are never collected
        size, sha256 = write_shard_file(self.fs, full, table, compression=self.compression)
        self._written.append(ShardInfo(
            path=rel, rig_id=rig_id, split=split, rows=len(frames), bytes=size, sha256=sha256,
            sequences=[str(s) for s in distinct(frames.sequence)],
        ))

    def _quarantine(self, frames: Frames, reasons: np.ndarray, *, source: str) -> None:
        table = frames_to_table(frames)
        table = table.append_column("reason", pa.array(reasons.astype(str)))
        table = table.append_column("source", pa.array([source] * len(frames)))
        self._bad.append(table)
        self._num_bad += len(frames)

    # -- commit / abort
    @property
    def num_rows(self) -> int:
        return self._num_rows

    @property
    def num_quarantined(self) -> int:
        return self._num_bad

    def quarantine_path(self) -> str:
        return protocol_url(self.fs, posixpath.join(self.path, "_quarantine", f"{self.token}.parquet"))

    def _write_quarantine(self) -> None:
        if self._bad:
            path = posixpath.join(self.path, "_quarantine", f"{self.token}.parquet")
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            buf = pa.BufferOutputStream()
            pq.write_table(pa.concat_tables(self._bad), buf)
            self.fs.pipe_file(path, buf.getvalue().to_pybytes())

    def commit(self) -> Manifest:
        """Flush the remaining rows, then publish the next manifest version (re-based on any version other writers
        committed meanwhile). Returns it."""
        if self._done:
            raise RuntimeError("DatasetWriter.commit called twice")
        self._heartbeat.beat()  # also for an ingest without shards: its rig and manifest files are in flight
        self._write_quarantine()
        total = self._num_rows + self._num_bad
        if total and self._num_bad / total > self.max_bad_fraction:
            self.abort()
            raise DatasetError(
                f"{self.root}: {self._num_bad} of {total} rows ({self._num_bad / total:.2%}) are bad, more than "
                f"the limit {self.max_bad_fraction:.2%}; nothing was ingested. Reasons are in "
                f"{self.quarantine_path()}"
            )
        for key in list(self._buffers):
            self._flush(key)
        self._spare.clear()
        rewritten = self._drop_replaced(list(self.base.shards)) if self._replaced and self.base else []
        self._written.extend(rewritten)
        self._write_rigs()
        manifest, base = publish(self.root, self.base, self._manifest_on, token=self.token)
        self._done = True
        self._garbage_collect(base, manifest)
        return manifest

    def _write_rigs(self) -> None:
        """rigs/<rig_id>.json for this writer's rigs: created if absent; an existing file must hold the same
        calibration (it may be another running writer's, not committed yet)."""
        exclusive = exclusive_writes_work(self.fs, self.path)
        for rig_id, rig in self._rigs.items():
            full = posixpath.join(self.path, f"rigs/{rig_id}.json")
            data = json.dumps(rig_to_dict(rig), indent=1).encode()
            if exclusive:
                if write_bytes_exclusive(self.fs, full, data):
                    continue
            elif not self.fs.exists(full):
                write_bytes_atomic(self.fs, full, data)
                continue
            with self.fs.open(full, "rb") as f:
                other = rig_to_dict(rig_from_dict(json.loads(f.read()), source=full))
            if not _same_rig(other, rig_to_dict(rig)):
                self.abort()
                raise DatasetError(
                    f"{self.root}: rig {rig_id!r} differs from the calibration in {protocol_url(self.fs, full)} "
                    "(committed by another writer meanwhile, or left by a failed one: `rigpose datasets vacuum` "
                    "removes it once no manifest lists it); give the new calibration a new rig_id")

    def _manifest_on(self, base: Manifest | None) -> Manifest:
        """This writer's change applied to `base` (the version it read, or a newer one); DatasetError on conflict."""
        if base is not None and base.skeleton != self.skeleton.name:
            self.abort()
            raise DatasetError(f"{self.root}: another writer committed skeleton {base.skeleton!r} meanwhile; this "
                               f"ingest ({self.skeleton.name!r}, {self.command!r}) is not committed")
        if base is not None and (self.base is None or base.version != self.base.version):
            self._check_conflicts(base)
        kept = [s for s in base.shards if s.path not in self._dropped] if base else []
        rigs = dict(base.rigs) if base else {}
        for rig_id, rig in self._rigs.items():
            rigs[rig_id] = {"path": f"rigs/{rig_id}.json", "num_cameras": len(rig.cameras),
                            "camera_names": list(rig.camera_names)}
        now = utc_now()
        history = list(base.history) if base else []
        history.append({"time": now, "command": self.command, "recipe": self.recipe, "rows_added": self._num_rows,
                        "rows_quarantined": self._num_bad, "replaced": sorted(f"{r}/{s}" for r, s in self._replaced),
                        "writer": self.token})
        return Manifest(
            skeleton=self.skeleton.name, joint_names=list(self.skeleton.joint_names), rigs=rigs,
            shards=kept + self._written, created=base.created if base else now, updated=now, history=history,
        )

    def _check_conflicts(self, base: Manifest) -> None:
        """Refuse (and abort) when a writer that committed after this one started wrote what this one writes."""
        others = base.history[len(self.base.history) if self.base else 0:]
        who = "; ".join(f"{h.get('command')!r} at {h.get('time')}" for h in others) or "another writer"
        committed = base.sequences()
        clash = sorted(k for k in self._seen if k in committed and k not in self._existing)
        gone = sorted(p for p in self._dropped if p not in {s.path for s in base.shards})
        if clash or gone:
            self.abort()
            what = (", ".join(f"{r}/{q}" for r, q in clash[:5]) + (" ..." if len(clash) > 5 else "") if clash
                    else f"the shards this ingest replaces ({', '.join(gone[:3])})")
            raise DatasetError(
                f"{self.root}: {what} committed by {who} while this ingest ({self.command!r}) ran; refusing to "
                "write them twice. Nothing of this ingest was committed; run it again (with replace to overwrite)")

    def _drop_replaced(self, shards: list[ShardInfo]) -> list[ShardInfo]:
        """New shards for the base shards that mix kept and replaced sequences; `self._dropped` gets every base
        shard that holds a replaced sequence."""
        rewritten: list[ShardInfo] = []
        for s in shards:
            hit = {q for q in s.sequences if (s.rig_id, q) in self._replaced}
            if not hit:
                continue
            self._dropped.add(s.path)
            if hit == set(s.sequences):
                continue
            table = read_shard(self.fs, self.path, s)
            mask = pc.invert(pc.is_in(table.column("sequence"), pa.array(sorted(hit))))
            frames = frames_from_table(table.filter(mask), num_joints=self.skeleton.num_joints)
            before = len(self._written)
            self._write_shard((s.rig_id, s.split), frames)
            rewritten.extend(self._written[before:])
            del self._written[before:]
        return rewritten

    def _garbage_collect(self, base: Manifest | None, manifest: Manifest) -> None:
        """After the commit: delete the shards it dropped, end the heartbeat, collect failed writers' files."""
        listed = {s.path for s in manifest.shards}
        for s in base.shards if base else []:
            if s.path not in listed:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(posixpath.join(self.path, s.path))
        self._heartbeat.end()
        with contextlib.suppress(OSError, DatasetError):  # housekeeping: never fails a committed ingest
            collect_garbage(self.root, grace_s=self.orphan_grace_s)

    def abort(self) -> None:
        """Delete the shards written by this writer; the dataset stays as it was."""
        if self._done:
            return
        for s in self._written:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(posixpath.join(self.path, s.path))
        self._written.clear()
        self._buffers.clear()
        self._spare.clear()
        self._heartbeat.end()
        self._done = True


def _same_rig(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if [c["name"] for c in a["cameras"]] != [c["name"] for c in b["cameras"]]:
        return False
    for ca, cb in zip(a["cameras"], b["cameras"], strict=True):
        for k in ("K", "dist", "R", "t"):
            if not np.allclose(np.asarray(ca[k], float), np.asarray(cb[k], float), rtol=0, atol=1e-9):
                return False
    return True
