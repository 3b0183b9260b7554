"""The MediaPipe converter: per-frame pose landmarks (33 points, x and y normalised to the image), one JSON or CSV
file per camera -> `ingest_mediapipe`.

MediaPipe writes no file of its own; these are the layouts read (what a script around `PoseLandmarker` or the
legacy `mp.solutions.pose` most naturally saves). `x`, `y` are fractions of the image width and height (MediaPipe's
normalised landmarks; values a little outside [0, 1] are allowed), converted to pixels with the width and height
the rig states for that camera; `visibility` (default 1) is the score; `z` and `presence` are ignored.

JSON (`.json`): a list of frames, or `{"frames": [...]}`; each frame is

    {"frame": 12, "landmarks": [{"x": 0.51, "y": 0.32, "z": -0.1, "visibility": 0.99}, ... 33]}      one person
    {"frame": 12, "pose_landmarks": [[33 landmarks], [33 landmarks]]}                                 several

`frame` defaults to the position in the list; an empty landmark list means nobody was seen.

CSV (`.csv`), one row per landmark, with a header naming the columns (any order):

    frame,person,landmark,x,y,z,visibility,presence
    12,0,left_shoulder,0.48,0.41,-0.2,0.998,0.999

`frame`, `landmark`, `x`, `y` are required; `landmark` is the index 0-32 or MediaPipe's name (`LEFT_SHOULDER`,
any case); `person` (default 0) tells people of one frame apart; a landmark without a row is missing.

- Cameras: the file stem is the rig camera's name, or `camera_map` maps it. One file per rig camera.
- Mapped onto coco17 (table in `detectors`), or with `out_skeleton="halpe26"` onto halpe26: heels, big toes =
  `foot_index`, neck and hip derived from the shoulders and hips, head and small toes missing.
- Several people per frame: the one whose views triangulate most consistently (`rigpose.data.ingest.people`), or
  `person_id=N` = the CSV's `person` column / the JSON's position.
- Sequence: `sequence=`, default the files' folder name. Splits: a split name, `split_by=`, or frame ranges.

Shape letters: P people, K = 33 landmarks.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from typing import Any

import numpy as np

from rigpose.data.ingest.common import IngestSummary, _as_rig, _progress, _read_bytes, _stem
from rigpose.data.ingest.detectors import (
    KEYPOINT_FORMATS,
    CameraDetections,
    People,
    check_split,
    default_sequence,
    ingest_detections,
    no_people,
    out_skeleton_for,
    people_from_points,
)
from rigpose.data.writer import DEFAULT_MAX_BAD_FRACTION
from rigpose.rig import Rig
from rigpose.skeleton import COCO17, Skeleton

MEDIAPIPE = KEYPOINT_FORMATS["mediapipe33"]
_CSV_COLUMNS = ("frame", "person", "landmark", "x", "y", "z", "visibility", "presence")
_CSV_REQUIRED = ("frame", "landmark", "x", "y")


def _landmarks(value: Any, where: str, path: str) -> np.ndarray:
    """[33, 3] (x, y, visibility) of one person's landmark list."""
    if not isinstance(value, list) or len(value) != MEDIAPIPE.num_keypoints:
        n = len(value) if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{path}: field {where!r} has {n} landmarks, expected {MEDIAPIPE.num_keypoints}")
    out = np.empty((MEDIAPIPE.num_keypoints, 3))
    for k, lm in enumerate(value):
        try:
            out[k] = (float(lm["x"]), float(lm["y"]), float(lm.get("visibility", 1.0)))
        except (TypeError, KeyError, ValueError, AttributeError):
            raise ValueError(f"{path}: field '{where}[{k}]' needs numbers 'x', 'y' (and 'visibility')") from None
    return out


def _read_json(path: str, text: str) -> dict[int, list[tuple[int, np.ndarray]]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    frames = doc.get("frames") if isinstance(doc, dict) else doc
    if not isinstance(frames, list):
        raise ValueError(f"{path}: expected a list of frames or {{'frames': [...]}}")
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, item in enumerate(frames):
        if not isinstance(item, dict) or not ("landmarks" in item or "pose_landmarks" in item):
            raise ValueError(f"{path}: field 'frames[{i}]' needs 'landmarks' or 'pose_landmarks'")
        frame = item.get("frame", i)
        if isinstance(frame, bool) or not isinstance(frame, int) or frame in out:
            raise ValueError(f"{path}: field 'frames[{i}].frame' {frame!r} is not a new integer frame number")
        if "landmarks" in item:
            people = [item["landmarks"]] if item["landmarks"] else []
            wheres = [f"frames[{i}].landmarks"]
        else:
            people = item["pose_landmarks"] if isinstance(item["pose_landmarks"], list) else [None]
            wheres = [f"frames[{i}].pose_landmarks[{p}]" for p in range(len(people))]
        out[frame] = [(p, _landmarks(lm, w, path)) for p, (lm, w) in enumerate(zip(people, wheres, strict=False))]
    return out


def _landmark_index(value: str, line: int, path: str) -> int:
    v = value.strip()
    if v.isdigit() and int(v) < MEDIAPIPE.num_keypoints:
        return int(v)
    if v.lower() in MEDIAPIPE.joint_names:
        return MEDIAPIPE.joint_names.index(v.lower())
    raise ValueError(f"{path}: line {line} field 'landmark' {value!r} is neither 0-32 nor a MediaPipe landmark name")


def _cell(row: dict[str, Any], column: str, line: int, path: str, default: float | None = None) -> float:
    text = (row.get(column) or "").strip()
    if not text and default is not None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: line {line} field {column!r} {text!r} is not a number") from None
    if column in ("frame", "person") and value != int(value):
        raise ValueError(f"{path}: line {line} field {column!r} {text!r} is not an integer")
    return value


def _read_csv(path: str, text: str) -> dict[int, list[tuple[int, np.ndarray]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    unknown = [h for h in header if h not in _CSV_COLUMNS]
    missing = [h for h in _CSV_REQUIRED if h not in header]
    if unknown or missing:
        raise ValueError(f"{path}: header columns unknown {unknown}, missing {missing}; known: "
                         f"{', '.join(_CSV_COLUMNS)}")
    reader.fieldnames = header
    rows: dict[tuple[int, int], np.ndarray] = {}
    for line, row in enumerate(reader, start=2):
        frame, person = int(_cell(row, "frame", line, path)), int(_cell(row, "person", line, path, 0.0))
        k = _landmark_index(row.get("landmark") or "", line, path)
        pts = rows.setdefault((frame, person), np.tile([np.nan, np.nan, 0.0], (MEDIAPIPE.num_keypoints, 1)))
        if np.isfinite(pts[k, 0]):
            raise ValueError(f"{path}: line {line}: landmark {k} of frame {frame} person {person} is given twice")
        pts[k] = (_cell(row, "x", line, path), _cell(row, "y", line, path), _cell(row, "visibility", line, path, 1.0))
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    for (frame, person), pts in sorted(rows.items()):
        out.setdefault(frame, []).append((person, pts))
    return out


def read_mediapipe_landmarks(path: str, *, out_skeleton: Skeleton = COCO17) -> CameraDetections:
    """One camera's landmark file (`.json` or `.csv`, module docstring) -> its detections on `out_skeleton`, still
    in normalised image coordinates (`units="normalized"`); camera name = the file stem."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if path.lower().endswith(".csv"):
        frames = _read_csv(path, text)
    elif path.lower().endswith(".json"):
        frames = _read_json(path, text)
    else:
        raise ValueError(f"{path}: expected a .json or .csv landmark file")
    people: dict[int, People] = {}
    clipped = 0
    for frame, found in frames.items():
        people[frame] = no_people(path, out_skeleton)
        if found:
            track = np.array([t for t, _ in found], np.int64)  # what person_id selects
            people[frame], n = people_from_points(np.stack([p for _, p in found]), track, MEDIAPIPE, source=path,
                                                  field_name="visibility", skeleton=out_skeleton)
            clipped += n
    return CameraDetections(name=_stem(path), source=path, people=people, units="normalized", num_clipped=clipped)


def ingest_mediapipe(
    files: list[str],
    *,
    out: str,
    rig: Rig | str,
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
    """Ingest one sequence given as one MediaPipe landmark file (JSON or CSV) per camera (module docstring);
    `out_skeleton` is the dataset's skeleton (coco17 or halpe26)."""
    rig = _as_rig(rig)
    check_split(split, split_by)
    target = out_skeleton_for(out_skeleton, MEDIAPIPE)
    if not files:
        raise ValueError("no input files given")
    sequence = sequence or default_sequence(posixpath.dirname(str(files[0])) or ".")
    cams = []
    with _progress(progress, "read MediaPipe landmarks", len(files)) as advance:
        for path in files:
            cams.append(read_mediapipe_landmarks(str(path), out_skeleton=target))
            advance(_stem(str(path)))
    recipe = {"converter": "mediapipe", "inputs": [str(p) for p in files], "rig": rig.rig_id, "sequence": sequence,
              "subject": subject, "split": split, "split_by": split_by, "skeleton": MEDIAPIPE.name,
              "out_skeleton": target.name, "person_id": person_id, "camera_map": camera_map or {}}
    return ingest_detections(cams, rig=rig, converter="mediapipe", recipe=recipe, out=out, sequence=sequence,
                             subject=subject, split=split, split_by=split_by, person_id=person_id,
                             camera_map=camera_map or {}, replace=replace, max_bad_fraction=max_bad_fraction,
                             skeleton=target)
