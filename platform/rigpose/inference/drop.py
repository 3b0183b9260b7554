"""Leaving cameras out of inference (`rigpose lift|evaluate --drop-camera NAME`): the method never sees their 2D.

A dropped camera stays a real view of its rig (its calibration and its rows are kept), but its keypoints are NaN
and its scores 0 in every batch the method reads (`mask_cameras`), so nothing downstream (lifts, fusion, the
triangulated anchors, adaptation, refinement, the posterior) can use its detections. The evaluator keeps the
unmasked 2D as the reference it scores the answers against (`rigpose.inference.evaluate`). Cameras are named as
the rig file names them (`rigpose.rig.Rig.camera_names`); a name drops that camera in every rig that has one.
Shape letters: N rows (frames), V views, J joints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

import numpy as np

from rigpose.data.reader import Dataset
from rigpose.data.schema import Frames
from rigpose.rig import Rig

#: Cameras each view mode needs left per rig: a single-view lift needs one view; a multi-view answer in the world
#: frame places the pose at a root triangulated from the 2D, which needs two (as do the DLT baselines).
MIN_CAMERAS = {"single": 1, "multi": 2}


def mask_cameras(frames: Frames, names: Collection[str]) -> Frames:
    """`frames` with the 2D of the cameras called `names` removed: keypoints [N, V, J, 2] NaN and scores [N, V, J]
    0 on those views, every other array (cameras, view_mask, camera_names, joints_3d) and every other view as given.

    No names: `frames` itself. Names no row has change nothing (`check_drop_cameras` refuses them beforehand).
    """
    hit_NV = dropped_views(frames, names)
    if not hit_NV.any():
        return frames
    keypoints = np.where(hit_NV[..., None, None], np.float32(np.nan), frames.keypoints).astype(np.float32)
    scores = np.where(hit_NV[..., None], np.float32(0.0), frames.scores).astype(np.float32)
    return dataclasses.replace(frames, keypoints=keypoints, scores=scores)


def dropped_views(frames: Frames, names: Collection[str]) -> np.ndarray:
    """[N, V] bool: real views of `frames` whose camera is one of `names`."""
    if not names:
        return np.zeros(frames.view_mask.shape, dtype=bool)
    return np.isin(frames.camera_names.astype(str), np.asarray(sorted(names), dtype=str)) & frames.view_mask


def check_drop_cameras(rigs: Iterable[Rig], names: Iterable[str], *, min_cameras: int = 1) -> tuple[str, ...]:
    """`names` without repeats (in the order given), checked against `rigs` (those the run reads).

    ValueError naming the camera and listing the rigs' cameras when a name is no camera of any of `rigs`, and
    naming the rig when dropping leaves it fewer than `min_cameras` cameras (all of them dropped: always).
    """
    names = tuple(dict.fromkeys(str(n) for n in names))
    rigs = list(rigs)
    if not names:
        return names
    known = {name for rig in rigs for name in rig.camera_names}
    for name in names:
        if name not in known:
            if not rigs:
                where, listing = "no rig", "none"
            elif len(rigs) == 1:
                where, listing = f"rig {rigs[0].rig_id!r}", ", ".join(rigs[0].camera_names)
            else:
                where = "rigs " + ", ".join(repr(rig.rig_id) for rig in rigs)
                listing = "; ".join(f"{rig.rig_id}: {', '.join(rig.camera_names)}" for rig in rigs)
            raise ValueError(f"drop camera {name!r}: {where} has no such camera (cameras: {listing})")
    need = max(1, min_cameras)
    for rig in rigs:
        left = [c for c in rig.camera_names if c not in names]
        if not left:
            raise ValueError(f"drop cameras {', '.join(names)}: would drop every camera of rig {rig.rig_id!r}; "
                             f"keep at least {need}")
        if len(left) < need:
            raise ValueError(f"drop cameras {', '.join(names)}: leaves rig {rig.rig_id!r} {len(left)} of its "
                             f"{len(rig)} cameras ({', '.join(left)}); a multi-view answer needs at least {need} "
                             "(it triangulates its root)")
    return names


def check_dataset_drop(ds: Dataset, names: Iterable[str], *, split: str, modes: Iterable[str],
                       rig_ids: Iterable[str] | None = None) -> tuple[str, ...]:
    """`check_drop_cameras` against the rigs of `split` of `ds` (only `rig_ids` when given), needing the cameras
    of the most demanding of `modes` ("single", "multi")."""
    names = tuple(names)
    if not names:
        return ()
    rig_ids = sorted({s.rig_id for s in ds.shards(splits=[split], rig_ids=rig_ids)})
    return check_drop_cameras([ds.rig(r) for r in rig_ids], names,
                              min_cameras=max(MIN_CAMERAS[m] for m in modes))
