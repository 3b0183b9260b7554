"""The OpenPose / Pose2Sim converter: per-frame OpenPose JSON files in one folder per camera -> `ingest_openpose`.

Layout (Pose2Sim's `pose/` folder; what OpenPose's `--write_json` and Pose2Sim's RTMPose estimation write):

    <pose_dir>/<camera>_json/<name>_<frame>_keypoints.json     OpenPose (frame zero-padded to 12 digits)
    <pose_dir>/<camera>_json/<name>_<frame>.json               Pose2Sim (6 digits)

Each file: `{"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ...], "person_id": [-1]}, ...]}`, pixels
of the original image (OpenPose's default `--keypoint_scale 0`).

- Cameras: the subfolders of `pose_dir` that hold `*.json` files (others, e.g. `<camera>_img`, are ignored). A
  folder is named after its rig camera, with or without the `_json` suffix; `camera_map` names the others
  (`{"video01_json": "54138969"}`). Every rig camera needs its folder.
- Frames: the number at the end of each file's stem (before `_keypoints`), aligned across cameras; a camera
  without a frame's file -> NaN view. Frames where no camera saw anybody are left out (noted).
- Skeleton: `skeleton=` (body25, coco18, halpe26, coco17, wholebody133) or from the number of points per person
  (25, 18, 26, 17, 133); every file of the ingest must agree. Mapped onto coco17, or with `out_skeleton="halpe26"`
  onto halpe26 (body25, halpe26, wholebody133: tables in `detectors`).
- People: a person with empty `pose_keypoints_2d` is skipped. `person_id` (a number or `[number]`, -1 = not
  tracked) is the tracked id: `person_id=N` keeps that person in every view. Without it, each frame keeps the
  person whose views triangulate most consistently (`rigpose.data.ingest.people`).
- Sequence: `sequence=`, default the name of `pose_dir`, or of its parent when it is called `pose` (Pose2Sim's
  `<trial>/pose`). Splits: a split name, `split_by=`, or frame ranges (`split="train=0:0.8,test=0.8:1"`).

Shape letters: P people, K points of the file's format.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

import numpy as np

from rigpose.data.ingest.common import IngestSummary, _as_rig, _progress, _read_bytes, _stem
from rigpose.data.ingest.detectors import (
    KEYPOINT_FORMATS,
    CameraDetections,
    KeypointFormat,
    check_split,
    default_sequence,
    ingest_detections,
    keypoint_format,
    no_people,
    out_skeleton_for,
    people_from_points,
)
from rigpose.data.writer import DEFAULT_MAX_BAD_FRACTION
from rigpose.rig import Rig
from rigpose.skeleton import COCO17, Skeleton
from rigpose.storage import url_to_fs

OPENPOSE_FORMATS = ("body25", "coco18", "halpe26", "coco17", "wholebody133")
_FRAME = re.compile(r"(\d+)(?:_keypoints)?$")


def camera_folders(pose_dir: str) -> dict[str, list[str]]:
    """Subfolder name -> its `*.json` files (sorted) for every subfolder of `pose_dir` holding any."""
    fs, root = url_to_fs(str(pose_dir))
    if not fs.isdir(root):
        raise ValueError(f"{pose_dir}: no such folder (expected the pose folder with one <camera>_json per camera)")
    base = str(pose_dir).rstrip("/")
    out: dict[str, list[str]] = {}
    for sub in sorted(p for p in fs.ls(root, detail=False) if fs.isdir(p)):
        name = posixpath.basename(sub.rstrip("/"))
        files = sorted(posixpath.basename(p) for p in fs.ls(sub, detail=False) if p.endswith(".json"))
        if files:
            out[name] = [f"{base}/{name}/{f}" for f in files]
    if not out:
        raise ValueError(f"{pose_dir}: no subfolder holds *.json files (expected <camera>_json/*.json)")
    return out


def frame_number(path: str) -> int:
    """The frame number at the end of the file's stem, before an optional `_keypoints`."""
    m = _FRAME.search(_stem(path))
    if m is None:
        raise ValueError(f"{path}: no frame number at the end of the file name "
                         "(expected <name>_<frame>_keypoints.json or <name>_<frame>.json)")
    return int(m.group(1))


def _track_id(value: Any, path: str, i: int) -> int:
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else (value or -1)
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{path}: field 'people[{i}].person_id' {value!r} is not an integer id")
    return int(value)


def read_openpose_frame(path: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(points [K, 3] = (x, y, c) per person, tracked ids [P] with -1 = none) of one OpenPose JSON file."""
    try:
        doc = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("people"), list):
        raise ValueError(f"{path}: field 'people' missing or not a list (expected OpenPose JSON)")
    points, tracks = [], []
    for i, person in enumerate(doc["people"]):
        field_name = f"people[{i}].pose_keypoints_2d"
        if not isinstance(person, dict):
            raise ValueError(f"{path}: field 'people[{i}]' is not an object")
        values = person.get("pose_keypoints_2d")
        if values is None or values == []:
            continue  # OpenPose writes [] when body detection is off; Pose2Sim skips these too
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: field {field_name!r} is not a list of numbers") from None
        if arr.ndim != 1 or arr.size % 3:
            raise ValueError(f"{path}: field {field_name!r} has {arr.size} values, expected x, y, c per point")
        points.append(arr.reshape(-1, 3))
        tracks.append(_track_id(person.get("person_id"), path, i))
    return points, np.array(tracks, dtype=np.int64)


def read_openpose_camera(name: str, files: list[str], *, skeleton: str | None = None,
                         fmt: KeypointFormat | None = None, advance: Any = None,
                         out_skeleton: Skeleton = COCO17) -> tuple[CameraDetections, KeypointFormat | None]:
    """One camera folder's files -> its detections on `out_skeleton`, and the keypoint format (from `fmt`,
    `skeleton` or the first person's number of points; None while nobody was seen)."""
    people, first_of, clipped = {}, {}, 0
    for path in files:
        f = frame_number(path)
        if f in first_of:
            raise ValueError(f"{path}: frame {f} is given twice in camera folder {name!r} (also {first_of[f]})")
        first_of[f] = path
        points, tracks = read_openpose_frame(path)
        if advance is not None:
            advance(name)
        if not points:
            people[f] = no_people(path, out_skeleton)
            continue
        for i, p in enumerate(points):
            field_name = f"people[{i}].pose_keypoints_2d"
            if fmt is None:
                fmt = keypoint_format(len(p), skeleton, source=path, field_name=field_name, allowed=OPENPOSE_FORMATS)
                fmt.check_writes(out_skeleton)
            elif len(p) != fmt.num_keypoints:
                raise ValueError(f"{path}: field {field_name!r} has {len(p)} points, earlier files have "
                                 f"{fmt.num_keypoints} ({fmt.name})")
        people[f], n = people_from_points(np.stack(points), tracks, fmt, source=path, field_name="pose_keypoints_2d",
                                          skeleton=out_skeleton)
        clipped += n
    folder = posixpath.dirname(files[0]) if files else name
    return CameraDetections(name=name, source=folder, people=people, num_clipped=clipped), fmt


def ingest_openpose(
    pose_dir: str,
    *,
    out: str,
    rig: Rig | str,
    skeleton: str | None = None,
    out_skeleton: str = "coco17",
    person_id: int | None = None,
    camera_map: dict[str, str] | None = None,
    sequence: str | None = None,
    subject: str = "unknown",
    split: str | None = None,
    split_by: str | None = None,
    replace: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> IngestSummary:
    """Ingest one sequence of OpenPose-JSON detections in Pose2Sim's per-camera folders (module docstring);
    `skeleton` names the files' keypoint format, `out_skeleton` the dataset's (coco17 or halpe26)."""
    rig = _as_rig(rig)
    check_split(split, split_by)
    if skeleton is not None and skeleton not in OPENPOSE_FORMATS:
        raise ValueError(f"skeleton {skeleton!r}: unknown keypoint format; known: {', '.join(OPENPOSE_FORMATS)}")
    target = out_skeleton_for(out_skeleton, KEYPOINT_FORMATS[skeleton] if skeleton else None)
    folders = camera_folders(pose_dir)
    sequence = sequence or default_sequence(pose_dir, skip=("pose",))
    cams, fmt = [], None
    with _progress(progress, "read OpenPose JSON", sum(len(f) for f in folders.values())) as advance:
        for name, files in folders.items():
            cam, fmt = read_openpose_camera(name, files, skeleton=skeleton, fmt=fmt, advance=advance,
                                            out_skeleton=target)
            cams.append(cam)
    recipe = {"converter": "openpose", "inputs": [str(pose_dir)], "rig": rig.rig_id, "sequence": sequence,
              "subject": subject, "split": split, "split_by": split_by, "skeleton": fmt.name if fmt else skeleton,
              "out_skeleton": target.name, "person_id": person_id, "camera_map": camera_map or {}}
    return ingest_detections(cams, rig=rig, converter="openpose", recipe=recipe, out=out, sequence=sequence,
                             subject=subject, split=split, split_by=split_by, person_id=person_id,
                             camera_map=camera_map or {}, replace=replace, max_bad_fraction=max_bad_fraction,
                             skeleton=target)
