"""A dataset on storage: hive-partitioned Parquet shards + manifest.json committed last, on any fsspec URL.

Layout (../DESIGN.md):

    <root>/manifest.json                                    written last: the commit point
    <root>/rigs/<rig_id>.json                               the rig files used
    <root>/rig_id=<rig_id>/split=<split>/part-NNNNN-<token>.parquet
    <root>/_quarantine/<ingest token>.parquet               rejected rows with a `reason` column

Readers trust only what the manifest lists: a crashed or aborted writer leaves files that no reader sees (and
that the writer deletes when it can). Shard paths in a manifest are relative, never absolute, never with `..`.
Credentials for `s3://` come only from the environment (s3fs / botocore's usual variables).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import posixpath
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rigpose.data.schema import ARROW_SCHEMA, SCHEMA_VERSION, Frames, frames_from_table, frames_to_table
from rigpose.geometry import CameraArrays
from rigpose.rig import Rig, rig_from_dict, rig_to_dict
from rigpose.skeleton import Skeleton, get_skeleton
from rigpose.storage import protocol_url, url_to_fs, write_bytes_atomic

MANIFEST = "manifest.json"
DEFAULT_SHARD_BYTES = 128 * 2**20  # DESIGN: ~64-256 MB shards
DEFAULT_MAX_BAD_FRACTION = 0.01


class DatasetError(ValueError):
    """A dataset on storage is missing, malformed, corrupt, or an ingest was refused."""


# ---------------------------------------------------------------------------------------------- storage


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- manifest


@dataclass
class ShardInfo:
    """One committed shard. `path` is relative to the dataset root."""

    path: str
    rig_id: str
    split: str
    rows: int
    bytes: int
    sha256: str
    sequences: list[str]


@dataclass
class Manifest:
    """manifest.json: what a dataset holds. Splits and sequences are derived from the shards."""

    skeleton: str
    joint_names: list[str]
    rigs: dict[str, dict[str, Any]]
    shards: list[ShardInfo]
    created: str
    updated: str
    history: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def max_views(self) -> int:
        return max((int(r["num_cameras"]) for r in self.rigs.values()), default=0)

    def splits(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in self.shards:
            d = out.setdefault(s.split, {"rows": 0, "shards": 0, "rigs": set(), "sequences": set()})
            d["rows"] += s.rows
            d["shards"] += 1
            d["rigs"].add(s.rig_id)
            d["sequences"].update(s.sequences)
        return {k: {**v, "rigs": sorted(v["rigs"]), "sequences": len(v["sequences"])} for k, v in out.items()}

    def sequences(self) -> dict[tuple[str, str], str]:
        """(rig_id, sequence) -> split."""
        return {(s.rig_id, q): s.split for s in self.shards for q in s.sequences}

    def to_json(self) -> str:
        d = asdict(self)
        d["splits"] = self.splits()
        d["num_rows"] = self.num_rows
        return json.dumps(d, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{source}: not valid JSON ({e})") from None
        try:
            version = int(d["schema_version"])
            if version != SCHEMA_VERSION:
                raise DatasetError(f"{source}: schema_version {version}, this rigpose reads {SCHEMA_VERSION}")
            shards = [ShardInfo(**s) for s in d["shards"]]
            m = cls(skeleton=d["skeleton"], joint_names=list(d["joint_names"]), rigs=dict(d["rigs"]),
                    shards=shards, created=d["created"], updated=d["updated"], history=list(d.get("history", [])),
                    schema_version=version)
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{source}: malformed manifest ({type(e).__name__}: {e})") from None
        for s in m.shards:
            _check_relative(s.path, source=source, what="shard path")
        for rig_id, r in m.rigs.items():
            _check_relative(r["path"], source=source, what=f"rig {rig_id!r} path")
        return m


def _check_relative(path: str, *, source: str, what: str) -> None:
    if path.startswith("/") or "://" in path or ".." in path.split("/") or path.startswith("\\"):
        raise DatasetError(f"{source}: {what} {path!r} is absolute or climbs out of the dataset root; refused")


def read_manifest(root: str) -> Manifest | None:
    """The committed manifest of the dataset at `root`, or None if there is none (not a dataset yet)."""
    fs, path = url_to_fs(root)
    mpath = posixpath.join(path, MANIFEST)
    if not fs.exists(mpath):
        return None
    with fs.open(mpath, "rb") as f:
        return Manifest.from_json(f.read().decode(), source=protocol_url(fs, mpath))


# ---------------------------------------------------------------------------------------------- row checks


_QUARANTINE_REASONS = np.array(["", "infinite keypoint", "non-finite score", "non-finite camera",
                               "NaN keypoint with non-zero score", "no valid view", "infinite joints_3d"],
                              dtype=object)


def _per_row(a: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N, X]: one row of values per frame (a view when `a` is contiguous)."""
    return a.reshape(len(a), -1) if len(a) else a.reshape(0, 0)


def _rows_all_finite(a: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N] bool, every value of the row finite. A row broadcast over N is checked once."""
    if len(a) and a.strides[0] == 0:
        return np.broadcast_to(np.isfinite(a[0]).all(), (len(a),))
    return np.isfinite(_per_row(a)).all(1)


def _any_per_row(bad: np.ndarray) -> np.ndarray | bool:
    """[N, ...] bool -> [N] any per row; plain False when nothing is set (one quick pass over the whole array)."""
    return _per_row(bad).any(1) if bad.any() else False


def _quarantine_codes(frames: Frames) -> np.ndarray:
    """[N] int8 index into `_QUARANTINE_REASONS` (0 = good row): the first failing check of `quarantine_reasons`."""
    kp, sc = frames.keypoints, frames.scores
    # Per coordinate, not `.any(-1)`: NumPy reduces a size-2 last axis one row at a time (~10x slower).
    kp_nan = np.isnan(kp[..., 0]) | np.isnan(kp[..., 1])
    checks = [
        _any_per_row(np.isinf(kp)),
        _any_per_row(~np.isfinite(sc)),
        ~np.all([_rows_all_finite(a) for a in frames.cameras], axis=0),
        _any_per_row(kp_nan & (sc != 0)),
        ~_per_row(frames.valid()).any(1),
    ]
    if frames.joints_3d is not None:
        checks.append(_any_per_row(np.isinf(frames.joints_3d)))
    codes = np.zeros(len(frames), dtype=np.int8)
    for code, bad in reversed(list(enumerate(checks, start=1))):  # the first check that fails wins
        codes[bad] = code
    return codes


def quarantine_reasons(frames: Frames) -> np.ndarray:
    """[N] reason strings ("" = good row) for rows that must not enter a dataset.

    Infinite values anywhere, a NaN keypoint whose score is not 0, or no valid view at all. (NaN with score 0
    is the normal way to say "missing" and is kept.)
    """
    return _QUARANTINE_REASONS[_quarantine_codes(frames)]


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N] values -> (same [N-1] bool: row i+1 equals row i, first value of each run of equal values)."""
    same = values[1:] == values[:-1]
    return same, values[np.concatenate([[0], np.flatnonzero(~same) + 1])] if len(values) else values[:0]


def _distinct(values: np.ndarray) -> list[Any]:
    """Sorted distinct values of [N] `values` (as `np.unique`), fast when equal values come in runs."""
    return sorted(set(_runs(values)[1].tolist()))


def check_frames(frames: Frames, *, source: str) -> None:
    """Whole-input errors (not row quarantine): scores outside [0, 1], non-monotonic frames within a sequence."""
    sc = frames.scores
    bad = (sc < 0) | (sc > 1)
    if bad.any():
        bad &= np.isfinite(sc)  # +-inf is quarantined per row, not refused
    if bad.any():
        n, v, j = np.argwhere(bad)[0]
        raise DatasetError(
            f"{source}: field 'scores' outside [0, 1]: {sc[n, v, j]} at row {n}, view {v}, joint {j}"
        )
    if len(frames) < 2:
        return
    # Fast path: each sequence is one run of rows and frames increase within runs. Else look per sequence.
    same, starts = _runs(frames.sequence)
    if len(set(starts.tolist())) == len(starts) and (np.diff(frames.frame)[same] > 0).all():
        return
    for seq in np.unique(frames.sequence):
        f = frames.frame[frames.sequence == seq]
        steps = np.diff(f)
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0])
            raise DatasetError(
                f"{source}: field 'frame' not strictly increasing in sequence {seq!r}: {f[i]} then {f[i + 1]} "
                f"at row {i + 1}"
            )


# ---------------------------------------------------------------------------------------------- writer


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
    ) -> None:
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.root = str(root).rstrip("/")
        self.fs, self.path = url_to_fs(self.root)
        self.skeleton = get_skeleton(skeleton) if isinstance(skeleton, str) else skeleton
        self.command, self.recipe, self.replace = command, recipe, replace
        self.max_bad_fraction = max_bad_fraction
        self.shard_bytes, self.shard_rows_override, self.compression = shard_bytes, shard_rows, compression
        self.token = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self.base = read_manifest(self.root)
        if self.base is not None and self.base.skeleton != self.skeleton.name:
            raise DatasetError(
                f"{self.root}: dataset skeleton is {self.base.skeleton!r}, refusing to add {self.skeleton.name!r}"
            )
        self._existing = self.base.sequences() if self.base else {}
        self._rigs: dict[str, Rig] = {}
        self._buffers: dict[tuple[str, str], _RowBuffer] = {}  # rows queued per (rig, split), in queue order
        self._spare: dict[tuple[str, str], _RowBuffer] = {}  # flushed buffers, reused (memory already mapped)
        self._written: list[ShardInfo] = []
        self._seen: set[tuple[str, str]] = set()
        self._replaced: set[tuple[str, str]] = set()
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
        for seq in _distinct(frames.sequence):
            self._claim(rig.rig_id, str(seq), source=source)
        codes = _quarantine_codes(frames)
        good = codes == 0
        if not good.all():
            self._quarantine(frames.take(~good), _QUARANTINE_REASONS[codes[~good]], source=source)
        self._num_rows += int(good.sum())
        splits = _distinct(frames.split[good])
        for sp in splits:
            rows = good & (frames.split == sp) if len(splits) > 1 else good
            key = (rig.rig_id, str(sp))
            if key not in self._buffers:
                self._buffers[key] = self._spare.pop(key, None) or _RowBuffer()
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
        V, J = frames.num_views, frames.num_joints
        approx_row_bytes = V * J * 12 + J * 12 + V * 26 * 8 + 64  # keypoints+scores, 3D, cameras, keys
        return max(1, self.shard_bytes // approx_row_bytes)

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
        self.fs.makedirs(posixpath.dirname(full), exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            # Straight into the file, then hashed from the page cache: no in-memory copy of the shard at all.
            with pa.OSFile(full, "wb") as f:
                pq.write_table(table, f, compression=self.compression)
            with pa.memory_map(full) as f:
                data = f.read_buffer()
                size, sha256 = data.size, hashlib.sha256(data).hexdigest()
        else:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression=self.compression)
            data = sink.getvalue()
            self.fs.pipe_file(full, data.to_pybytes())
            size, sha256 = data.size, hashlib.sha256(data).hexdigest()
        self._written.append(ShardInfo(
            path=rel, rig_id=rig_id, split=split, rows=len(frames), bytes=size, sha256=sha256,
            sequences=[str(s) for s in _distinct(frames.sequence)],
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
        """Flush the remaining rows, then atomically publish the new manifest. Returns it."""
        if self._done:
            raise RuntimeError("DatasetWriter.commit called twice")
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
        kept = list(self.base.shards) if self.base else []
        if self._replaced:
            kept = self._drop_replaced(kept)
        rigs = dict(self.base.rigs) if self.base else {}
        for rig_id, rig in self._rigs.items():
            rel = f"rigs/{rig_id}.json"
            write_bytes_atomic(self.fs, posixpath.join(self.path, rel), json.dumps(rig_to_dict(rig), indent=1).encode())
            rigs[rig_id] = {"path": rel, "num_cameras": len(rig.cameras), "camera_names": list(rig.camera_names)}
        now = _now()
        history = list(self.base.history) if self.base else []
        history.append({"time": now, "command": self.command, "recipe": self.recipe, "rows_added": self._num_rows,
                        "rows_quarantined": self._num_bad, "replaced": sorted(f"{r}/{s}" for r, s in self._replaced)})
        manifest = Manifest(
            skeleton=self.skeleton.name, joint_names=list(self.skeleton.joint_names), rigs=rigs,
            shards=kept + self._written, created=self.base.created if self.base else now, updated=now,
            history=history,
        )
        write_bytes_atomic(self.fs, posixpath.join(self.path, MANIFEST), manifest.to_json().encode())
        self._done = True
        self._garbage_collect(manifest)
        return manifest

    def _drop_replaced(self, shards: list[ShardInfo]) -> list[ShardInfo]:
        """Shards without the replaced sequences; shards that mix kept and replaced ones are rewritten."""
        kept = []
        for s in shards:
            hit = {q for q in s.sequences if (s.rig_id, q) in self._replaced}
            if not hit:
                kept.append(s)
                continue
            if hit == set(s.sequences):
                continue
            table = _read_shard(self.fs, self.path, s)
            mask = pa.compute.invert(pa.compute.is_in(table.column("sequence"), pa.array(sorted(hit))))
            frames = frames_from_table(table.filter(mask), num_joints=self.skeleton.num_joints)
            before = len(self._written)
            self._write_shard((s.rig_id, s.split), frames)
            kept.extend(self._written[before:])
            del self._written[before:]
        return kept

    def _garbage_collect(self, manifest: Manifest) -> None:
        listed = {s.path for s in manifest.shards}
        for s in self.base.shards if self.base else []:
            if s.path not in listed:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(posixpath.join(self.path, s.path))

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
        self._done = True


# Arrays of `Frames` queued by the writer, with the dtype `frames_to_table` converts them to anyway.
_ROW_DTYPES: dict[str, Any] = {
    "rig_id": object, "sequence": object, "subject": object, "frame": np.int64, "keypoints": np.float32,
    "scores": np.float32, "K": np.float64, "dist": np.float64, "R": np.float64, "t": np.float64,
    "image_size": np.int32, "camera_names": object, "split": object, "view_mask": bool, "joints_3d": np.float32,
}


class _RowBuffer:
    """Rows queued for one (rig, split) partition, copied once into contiguous arrays that are reused.

    The one copy is needed anyway (Arrow wants each column contiguous) and protects against a caller reusing
    its arrays; a rig's broadcast cameras are expanded here, straight from their single row.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.num_rows = 0
        self.has_3d = True

    def add(self, frames: Frames, rows: np.ndarray | None, *, min_capacity: int) -> None:
        """Append `frames` rows `rows` (None = all); grow to at least `min_capacity` + these rows if needed."""
        n = len(frames) if rows is None else len(rows)
        start, stop = self.num_rows, self.num_rows + n
        self.has_3d &= frames.joints_3d is not None
        sources = {"rig_id": frames.rig_id, "sequence": frames.sequence, "subject": frames.subject,
                   "frame": frames.frame, "keypoints": frames.keypoints, "scores": frames.scores,
                   **frames.cameras._asdict(), "image_size": frames.image_size, "camera_names": frames.camera_names,
                   "split": frames.split, "view_mask": frames.view_mask}
        if self.has_3d:
            sources["joints_3d"] = frames.joints_3d
        for name, src in sources.items():
            out = self.arrays.get(name)
            if out is not None and out.shape[1:] != src.shape[1:]:  # two rigs added under one rig_id
                raise ValueError(f"{name}: rows of shape {src.shape[1:]} cannot join rows of shape {out.shape[1:]}")
            if out is None or len(out) < stop:
                grown = np.empty((max(stop, min_capacity + n), *src.shape[1:]), dtype=_ROW_DTYPES[name])
                if out is not None:
                    grown[:start] = out[:start]
                self.arrays[name] = out = grown
            dst = out[start:stop]
            if len(src) and src.strides[0] == 0:  # one row broadcast over N (a static rig's cameras)
                dst[...] = src[0]
            elif rows is None:
                dst[...] = src
            elif src.dtype == dst.dtype:
                np.take(src, rows, axis=0, out=dst, mode="clip")  # rows are in range; "clip" skips a buffered copy
            else:
                dst[...] = src[rows]
        self.num_rows = stop

    def frames(self) -> Frames:
        """The queued rows (views of the buffer)."""
        a = {name: arr[: self.num_rows] for name, arr in self.arrays.items()}
        return Frames(rig_id=a["rig_id"], sequence=a["sequence"], subject=a["subject"], frame=a["frame"],
                      keypoints=a["keypoints"], scores=a["scores"],
                      cameras=CameraArrays(a["K"], a["dist"], a["R"], a["t"]), image_size=a["image_size"],
                      camera_names=a["camera_names"], split=a["split"], view_mask=a["view_mask"],
                      joints_3d=a["joints_3d"] if self.has_3d else None)

    def clear(self) -> None:
        self.num_rows = 0
        self.has_3d = True


def _same_rig(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if [c["name"] for c in a["cameras"]] != [c["name"] for c in b["cameras"]]:
        return False
    for ca, cb in zip(a["cameras"], b["cameras"], strict=True):
        for k in ("K", "dist", "R", "t"):
            if not np.allclose(np.asarray(ca[k], float), np.asarray(cb[k], float), rtol=0, atol=1e-9):
                return False
    return True


# ---------------------------------------------------------------------------------------------- reader


def _read_shard(fs: fsspec.AbstractFileSystem, root: str, shard: ShardInfo, columns: list[str] | None = None,
                *, verify: bool = False) -> pa.Table:
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

    def __init__(self, root: str) -> None:
        self.root = str(root).rstrip("/")
        self.fs, self.path = url_to_fs(self.root)
        manifest = read_manifest(self.root)
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
            yield s, _read_shard(self.fs, self.path, s, columns, verify=verify)

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
                with_3d: bool = False) -> Iterator[Frames]:
    """Blocks of at most `batch_size` rows of `split`, one shard in memory at a time, at most `max_rows` in all.

    `with_3d=False` never reads the `joints_3d` column (prediction); evaluation asks for it for metrics only.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    columns = None if with_3d else [f.name for f in ARROW_SCHEMA if f.name != "joints_3d"]
    left = max_rows if max_rows is not None else float("inf")
    for _, table in ds.iter_tables(columns=columns, splits=split):
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
