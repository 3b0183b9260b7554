"""The MMPose / RTMPose converter: one prediction JSON per camera, as MMPose's inferencer saves it -> `ingest_mmpose`.

`MMPoseInferencer(...)(video, pred_out_dir=DIR)` writes `DIR/<video stem>.json`:

    [{"frame_id": 0, "instances": [{"keypoints": [[x, y], ...], "keypoint_scores": [s, ...],
                                    "bbox": [[x1, y1, x2, y2]], "bbox_score": 0.98}, ...]},
     {"frame_id": 1, "instances": [...]}, ...]

Also read: a list with one list of instances per frame (the generator's `result["predictions"][0]` collected;
frame = position), and either wrapped as `{"predictions": [...]}`. Pixels of the original image.

- Cameras: the file stem is the rig camera's name (the video was named after its camera), or `camera_map` maps it
  (`{"video01": "54138969"}`). One file per rig camera.
- Skeleton: `skeleton=` (coco17, halpe26, wholebody133) or from the number of keypoints (17, 26, 133); mapped
  onto coco17, or with `out_skeleton="halpe26"` onto halpe26 (from halpe26 or wholebody133; tables in
  `detectors`). RTMPose's scores may exceed 1: clipped to 1 (noted). An optional integer `track_id` per instance
  is the tracked id that `person_id=N` follows; otherwise each frame keeps the person whose views triangulate
  most consistently (`rigpose.data.ingest.people`).
- Sequence: `sequence=`, default the files' folder name (its parent's when it is called `predictions`).
  Splits: a split name, `split_by=`, or frame ranges (`split="train=0:0.8,test=0.8:1"`).

Shape letters: P people (instances), K keypoints of the file's format.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np

from rigpose.data.ingest.common import IngestSummary, _as_rig, _progress, _read_bytes, _stem
from rigpose.data.ingest.detectors import (
    KEYPOINT_FORMATS,
    CameraDetections,
    KeypointFormat,
    People,
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

MMPOSE_FORMATS = ("coco17", "halpe26", "wholebody133")


def _frames_of(doc: Any, path: str) -> list[tuple[int, list[Any], str]]:
    """(frame, instances, field path) per frame of a predictions file, in any of the accepted layouts."""
    if isinstance(doc, dict) and "predictions" in doc:
        doc = doc["predictions"]
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a list of frames (MMPose predictions: [{{frame_id, instances}}, ...])")
    out, seen = [], {}
    for i, item in enumerate(doc):
        if isinstance(item, dict):
            frame, instances = item.get("frame_id", i), item.get("instances")
            if not isinstance(instances, list):
                raise ValueError(f"{path}: field '[{i}].instances' missing or not a list")
            if isinstance(frame, bool) or not isinstance(frame, int):
                raise ValueError(f"{path}: field '[{i}].frame_id' {frame!r} is not an integer")
            where = f"[{i}].instances"
        elif isinstance(item, list):
            frame, instances, where = i, item, f"[{i}]"
        else:
            raise ValueError(f"{path}: field '[{i}]' is neither a frame object nor a list of instances")
        if frame in seen:
            raise ValueError(f"{path}: field '[{i}].frame_id' {frame} repeats frame [{seen[frame]}]")
        seen[frame] = i
        out.append((frame, instances, where))
    return out


def _instance(inst: Any, where: str, path: str) -> tuple[np.ndarray, int]:
    """(points [K, 3] = x, y, score; track id or -1) of one instance."""
    if not isinstance(inst, dict) or "keypoints" not in inst or "keypoint_scores" not in inst:
        raise ValueError(f"{path}: field {where!r} needs 'keypoints' and 'keypoint_scores'")
    try:
        kp = np.asarray(inst["keypoints"], dtype=np.float64)
        sc = np.asarray(inst["keypoint_scores"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: field '{where}.keypoints' / 'keypoint_scores' are not numbers") from None
    if kp.ndim != 2 or kp.shape[1] < 2:
        raise ValueError(f"{path}: field '{where}.keypoints' has shape {list(kp.shape)}, expected [K, 2]")
    if sc.shape != (len(kp),):
        raise ValueError(f"{path}: field '{where}.keypoint_scores' has shape {list(sc.shape)}, expected "
                         f"[{len(kp)}] (one per keypoint)")
    track = inst.get("track_id", -1)
    if isinstance(track, bool) or not isinstance(track, int):
        raise ValueError(f"{path}: field '{where}.track_id' {track!r} is not an integer")
    return np.concatenate([kp[:, :2], sc[:, None]], -1), track


def read_mmpose_predictions(path: str, *, skeleton: str | None = None, fmt: KeypointFormat | None = None,
                            out_skeleton: Skeleton = COCO17) -> tuple[CameraDetections, KeypointFormat | None]:
    """One camera's prediction file -> its detections on `out_skeleton` (camera name = the file stem) and the
    format."""
    try:
        doc = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    people: dict[int, People] = {}
    clipped = 0
    for frame, instances, where in _frames_of(doc, path):
        rows = [_instance(inst, f"{where}[{p}]", path) for p, inst in enumerate(instances)]
        if not rows:
            people[frame] = no_people(path, out_skeleton)
            continue
        for p, (pts, _) in enumerate(rows):
            if fmt is None:
                fmt = keypoint_format(len(pts), skeleton, source=path, field_name=f"{where}[{p}].keypoints",
                                      allowed=MMPOSE_FORMATS)
                fmt.check_writes(out_skeleton)
            elif len(pts) != fmt.num_keypoints:
                raise ValueError(f"{path}: field '{where}[{p}].keypoints' has {len(pts)} keypoints, earlier ones "
                                 f"have {fmt.num_keypoints} ({fmt.name})")
        tracks = np.array([t for _, t in rows], np.int64)
        people[frame], n = people_from_points(np.stack([r for r, _ in rows]), tracks, fmt, source=path,
                                              field_name=f"{where}.keypoint_scores", skeleton=out_skeleton)
        clipped += n
    return CameraDetections(name=_stem(path), source=path, people=people, num_clipped=clipped), fmt


def ingest_mmpose(
    json_files: list[str],
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
    """Ingest one sequence given as one MMPose/RTMPose predictions JSON per camera (module docstring); `skeleton`
    names the files' keypoint format, `out_skeleton` the dataset's (coco17 or halpe26)."""
    rig = _as_rig(rig)
    check_split(split, split_by)
    if skeleton is not None and skeleton not in MMPOSE_FORMATS:
        raise ValueError(f"skeleton {skeleton!r}: unknown keypoint format; known: {', '.join(MMPOSE_FORMATS)}")
    target = out_skeleton_for(out_skeleton, KEYPOINT_FORMATS[skeleton] if skeleton else None)
    if not json_files:
        raise ValueError("no input files given")
    sequence = sequence or default_sequence(posixpath.dirname(str(json_files[0])) or ".", skip=("predictions",))
    cams, fmt = [], None
    with _progress(progress, "read MMPose predictions", len(json_files)) as advance:
        for path in json_files:
            cam, fmt = read_mmpose_predictions(str(path), skeleton=skeleton, fmt=fmt, out_skeleton=target)
            cams.append(cam)
            advance(_stem(str(path)))
    recipe = {"converter": "mmpose", "inputs": [str(p) for p in json_files], "rig": rig.rig_id, "sequence": sequence,
              "subject": subject, "split": split, "split_by": split_by, "skeleton": fmt.name if fmt else skeleton,
              "out_skeleton": target.name, "person_id": person_id, "camera_map": camera_map or {}}
    return ingest_detections(cams, rig=rig, converter="mmpose", recipe=recipe, out=out, sequence=sequence,
                             subject=subject, split=split, split_by=split_by, person_id=person_id,
                             camera_map=camera_map or {}, replace=replace, max_bad_fraction=max_bad_fraction,
                             skeleton=target)
