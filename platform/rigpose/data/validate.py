"""`rigpose datasets validate` and `describe`: check a dataset against its manifest, and summarise what it holds.

validate: every listed shard exists with the listed size, sha256, row count and the schema-v1 Arrow schema;
values are in range (scores in [0, 1], NaN keypoints only with score 0, list lengths consistent with the row's
views and the skeleton, frames increasing within a sequence); rig files load and validate; files under the root
that no manifest lists are reported (left by a crashed writer; harmless to readers).

describe: rows per rig and split, views, missing-joint and missing-view rates, and per camera the median
reprojection error of the robustly triangulated poses: a camera whose calibration is off stands out here.

verify_shards: the part of validate that training runs before Ray starts, on the shards it will read: each shard
against its manifest entry (`shard_problems`: present, size, Parquet footer schema and row count, and with
`full` the sha256), refused with one line naming the first bad shard. `validate` uses the same check.
"""

from __future__ import annotations

import hashlib
import posixpath
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rigpose import geometry as g
from rigpose.config import VERIFY_MODES, VerifyMode
from rigpose.data.checks import unordered_sequences
from rigpose.data.manifest import DatasetError, ShardInfo
from rigpose.data.reader import Dataset
from rigpose.data.schema import ARROW_SCHEMA, frames_from_table
from rigpose.rig import RigError, validate_rig
from rigpose.storage import protocol_url

HASH_CHUNK = 8 << 20  # bytes read per sha256 update: a shard is hashed without holding it in memory
VERIFY_THREADS = 8  # shards checked at once (object storage: latency-bound; local: hashing, GIL released)
PROGRESS_BYTES = 2 << 30  # full verification of more than this shows progress (0.6-1.3 s a GB on 2 cores)
PROGRESS_SHARDS = 1000  # footer verification of more shards than this shows progress


@dataclass
class ValidationReport:
    """Problems (each a one-line message naming the file and field) and notes from `validate_dataset`."""

    root: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards_checked: int = 0
    rows_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_values(table: pa.Table, *, where: str, num_joints: int) -> list[str]:
    """Value-range problems of one shard's table."""
    problems = []
    nv = table.column("num_views").to_numpy().astype(np.int64)
    expected = {"keypoints": 2 * num_joints, "scores": num_joints, "K": 9, "R": 9, "t": 3, "dist": 5,
                "image_size": 2, "camera_names": 1}
    for name, per_view in expected.items():
        lengths = pc.list_value_length(table.column(name)).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != nv * per_view)
        if bad.size:
            problems.append(f"{where}: field {name!r} has {lengths[bad[0]]} values at row {bad[0]}, "
                            f"expected {nv[bad[0]] * per_view} (num_views={nv[bad[0]]})")
    if problems:
        return problems
    frames = frames_from_table(table, num_joints=num_joints)
    sc = frames.scores[frames.view_mask]
    if ((sc < 0) | (sc > 1) | ~np.isfinite(sc)).any():
        problems.append(f"{where}: field 'scores' has values outside [0, 1]")
    kp = frames.keypoints
    nan_scored = np.isnan(kp).any(-1) & (frames.scores > 0)
    if nan_scored.any():
        row = int(np.argwhere(nan_scored)[0][0])
        problems.append(f"{where}: field 'keypoints' is NaN with a non-zero score at row {row}")
    if np.isinf(kp).any():
        problems.append(f"{where}: field 'keypoints' has infinite values")
    for seq in unordered_sequences(frames.sequence, frames.frame):  # one sort, not a mask per sequence
        problems.append(f"{where}: field 'frame' not strictly increasing in sequence {seq!r}")
    if frames.joints_3d is not None and np.isinf(frames.joints_3d).any():
        problems.append(f"{where}: field 'joints_3d' has infinite values")
    return problems


def _sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def shard_problems(fs: fsspec.AbstractFileSystem, path: str, shard: ShardInfo, *, full: bool,
                   data: bytes | None = None) -> list[str]:
    """What is wrong with the shard file at `path` against its manifest entry `shard` (empty: nothing).

    Always: present, size (`fs.info`), a readable Parquet footer with the schema-v1 Arrow schema and the listed
    row count (the footer only, no data pages). With `full`: also the sha256 (reads the whole file). `data`: the
    file's bytes when the caller already holds them (validate), used instead of reading it again.
    Each problem is a phrase without the shard's name (the caller names it, as it prefers).
    """
    try:
        size = len(data) if data is not None else fs.info(path)["size"]
    except FileNotFoundError:
        return ["listed in the manifest but missing"]
    problems = []
    if size != shard.bytes:
        problems.append(f"{size} bytes, the manifest says {shard.bytes}")
    if full:
        digest = hashlib.sha256(data).hexdigest() if data is not None else _sha256(fs, path)
        if digest != shard.sha256:
            problems.append("sha256 does not match the manifest (corrupt or modified)")
    try:
        meta = (pq.read_metadata(pa.BufferReader(data)) if data is not None
                else pq.read_metadata(path, filesystem=fs))
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowInvalid, OSError) as e:
        return [*problems, f"unreadable Parquet ({' '.join(str(e).split())})"]
    if not schema.equals(ARROW_SCHEMA, check_metadata=False):
        return [*problems, "Arrow schema differs from schema v1"]
    if meta.num_rows != shard.rows:
        problems.append(f"{meta.num_rows} rows, the manifest says {shard.rows}")
    return problems


def _check_shard(ds: Dataset, shard: ShardInfo, report: ValidationReport) -> None:
    """`shard_problems` with the sha256, then (for a shard that matches its entry) partition keys and values."""
    path = posixpath.join(ds.path, shard.path)
    where = shard.path
    try:
        with ds.fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = None
    problems = shard_problems(ds.fs, path, shard, full=True, data=data)  # data None: missing, said so
    report.problems.extend(f"{where}: {p}" for p in problems)
    if problems:
        return
    table = pq.read_table(pa.BufferReader(data))
    for col, want in (("rig_id", shard.rig_id), ("split", shard.split)):
        values = set(table.column(col).unique().to_pylist())
        if values != {want}:
            report.problems.append(f"{where}: field {col!r} holds {sorted(values)}, the partition says {want!r}")
    report.problems.extend(_check_values(table, where=where, num_joints=ds.skeleton.num_joints))
    report.shards_checked += 1
    report.rows_checked += table.num_rows


def validate_dataset(url: str) -> ValidationReport:
    """Check the dataset at `url` (manifest, shards, schema, values, rigs); never raises for a bad dataset."""
    report = ValidationReport(root=url)
    try:
        ds = Dataset(url)
    except DatasetError as e:
        report.problems.append(str(e))
        return report
    for rig_id in ds.manifest.rigs:
        try:
            validate_rig(ds.rig(rig_id), source=ds.manifest.rigs[rig_id]["path"])
        except (RigError, DatasetError, OSError) as e:
            report.problems.append(str(e))
    for shard in ds.manifest.shards:
        _check_shard(ds, shard, report)
    listed = {posixpath.join(ds.path, s.path) for s in ds.manifest.shards}
    for path in ds.fs.glob(posixpath.join(ds.path, "rig_id=*", "split=*", "*.parquet")):
        if path not in listed:
            report.notes.append(f"{posixpath.relpath(path, ds.path)}: not in manifest version "
                                f"{ds.manifest.version} (ignored by readers; a running ingest's, or left by a "
                                f"failed one: `rigpose datasets vacuum {ds.root}` removes those)")
    return report


# ---------------------------------------------------------------------------------------------- verify


def verify_is_full(mode: VerifyMode, fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `data.verify` = `mode` hashes every shard: "full", or "auto" on a local filesystem (reading a
    local file costs little more than its footer; on object storage it is a second download of the dataset)."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"data.verify: {mode!r} is not one of {', '.join(VERIFY_MODES)}")
    return mode == "full" or (mode == "auto" and isinstance(fs, LocalFileSystem))


def verify_shards(ds: Dataset, shards: list[ShardInfo], *, mode: VerifyMode = "auto") -> None:
    """Check `shards` of `ds` against the manifest (`shard_problems`; the sha256 when `verify_is_full`).

    Raises `DatasetError`, one line: the first bad shard in manifest order (its URL), what is wrong with it, and
    the command that lists every problem. Quiet unless the work is long (more than `PROGRESS_BYTES` to hash or
    `PROGRESS_SHARDS` footers to read): then a progress line on a terminal, a start and an end line otherwise.
    """
    full = verify_is_full(mode, ds.fs)

    def check(shard: ShardInfo) -> list[str]:
        return shard_problems(ds.fs, posixpath.join(ds.path, shard.path), shard, full=full)

    total = sum(s.bytes for s in shards) if full else len(shards)
    show = total > (PROGRESS_BYTES if full else PROGRESS_SHARDS)
    what = (f"{len(shards)} shards ({sum(s.bytes for s in shards) / 1e9:.1f} GB) against the manifest of "
            f"{ds.root}" + (" (sha256; data.verify: footer skips it)" if full else " (footers)"))
    with ThreadPoolExecutor(max_workers=VERIFY_THREADS) as pool, _progress(what, total, show=show) as advance:
        for shard, problems in zip(shards, pool.map(check, shards), strict=True):
            if problems:
                pool.shutdown(wait=False, cancel_futures=True)
                url = protocol_url(ds.fs, posixpath.join(ds.path, shard.path))
                raise DatasetError(f"shard {url}: {'; '.join(problems)} (`rigpose datasets validate {ds.root}` "
                                   "checks every shard)")
            advance(shard.bytes if full else 1)


@contextmanager
def _progress(what: str, total: float, *, show: bool) -> Iterator[Callable[[float], None]]:
    """An `advance(amount)` function; with `show`, progress towards `total` printed as `[rigpose] verifying ...`."""
    done, t0, last = 0.0, time.monotonic(), 0.0
    tty = sys.stdout.isatty()

    def advance(amount: float) -> None:
        nonlocal done, last
        done += amount
        now = time.monotonic()
        if show and tty and (now - last > 0.5 or done >= total):
            last = now
            print(f"\r[rigpose] verifying {what}: {100 * done / max(total, 1):.0f}%", end="", flush=True)

    if show:
        print(f"[rigpose] verifying {what}" + ("" if tty else " ..."), end="" if tty else "\n", flush=True)
    try:
        yield advance
    except BaseException:
        if show and tty:
            print(flush=True)  # end the progress line before the error
        raise
    if show:
        print(("\n" if tty else "") + f"[rigpose] verified in {time.monotonic() - t0:.1f} s", flush=True)


# ---------------------------------------------------------------------------------------------- describe


def describe_dataset(url: str, *, max_rows_per_rig: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Summary of the dataset at `url`: counts from the manifest, rates and calibration consistency from a sample.

    Returns {"root", "skeleton", "rows", "splits": {split: {...}}, "rigs": {rig_id: {...}}} where each rig
    entry has rows, views, missing_joint_rate, missing_view_rate and per-camera median reprojection error (px)
    of the robust triangulation of up to `max_rows_per_rig` sampled rows.
    """
    ds = Dataset(url)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"root": url, "skeleton": ds.manifest.skeleton, "rows": ds.manifest.num_rows,
                           "splits": ds.manifest.splits(), "rigs": {}}
    for rig_id, info in ds.manifest.rigs.items():
        shards = ds.shards(rig_ids=[rig_id])
        rows = sum(s.rows for s in shards)
        table = pa.concat_tables([t for _, t in ds.iter_tables(rig_ids=[rig_id])]) if shards else None
        entry: dict[str, Any] = {"rows": rows, "views": info["num_cameras"], "cameras": info["camera_names"],
                                 "splits": sorted({s.split for s in shards})}
        if table is not None and table.num_rows:
            if table.num_rows > max_rows_per_rig:
                table = table.take(np.sort(rng.choice(table.num_rows, max_rows_per_rig, replace=False)))
            entry.update(_rates_and_consistency(table, num_joints=ds.skeleton.num_joints))
        out["rigs"][rig_id] = entry
    return out


def _rates_and_consistency(table: pa.Table, *, num_joints: int) -> dict[str, Any]:
    frames = frames_from_table(table, num_joints=num_joints, with_3d=False)
    valid_NVJ = frames.valid()
    view_ok = valid_NVJ.any(-1)
    X = g.triangulate_robust(frames.keypoints.astype(np.float64), frames.cameras, frames.scores)
    err = g.reprojection_error(X, frames.keypoints.astype(np.float64), frames.cameras)  # [N, V, J]
    err = np.where(valid_NVJ, err, np.nan)
    with np.errstate(all="ignore"):
        per_cam = [float(np.nanmedian(err[:, v])) if np.isfinite(err[:, v]).any() else float("nan")
                   for v in range(frames.num_views)]
    return {
        "sampled_rows": len(frames),
        "missing_joint_rate": float(1 - valid_NVJ[view_ok].mean()) if view_ok.any() else 1.0,
        "missing_view_rate": float(1 - view_ok.mean()),
        "triangulated_joint_rate": float(np.isfinite(X).all(-1).mean()),
        "reprojection_px_median_per_camera": per_cam,
    }
