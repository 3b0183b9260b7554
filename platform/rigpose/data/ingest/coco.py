"""The COCO-keypoints converter: one camera's COCO JSON -> per-frame keypoints, and `ingest_coco`.

`ingest_coco`: one COCO-keypoints JSON per camera, the i-th file = the rig's i-th camera. A file is either a
dataset file (`images` + `annotations`) or a results list (`[{image_id, keypoints, score}, ...]`). Frame index =
the last integer in each image's file-name stem when every image has one (and they are unique), else the image id.
Per image the best person annotation (`category_id` 1 or absent) is kept: highest `score`, else most labelled
keypoints, then largest area. The third value per keypoint: when every value of a file is 0, 1 or 2 it is COCO
visibility (v = 0 -> missing; otherwise score = the annotation's `score`, or 1 for ground truth), otherwise it is a
detector confidence in [0, 1] (0 -> missing). Frames = the union over cameras; a camera without that frame or
without a person there -> NaN view with score 0; frames with no person in any camera are left out with a note.
Skeleton coco17.

Shape letters: T frames, F images (frames of one camera), V views (cameras), J joints.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from rigpose.data.ingest.common import IngestSummary, _as_rig, _Ingest, _progress, _read_bytes, _split_rule, _stem
from rigpose.data.schema import frames_for_rig
from rigpose.data.writer import DEFAULT_MAX_BAD_FRACTION
from rigpose.rig import Rig
from rigpose.skeleton import COCO17


def _coco_entries(doc: Any, source: str) -> tuple[dict[Any, int], list[dict[str, Any]]]:
    """(image id -> frame index, annotations) of a COCO dataset file or results list."""
    if isinstance(doc, list):
        anns = doc
        images = {a.get("image_id"): a.get("image_id") for a in anns if isinstance(a, dict)}
        bad = [i for i in images if not isinstance(i, int)]
        if bad:
            raise ValueError(f"{source}: field 'image_id' must be an integer (frame index), got {bad[0]!r}")
        return {i: int(i) for i in images}, anns
    if not isinstance(doc, dict) or "annotations" not in doc or "images" not in doc:
        raise ValueError(f"{source}: expected a COCO keypoints file with 'images' and 'annotations', "
                         "or a results list")
    ids = [im.get("id") for im in doc["images"]]
    names = [str(im.get("file_name", "")) for im in doc["images"]]
    numbers = [re.findall(r"\d+", _stem(n)) for n in names]
    if all(numbers) and len({int(n[-1]) for n in numbers}) == len(numbers):
        frames = [int(n[-1]) for n in numbers]
    else:
        frames = ids
    if any(not isinstance(f, int) for f in frames) or len(set(frames)) != len(frames):
        raise ValueError(f"{source}: field 'images' gives no unique integer frame index (file name or id)")
    return dict(zip(ids, frames, strict=True)), list(doc["annotations"])


def _best_person(anns: list[dict[str, Any]], J: int, source: str) -> dict[Any, np.ndarray]:
    """image id -> the kept person's keypoints [J, 3] (+ its score appended as row J, NaN when it has none).

    Kept per image: the highest score (none ranks below any), then the most labelled keypoints, then the largest
    area; the first in file order among equals. One array and one sort over all annotations, not one per person.
    """
    people = [(i, a) for i, a in enumerate(anns)
              if isinstance(a, dict) and "keypoints" in a and a.get("category_id", 1) == 1]
    if not people:
        return {}
    P = len(people)
    has_score = np.array([a.get("score") is not None for _, a in people])
    score = np.array([float(a["score"]) if h else np.nan for (_, a), h in zip(people, has_score, strict=True)])
    bad_score = has_score & ~((score >= 0) & (score <= 1))  # NaN too
    try:
        kp = np.array([a["keypoints"] for _, a in people], dtype=np.float64)
    except (ValueError, TypeError):  # ragged: found per annotation below
        kp = np.zeros(0)
    bad_kp = np.zeros(P, bool)
    if kp.shape != (P, 3 * J):  # the error path: which annotation
        bad_kp = np.array([np.asarray(a["keypoints"], np.float64).shape != (3 * J,) for _, a in people])
    for k in np.flatnonzero(bad_kp | bad_score)[:1]:  # the first bad annotation, checked as the file is read
        i, a = people[k]
        if bad_kp[k]:
            size = np.asarray(a["keypoints"], np.float64).size
            raise ValueError(f"{source}: field 'annotations[{i}].keypoints' has {size} values, expected {3 * J}")
        raise ValueError(f"{source}: field 'annotations[{i}].score' {a['score']} outside [0, 1]")
    missing = next((i for i, a in people if "image_id" not in a), None)
    if missing is not None:
        raise ValueError(f"{source}: field 'annotations[{missing}].image_id' is missing")
    kp = kp.reshape(P, J, 3)
    codes: dict[Any, int] = {}
    image = np.array([codes.setdefault(a["image_id"], len(codes)) for _, a in people])
    area = np.array([float(a.get("area", 0)) for _, a in people])
    labelled = (kp[:, :, 2] > 0).sum(1)
    rank_score = np.where(has_score, score, -1.0)
    # within each image, best first: highest score, most labelled, largest area, earliest in the file
    order = np.lexsort((np.arange(P), -area, -labelled, -rank_score, image))
    first = order[np.concatenate([[True], image[order][1:] != image[order][:-1]])]  # [I], one per image
    score_row = np.zeros((len(first), 1, 3))
    score_row[:, 0, 0] = score[first]
    rows = np.concatenate([kp[first], score_row], axis=1)  # [I, J + 1, 3]
    ids = list(codes)
    return {ids[image[k]]: row for k, row in zip(first, rows, strict=True)}


def read_coco_keypoints(path: str, *, num_joints: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame [F], keypoints [F, J, 2], scores [F, J]) of one camera's COCO-keypoints JSON, one person per image
    (see the module docstring for the frame index, person choice and the meaning of the third value)."""
    try:
        doc = json.loads(_read_bytes(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    frame_of, anns = _coco_entries(doc, path)
    people = _best_person(anns, num_joints, path)
    unknown = sorted(set(people) - set(frame_of), key=str)
    if unknown:
        raise ValueError(f"{path}: field 'annotations' refers to image ids {unknown[:5]} not in 'images'")
    ids = sorted(people, key=lambda i: frame_of[i])
    rows = np.stack([people[i] for i in ids]) if ids else np.zeros((0, num_joints + 1, 3))
    third, person_score = rows[:, :num_joints, 2], rows[:, num_joints, 0]
    if np.isin(third, (0, 1, 2)).all():  # COCO visibility flags
        score = np.where(third > 0, np.where(np.isnan(person_score), 1.0, person_score)[:, None], 0.0)
    else:
        bad = (third < 0) | (third > 1) | ~np.isfinite(third)
        if bad.any():
            f, j = np.argwhere(bad)[0]
            raise ValueError(f"{path}: field 'keypoints' third value {third[f, j]} (image {ids[f]}, joint {j}) is "
                             "neither a visibility flag 0/1/2 nor a confidence in [0, 1]")
        score = third
    kp = np.where((score > 0)[..., None], rows[:, :num_joints, :2], np.nan)
    return (np.array([frame_of[i] for i in ids], np.int64), kp.astype(np.float32), score.astype(np.float32))


def _align_views(per_view: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Per-camera (frame, kp, scores) -> (frame [T], kp [T, V, J, 2], scores [T, V, J]) on the union of frames."""
    frame = np.unique(np.concatenate([f for f, _, _ in per_view]))
    J = per_view[0][1].shape[1]
    kp = np.full((len(frame), len(per_view), J, 2), np.nan, np.float32)
    scores = np.zeros((len(frame), len(per_view), J), np.float32)
    for v, (f, k, s) in enumerate(per_view):
        rows = np.searchsorted(frame, f)
        kp[rows, v], scores[rows, v] = k, s
    return frame, kp, scores


def ingest_coco(
    json_files: list[str],
    *,
    out: str,
    rig: Rig | str,
    sequence: str,
    subject: str = "unknown",
    split: str | None = None,
    split_by: str | None = None,
    replace: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> IngestSummary:
    """Ingest one sequence given as one COCO-keypoints JSON per camera (the i-th file = the rig's i-th camera)."""
    rig = _as_rig(rig)
    split_of = _split_rule(split, split_by)
    if len(json_files) != len(rig.cameras):
        raise ValueError(f"{len(json_files)} COCO files for rig {rig.rig_id!r} with {len(rig.cameras)} cameras "
                         f"{list(rig.camera_names)}: give one file per camera, in that order")
    per_view = []
    with _progress(progress, "read COCO", len(json_files)) as advance:
        for path in json_files:
            per_view.append(read_coco_keypoints(str(path), num_joints=COCO17.num_joints))
            advance(_stem(str(path)))
    frame, kp, scores = _align_views(per_view)
    seen = (scores > 0).any((1, 2))
    recipe = {"converter": "coco", "inputs": [str(p) for p in json_files], "rig": rig.rig_id, "sequence": sequence,
              "subject": subject, "split": split, "split_by": split_by}
    ing = _Ingest(out, skeleton=COCO17, command="ingest coco", recipe=recipe, replace=replace,
                  max_bad_fraction=max_bad_fraction)
    with ing:
        if not seen.any():
            raise ValueError(f"{json_files[0]}: no person keypoints in any of the {len(json_files)} files")
        if not seen.all():
            ing.notes.append(f"{sequence}: {int((~seen).sum())} of {len(frame)} frames have no person in any "
                             "camera; left out")
        frames = frames_for_rig(rig, sequence=sequence, keypoints=kp[seen], scores=scores[seen], frame=frame[seen],
                                subject=subject)
        ing.add(frames, rig, split=split_of(sequence, subject), source=", ".join(str(p) for p in json_files))
        return ing.commit()
