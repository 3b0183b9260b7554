"""`rigpose datasets validate` and `describe`: check a dataset against its manifest, and summarise what it holds.

validate: every listed shard exists with the listed size, sha256, row count and the schema-v1 Arrow schema;
values are in range (scores in [0, 1], NaN keypoints only with score 0, list lengths consistent with the row's
views and the skeleton, frames increasing within a sequence); rig files load and validate; files under the root
that no manifest lists are reported (left by a crashed writer; harmless to readers).

describe: rows per rig and split, views, missing-joint and missing-view rates, and per camera the median
reprojection error of the robustly triangulated poses: a camera whose calibration is off stands out here.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rigpose import geometry as g
from rigpose.data.manifest import MANIFEST, DatasetError, ShardInfo
from rigpose.data.reader import Dataset
from rigpose.data.schema import ARROW_SCHEMA, frames_from_table
from rigpose.rig import RigError, validate_rig


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
    for seq in np.unique(frames.sequence):
        f = frames.frame[frames.sequence == seq]
        if (np.diff(f) <= 0).any():
            problems.append(f"{where}: field 'frame' not strictly increasing in sequence {seq!r}")
    if frames.joints_3d is not None and np.isinf(frames.joints_3d).any():
        problems.append(f"{where}: field 'joints_3d' has infinite values")
    return problems


def _check_shard(ds: Dataset, shard: ShardInfo, report: ValidationReport) -> None:
    path = posixpath.join(ds.path, shard.path)
    where = shard.path
    if not ds.fs.exists(path):
        report.problems.append(f"{where}: listed in the manifest but missing")
        return
    with ds.fs.open(path, "rb") as f:
        data = f.read()
    if len(data) != shard.bytes:
        report.problems.append(f"{where}: {len(data)} bytes, the manifest says {shard.bytes}")
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        report.problems.append(f"{where}: sha256 does not match the manifest (corrupt or modified)")
        return
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        report.problems.append(f"{where}: unreadable Parquet ({e})")
        return
    if not table.schema.equals(ARROW_SCHEMA, check_metadata=False):
        report.problems.append(f"{where}: Arrow schema differs from schema v1")
        return
    if table.num_rows != shard.rows:
        report.problems.append(f"{where}: {table.num_rows} rows, the manifest says {shard.rows}")
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
            report.notes.append(f"{posixpath.relpath(path, ds.path)}: not in {MANIFEST} (ignored by readers)")
    return report


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
