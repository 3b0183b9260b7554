"""Converters from published 2D/3D pose files into a RigPose dataset (schema v1): interchange npz, VideoPose3D's
Human3.6M and HumanEva-I files, COCO-keypoints JSON, and the 2D detectors' own outputs (OpenPose / Pose2Sim JSON,
MMPose / RTMPose predictions, MediaPipe landmarks). Each returns an `IngestSummary`.

Common to every converter
-------------------------
- Output: `out` is a dataset root on any fsspec URL (local path, `file://`, `s3://`). Rows go through
  `DatasetWriter`: shards first, `manifest.json` last, so a failed ingest leaves the dataset exactly as it was.
  Appending to an existing dataset is allowed; a (rig, sequence) already there is refused unless `replace=True`.
  A sequence name given twice within one ingest is refused (it would silently merge two inputs).
- Bad rows (an infinite value, a NaN keypoint with a non-zero score, no valid view) go to
  `<out>/_quarantine/<token>.parquet` with their reason; the ingest commits only when the bad fraction is at most
  `max_bad_fraction` (default 1%), else nothing is ingested. Missing = NaN keypoint with score 0: that is kept.
- Bad input raises `ValueError` (`DatasetError`, rigpose.data.manifest) in one line naming the file and the field.
- Split by `split="train"` (one split for everything) or `split_by="sequence:0.8,0.1,0.1"`: each sequence goes to
  train/val/test by a hash of its name (SHA-256 -> a number in [0, 1) -> the split whose cumulative fraction
  covers it). The hash depends on the name only, so adding files never moves old sequences. One to three
  fractions mean train[,val[,test]]; `sequence:train=0.9,test=0.1` names them; `subject:...` hashes the subject
  instead (keeps each actor in one split). Fractions must sum to 1. Split names: letters, digits, `_.-`.
- The detector converters (`openpose`, `mmpose`, `mediapipe`) also cut one sequence by frame ranges:
  `split="train=0:0.7,val=0.7:0.8,test=0.8:1"`, half-open `[start, stop)`. When any number has a '.', all are
  fractions of the frame range (frame f at (f - first) / (last - first + 1)); otherwise they are frame numbers
  (`train=0:5000,test=5000:`, an empty bound = the start / the end). Each part becomes the sequence
  `<sequence>-<split>`; frames in no range are left out (noted); overlapping ranges are refused.
- Warnings (`IngestSummary.warnings`, printed by the CLI): the detector converters count, per camera, keypoints
  outside the image size the calibration states, with the coordinates seen (a calibration at another resolution
  than the video). `IngestSummary.counts` holds their tallies (frames without a person, with several).
- Inputs may be local paths or fsspec URLs. The interchange npz is read with `allow_pickle=False`; VideoPose3D's
  files are pickled dicts by design and are unpickled: ingest them only from a source you trust.

Converters, one module each (details in its docstring): `npz` (`ingest_npz`, the interchange npz), `videopose3d`
(`ingest_h36m`, `ingest_humaneva`), `coco` (`ingest_coco`), `openpose` (`ingest_openpose`), `mmpose`
(`ingest_mmpose`), `mediapipe` (`ingest_mediapipe`); `common` holds what they all share (summary, splits, inputs,
skeleton and camera matching, image bounds), `detectors` what the last three share (keypoint formats mapped onto
coco17, camera names, the driver) and `people` the choice of one person per multi-person frame. Everything public
is re-exported here.

Shape letters: T frames, V views (cameras), J joints.
"""

from __future__ import annotations

from rigpose.data.ingest.coco import ingest_coco, read_coco_keypoints
from rigpose.data.ingest.common import (
    IngestSummary,
    SequenceSummary,
    expand_inputs,
    hash_fraction,
    is_split_ranges,
    match_cameras,
    match_skeleton,
    out_of_image_warnings,
    parse_split_by,
    parse_split_ranges,
    split_for,
    split_of_frames,
)
from rigpose.data.ingest.detectors import KEYPOINT_FORMATS, KeypointFormat, parse_camera_map
from rigpose.data.ingest.mediapipe import ingest_mediapipe, read_mediapipe_landmarks
from rigpose.data.ingest.mmpose import ingest_mmpose, read_mmpose_predictions
from rigpose.data.ingest.npz import (
    NPZ_FIELDS,
    NPZ_REQUIRED,
    NpzSequence,
    ingest_npz,
    read_interchange_npz,
    write_interchange_npz,
)
from rigpose.data.ingest.openpose import ingest_openpose, read_openpose_frame
from rigpose.data.ingest.people import choose_people
from rigpose.data.ingest.videopose3d import H36M_SPLITS, HUMANEVA_SPLITS, UNLABELED_SPLIT, ingest_h36m, ingest_humaneva

__all__ = [
    "H36M_SPLITS",
    "HUMANEVA_SPLITS",
    "KEYPOINT_FORMATS",
    "NPZ_FIELDS",
    "NPZ_REQUIRED",
    "UNLABELED_SPLIT",
    "IngestSummary",
    "KeypointFormat",
    "NpzSequence",
    "SequenceSummary",
    "choose_people",
    "expand_inputs",
    "hash_fraction",
    "ingest_coco",
    "ingest_h36m",
    "ingest_humaneva",
    "ingest_mediapipe",
    "ingest_mmpose",
    "ingest_npz",
    "ingest_openpose",
    "is_split_ranges",
    "match_cameras",
    "match_skeleton",
    "out_of_image_warnings",
    "parse_camera_map",
    "parse_split_by",
    "parse_split_ranges",
    "read_coco_keypoints",
    "read_interchange_npz",
    "read_mediapipe_landmarks",
    "read_mmpose_predictions",
    "read_openpose_frame",
    "split_for",
    "split_of_frames",
    "write_interchange_npz",
]
