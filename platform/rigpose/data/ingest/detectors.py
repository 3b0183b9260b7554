"""What the 2D-detector converters (OpenPose, MMPose/RTMPose, MediaPipe) share: their keypoint formats mapped onto
the dataset's skeleton (coco17, or halpe26), per-camera detections, matching input names to rig cameras, and the
driver that picks one person per frame (`rigpose.data.ingest.people`), checks the image bounds, applies the split
and writes the dataset.

Keypoint formats (joint orders as the detectors write them; every one holds all 17 COCO joints, so nothing of
coco17 is lost; on coco17 the extra joints, neck, mid-hip, feet, face, hands, are dropped):

| name           | points | written by                                  | coco17 joints from points                  |
|----------------|--------|---------------------------------------------|--------------------------------------------|
| `body25`       | 25     | OpenPose BODY_25 (its default model)        | 0 16 15 18 17 5 2 6 3 7 4 12 9 13 10 14 11 |
| `coco18`       | 18     | OpenPose COCO (nose, neck, r-shoulder, ...) | 0 15 14 17 16 5 2 6 3 7 4 11 8 12 9 13 10  |
| `halpe26`      | 26     | RTMPose body8-halpe26 (Pose2Sim's default)  | 0-16 (then head, neck, hip, 6 feet)        |
| `coco17`       | 17     | any COCO-keypoint model                     | 0-16                                       |
| `wholebody133` | 133    | RTMW / DWPose (COCO-WholeBody)              | 0-16 (then 6 feet, 68 face, 2 x 21 hands)  |
| `mediapipe33`  | 33     | MediaPipe / BlazePose pose landmarks        | 0 2 5 7 8 11 12 13 14 15 16 23-28          |

`out_skeleton="halpe26"` (the CLI's `--out-skeleton halpe26`) keeps, besides the 17 COCO joints, HALPE-26's head
(the top of the head), neck, hip and six foot points (`rigpose.skeleton.HALPE26`), from any format that has foot
points (coco17 and coco18 have none and are refused):

| format         | head    | neck                         | hip              | feet                          |
|----------------|---------|------------------------------|------------------|-------------------------------|
| `halpe26`      | head    | neck                         | hip              | all six                       |
| `body25`       | missing | neck (between the shoulders) | mid_hip          | all six                       |
| `wholebody133` | missing | mean of the shoulders        | mean of the hips | all six                       |
| `mediapipe33`  | missing | mean of the shoulders        | mean of the hips | heels, big toes = foot_index  |

MediaPipe has no small toes. A derived point is missing where either of its two points is, and takes the lower
score. Missing = NaN, score 0.

Left and right are the subject's own in every format. A joint with score 0 or a non-finite coordinate is missing
(NaN, score 0). Scores above 1 (RTMPose's SimCC confidences are not probabilities) are clipped to 1 with a note;
a negative score is refused.

Shape letters: T frames, V views (cameras), P people, K points of the file's format, J joints of the dataset's
skeleton (coco17 or halpe26).
"""

from __future__ import annotations

import dataclasses
import functools
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
from rigpose.skeleton import COCO17, HALPE26, Skeleton, get_skeleton

# ---------------------------------------------------------------------------------------------- formats

_OPENPOSE_BODY = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                  "left_wrist")
_FEET = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
_BODY25 = (*_OPENPOSE_BODY, "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
           "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear", *_FEET)
_COCO18 = (*_OPENPOSE_BODY, "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
           "right_eye", "left_eye", "right_ear", "left_ear")
_HALPE26 = HALPE26.joint_names  # the skeleton's order is HALPE-26's own
_WHOLEBODY133 = (*COCO17.joint_names, *_FEET, *(f"face_{i}" for i in range(68)),
                 *(f"{side}_hand_{i}" for side in ("left", "right") for i in range(21)))
_MEDIAPIPE33 = ("nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
                "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
                "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
                "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
                "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
                "left_foot_index", "right_foot_index")


# Skeletons the detector converters write. Each begins with the 17 COCO joints in COCO order, which
# `rigpose.data.ingest.people` relies on (its torso joints are coco17 indices).
OUT_SKELETONS = ("coco17", "halpe26")
# A format's point that stands for a halpe26 joint of another name.
_ALIASES: dict[str, dict[str, str]] = {
    "body25": {"hip": "mid_hip"},
    "mediapipe33": {"left_big_toe": "left_foot_index", "right_big_toe": "right_foot_index"},
}
# halpe26 joints derived as the mean of two points where a format lacks them.
_DERIVED = {"neck": ("left_shoulder", "right_shoulder"), "hip": ("left_hip", "right_hip")}
_FOOT_POINTS = ("left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel", "right_heel")


@dataclass(frozen=True)
class KeypointFormat:
    """A detector's keypoint order. `to_coco17[j]` = the index of coco17 joint j in this format (-1: absent);
    `sources(skeleton)` the same for any skeleton the converters write, derived joints included."""

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

    def sources(self, skeleton: Skeleton) -> np.ndarray:
        """[J, 2] int: joint j of `skeleton` is the mean of this format's points `[j, 0]` and `[j, 1]` (the same
        index twice for a point of its own; -1 twice where the format cannot give it; module docstring)."""
        return _sources(self, skeleton)

    def check_writes(self, skeleton: Skeleton) -> None:
        """ValueError unless this format can be written as `skeleton` (coco17: any; halpe26: with foot points)."""
        feet = [skeleton.index(n) for n in _FOOT_POINTS] if skeleton.name == "halpe26" else []
        if feet and not (self.sources(skeleton)[feet] >= 0).any():
            raise ValueError(f"out_skeleton 'halpe26': keypoint format {self.name!r} has no foot points (nor a head "
                             "top), so its halpe26 rows would add nothing to coco17; write coco17")


@functools.cache
def _sources(fmt: KeypointFormat, skeleton: Skeleton) -> np.ndarray:
    index = {n: i for i, n in enumerate(fmt.joint_names)}
    index.update({target: index[name] for target, name in _ALIASES.get(fmt.name, {}).items() if name in index})
    out = np.full((skeleton.num_joints, 2), -1, np.int64)
    for j, name in enumerate(skeleton.joint_names):
        if name in index:
            out[j] = index[name]
        elif name in _DERIVED and all(n in index for n in _DERIVED[name]):
            out[j] = [index[n] for n in _DERIVED[name]]
    out.flags.writeable = False  # shared by every call
    return out


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
    """The people one camera saw in one frame, on the dataset's skeleton: kp [P, J, 2] (px, or normalised before
    scaling; NaN missing), score [P, J] in [0, 1] (0 missing), track [P] (tracked person id, -1 none), source (the
    file)."""

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
                       field_name: str, skeleton: Skeleton = COCO17) -> tuple[People, int]:
    """(People on `skeleton`, number of scores clipped to 1) from points [P, K, 3] = (x, y, score) in `fmt`'s
    order; people with no usable joint are dropped."""
    points = np.asarray(points_PK3, dtype=np.float64)
    idx = fmt.sources(skeleton)  # [J, 2]
    has = idx[:, 0] >= 0
    used = np.unique(idx[has])
    if (points[:, used, 2] < 0).any():
        p, k = np.argwhere(points[:, used, 2] < 0)[0]
        raise ValueError(f"{source}: field {field_name!r} person {p} joint {fmt.joint_names[used[k]]!r}: score "
                         f"{points[p, used[k], 2]} is negative")
    a, b = points[:, idx[:, 0]], points[:, idx[:, 1]]  # [P, J, 3]; a derived joint is the mean of two points
    xy = (a[..., :2] + b[..., :2]) / 2
    score = np.where(has, np.minimum(a[..., 2], b[..., 2]), 0.0)  # a NaN score stays NaN: not present below
    present = (score > 0) & np.isfinite(xy).all(-1)  # NaN scores -> False
    num_clipped = int((present & (score > 1)).sum())
    score = np.where(present, np.minimum(score, 1.0), 0.0)
    xy = np.where(present[..., None], xy, np.nan)
    real = present.any(-1)  # a "person" without one usable joint (Pose2Sim writes all-NaN ones) is nobody
    return People(xy[real].astype(np.float32), score[real].astype(np.float32),
                  np.asarray(track_P, np.int64)[real], source), num_clipped


def no_people(source: str, skeleton: Skeleton = COCO17) -> People:
    """A frame the camera has (a file, an entry) in which nobody was detected: P = 0."""
    J = skeleton.num_joints
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


def _select(cams: list[CameraDetections], rig: Rig, person_id: int | None, skeleton: Skeleton) -> _Selected:
    """One person per frame and view (cams in rig order): the tracked `person_id`, else by `choose_people`."""
    frame = np.array(sorted(set().union(*(c.people for c in cams))), dtype=np.int64)
    T, V, J = len(frame), len(cams), skeleton.num_joints
    kp = np.full((T, V, J, 2), np.nan, np.float32)
    score = np.zeros((T, V, J), np.float32)
    arrays = rig.arrays()
    gate_px = np.array([0.05 * np.hypot(c.width, c.height) for c in rig.cameras])
    torso = [_torso_by_frame(c, cam) for c, cam in zip(cams, rig.cameras, strict=True)] if person_id is None else []
    several = rejected = 0
    crowd = any(len(p.track) > 1 for c in cams for p in c.people.values())  # someone may be missed in a view
    previous: np.ndarray | None = None  # torso_xy [V, A, 2] of the last choice
    for t, f in enumerate(frame):
        cands = [c.people.get(int(f)) for c in cams]
        several += any(p is not None and len(p.track) > 1 for p in cands)
        if person_id is not None:
            chosen = [_tracked(p, person_id) for p in cands]
        else:
            xy = [tv.get(int(f)) for tv in torso]
            chosen = choose_people(cands, xy, arrays, gate_px, previous=previous, crowd=crowd)
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


def out_skeleton_for(name: str, fmt: KeypointFormat | None = None) -> Skeleton:
    """The skeleton a converter writes for `out_skeleton=name`; ValueError unless it is coco17 or halpe26 (and,
    once the format is known, one it can give: `KeypointFormat.check_writes`)."""
    if name not in OUT_SKELETONS:
        raise ValueError(f"out_skeleton {name!r}: the detector converters write {' or '.join(OUT_SKELETONS)}")
    skeleton = get_skeleton(name)
    if fmt is not None:
        fmt.check_writes(skeleton)
    return skeleton


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
    skeleton: Skeleton = COCO17,
) -> IngestSummary:
    """Write one sequence of per-camera detections (on `skeleton`, coco17 or halpe26) into the dataset at `out`;
    see the module docstring and the converters' for the rules. `split` may be a split name or frame ranges
    (`train=0:0.8,test=0.8:1`)."""
    split_of = check_split(split, split_by)
    ranges = split_of is None
    source = ", ".join(dict.fromkeys(c.source for c in cams))
    order = rig_order([c.name for c in cams], rig, camera_map, source=source)
    cams = [_in_pixels(cams[i], cam) for i, cam in zip(order, rig.cameras, strict=True)]
    if person_id is not None and not any((p.track == person_id).any() for c in cams for p in c.people.values()):
        raise ValueError(f"{source}: person_id {person_id} is in no file (field 'person_id' / 'track_id')")
    sel = _select(cams, rig, person_id, skeleton)
    seen = (sel.score > 0).any((1, 2))
    ing = _Ingest(out, skeleton=skeleton, command=f"ingest {converter}", recipe=recipe, replace=replace,
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
