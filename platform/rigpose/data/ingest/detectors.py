"""What the 2D-detector converters (OpenPose, MMPose/RTMPose, MediaPipe) share: their keypoint formats mapped onto
coco17, per-camera detections, matching input names to rig cameras, and the driver that picks one person per frame
(`rigpose.data.ingest.people`), checks the image bounds, applies the split and writes the dataset.

Keypoint formats (joint orders as the detectors write them; every one holds all 17 COCO joints, so nothing of
coco17 is lost, and the extra joints, neck, mid-hip, feet, face, hands, are dropped):

| name           | points | written by                                  | coco17 joints from points                  |
|----------------|--------|---------------------------------------------|--------------------------------------------|
| `body25`       | 25     | OpenPose BODY_25 (its default model)        | 0 16 15 18 17 5 2 6 3 7 4 12 9 13 10 14 11 |
| `coco18`       | 18     | OpenPose COCO (nose, neck, r-shoulder, ...) | 0 15 14 17 16 5 2 6 3 7 4 11 8 12 9 13 10  |
| `halpe26`      | 26     | RTMPose body8-halpe26 (Pose2Sim's default)  | 0-16 (then head, neck, hip, 6 feet)        |
| `coco17`       | 17     | any COCO-keypoint model                     | 0-16                                       |
| `wholebody133` | 133    | RTMW / DWPose (COCO-WholeBody)              | 0-16 (then 6 feet, 68 face, 2 x 21 hands)  |
| `mediapipe33`  | 33     | MediaPipe / BlazePose pose landmarks        | 0 2 5 7 8 11 12 13 14 15 16 23-28          |

Left and right are the subject's own in every format. A joint with score 0 or a non-finite coordinate is missing
(NaN, score 0). Scores above 1 (RTMPose's SimCC confidences are not probabilities) are clipped to 1 with a note;
a negative score is refused.

Shape letters: T frames, V views (cameras), P people, K points of the file's format, J coco17 joints.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from rigpose.data.ingest.common import (
    IngestSummary,
    _Ingest,
    _split_rule,
    is_split_ranges,
    match_cameras,
    out_of_image_warnings,
    parse_split_ranges,
    split_of_frames,
)
from rigpose.data.ingest.people import TORSO, choose_people, torso_normalized
from rigpose.data.schema import frames_for_rig
from rigpose.rig import Rig
from rigpose.skeleton import COCO17

# ---------------------------------------------------------------------------------------------- formats

_OPENPOSE_BODY = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                  "left_wrist")
_FEET = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
_BODY25 = (*_OPENPOSE_BODY, "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
           "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear", *_FEET)
_COCO18 = (*_OPENPOSE_BODY, "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
           "right_eye", "left_eye", "right_ear", "left_ear")
_HALPE26 = (*COCO17.joint_names, "head", "neck", "hip", "left_big_toe", "right_big_toe", "left_small_toe",
            "right_small_toe", "left_heel", "right_heel")
_WHOLEBODY133 = (*COCO17.joint_names, *_FEET, *(f"face_{i}" for i in range(68)),
                 *(f"{side}_hand_{i}" for side in ("left", "right") for i in range(21)))
_MEDIAPIPE33 = ("nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
                "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
                "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
                "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
                "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
                "left_foot_index", "right_foot_index")


@dataclass(frozen=True)
class KeypointFormat:
    """A detector's keypoint order. `to_coco17[j]` = the index of coco17 joint j in this format (-1: absent)."""

    name: str
    joint_names: tuple[str, ...]
    description: str
    to_coco17: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        index = {n: i for i, n in enumerate(self.joint_names)}
        object.__setattr__(self, "to_coco17", tuple(index.get(n, -1) for n in COCO17.joint_names))

    @property
    def num_keypoints(self) -> int:
        return len(self.joint_names)


KEYPOINT_FORMATS: dict[str, KeypointFormat] = {f.name: f for f in (
    KeypointFormat("body25", _BODY25, "OpenPose BODY_25"),
    KeypointFormat("coco18", _COCO18, "OpenPose COCO (18 points, with neck)"),
    KeypointFormat("halpe26", _HALPE26, "HALPE-26 (RTMPose body8-halpe26, AlphaPose)"),
    KeypointFormat("coco17", COCO17.joint_names, "COCO 17 keypoints"),
    KeypointFormat("wholebody133", _WHOLEBODY133, "COCO-WholeBody 133 (RTMW, DWPose)"),
    KeypointFormat("mediapipe33", _MEDIAPIPE33, "MediaPipe / BlazePose 33 pose landmarks"),
)}
# Formats recognised by their number of points alone (mediapipe33 only through its own converter).
_BY_COUNT = {f.num_keypoints: f for f in KEYPOINT_FORMATS.values() if f.name != "mediapipe33"}


def keypoint_format(num_keypoints: int, forced: str | None, *, source: str, field_name: str,
                    allowed: tuple[str, ...] | None = None) -> KeypointFormat:
    """The format of a file with `num_keypoints` points per person: `forced` (a format name, which must have that
    many points) or the format with that count; ValueError naming `source` and `field_name` otherwise."""
    allowed = allowed or tuple(_BY_COUNT[n].name for n in sorted(_BY_COUNT))
    if forced is not None:
        if forced not in allowed:
            raise ValueError(f"skeleton {forced!r}: unknown keypoint format; known: {', '.join(allowed)}")
        fmt = KEYPOINT_FORMATS[forced]
        if fmt.num_keypoints != num_keypoints:
            raise ValueError(f"{source}: field {field_name!r} has {num_keypoints} points per person, skeleton "
                             f"{forced!r} has {fmt.num_keypoints}")
        return fmt
    by_count = {KEYPOINT_FORMATS[n].num_keypoints: KEYPOINT_FORMATS[n] for n in allowed}
    if num_keypoints not in by_count:
        known = ", ".join(f"{n} ({by_count[n].name})" for n in sorted(by_count))
        raise ValueError(f"{source}: field {field_name!r} has {num_keypoints} points per person, which is no known "
                         f"keypoint format ({known})")
    return by_count[num_keypoints]


# ---------------------------------------------------------------------------------------------- detections


class People(NamedTuple):
    """The people one camera saw in one frame, on coco17: kp [P, J, 2] (px, or normalised before scaling; NaN
    missing), score [P, J] in [0, 1] (0 missing), track [P] (tracked person id, -1 none), source (the file)."""

    kp: np.ndarray
    score: np.ndarray
    track: np.ndarray
    source: str


@dataclass
class CameraDetections:
    """One camera's detector output: `name` as the input calls it (folder or file stem), `source` for messages,
    `people` frame number -> `People` (P = 0 where the camera has the frame but saw nobody), `units` of the
    coordinates, `num_clipped` scores above 1 clipped to 1."""

    name: str
    source: str
    people: dict[int, People]
    units: Literal["px", "normalized"] = "px"
    num_clipped: int = 0


def people_from_points(points_PK3: np.ndarray, track_P: np.ndarray, fmt: KeypointFormat, *, source: str,
                       field_name: str) -> tuple[People, int]:
    """(People on coco17, number of scores clipped to 1) from points [P, K, 3] = (x, y, score) in `fmt`'s order;
    people with no usable joint are dropped."""
    points = np.asarray(points_PK3, dtype=np.float64)
    idx = np.array(fmt.to_coco17)
    xy, score = points[:, idx, :2], points[:, idx, 2]
    score = np.where(idx >= 0, score, 0.0)
    if (score < 0).any():
        p, j = np.argwhere(score < 0)[0]
        raise ValueError(f"{source}: field {field_name!r} person {p} joint {COCO17.joint_names[j]!r}: score "
                         f"{score[p, j]} is negative")
    present = (score > 0) & np.isfinite(xy).all(-1)  # NaN scores -> False
    num_clipped = int((present & (score > 1)).sum())
    score = np.where(present, np.minimum(score, 1.0), 0.0)
    xy = np.where(present[..., None], xy, np.nan)
    real = present.any(-1)  # a "person" without one usable joint (Pose2Sim writes all-NaN ones) is nobody
    return People(xy[real].astype(np.float32), score[real].astype(np.float32),
                  np.asarray(track_P, np.int64)[real], source), num_clipped


def no_people(source: str) -> People:
    """A frame the camera has (a file, an entry) in which nobody was detected: P = 0."""
    J = COCO17.num_joints
    return People(np.zeros((0, J, 2), np.float32), np.zeros((0, J), np.float32), np.zeros(0, np.int64), source)


def default_sequence(path: str, *, skip: tuple[str, ...] = ()) -> str:
    """The name of folder `path` (local or a URL), or of its parent when that name is one of `skip` (a tool's
    fixed output folder such as Pose2Sim's `pose` or MMPose's `predictions`)."""
    p = str(path).rstrip("/")
    p = p if "://" in p else os.path.abspath(p).replace(os.sep, "/")
    name = posixpath.basename(p)
    if name in skip:
        name = posixpath.basename(posixpath.dirname(p)) or name
    return name or "sequence"


def parse_camera_map(items: list[str] | None) -> dict[str, str]:
    """`["cam01_json=54138969", "b=c,d=e"]` -> {input name: rig camera name}; ValueError naming a bad part."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            src, eq, dst = (x.strip() for x in part.partition("="))
            if not eq or not src or not dst:
                raise ValueError(f"camera map {part!r}: expected INPUT_NAME=RIG_CAMERA (e.g. cam01_json=54138969)")
            if src in out and out[src] != dst:
                raise ValueError(f"camera map: {src!r} is mapped twice ({out[src]!r} and {dst!r})")
            out[src] = dst
    return out


def rig_order(names: list[str], rig: Rig, camera_map: dict[str, str], *, source: str) -> np.ndarray:
    """Index array putting inputs called `names` into the rig's camera order: a name in `camera_map` is mapped,
    otherwise it must be a rig camera's name, possibly followed by `_json` (Pose2Sim's folders)."""
    unused = sorted(set(camera_map) - set(names))
    if unused:
        raise ValueError(f"{source}: camera map names {unused} match no input (inputs: {names})")
    mapped = []
    for n in names:
        bare = n[: -len("_json")] if n.endswith("_json") and n not in rig.camera_names else n
        mapped.append(camera_map.get(n, bare))
    try:
        return match_cameras(tuple(mapped), rig, source=source)
    except ValueError as e:
        raise ValueError(f"{e}; name each input's camera with a camera map (--camera-map INPUT=CAMERA)") from None


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class _Selected:
    frame: np.ndarray  # [T] int64, every frame any camera has
    kp: np.ndarray  # [T, V, J, 2]
    score: np.ndarray  # [T, V, J]
    several: int  # frames where some camera saw more than one person
    rejected: int  # (frame, view) pairs whose people were all inconsistent with the other views


def _select(cams: list[CameraDetections], rig: Rig, person_id: int | None) -> _Selected:
    """One person per frame and view (cams in rig order): the tracked `person_id`, else by `choose_people`."""
    frame = np.array(sorted(set().union(*(c.people for c in cams))), dtype=np.int64)
    T, V, J = len(frame), len(cams), COCO17.num_joints
    kp = np.full((T, V, J, 2), np.nan, np.float32)
    score = np.zeros((T, V, J), np.float32)
    arrays = rig.arrays()
    gate_px = np.array([0.05 * np.hypot(c.width, c.height) for c in rig.cameras])
    torso = [_torso_by_frame(c, cam) for c, cam in zip(cams, rig.cameras, strict=True)] if person_id is None else []
    several = rejected = 0
    previous: np.ndarray | None = None  # torso_xy [V, A, 2] of the last choice
    for t, f in enumerate(frame):
        cands = [c.people.get(int(f)) for c in cams]
        several += any(p is not None and len(p.track) > 1 for p in cands)
        if person_id is not None:
            chosen = [_tracked(p, person_id) for p in cands]
        else:
            xy = [tv.get(int(f)) for tv in torso]
            chosen = choose_people(cands, xy, arrays, gate_px, previous=previous)
            rejected += sum(c < 0 and p is not None and len(p.track) > 0 for c, p in zip(chosen, cands, strict=True))
            if any(c >= 0 for c in chosen):
                nobody = np.full((len(TORSO), 2), np.nan)
                previous = np.stack([xy[v][c] if c >= 0 else nobody for v, c in enumerate(chosen)])
        for v, (c, p) in enumerate(zip(chosen, cands, strict=True)):
            if c >= 0 and p is not None:
                kp[t, v], score[t, v] = p.kp[c], p.score[c]
    return _Selected(frame, kp, score, several, rejected)


def _torso_by_frame(cam: CameraDetections, camera: Any) -> dict[int, np.ndarray]:
    """frame -> `torso_normalized` [P, A, 2] of that frame's people, undistorted in one batch per camera."""
    frames = list(cam.people)
    sizes = [len(cam.people[f].track) for f in frames]
    if not sum(sizes):
        return {}
    xy = torso_normalized(np.concatenate([cam.people[f].kp for f in frames]), camera)
    return dict(zip(frames, np.split(xy, np.cumsum(sizes)[:-1]), strict=True))


def _tracked(people: People | None, person_id: int) -> int:
    if people is None:
        return -1
    hits = np.flatnonzero(people.track == person_id)
    if len(hits) > 1:
        raise ValueError(f"{people.source}: field 'person_id' {person_id} is given to {len(hits)} people in one "
                         "frame; tracked ids must be unique per frame")
    return int(hits[0]) if len(hits) else -1


def _notes(cams: list[CameraDetections], sel: _Selected, seen: np.ndarray, sequence: str,
           person_id: int | None) -> list[str]:
    T = len(sel.frame)
    notes = []
    if not seen.all():
        notes.append(f"{sequence}: {int((~seen).sum())} of {T} frames have no person in any camera; left out")
    if sel.several:
        how = (f"the tracked person_id {person_id} was kept" if person_id is not None else "the person whose views "
               "triangulate most consistently was kept (--person-id N follows a tracked id instead)")
        notes.append(f"{sequence}: {sel.several} of {T} frames have several people in a camera; {how}")
    if sel.rejected:
        notes.append(f"{sequence}: {sel.rejected} camera views held only people inconsistent with the other views; "
                     "left empty (NaN, score 0)")
    tracks = sorted({int(i) for c in cams for p in c.people.values() for i in p.track if i >= 0})
    if person_id is None and len(tracks) > 1:
        notes.append(f"{sequence}: the files carry tracked person ids {tracks[:10]}; --person-id N keeps one")
    clipped = {c.name: c.num_clipped for c in cams if c.num_clipped}
    if clipped:
        notes.append(f"{sequence}: scores above 1 clipped to 1 (per input: {clipped})")
    return notes


def check_split(split: str | None, split_by: str | None) -> Any:
    """None for frame ranges in `split`, else the (sequence, subject) -> split rule; ValueError on a bad spec.
    Converters call it before reading anything, so a typo fails at once."""
    if is_split_ranges(split):
        if split_by is not None:
            raise ValueError("give frame ranges in split or split_by, not both")
        parse_split_ranges(split or "")
        return None
    return _split_rule(split, split_by)


def ingest_detections(
    cams: list[CameraDetections],
    *,
    rig: Rig,
    converter: str,
    recipe: dict[str, Any],
    out: str,
    sequence: str,
    subject: str,
    split: str | None,
    split_by: str | None,
    person_id: int | None,
    camera_map: dict[str, str],
    replace: bool,
    max_bad_fraction: float,
) -> IngestSummary:
    """Write one sequence of per-camera detections (coco17) into the dataset at `out`; see the module docstring
    and the converters' for the rules. `split` may be a split name or frame ranges (`train=0:0.8,test=0.8:1`)."""
    split_of = check_split(split, split_by)
    ranges = split_of is None
    source = ", ".join(dict.fromkeys(c.source for c in cams))
    order = rig_order([c.name for c in cams], rig, camera_map, source=source)
    cams = [_in_pixels(cams[i], cam) for i, cam in zip(order, rig.cameras, strict=True)]
    if person_id is not None and not any((p.track == person_id).any() for c in cams for p in c.people.values()):
        raise ValueError(f"{source}: person_id {person_id} is in no file (field 'person_id' / 'track_id')")
    sel = _select(cams, rig, person_id)
    seen = (sel.score > 0).any((1, 2))
    ing = _Ingest(out, skeleton=COCO17, command=f"ingest {converter}", recipe=recipe, replace=replace,
                  max_bad_fraction=max_bad_fraction)
    with ing:
        if not seen.any():
            raise ValueError(f"{source}: no person keypoints in any camera")
        ing.notes += _notes(cams, sel, seen, sequence, person_id)
        ing.counts.update(frames=len(sel.frame), frames_without_person=int((~seen).sum()),
                          frames_with_several_people=sel.several, views_rejected=sel.rejected)
        ing.warnings += out_of_image_warnings(sel.kp[seen], sel.score[seen], rig, source=sequence)
        if split_of is None:
            parts = _split_parts(sel.frame, seen, split or "", sequence)
        else:
            parts = [(split_of(sequence, subject), sequence, seen)]
        for name, seq_name, rows in parts:
            if rows.any():
                frames = frames_for_rig(rig, sequence=seq_name, keypoints=sel.kp[rows], scores=sel.score[rows],
                                        frame=sel.frame[rows], subject=subject)
                ing.add(frames, rig, split=name, source=source)
        if ranges:
            left = int((seen & ~np.any([r for _, _, r in parts], 0)).sum())
            if left:
                ing.notes.append(f"{sequence}: {left} frames lie in no range of split {split!r}; left out")
        return ing.commit()


def _in_pixels(cam: CameraDetections, camera: Any) -> CameraDetections:
    """`cam` with pixel coordinates: normalised ones (MediaPipe: fractions of the image width and height) are
    scaled by the size the rig states for that camera."""
    if cam.units == "px":
        return cam
    wh = np.array([camera.width, camera.height], np.float32)
    return dataclasses.replace(cam, people={f: p._replace(kp=p.kp * wh) for f, p in cam.people.items()}, units="px")


def _split_parts(frame: np.ndarray, seen: np.ndarray, split: str,
                 sequence: str) -> list[tuple[str, str, np.ndarray]]:
    """(split, sequence name, rows [T] bool) per split of a frame-range spec: sequence `<sequence>-<split>`.
    Fractions are of every frame any camera has, so frames left out for having nobody do not move the cuts."""
    labels = split_of_frames(frame, split, frame_range=(int(frame.min()), int(frame.max())))
    names = list(dict.fromkeys(n for n, _, _ in parse_split_ranges(split)[0]))
    return [(n, f"{sequence}-{n}", seen & (labels == n)) for n in names]
