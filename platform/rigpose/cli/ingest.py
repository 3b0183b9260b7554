"""`rigpose datasets ingest ...`: convert interchange npz, Human3.6M, HumanEva-I, COCO files and 2D detector outputs
(OpenPose / Pose2Sim JSON, MMPose / RTMPose predictions, MediaPipe landmarks) into a dataset.

Each command ingests 2D (and optional 3D) pose files into a RigPose dataset (Parquet shards + manifest). Nothing is
visible until the whole ingest succeeds: bad rows go to <out>/_quarantine/ with their reason, and the ingest commits
only when their fraction is at most --max-bad-fraction. Sequences already in the dataset are refused unless
--replace.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rigpose.resources import resolve_rig

app = typer.Typer(help="Ingest real formats: npz, h36m, humaneva, coco, openpose, mmpose, mediapipe.",
                  no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)

_OUT_HELP = "Dataset root: a local path, file:// or s3://bucket/prefix (created or appended to)."
_SPLIT_HELP = "Put every sequence in this split (train, val, test, ...)."
_SPLIT_BY_HELP = (
    "Split sequences by a stable hash of their name instead, e.g. 'sequence:0.8,0.1,0.1' (train,val,test), "
    "'sequence:train=0.9,test=0.1', or 'subject:...' to keep each subject in one split. Adding files later never "
    "moves sequences already ingested."
)


def _common(replace: bool, max_bad_fraction: float, no_progress: bool) -> dict[str, Any]:
    return {"replace": replace, "max_bad_fraction": max_bad_fraction, "progress": not no_progress}


_REPLACE = typer.Option(False, "--replace", help="Overwrite sequences that are already in the dataset.")
_MAX_BAD = typer.Option(0.01, "--max-bad-fraction", min=0.0, max=1.0,
                        help="Abort (ingest nothing) when more than this fraction of rows is bad.")
_NO_PROGRESS = typer.Option(False, "--no-progress", help="Do not show progress bars.")
_RIGS_DIR = typer.Option(None, "--rigs-dir",
                         help="Folder with the per-subject rig JSON files (default: the shipped rigs).")
_NPZ_INPUTS = typer.Argument(..., help="Interchange .npz files or folders of them (one file per sequence).")
_COCO_FILES = typer.Argument(
    ..., help="One COCO-keypoints JSON per camera, in the rig's camera order (the i-th file = camera i).")
_SUBJECTS = typer.Option(None, "--subject", help="Only this subject (repeatable), e.g. S1 or Validate/S1.")


def _run(fn: Any, **kwargs: Any) -> None:
    """Call a converter; a bad-input error becomes one red line on stderr and exit code 1."""
    from rigpose.data.ingest import IngestSummary

    try:
        summary: IngestSummary = fn(**kwargs)
    except (ValueError, OSError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        Console(stderr=True).print(Text(f"error: {message}", style="red"), soft_wrap=True)
        raise typer.Exit(1) from None
    print_summary(summary)


def print_summary(summary: Any, console: Console | None = None) -> None:
    """Rows per split and rig (sequences, rows, quarantined), then the notes and where the dataset is."""
    console = console or Console()
    table = Table(title=f"ingested into {summary.out} ({summary.skeleton})")
    for col in ("split", "rig", "sequences", "rows", "quarantined"):
        table.add_column(col, justify="left" if col in ("split", "rig") else "right")
    for (split, rig_id), (n, rows, bad) in summary.rows_by("split", "rig_id").items():
        table.add_row(split, rig_id, str(n), f"{rows:,}", f"{bad:,}")
    table.add_row("total", "", str(len(summary.sequences)), f"{summary.num_rows:,}", f"{summary.num_quarantined:,}",
                  style="bold")
    console.print(table)
    for note in summary.notes:
        console.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)
    for warning in getattr(summary, "warnings", []):
        console.print(Text(f"warning: {warning}", style="bold red"), soft_wrap=True)
    if summary.quarantine:
        console.print(Text(f"quarantined rows and reasons: {summary.quarantine}"), soft_wrap=True)
    console.print(Text(f"dataset now holds {summary.manifest.num_rows:,} rows"), soft_wrap=True)


@app.command("npz")
def npz(
    inputs: list[str] = _NPZ_INPUTS,
    out: str = typer.Option(..., "--out", help=_OUT_HELP),
    rig: str = typer.Option(..., "--rig", help="Rig JSON file (or shipped rig name) of the keypoints' cameras."),
    split: str | None = typer.Option(None, "--split", help=_SPLIT_HELP),
    split_by: str | None = typer.Option(None, "--split-by", help=_SPLIT_BY_HELP),
    skeleton: str | None = typer.Option(None, "--skeleton",
                                        help="Skeleton name (h36m17, coco17, ...); default: from joint_names."),
    replace: bool = _REPLACE,
    max_bad_fraction: float = _MAX_BAD,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Ingest interchange npz files: keypoints [T,V,J,2] in the rig's cameras, joint_names, camera_names, and
    optional scores, frame, sequence, subject, joints_3d (DESIGN.md). Give --split or --split-by."""
    from rigpose.data.ingest import ingest_npz

    _run(ingest_npz, inputs=inputs, out=out, rig=resolve_rig(rig), split=split, split_by=split_by, skeleton=skeleton,
         **_common(replace, max_bad_fraction, no_progress))


@app.command("h36m")
def h36m(
    data_2d: str = typer.Argument(..., help="VideoPose3D data_2d_h36m_<detector>.npz (e.g. _gt, _cpn_ft_h36m_dbb)."),
    data_3d: str | None = typer.Option(None, "--data-3d",
                                       help="VideoPose3D data_3d_h36m.npz (evaluation 3D; optional)."),
    out: str = typer.Option(..., "--out", help=_OUT_HELP),
    rigs_dir: str | None = _RIGS_DIR,
    subject: list[str] | None = _SUBJECTS,
    replace: bool = _REPLACE,
    max_bad_fraction: float = _MAX_BAD,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Ingest Human3.6M from VideoPose3D's files: split S1,S5,S6,S7,S8 train / S9,S11 test; rig per subject
    from <rigs-dir>/h36m-<subject>.json; sequence = action. 2D and 3D lengths that differ are cut to the shorter."""
    from rigpose.data.ingest import ingest_h36m

    _run(ingest_h36m, data_3d=data_3d, data_2d=data_2d, out=out, rigs_dir=rigs_dir, subjects=subject or None,
         **_common(replace, max_bad_fraction, no_progress))


@app.command("humaneva")
def humaneva(
    data_2d: str = typer.Argument(..., help="VideoPose3D data_2d_humaneva15_<detector>.npz."),
    data_3d: str | None = typer.Option(None, "--data-3d",
                                       help="VideoPose3D data_3d_humaneva15.npz (evaluation 3D; optional)."),
    out: str = typer.Option(..., "--out", help=_OUT_HELP),
    rigs_dir: str | None = _RIGS_DIR,
    subject: list[str] | None = _SUBJECTS,
    include_unlabeled: bool = typer.Option(False, "--include-unlabeled",
                                           help="Also ingest Unlabeled/* (2D only) into split 'unlabeled'."),
    replace: bool = _REPLACE,
    max_bad_fraction: float = _MAX_BAD,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Ingest HumanEva-I from VideoPose3D's files: Train/* -> train, Validate/* -> test; 3 cameras per subject
    from <rigs-dir>/humaneva-s<N>.json; sequence = '<prefix>/<action>'. Missing cameras become NaN views."""
    from rigpose.data.ingest import ingest_humaneva

    _run(ingest_humaneva, data_3d=data_3d, data_2d=data_2d, out=out, rigs_dir=rigs_dir, subjects=subject or None,
         include_unlabeled=include_unlabeled, **_common(replace, max_bad_fraction, no_progress))


@app.command("coco")
def coco(
    json_files: list[str] = _COCO_FILES,
    out: str = typer.Option(..., "--out", help=_OUT_HELP),
    rig: str = typer.Option(..., "--rig", help="Rig JSON file (or shipped rig name) of the cameras."),
    sequence: str = typer.Option(..., "--sequence", help="Sequence name (unique within the rig)."),
    subject: str = typer.Option("unknown", "--subject", help="Subject (actor) name."),
    split: str | None = typer.Option(None, "--split", help=_SPLIT_HELP),
    split_by: str | None = typer.Option(None, "--split-by", help=_SPLIT_BY_HELP),
    replace: bool = _REPLACE,
    max_bad_fraction: float = _MAX_BAD,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Ingest one sequence of COCO keypoints (ground truth or detector results), skeleton coco17. Frames are
    matched across cameras by the last number in each image's file name (else the image id); the best-scoring
    person per image is kept."""
    from rigpose.data.ingest import ingest_coco

    _run(ingest_coco, json_files=json_files, out=out, rig=resolve_rig(rig), sequence=sequence, subject=subject,
         split=split, split_by=split_by, **_common(replace, max_bad_fraction, no_progress))


# ---------------------------------------------------------------------------------------------- 2D detectors

_RANGE_SPLIT_HELP = (
    "A split name for the whole sequence (train, val, ...), or frame ranges that cut it: "
    "'train=0:0.7,val=0.7:0.8,test=0.8:1' (fractions of the frame range when a number has a '.'; frame numbers "
    "otherwise, e.g. 'train=0:5000,test=5000:'). Each range becomes the sequence <sequence>-<split>."
)
_PERSON_ID = typer.Option(None, "--person-id",
                          help="Keep the person with this tracked id in every view (default: per frame, the person "
                               "whose views triangulate most consistently).")
_CAMERA_MAP = typer.Option(None, "--camera-map",
                           help="INPUT=CAMERA: the rig camera of a folder or file whose name is not a rig camera's "
                                "(repeatable, or comma-separated).")
_SEQUENCE = typer.Option(None, "--sequence", help="Sequence name (default: the input folder's name).")
_SUBJECT = typer.Option("unknown", "--subject", help="Subject (actor) name.")
_RIG = typer.Option(..., "--rig", help="Rig JSON file (or shipped rig name) of the cameras.")
_OUT_SKELETON = typer.Option(
    "coco17", "--out-skeleton",
    help="Skeleton of the dataset written: coco17 (the 17 COCO joints), or halpe26 (those plus head, neck, hip and "
         "six foot points) from a format with foot points; joints the format lacks are missing (NaN, score 0).")


def _detector_run(fn: Any, camera_map: list[str] | None, **kwargs: Any) -> None:
    from rigpose.data.ingest import parse_camera_map

    try:
        cmap = parse_camera_map(camera_map)
    except ValueError as e:
        Console(stderr=True).print(Text(f"error: {e}", style="red"), soft_wrap=True)
        raise typer.Exit(1) from None
    _run(fn, camera_map=cmap, **kwargs)


@app.command("openpose")
def openpose(
    pose_dir: str = typer.Argument(..., help="Pose folder with one <camera>_json folder of per-frame JSON files."),
    rig: str = _RIG,
    out: str = typer.Option(..., "--out", help=_OUT_HELP),
    skeleton: str | None = typer.Option(None, "--skeleton",
                                        help="Keypoint format of the files: body25, coco18, halpe26, coco17 or "
                                             "wholebody133 (default: from the number of points per person: 25, "
                                             "18, 26, 17, 133)."),
    out_skeleton: str = _OUT_SKELETON,
    person_id: int | None = _PERSON_ID,
    camera_map: list[str] | None = _CAMERA_MAP,
    sequence: str | None = _SEQUENCE,
    subject: str = _SUBJECT,
    split: str | None = typer.Option(None, "--split", help=_RANGE_SPLIT_HELP),
    split_by: str | None = typer.Option(None, "--split-by", help=_SPLIT_BY_HELP),
    replace: bool = _REPLACE,
    max_bad_fraction: float = _MAX_BAD,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Ingest OpenPose JSON (OpenPose --write_json, Pose2Sim's RTMPose) in Pose2Sim's layout:
    POSE_DIR/<camera>_json/<name>_<frame>[_keypoints].json, mapped onto coco17 (or --out-skeleton halpe26 from
    BODY_25, HALPE-26 or WholeBody-133). Camera folders are named after
    the rig's cameras (with or without _json; else --camera-map); frames are matched by the number in the file
    name. Give --split or --split-by.

    Example:

      rigpose datasets ingest openpose Trial_1/pose --rig calib.json --out ds/trial1 --split train=0:0.8,test=0.8:1
    """
    from rigpose.data.ingest import ingest_openpose

    _detector_run(ingest_openpose, camera_map, pose_dir=pose_dir, out=out, rig=resolve_rig(rig), skeleton=skeleton,
                  out_skeleton=out_skeleton, person_id=person_id, sequence=sequence, subject=subject, split=split,
                  split_by=split_by, **_common(replace, max_bad_fraction, no_progress))


@app.command("mmpose")
def mmpose(
    json_files: list[str] = typer.Argument(
        ..., help="One MMPose predictions JSON per camera, named after its camera (else --camera-map)."),
    rig: str = _RIG,
    out: str = typer.Option(..., "--out", help=_OUT_HELP),
    skeleton: str | None = typer.Option(None, "--skeleton",
                                        help="Keypoint format of the files: coco17, halpe26 or wholebody133 "
                                             "(default: from the number of keypoints: 17, 26, 133)."),
    out_skeleton: str = _OUT_SKELETON,
    person_id: int | None = _PERSON_ID,
    camera_map: list[str] | None = _CAMERA_MAP,
    sequence: str | None = _SEQUENCE,
    subject: str = _SUBJECT,
    split: str | None = typer.Option(None, "--split", help=_RANGE_SPLIT_HELP),
    split_by: str | None = typer.Option(None, "--split-by", help=_SPLIT_BY_HELP),
    replace: bool = _REPLACE,
    max_bad_fraction: float = _MAX_BAD,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Ingest MMPose / RTMPose predictions, as MMPoseInferencer(..., pred_out_dir=DIR) saves them per video:
    [{frame_id, instances: [{keypoints, keypoint_scores}, ...]}, ...], mapped onto coco17 (or --out-skeleton
    halpe26 from HALPE-26 or WholeBody-133). Give --split or --split-by.

    Example:

      rigpose datasets ingest mmpose pred/cam1.json pred/cam2.json --rig calib.json --out ds/take1 --split train
    """
    from rigpose.data.ingest import ingest_mmpose

    _detector_run(ingest_mmpose, camera_map, json_files=json_files, out=out, rig=resolve_rig(rig),
                  skeleton=skeleton, out_skeleton=out_skeleton, person_id=person_id, sequence=sequence,
                  subject=subject, split=split, split_by=split_by, **_common(replace, max_bad_fraction, no_progress))


@app.command("mediapipe")
def mediapipe(
    files: list[str] = typer.Argument(
        ..., help="One MediaPipe landmark file (.json or .csv) per camera, named after its camera."),
    rig: str = _RIG,
    out: str = typer.Option(..., "--out", help=_OUT_HELP),
    out_skeleton: str = _OUT_SKELETON,
    person_id: int | None = _PERSON_ID,
    camera_map: list[str] | None = _CAMERA_MAP,
    sequence: str | None = _SEQUENCE,
    subject: str = _SUBJECT,
    split: str | None = typer.Option(None, "--split", help=_RANGE_SPLIT_HELP),
    split_by: str | None = typer.Option(None, "--split-by", help=_SPLIT_BY_HELP),
    replace: bool = _REPLACE,
    max_bad_fraction: float = _MAX_BAD,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Ingest MediaPipe pose landmarks (33 points, x and y normalised to the image, converted to pixels with the
    rig camera's width and height; visibility = score), mapped onto coco17 (or --out-skeleton halpe26: heels and
    big toes = foot_index, neck and hip derived, head and small toes missing). JSON: [{frame, landmarks: [{x, y,
    visibility}, ...]}]; CSV: frame,landmark,x,y[,visibility,person] (python -c "import
    rigpose.data.ingest.mediapipe as m; help(m)"). Give --split or --split-by.

    Example:

      rigpose datasets ingest mediapipe cam1.csv cam2.csv --rig calib.json --out ds/take1 --split train=0:0.9,val=0.9:1
    """
    from rigpose.data.ingest import ingest_mediapipe

    _detector_run(ingest_mediapipe, camera_map, files=files, out=out, rig=resolve_rig(rig),
                  out_skeleton=out_skeleton, person_id=person_id,
                  sequence=sequence, subject=subject, split=split, split_by=split_by,
                  **_common(replace, max_bad_fraction, no_progress))
