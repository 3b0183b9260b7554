"""Noise profiles of a dataset's own 2D detector, per camera and joint, measured from multi-view consistency alone.

`estimate_noise_profile(frames, skeleton)` gives a `NoiseProfile` (the JSON file of `rigpose datasets
noise-profile`); `profile_dataset(url, split=...)` runs it on an even sample of a dataset's split; a recipe's
`noise: {profile: FILE}` makes the synthetic detector draw from one (`view_noise`, used by
rigpose.data.synth.build), so that a prior trained on synthetic 2D sees the user's detector. The estimator and
its biases: rigpose.data.noise_residuals. Units: px per image coordinate; rates are shares in [0, 1].
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from rigpose.config import Strict
from rigpose.data.noise_residuals import CameraNoise, measure_noise
from rigpose.data.reader import Dataset, read_shard
from rigpose.data.schema import TRAINING_COLUMNS, Frames, frames_from_table
from rigpose.data.synth.detector import DetectorNoise, ViewNoise
from rigpose.skeleton import Skeleton
from rigpose.storage import url_to_fs

PROFILE_FORMAT = "rigpose-noise-profile"

__all__ = ["NoiseProfile", "NoiseStats", "check_profile_joints", "estimate_noise_profile", "load_noise_profile",
           "profile_dataset", "save_noise_profile", "view_noise"]


# ---------------------------------------------------------------------------------------------- the file


class NoiseStats(Strict):
    """One camera's (or every camera's, `overall`) detector noise. Lists run over the profile's joints; null = not
    measured (too few residuals)."""

    pixel_std: list[float | None] = Field(description="detector noise per coordinate (px), per joint, corrected "
                                                      "for the triangulation's own error")
    pixel_std_loo: list[float | None] = Field(description="robust std (px) of the leave-one-view-out residual, "
                                                          "per joint, before that correction")
    outlier_rate: list[float | None] = Field(description="share of residuals beyond outlier_k x pixel_std_loo")
    missing_rate: list[float | None] = Field(description="share of joints inside the image reported missing")
    residuals: list[int] = Field(description="residuals used per joint")
    swap_rate: float | None = Field(None, ge=0, le=1, description="share of limbs seen swapped left/right")
    missing_view_rate: float | None = Field(None, ge=0, le=1, description="share of views with no valid joint")
    outlier_px: tuple[float, float] | None = Field(None, description="5-95% range of outlier residual lengths (px)")


class NoiseProfile(Strict):
    """A detector noise profile (`rigpose datasets noise-profile`); the JSON file is its `model_dump`."""

    format: Literal["rigpose-noise-profile"] = Field(PROFILE_FORMAT, description="file type marker")
    version: Literal[1] = Field(1, description="format version")
    skeleton: str = Field(description="skeleton of the dataset measured")
    joint_names: list[str] = Field(min_length=1, description="the joints the per-joint lists run over")
    cameras: dict[str, NoiseStats] = Field(description="camera name -> its noise")
    overall: NoiseStats = Field(description="all cameras pooled (used for cameras the profile does not name)")
    rows_used: int = Field(ge=0, description="dataset rows the estimate read")
    dataset: str | None = Field(None, description="dataset measured")
    split: str | None = Field(None, description="split measured")
    command: str | None = Field(None, description="command that wrote the profile")
    skipped_rigs: list[str] = Field(default_factory=list, description="rigs left out (fewer than 3 cameras)")
    method: dict[str, float] = Field(default_factory=dict, description="estimator settings (outlier_k, inlier_px)")

    @model_validator(mode="after")
    def _lengths(self) -> NoiseProfile:
        J = len(self.joint_names)
        for name, stats in [*self.cameras.items(), ("overall", self.overall)]:
            for key in ("pixel_std", "pixel_std_loo", "outlier_rate", "missing_rate", "residuals"):
                if len(getattr(stats, key)) != J:
                    raise ValueError(f"{name}.{key}: {len(getattr(stats, key))} values for {J} joint_names")
        return self


def save_noise_profile(profile: NoiseProfile, path: str | os.PathLike[str]) -> None:
    """Write `profile` as JSON to `path` (a local path or fsspec URL)."""
    text = json.dumps(profile.model_dump(mode="json"), indent=1)
    # lists of numbers and names on one line each: a profile reads as one row per field and camera
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    fs, p = url_to_fs(path)
    with fs.open(p, "w") as f:
        f.write(text + "\n")


def load_noise_profile(path: str | os.PathLike[str]) -> NoiseProfile:
    """Read a profile JSON file (a local path or fsspec URL); ValueError naming the file and the bad field."""
    fs, p = url_to_fs(path)
    try:
        with fs.open(p, "r") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(path)}: no such noise profile") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{os.fspath(path)}: not a noise profile (no \"format\": \"{PROFILE_FORMAT}\")")
    try:
        return NoiseProfile.model_validate(data)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: invalid noise profile: {e}") from None


# ---------------------------------------------------------------------------------------------- entry points


def estimate_noise_profile(frames: Frames | Iterable[Frames], skeleton: Skeleton, *, outlier_k: float = 4.0,
                           inlier_px: float = 20.0) -> NoiseProfile:
    """The `NoiseProfile` of `frames` (one block or an iterable; rows of rigs under 3 cameras are left out) with
    the skeleton `skeleton`: `noise_residuals.measure_noise` (its arguments, method and errors), rounded to 0.001 px
    and 1e-5 with null where not measured. No 3D labels are read."""
    m = measure_noise(frames, skeleton, outlier_k=outlier_k, inlier_px=inlier_px)
    return NoiseProfile(skeleton=skeleton.name, joint_names=list(skeleton.joint_names),
                        cameras={name: _stats(c) for name, c in m.cameras.items()}, overall=_stats(m.overall),
                        rows_used=m.rows, method={"outlier_k": outlier_k, "inlier_px": inlier_px})


def _values(a: np.ndarray, digits: int) -> list[float | None]:
    return [None if not np.isfinite(x) else round(float(x), digits) for x in np.atleast_1d(a)]


def _stats(c: CameraNoise) -> NoiseStats:
    def one(x: float, digits: int) -> float | None:
        return _values(np.asarray(x), digits)[0]

    return NoiseStats(pixel_std=_values(c.pixel_std, 3), pixel_std_loo=_values(c.pixel_std_loo, 3),
                      outlier_rate=_values(c.outlier_rate, 5), missing_rate=_values(c.missing_rate, 5),
                      residuals=[int(x) for x in c.residuals], swap_rate=one(c.swap_rate, 5),
                      missing_view_rate=one(c.missing_view_rate, 5),
                      outlier_px=None if c.outlier_px is None else (round(c.outlier_px[0], 2),
                                                                    round(c.outlier_px[1], 2)))


def profile_dataset(url: str, *, split: str = "train", max_rows: int | None = 20_000, progress: bool = False,
                    command: str | None = None, outlier_k: float = 4.0, inlier_px: float = 20.0) -> NoiseProfile:
    """`estimate_noise_profile` of up to `max_rows` rows of `split` of the dataset at `url`, spread evenly over its
    shards (each gives its share of rows, evenly spaced), never reading `joints_3d`.

    Rigs with fewer than 3 cameras are left out (ValueError naming them when nothing else is left); a split that
    does not exist raises `DatasetError`, one without rows ValueError.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    ds = Dataset(url)
    shards = [s for s in ds.shards(splits=split) if s.rows > 0]
    if not shards:
        raise ValueError(f"{url}: split {split!r} has no rows")
    cameras = {r: int(info["num_cameras"]) for r, info in ds.manifest.rigs.items()}
    usable = [s for s in shards if cameras.get(s.rig_id, 0) >= 3]
    if not usable:
        few = ", ".join(f"{r} ({cameras.get(r, 0)} camera(s))" for r in sorted({s.rig_id for s in shards}))
        raise ValueError(f"{url}: split {split!r} has only rigs with fewer than 3 cameras: {few}; a noise profile "
                         "checks each view against the point triangulated from two others")
    total = sum(s.rows for s in usable)
    take = total if max_rows is None else min(max_rows, total)
    quota = np.diff(np.round(np.cumsum([0] + [s.rows for s in usable]) * take / total).astype(np.int64))
    columns = list(TRAINING_COLUMNS)
    columns_bar = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())

    def blocks(advance: Callable[[int], None]) -> Iterator[Frames]:
        for shard, q in zip(usable, quota, strict=True):
            if q == 0:
                continue
            table = read_shard(ds.fs, ds.path, shard, columns)
            rows = ((np.arange(q) + 0.5) * shard.rows / q).astype(np.int64)
            yield frames_from_table(table.take(rows), num_joints=ds.skeleton.num_joints,
                                    num_views=cameras[shard.rig_id], with_3d=False)
            advance(int(q))

    with Progress(*columns_bar, disable=not progress) as bar:
        task = bar.add_task(f"noise profile {split}", total=int(take))
        profile = estimate_noise_profile(blocks(lambda n: bar.advance(task, n)), ds.skeleton,
                                         outlier_k=outlier_k, inlier_px=inlier_px)
    skipped = sorted({s.rig_id for s in shards} - {s.rig_id for s in usable})
    return profile.model_copy(update={"dataset": url, "split": split, "command": command, "skipped_rigs": skipped})


# ---------------------------------------------------------------------------------------------- recipes


PROFILE_KEYS = ("pixel_std", "outlier_rate", "outlier_px", "missing_rate", "swap_rate", "missing_view_rate")


def check_profile_joints(profile: NoiseProfile, skeleton: Skeleton, *, source: str) -> np.ndarray:
    """[J] index into the profile's joints of each joint of `skeleton` (matched by name); ValueError naming the
    joints the profile lacks."""
    index = {n: i for i, n in enumerate(profile.joint_names)}
    lacking = [n for n in skeleton.joint_names if n not in index]
    if lacking:
        raise ValueError(f"noise.profile {source}: the profile (skeleton {profile.skeleton}) has no joint(s) "
                         f"{lacking} of the recipe's skeleton {skeleton.name}")
    return np.array([index[n] for n in skeleton.joint_names])


def _per_joint(profile: NoiseProfile, stats: NoiseStats, key: str, index_J: np.ndarray, *, source: str
               ) -> np.ndarray:
    """[J] `stats.key` in the skeleton's joint order, unmeasured joints from `overall`; ValueError if neither."""
    own, pooled = getattr(stats, key), getattr(profile.overall, key)
    values = [own[i] if own[i] is not None else pooled[i] for i in index_J]
    lacking = [profile.joint_names[i] for i, v in zip(index_J, values, strict=True) if v is None]
    if lacking:
        raise ValueError(f"noise.profile {source}: no {key} for joint(s) {lacking}, in the camera or overall")
    return np.array(values, np.float64)


def view_noise(noise: DetectorNoise, profile: NoiseProfile, camera_names: list[str], skeleton: Skeleton, *,
               source: str = "<profile>") -> ViewNoise:
    """The detector's per-view, per-joint noise for a rig with cameras `camera_names`: each camera's values from
    the profile's camera of the same name, else from `overall`; a key written in `noise` (`pixel_std: 3`)
    overrides the profile's value of it for every camera and joint (`PROFILE_KEYS`). A camera's unmeasured values
    come from `overall`, else (swap_rate, missing_view_rate) from `noise`; outlier_px is `overall`'s range, else
    `noise`'s. The other settings of `noise` (occlusions, scores) are not in a profile."""
    index_J = check_profile_joints(profile, skeleton, source=source)
    written = noise.model_fields_set
    V, J = len(camera_names), skeleton.num_joints
    stats = [profile.cameras.get(name, profile.overall) for name in camera_names]

    def joints(key: str) -> np.ndarray:
        if key in written:
            return np.full((V, J), getattr(noise, key), np.float64)
        return np.stack([_per_joint(profile, s, key, index_J, source=source) for s in stats])

    def views(key: str) -> np.ndarray:
        if key in written:
            return np.full(V, getattr(noise, key), np.float64)
        pooled = getattr(profile.overall, key)
        return np.array([next(v for v in (getattr(s, key), pooled, getattr(noise, key)) if v is not None)
                         for s in stats], np.float64)

    outlier_px = noise.outlier_px if "outlier_px" in written or profile.overall.outlier_px is None else (
        profile.overall.outlier_px)
    return ViewNoise(pixel_std=joints("pixel_std"), outlier_rate=joints("outlier_rate"),
                     missing_rate=joints("missing_rate"), swap_rate=views("swap_rate"),
                     missing_view_rate=views("missing_view_rate"), outlier_px=outlier_px)
