"""The VideoPose3D converters: `ingest_h36m` (Human3.6M) and `ingest_humaneva` (HumanEva-I), one shared loop.

`ingest_h36m`: VideoPose3D's `data_3d_h36m.npz` (`positions_3d[subject][action]` = [T, 32, 3] metres, optional)
and `data_2d_h36m_<detector>.npz` (`positions_2d[subject][action]` = 4 arrays [T, 17, 2|3] pixels in the rig's
camera order, `metadata`). Rig per subject: `<rigs_dir>/h36m-<subject>.json` (e.g. h36m-s9.json; `rigs_dir`
defaults to the shipped rigs, rigpose.resources). Split: S1, S5, S6, S7, S8 train; S9, S11 test. Sequence = action
name, subject = "S1"... 3D: 32 joints -> h36m17. When the 2D and 3D lengths differ (a few frames in the real
files) the sequence is cut to the shortest and a note says so.
2D with `metadata["layout_name"] == "coco"` (detectron) is ingested as coco17 without 3D (different joints).

`ingest_humaneva`: VideoPose3D's `data_3d_humaneva15.npz` / `data_2d_humaneva15_<detector>.npz`; subject keys
`Train/S1`, `Validate/S2`, `Unlabeled/Train/S1`...; 3 cameras from `<rigs_dir>/humaneva-s<N>.json`; 15 joints.
Split: `Train/*` -> train, `Validate/*` -> test; `Unlabeled/*` (no mocap) is skipped unless
`include_unlabeled=True`, then goes to split "unlabeled" (usable for 2D-supervised training, kept apart so that
test-period video never slips into train by default). Subject = "S1"; sequence = "<prefix>/<action>", e.g.
"Train/Walking 1 chunk0" (action names kept as-is).

In both VideoPose3D converters a camera entry that is missing, None or empty becomes a NaN view with score 0 (never
dropped) and a note; a third channel in the 2D is the detector score; `subjects=` restricts the subjects
(`S1` or a full key such as `Validate/S1`); a missing rig file is an error naming it.

Shape letters: T frames, V views (cameras), J joints.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rigpose import resources
from rigpose.data.ingest.common import IngestSummary, _Ingest, _progress, _read_bytes
from rigpose.data.schema import frames_for_rig
from rigpose.data.writer import DEFAULT_MAX_BAD_FRACTION
from rigpose.rig import Rig, load_rig
from rigpose.skeleton import COCO17, H36M17, HUMANEVA15, Skeleton, h36m32_to_h36m17

H36M_SPLITS = {"S1": "train", "S5": "train", "S6": "train", "S7": "train", "S8": "train", "S9": "test", "S11": "test"}
HUMANEVA_SPLITS = {"Train": "train", "Validate": "test"}
UNLABELED_SPLIT = "unlabeled"


@dataclass(frozen=True)
class _Vp3dLayout:
    """What differs between VideoPose3D's Human3.6M and HumanEva-I files."""

    name: str
    skeleton: Skeleton
    layout_names: tuple[str | None, ...]  # metadata["layout_name"] values of 2D in `skeleton`'s joints
    rig_file: Callable[[str], str]  # subject key -> rig file name
    split_of: Callable[[str], str | None]  # subject key -> split, None = skip
    sequence_of: Callable[[str, str], str]  # (subject key, action) -> sequence name
    subject_of: Callable[[str], str]  # subject key -> subject name
    convert_3d: Callable[[np.ndarray], np.ndarray]


def _load_pickled_dict(path: str, key: str) -> tuple[dict[str, Any], Any]:
    """`np.load(path, allow_pickle=True)[key].item()` (a dict) and the `metadata` entry (or None)."""
    try:
        z = np.load(io.BytesIO(_read_bytes(path)), allow_pickle=True)
        if key not in z.files:
            raise ValueError(f"{path}: field {key!r} missing (has {z.files}); is this a VideoPose3D file?")
        value = z[key].item()
        meta = z["metadata"].item() if "metadata" in z.files else None
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable VideoPose3D .npz ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(f"{path}: field {key!r} is not a dict of subject -> action -> arrays")
    return value, meta


def _skeleton_2d(meta: Any, layout: _Vp3dLayout, source: str) -> Skeleton:
    """The skeleton of the 2D file: the layout's own, or coco17 for detectron-style COCO 2D."""
    layout_name = (meta or {}).get("layout_name") if isinstance(meta, dict) else None
    if layout_name == "coco":
        return COCO17
    if layout_name not in layout.layout_names:
        raise ValueError(f"{source}: field 'metadata' layout_name {layout_name!r} is not supported "
                         f"(expected {layout.layout_names[-1]!r} or 'coco')")
    return layout.skeleton


def _view_arrays(views: Any, *, V: int, source: str) -> list[np.ndarray | None]:
    """The per-camera 2D arrays of one sequence, None for a missing/empty camera; length V."""
    if isinstance(views, np.ndarray) and views.dtype != object:
        views = list(views)
    if not isinstance(views, (list, tuple, np.ndarray)):
        raise ValueError(f"{source}: expected a list of per-camera arrays, got {type(views).__name__}")
    if len(views) > V:
        raise ValueError(f"{source}: {len(views)} camera entries, the rig has {V} cameras")
    out: list[np.ndarray | None] = []
    for v in range(V):
        a = None if v >= len(views) or views[v] is None else np.asarray(views[v])
        if a is not None and a.size == 0:
            a = None
        if a is not None and (a.ndim != 3 or a.shape[-1] not in (2, 3)):
            raise ValueError(f"{source}[{v}]: shape {list(a.shape)}, expected [T, J, 2] or [T, J, 3]")
        out.append(a)
    return out


def _vp3d_sequence(views: list[np.ndarray | None], pos_3d: np.ndarray | None, *, J: int, convert_2d: Callable,
                   source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """(keypoints [T, V, J, 2], scores [T, V, J], joints_3d [T, J, 3] | None, notes) of one sequence."""
    present = [a for a in views if a is not None]
    lengths = [len(a) for a in present] + ([len(pos_3d)] if pos_3d is not None else [])
    T = min(lengths)
    notes = []
    if len(set(lengths)) > 1:
        notes.append(f"{source}: cut to {T} frames (2D lengths {[len(a) for a in present]}"
                     + (f", 3D {len(pos_3d)})" if pos_3d is not None else ")"))
    missing = [v for v, a in enumerate(views) if a is None]
    if missing:
        notes.append(f"{source}: camera(s) {missing} missing, kept as NaN views with score 0")
    kp = np.full((T, len(views), J, 2), np.nan, np.float32)
    scores = np.zeros((T, len(views), J), np.float32)
    for v, a in enumerate(views):
        if a is None:
            continue
        a = convert_2d(np.asarray(a[:T], np.float32))
        if a.shape[1] != J:
            raise ValueError(f"{source}[{v}]: {a.shape[1]} joints, expected {J}")
        kp[:, v] = a[..., :2]
        finite = np.isfinite(a[..., :2]).all(-1)
        scores[:, v] = np.where(finite, a[..., 2] if a.shape[-1] == 3 else 1.0, 0.0)
    joints_3d = None if pos_3d is None else np.asarray(pos_3d[:T], np.float32)
    return kp, scores, joints_3d, notes


def _convert_h36m(a: np.ndarray) -> np.ndarray:
    return h36m32_to_h36m17(a) if a.shape[-2] == 32 else a


def _select_subjects(keys: list[str], subjects: list[str] | None, source: str) -> list[str]:
    if subjects is None:
        return sorted(keys)
    wanted = set(subjects)
    chosen = sorted(k for k in keys if k in wanted or k.rsplit("/", 1)[-1] in wanted)
    unmatched = sorted(s for s in wanted if not any(k == s or k.rsplit("/", 1)[-1] == s for k in keys))
    if unmatched:
        raise ValueError(f"{source}: subjects {unmatched} not in the file (has {sorted(keys)})")
    return chosen


def _load_rigs(layout: _Vp3dLayout, keys: set[str], rigs_dir: str) -> dict[str, Rig]:
    rigs = {}
    for k in sorted(keys):
        path = posixpath.join(str(rigs_dir), layout.rig_file(k))
        try:
            rigs[k] = load_rig(path)
        except FileNotFoundError:
            raise ValueError(f"{path}: no rig file for subject {k!r}; add it, or leave the subject out with "
                             "subjects=") from None
    return rigs


def _ingest_vp3d(layout: _Vp3dLayout, data_3d: str | None, data_2d: str, *, out: str, rigs_dir: str | None,
                 subjects: list[str] | None, replace: bool, max_bad_fraction: float, progress: bool) -> IngestSummary:
    rigs_dir = str(resources.rigs_dir()) if rigs_dir is None else rigs_dir
    positions_2d, meta = _load_pickled_dict(data_2d, "positions_2d")
    positions_3d = _load_pickled_dict(data_3d, "positions_3d")[0] if data_3d else None
    skel = _skeleton_2d(meta, layout, data_2d)
    keys = _select_subjects(list(positions_2d), subjects, data_2d)
    plan = [(k, a) for k in keys if layout.split_of(k) is not None for a in sorted(positions_2d[k])]
    rigs = _load_rigs(layout, {k for k, _ in plan}, rigs_dir)
    recipe = {"converter": layout.name, "data_2d": data_2d, "data_3d": data_3d, "rigs_dir": str(rigs_dir),
              "subjects": subjects}
    ing = _Ingest(out, skeleton=skel, command=f"ingest {layout.name}", recipe=recipe, replace=replace,
                  max_bad_fraction=max_bad_fraction)
    skipped = [k for k in keys if layout.split_of(k) is None]
    if skipped:
        ing.notes.append(f"{data_2d}: subjects {skipped} skipped (unlabeled; include them explicitly)")
    if positions_3d is not None and skel is not layout.skeleton:
        ing.notes.append(f"{data_2d}: 2D skeleton {skel.name} differs from the 3D's ({layout.skeleton.name}); "
                         "3D not ingested")
        positions_3d = None
    with ing, _progress(progress, f"ingest {layout.name}", len(plan)) as advance:
        for key, action in plan:
            _vp3d_add(ing, layout, skel, rigs[key], key, action, positions_2d, positions_3d,
                      source_2d=data_2d, source_3d=data_3d)
            advance(f"{key} {action}")
        _note_3d_only(ing, positions_3d, positions_2d, keys, data_3d)
        return ing.commit()


def _vp3d_add(ing: _Ingest, layout: _Vp3dLayout, skel: Skeleton, rig: Rig, key: str, action: str,
              positions_2d: dict, positions_3d: dict | None, *, source_2d: str, source_3d: str | None) -> None:
    """Convert and add one (subject, action) of a VideoPose3D file."""
    src = f"{source_2d}: positions_2d[{key!r}][{action!r}]"
    pos_3d = None
    if positions_3d is not None:
        pos_3d = positions_3d.get(key, {}).get(action)
        if pos_3d is None:
            ing.notes.append(f"{src}: no 3D in {source_3d}; 2D only")
        else:
            pos_3d = layout.convert_3d(np.asarray(pos_3d))
            if pos_3d.ndim != 3 or pos_3d.shape[1:] != (skel.num_joints, 3):
                raise ValueError(f"{source_3d}: positions_3d[{key!r}][{action!r}] has shape {list(pos_3d.shape)}, "
                                 f"expected [T, {skel.num_joints}, 3]")
    views = _view_arrays(positions_2d[key][action], V=len(rig.cameras), source=src)
    if all(a is None for a in views):
        ing.notes.append(f"{src}: no camera has 2D; sequence skipped")
        return
    convert_2d = _convert_h36m if skel is H36M17 else (lambda a: a)
    kp, scores, j3d, notes = _vp3d_sequence(views, pos_3d, J=skel.num_joints, convert_2d=convert_2d, source=src)
    ing.notes += notes
    frames = frames_for_rig(rig, sequence=layout.sequence_of(key, action), keypoints=kp, scores=scores,
                            subject=layout.subject_of(key), joints_3d=j3d)
    ing.add(frames, rig, split=layout.split_of(key) or "", source=src)


def _note_3d_only(ing: _Ingest, positions_3d: dict | None, positions_2d: dict, keys: list[str],
                  data_3d: str | None) -> None:
    if positions_3d is None:
        return
    for k in keys:
        only = sorted(set(positions_3d.get(k, {})) - set(positions_2d[k]))
        if only:
            ing.notes.append(f"{data_3d}: {k} actions {only} have 3D but no 2D; not ingested")


def _h36m_split(key: str) -> str | None:
    if key not in H36M_SPLITS:
        raise ValueError(f"Human3.6M subject {key!r} has no standard split (known: {', '.join(H36M_SPLITS)})")
    return H36M_SPLITS[key]


def ingest_h36m(
    data_3d: str | None,
    data_2d: str,
    *,
    out: str,
    rigs_dir: str | None = None,
    subjects: list[str] | None = None,
    replace: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> IngestSummary:
    """Ingest VideoPose3D's Human3.6M files (3D optional) with the standard split (S9, S11 test)."""
    layout = _Vp3dLayout(
        name="h36m", skeleton=H36M17, layout_names=(None, "h36m"), rig_file=lambda k: f"h36m-{k.lower()}.json",
        split_of=_h36m_split, sequence_of=lambda k, a: a, subject_of=lambda k: k, convert_3d=_convert_h36m,
    )
    return _ingest_vp3d(layout, data_3d, data_2d, out=out, rigs_dir=rigs_dir, subjects=subjects, replace=replace,
                        max_bad_fraction=max_bad_fraction, progress=progress)


def _humaneva_split(key: str, include_unlabeled: bool) -> str | None:
    prefix = key.rsplit("/", 1)[0] if "/" in key else ""
    if prefix.split("/")[0] == "Unlabeled":
        return UNLABELED_SPLIT if include_unlabeled else None
    if prefix not in HUMANEVA_SPLITS:
        raise ValueError(f"HumanEva subject key {key!r}: expected Train/S<n>, Validate/S<n> or Unlabeled/...")
    return HUMANEVA_SPLITS[prefix]


def _humaneva_sequence(key: str, action: str) -> str:
    return f"{key.rsplit('/', 1)[0]}/{action}" if "/" in key else action


def ingest_humaneva(
    data_3d: str | None,
    data_2d: str,
    *,
    out: str,
    rigs_dir: str | None = None,
    subjects: list[str] | None = None,
    include_unlabeled: bool = False,
    replace: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> IngestSummary:
    """Ingest VideoPose3D's HumanEva-I files (3D optional): Train/* -> train, Validate/* -> test."""
    layout = _Vp3dLayout(
        name="humaneva", skeleton=HUMANEVA15, layout_names=(None, "humaneva15"),
        rig_file=lambda k: f"humaneva-{k.rsplit('/', 1)[-1].lower()}.json",
        split_of=lambda k: _humaneva_split(k, include_unlabeled), sequence_of=_humaneva_sequence,
        subject_of=lambda k: k.rsplit("/", 1)[-1], convert_3d=lambda a: a,
    )
    return _ingest_vp3d(layout, data_3d, data_2d, out=out, rigs_dir=rigs_dir, subjects=subjects, replace=replace,
                        max_bad_fraction=max_bad_fraction, progress=progress)
