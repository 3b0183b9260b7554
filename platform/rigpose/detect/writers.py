"""Keypoint files in the layouts the ingests read, one camera at a time.

- MediaPipe JSON (`rigpose datasets ingest mediapipe`, layout in `rigpose.data.ingest.mediapipe`): one
  `<out>/<camera>.json` per camera, `{"frames": [{"frame": N, "pose_landmarks": [[33 x {x, y, z, visibility,
  presence}], ...]}, ...], ...}` with x, y fractions of the image; written whole when the camera is done.
- OpenPose JSON (`rigpose datasets ingest openpose`, layout in `rigpose.data.ingest.openpose`): one
  `<out>/<camera>_json/<camera>_<frame:06d>.json` per frame, `{"people": [{"person_id": [-1],
  "pose_keypoints_2d": [x0, y0, c0, ...]}]}` in pixels of the video, as Pose2Sim's RTMPose step writes them.

Shape letters: P people, K keypoints.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rigpose.storage import url_to_fs, write_bytes_atomic

MEDIAPIPE_FIELDS = ("x", "y", "z", "visibility", "presence")


def mediapipe_frame(frame: int, people_PK5: np.ndarray) -> dict[str, Any]:
    """One frame of the MediaPipe JSON: (x, y, z, visibility, presence) per landmark per person, rounded to 1e-5 of
    the image (0.02 px of a 1920 px side)."""
    people = [[dict(zip(MEDIAPIPE_FIELDS, (round(float(v), 5) for v in lm), strict=True)) for lm in person]
              for person in people_PK5]
    return {"frame": int(frame), "pose_landmarks": people}


def write_mediapipe_json(path: str, frames: list[dict[str, Any]], *, header: dict[str, Any]) -> None:
    """`<path>` = `{**header, "frames": frames}`, all at once (storage.write_bytes_atomic)."""
    fs, p = url_to_fs(path)
    doc = {**header, "frames": frames}
    write_bytes_atomic(fs, p, (json.dumps(doc, separators=(",", ":")) + "\n").encode())


def openpose_path(out: str, camera: str, frame: int) -> str:
    return f"{out.rstrip('/')}/{camera}_json/{camera}_{frame:06d}.json"


def write_openpose_frame(out: str, camera: str, frame: int, kp_PK2: np.ndarray, score_PK: np.ndarray) -> None:
    """One frame's OpenPose JSON under `out` (module docstring): pixels and scores, 2 decimals / 4 decimals."""
    if kp_PK2.shape[:2] != score_PK.shape or kp_PK2.shape[-1:] != (2,):
        raise ValueError(f"keypoints {kp_PK2.shape} and scores {score_PK.shape} do not match ([P, K, 2], [P, K])")
    people = []
    for kp_K2, score_K in zip(kp_PK2, score_PK, strict=True):
        flat = np.concatenate([kp_K2.round(2), score_K[:, None].round(4)], axis=1).ravel()
        people.append({"person_id": [-1], "pose_keypoints_2d": [float(v) for v in flat]})
    fs, p = url_to_fs(openpose_path(out, camera, frame))
    write_bytes_atomic(fs, p, (json.dumps({"version": 1.3, "people": people}) + "\n").encode())
