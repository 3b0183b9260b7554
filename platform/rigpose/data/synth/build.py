"""Synthetic datasets: real or procedural motion, placed in calibrated rigs, seen by a simulated 2D detector.

`build_dataset(recipe, out)` writes a schema-v1 dataset (rigpose.data.writer) from a recipe file (the shipped
ones: rigpose/resources/recipes/*.yaml), read with `yaml.safe_load` into `Recipe`; unknown keys fail naming their path.
The same recipe and seed give byte-identical arrays. `joints_3d` (world metres) is written for evaluation only.

The recipe format is documented in rigpose.data.synth.recipe. The dataset's skeleton is the recipe's `skeleton`:
deepmimic16 (the motion's joints), or coco17 / halpe26 / h36m17, whose joints come from the motion's 16 joints
and points fixed on its head and feet (rigpose.data.synth.targets); bones are scaled and placed on those points,
then each target joint takes its point, and the detector model works on the target skeleton.

A placement is one clip, one subject, one rig, one heading and one floor position: the clip's bones are scaled
(root height with the legs, so feet stay on the floor), it is turned about the vertical through its mean root
position and that point is moved to the floor position (heights kept). It becomes the sequence
`<clip>-p<placement>-s<subject>` (`walk-p003-s1`; `-<split>` appended when split by time), frames numbered from
the clip's first frame. Placement split: each clip's placements follow a golden-ratio sequence over the split
fractions, so every clip has close to the same split proportions however many placements it gets.

A recipe's `calibration_error` simulates a rig whose calibration drifted (`miscalibrate_rig`): the 2D is still
projected through the rigs as given, but the rows' cameras and the rig files the dataset records are the perturbed
calibration, under the same rig_id. `joints_3d` stays the truth in the world frame.

Generation is vectorised: per batch of `BATCH_ROWS` frames, one gather of the clip bank, one bone rescale, one
placement transform, one projection per camera and one detector-model pass. A background thread generates the
next batches while the main thread hands the last one to `DatasetWriter` (bounded queue, so memory stays flat).
Shape letters: N rows (frames), V views, J joints, Q sequences, P placements, C clips.
"""

from __future__ import annotations

import math
import os
import queue
import shlex
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rigpose import resources
from rigpose.data.manifest import Manifest
from rigpose.data.noise_profile import NoiseProfile, check_profile_joints, load_noise_profile, view_noise
from rigpose.data.schema import Frames, frames_for_rig
from rigpose.data.synth import motion_bank as sm
from rigpose.data.synth import targets
from rigpose.data.synth.detector import detect
from rigpose.data.synth.recipe import CalibrationError, ProceduralMotion, Recipe, load_recipe, parse_recipe
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import distort, normalized_to_pixels
from rigpose.rig import Rig, load_rig, rotation_from_rodrigues
from rigpose.skeleton import Skeleton

__all__ = ["Plan", "Recipe", "Synthesis", "build_dataset", "load_recipe", "load_rigs", "miscalibrate_rig",
           "motion_bank", "parse_recipe", "plan_sequences", "project_rig"]

BATCH_ROWS = 8192  # frames generated and handed to the writer at once (bounded memory; fixed, part of the seed)
GOLDEN = (math.sqrt(5) - 1) / 2
# Random streams: numpy.random.default_rng([seed, stream, ...]).
_SUBJECTS, _PLACEMENTS, _SPLITS, _NOISE, _CALIBRATION = 1, 2, 3, 4, 5


# ---------------------------------------------------------------------------------------------- inputs


def _candidates(path: str, base_dir: Path | None) -> list[Path]:
    """Where a relative file of a recipe may be: the working directory, then `base_dir` and its two parents."""
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        bases = [base_dir, base_dir.parent, base_dir.parent.parent] if base_dir else []
        candidates += [b / path for b in bases]
    return candidates


def _resolve(path: str, base_dir: Path | None) -> Path | str:
    if "://" in path:
        return path  # an fsspec URL: load_rig reads it
    candidates = _candidates(path, base_dir)
    for c in candidates:
        if c.is_file():
            return c
    shipped = resources.shipped_rig(path)
    if shipped is not None:
        return shipped
    raise ValueError(f"rigs: no rig file {path!r} (looked in {', '.join(str(c.parent) for c in candidates)}) and "
                     f"no shipped rig of that name (shipped: {', '.join(resources.rig_names())})")


def load_rigs(recipe: Recipe, *, base_dir: Path | None = None) -> list[Rig]:
    """The recipe's rigs, in order: files (relative paths tried against cwd, then `base_dir` and its two parents),
    else shipped rigs by name (`h36m-s1`, see rigpose.resources)."""
    rigs = [load_rig(_resolve(p, base_dir)) for p in recipe.rigs]
    ids = [r.rig_id for r in rigs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"rigs: the same rig_id appears twice: {ids}")
    return rigs


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    """A direction [3] uniform on the sphere."""
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def miscalibrate_rig(rig: Rig, error: CalibrationError, rng: np.random.Generator) -> Rig:
    """`rig` as a drifted calibration states it; `rig` itself when `error` is exact.

    Each camera, in view order: R' = dR @ R with dR a turn of `error.rotation_deg` about a random axis (the camera
    turns about its own centre), its centre moved `error.translation_m` (m) in a random direction (t' = -R' @ c'),
    and K's focal lengths (and skew) scaled by 1 + s x `error.focal_rel` with a random sign s. Image size, principal
    point, distortion, names, rig_id and floor are kept. The draws (axis, direction, sign per camera) do not depend on
    the magnitudes, so a stronger error of the same seed moves the cameras the same way, further.
    """
    if error.exact:
        return rig
    cameras = []
    for cam in rig.cameras:
        axis, direction, sign = _unit_vector(rng), _unit_vector(rng), rng.choice([-1.0, 1.0])
        R = rotation_from_rodrigues(axis * math.radians(error.rotation_deg)) @ cam.R
        centre = cam.center + error.translation_m * direction
        K = cam.K.copy()
        K[:2, :2] *= 1 + sign * error.focal_rel
        cameras.append(replace(cam, K=K, R=R, t=-R @ centre))
    return replace(rig, cameras=tuple(cameras))


def stated_rigs(recipe: Recipe, rigs: list[Rig]) -> list[Rig]:
    """The calibrations the dataset records for `rigs`: each with the recipe's `calibration_error` (one random stream
    per rig, from the recipe's seed)."""
    return [miscalibrate_rig(rig, recipe.calibration_error, np.random.default_rng([recipe.seed, _CALIBRATION, r]))
            for r, rig in enumerate(rigs)]


def load_profile(recipe: Recipe, *, base_dir: Path | None = None) -> NoiseProfile | None:
    """The recipe's `noise.profile` (a path tried as rig files are, or an fsspec URL), checked against the recipe's
    skeleton; None without one."""
    path = recipe.noise.profile
    if path is None:
        return None
    found: Path | str | None = path
    if "://" not in path:
        candidates = _candidates(path, base_dir)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ValueError(f"noise.profile: no file {path!r} (looked in "
                             f"{', '.join(str(c.parent) for c in candidates)})")
    profile = load_noise_profile(found)
    check_profile_joints(profile, targets.target_skeleton(recipe.skeleton), source=path)
    return profile


def motion_bank(recipe: Recipe) -> sm.MotionBank:
    """The recipe's clips as one `MotionBank` (FK done once per clip), with the markers its skeleton needs."""
    m = recipe.motion
    markers = targets.markers_for(targets.target_skeleton(recipe.skeleton))
    if isinstance(m, ProceduralMotion):
        num_frames = max(2, round(m.seconds * m.fps))
        return sm.procedural_bank(recipe.seed, num_sequences=m.num_sequences, num_frames=num_frames, fps=m.fps,
                                  markers=markers)
    from rigpose.data.synth.mocap import list_clips

    known = list_clips()
    names = known if m.clips == "all" else list(m.clips)
    for field, given in (("motion.clips", names), ("motion.exclude", m.exclude)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"{field}: unknown clip(s) {unknown}; known: {', '.join(known)}")
    names = [n for n in names if n not in set(m.exclude)]
    if not names:
        raise ValueError("motion.clips: no clip left after motion.exclude")
    return sm.deepmimic_bank(names, m.fps, markers=markers)


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """Every sequence to generate, in order: arrays over Q sequences, plus the subjects' bone factors."""

    name: np.ndarray  # [Q] str (object)
    clip: np.ndarray  # [Q] index into the motion bank
    subject: np.ndarray  # [Q] subject index (name: s<index + 1>)
    rig: np.ndarray  # [Q] index into the recipe's rigs
    split: np.ndarray  # [Q] str (object)
    start: np.ndarray  # [Q] first frame within the clip
    stop: np.ndarray  # [Q] one past the last frame
    yaw: np.ndarray  # [Q] heading (rad)
    offset: np.ndarray  # [Q, 2] floor position relative to the rig's capture centre (m)
    bone_factors: np.ndarray  # [S, J] length factor of the bone ending at each joint
    root_height: np.ndarray  # [S] pelvis height factor

    @property
    def num_frames(self) -> int:
        return int((self.stop - self.start).sum())


def _placements(recipe: Recipe, lengths_C: np.ndarray) -> dict[str, np.ndarray]:
    """Clip, placement index, length and random pose of every placement (P of them), cycling clips x placements."""
    C = len(lengths_C)
    rounds = recipe.placement.per_clip if recipe.frames is None else math.ceil(recipe.frames / lengths_C.sum())
    k = np.arange(rounds * C)
    clip, index, length = k % C, k // C, lengths_C[k % C]
    if recipe.frames is not None:
        before = np.cumsum(length) - length
        keep = before < recipe.frames
        clip, index, length = clip[keep], index[keep], np.minimum(length, recipe.frames - before)[keep]
    P, pl = len(clip), recipe.placement
    rng = np.random.default_rng([recipe.seed, _PLACEMENTS])
    yaw = np.deg2rad(rng.uniform(pl.yaw_deg[0], pl.yaw_deg[1], P))
    radius, angle = pl.radius * np.sqrt(rng.random(P)), rng.uniform(0, 2 * np.pi, P)
    subject = rng.integers(recipe.subjects.count, size=P)
    return {"clip": clip, "index": index, "length": length, "yaw": yaw, "subject": subject,
            "offset": np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1)}


def _split_of_placements(recipe: Recipe, names: tuple[str, ...], clip: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[P] split of each placement ("" where it is cut by time)."""
    sp = recipe.splits
    unknown = sorted(set(sp.held_out_clips) - set(names))
    if unknown:
        raise ValueError(f"splits.held_out_clips: unknown clip(s) {unknown}; the motion has {', '.join(names)}")
    split_names = np.array(list(sp.fractions), dtype=object)
    cum = np.cumsum(list(sp.fractions.values()))[:-1]
    held_C = np.isin(np.array(names, dtype=object), sp.held_out_clips)
    rng = np.random.default_rng([recipe.seed, _SPLITS])
    if sp.by == "clip":
        free = rng.permutation(np.flatnonzero(~held_C))
        bounds = np.round(len(free) * np.concatenate([[0], cum, [1]])).astype(int)
        empty = [str(n) for n, a, b in zip(split_names, bounds[:-1], bounds[1:], strict=True) if a == b]
        if empty:
            raise ValueError(f"splits.fractions: {len(free)} clips give no whole clip to split(s) {empty}")
        split_C = np.empty(len(names), dtype=object)
        for name, a, b in zip(split_names, bounds[:-1], bounds[1:], strict=True):
            split_C[free[a:b]] = name
        split = split_C[clip]
    elif sp.by == "placement":
        u = (rng.random(len(names))[clip] + index * GOLDEN) % 1.0
        split = split_names[np.searchsorted(cum, u, side="right")]
    else:
        split = np.full(len(clip), "", dtype=object)
    split[held_C[clip]] = sp.held_out_split
    return split


def _cut_by_time(recipe: Recipe, pl: dict[str, np.ndarray], split: np.ndarray,
                 lengths_C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(placement, split, start, stop) of each sequence: placements with split "" cut at the split fractions of
    the clip's full length (first share -> first split, ...), the others whole."""
    fr = recipe.splits.fractions
    bounds = np.round(lengths_C[pl["clip"]][:, None] * np.concatenate([[0], np.cumsum(list(fr.values()))]))
    bounds = bounds.astype(np.int64)
    parts = [(np.flatnonzero(split != ""), split[split != ""], 0 * pl["length"][split != ""],
              pl["length"][split != ""])]
    for i, name in enumerate(fr):
        start, stop = bounds[:, i], np.minimum(bounds[:, i + 1], pl["length"])
        p = np.flatnonzero((split == "") & (stop > start))
        parts.append((p, np.full(len(p), name, dtype=object), start[p], stop[p]))
    order_key = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
    place_idx = np.concatenate([p[0] for p in parts])
    order = np.lexsort((order_key, place_idx))
    return (place_idx[order], np.concatenate([p[1] for p in parts])[order],
            np.concatenate([p[2] for p in parts])[order], np.concatenate([p[3] for p in parts])[order])


def plan_sequences(recipe: Recipe, bank: sm.MotionBank, num_rigs: int) -> Plan:
    """Every sequence of the dataset, in generation order (placement by placement, clips cycled)."""
    lengths_C = bank.lengths
    pl = _placements(recipe, lengths_C)
    split = _split_of_placements(recipe, bank.names, pl["clip"], pl["index"])
    if recipe.splits.by == "time":
        place_idx, split, start, stop = _cut_by_time(recipe, pl, split, lengths_C)
        suffix = [f"-{s}" if s != recipe.splits.held_out_split else "" for s in split]
    else:
        place_idx, start, stop = np.arange(len(split)), np.zeros(len(split), np.int64), pl["length"]
        suffix = [""] * len(split)
    clip, index, subject = pl["clip"][place_idx], pl["index"][place_idx], pl["subject"][place_idx]
    names = np.array([f"{bank.names[c]}-p{i:03d}-s{s + 1}{x}" for c, i, s, x in zip(clip, index, subject, suffix,
                                                                                      strict=True)], dtype=object)
    sub = recipe.subjects
    factors_SJ = sm.subject_bone_factors(np.random.default_rng([recipe.seed, _SUBJECTS]), sub.count,
                                         scale=sub.scale, bone_jitter=sub.bone_jitter, symmetric=sub.symmetric)
    return Plan(name=names, clip=clip, subject=subject, rig=(index + clip) % num_rigs, split=split,
                start=np.asarray(start, np.int64), stop=np.asarray(stop, np.int64), yaw=pl["yaw"][place_idx],
                offset=pl["offset"][place_idx], bone_factors=factors_SJ,
                root_height=sm.root_height_factors(factors_SJ))


# ---------------------------------------------------------------------------------------------- generation


def project_rig(X_3NJ: np.ndarray, rig: Rig) -> np.ndarray:
    """World points, coordinates first [3, N, J] (m) -> pixels [N, V, J, 2] in every camera of `rig`.

    The model of `rigpose.geometry.project` (its `distort` and `normalized_to_pixels`; NaN at or behind a camera),
    computed on contiguous coordinate rows. The 3x3 rotation is written out: a BLAS call for it is slower, and
    far slower when BLAS threads compete for the cores.
    """
    _, N, J = X_3NJ.shape
    cams, (X, Y, Z) = rig.arrays(), X_3NJ.reshape(3, N * J)
    views = []
    for v in range(len(rig.cameras)):
        (r0, r1, r2), t = cams.R[v], cams.t[v]
        z = r2[0] * X + r2[1] * Y + r2[2] * Z + t[2]
        z[z <= 0] = np.nan
        x = (r0[0] * X + r0[1] * Y + r0[2] * Z + t[0]) / z
        y = (r1[0] * X + r1[1] * Y + r1[2] * Z + t[1]) / z
        xy = np.stack([x, y], -1)
        views.append(normalized_to_pixels(distort(xy, cams.dist[v]), cams.K[v]).reshape(N, J, 2))
    return np.stack(views, axis=1)


@dataclass(frozen=True)
class Synthesis:
    """A recipe made concrete: its motion bank, rigs and sequence plan; `batches()` generates the frames."""

    recipe: Recipe
    bank: sm.MotionBank
    rigs: list[Rig]  # the true rigs: the 2D is their projection
    plan: Plan
    profile: NoiseProfile | None = None  # the recipe's noise.profile, loaded
    stated: list[Rig] | None = None  # the calibrations written into the rows and rig files; None = `rigs`

    @property
    def skeleton(self) -> Skeleton:
        """The dataset's skeleton (the recipe's `skeleton`)."""
        return targets.target_skeleton(self.recipe.skeleton)

    @staticmethod
    def from_recipe(recipe: Recipe, *, base_dir: str | os.PathLike[str] | None = None) -> Synthesis:
        """Load motion and rigs (relative rig paths also tried against `base_dir`) and plan the sequences."""
        base = Path(base_dir) if base_dir is not None else None
        rigs = load_rigs(recipe, base_dir=base)
        profile = load_profile(recipe, base_dir=base)
        bank = motion_bank(recipe)
        return Synthesis(recipe=recipe, bank=bank, rigs=rigs, plan=plan_sequences(recipe, bank, len(rigs)),
                         profile=profile, stated=stated_rigs(recipe, rigs))

    @property
    def num_frames(self) -> int:
        return self.plan.num_frames

    def batches(self) -> Iterator[tuple[Rig, Frames]]:
        """(rig as stated, frames with their split) in batches of at most `BATCH_ROWS`, rig by rig, in plan order;
        the frames carry the stated rig's cameras (the recipe's calibration_error), their 2D the true rig's."""
        for r in range(len(self.rigs)):
            yield from self._rig_batches(r)

    def _rig_batches(self, r: int) -> Iterator[tuple[Rig, Frames]]:
        plan, rig, bank = self.plan, self.rigs[r], self.bank
        stated = rig if self.stated is None else self.stated[r]
        q_Q = np.flatnonzero(plan.rig == r)
        length_Q = plan.stop[q_Q] - plan.start[q_Q]
        first_row_Q = np.cumsum(length_Q) - length_Q
        joints_3JM, centre_2, clip_centres_2C = bank.joints_3JM, rig.capture_center()[:2], bank.centers_C2.T
        image_size_V2 = np.array([[c.width, c.height] for c in rig.cameras])
        subject_names = np.array([f"s{i + 1}" for i in range(self.recipe.subjects.count)], dtype=object)
        skeleton, marked = self.skeleton, joints_3JM.shape[1] > sm.SKELETON.num_joints
        assert marked == bool(targets.markers_for(skeleton)), "the motion bank's markers do not fit the skeleton"
        factors_JS = (targets.point_factors(plan.bone_factors) if marked else plan.bone_factors).T
        parents = targets.point_parents() if marked else sm.SKELETON.parents
        pick = targets.target_points(skeleton)
        noise = self.recipe.noise
        views = None if self.profile is None else view_noise(
            noise, self.profile, [c.name for c in rig.cameras], skeleton, source=str(noise.profile))
        for b, a in enumerate(range(0, int(length_Q.sum()), BATCH_ROWS)):
            rows = np.arange(a, min(a + BATCH_ROWS, int(length_Q.sum())))
            s = np.searchsorted(first_row_Q, rows, side="right") - 1  # sequence of each row (none is empty)
            q = q_Q[s]
            frame_N, clip_N, subject_N = plan.start[q] + rows - first_row_Q[s], plan.clip[q], plan.subject[q]
            X_3JN = joints_3JM[:, :, bank.offsets[clip_N] + frame_N]
            X_3JN = sm.scale_bones(X_3JN, factors_JS[:, subject_N], plan.root_height[subject_N], parents=parents)
            X_3JN = sm.place(X_3JN, clip_centres_2C[:, clip_N], plan.yaw[q], centre_2[:, None] + plan.offset[q].T)
            if marked:  # the target skeleton's joints from the motion's points
                X_3JN = X_3JN[:, pick]
            X_3NJ = X_3JN.transpose(0, 2, 1).astype(np.float32)  # what is stored; the 2D is its exact projection
            clean_NVJ2 = project_rig(X_3NJ.astype(np.float64), rig)
            rng = np.random.default_rng([self.recipe.seed, _NOISE, r, b])
            kp, scores = detect(clean_NVJ2, image_size_V2, noise, rng, skeleton=skeleton, views=views)
            frames = frames_for_rig(stated, sequence="", keypoints=kp, scores=scores, frame=frame_N,
                                    joints_3d=X_3NJ.transpose(1, 2, 0))
            yield stated, replace(frames, sequence=plan.name[q], subject=subject_names[subject_N], split=plan.split[q])


def _ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """`items`, produced by a background thread up to `depth` ahead of the consumer.

    NumPy and Arrow release the GIL in their array work, so generating the next batch overlaps writing the last
    one on another core. The producer's exceptions are re-raised here; closing this generator stops the producer.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, which raises it
            put(_Failed(e))

    worker = threading.Thread(target=produce, name="rigpose-synth", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def build_dataset(recipe: Recipe | str | os.PathLike[str], out: str, *, progress: bool = True,
                  replace: bool = False, command: str | None = None) -> Manifest:
    """Build the synthetic dataset `recipe` (a `Recipe` or a recipe file) at `out` (any fsspec URL); commit it.

    `replace` overwrites sequences already at `out`; `command` is recorded in the manifest (default: this call).
    The recipe itself is recorded too, with its noise profile's contents under `noise_profile`. Returns the
    committed manifest.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    base_dir = None
    if isinstance(recipe, str | os.PathLike):
        base_dir, source = Path(recipe).resolve().parent, os.fspath(recipe)
        recipe = load_recipe(recipe)
    elif isinstance(recipe, Recipe):
        source = f"<Recipe {recipe.name!r}>"
    else:
        raise TypeError(f"recipe: expected a Recipe or a path, got {type(recipe).__name__}")
    synth = Synthesis.from_recipe(recipe, base_dir=base_dir)
    recorded = recipe.model_dump(mode="json")
    if synth.profile is not None:  # the profile's numbers, not just its path, so the build can be redone
        recorded["noise_profile"] = synth.profile.model_dump(mode="json")
    command = command or f"rigpose.data.synth.build.build_dataset({shlex.quote(source)}, {shlex.quote(str(out))})"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        DatasetWriter(out, skeleton=synth.skeleton, command=command, recipe=recorded,
                      replace=replace, max_bad_fraction=recipe.max_invalid_fraction) as writer,
        Progress(*columns, disable=not progress) as bar,
    ):
        task = bar.add_task(f"synth {recipe.name}", total=synth.num_frames)
        with closing(_ahead(synth.batches())) as batches:
            for rig, frames in batches:
                writer.add(frames, rig, source=f"recipe {recipe.name!r}")
                bar.advance(task, len(frames))
        return writer.commit()
