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
import io
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

from rigpose.data.schema import ARROW_SCHEMA, SCHEMA_VERSION, Frames, frames_from_table, frames_to_table
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


def quarantine_reasons(frames: Frames) -> np.ndarray:
    """[N] reason strings ("" = good row) for rows that must not enter a dataset.

    Infinite values anywhere, a NaN keypoint whose score is not 0, or no valid view at all. (NaN with score 0
    is the normal way to say "missing" and is kept.)
    """
    N = len(frames)
    reasons = np.full(N, "", dtype=object)
    kp, sc = frames.keypoints, frames.scores
    nan_scored = (np.isnan(kp).any(-1) & (sc != 0)).any((1, 2))
    no_view = ~frames.valid().any(-1).any(-1)
    checks = [
        (np.isinf(kp).any((1, 2, 3)), "infinite keypoint"),
        (np.isinf(sc).any((1, 2)) | np.isnan(sc).any((1, 2)), "non-finite score"),
        (~np.all([np.isfinite(a.reshape(N, -1)).all(1) for a in frames.cameras], axis=0), "non-finite camera"),
        (nan_scored, "NaN keypoint with non-zero score"),
        (no_view, "no valid view"),
    ]
    if frames.joints_3d is not None:
        checks.append((np.isinf(frames.joints_3d).any((1, 2)), "infinite joints_3d"))
    for bad, why in checks:
        reasons[bad & (reasons == "")] = why
    return reasons


def check_frames(frames: Frames, *, source: str) -> None:
    """Whole-input errors (not row quarantine): scores outside [0, 1], non-monotonic frames within a sequence."""
    sc = frames.scores
    bad = np.isfinite(sc) & ((sc < 0) | (sc > 1))
    if bad.any():
        n, v, j = np.argwhere(bad)[0]
        raise DatasetError(
            f"{source}: field 'scores' outside [0, 1]: {sc[n, v, j]} at row {n}, view {v}, joint {j}"
        )
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
        self._buffers: dict[tuple[str, str], list[Frames]] = {}
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
        for seq in np.unique(frames.sequence):
            self._claim(rig.rig_id, str(seq), source=source)
        reasons = quarantine_reasons(frames)
        bad = reasons != ""
        if bad.any():
            self._quarantine(frames.take(bad), reasons[bad], source=source)
            frames = frames.take(~bad)
        self._num_rows += len(frames)
        for sp in np.unique(frames.split):
            part = frames.take(frames.split == sp)
            key = (rig.rig_id, str(sp))
            self._buffers.setdefault(key, []).append(part)
            if sum(len(b) for b in self._buffers[key]) >= self._shard_rows(part):
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
        parts = self._buffers.pop(key, [])
        if not parts:
            return
        frames = Frames.concat(parts)
        limit = self._shard_rows(frames)
        for start in range(0, len(frames), limit):
            self._write_shard(key, frames.take(slice(start, start + limit)))

    def _write_shard(self, key: tuple[str, str], frames: Frames) -> None:
        rig_id, split = key
        table = frames_to_table(frames)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression=self.compression)
        data = buf.getvalue().to_pybytes()
        rel = f"rig_id={rig_id}/split={split}/part-{self._part:05d}-{self.token}.parquet"
        self._part += 1
        full = posixpath.join(self.path, rel)
        self.fs.makedirs(posixpath.dirname(full), exist_ok=True)
        self.fs.pipe_file(full, data)
        self._written.append(ShardInfo(
            path=rel, rig_id=rig_id, split=split, rows=len(frames), bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(), sequences=sorted({str(s) for s in frames.sequence}),
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
        self._done = True


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
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DatasetError(f"shard {url} is listed in the manifest but missing") from None
    if verify and hashlib.sha256(data).hexdigest() != shard.sha256:
        raise DatasetError(f"shard {url}: sha256 does not match the manifest (corrupt or modified)")
    try:
        table = pq.read_table(io.BytesIO(data), columns=columns)
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
