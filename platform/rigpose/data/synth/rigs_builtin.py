"""Builders of the shipped rig files (rigpose/resources/rigs/*.json): Human3.6M, HumanEva-I and a synthetic `studio-8`.

H36M and HumanEva-I come from their published calibrations; `studio-8` is a synthetic 8-camera studio. This is a
maintainer's tool: the rigs ship as package data (rigpose.resources), and regenerating them needs the published
calibration files, in a checkout:

    python -m rigpose.data.synth.rigs_builtin --shared ../shared/data --out platform/rigpose/resources/rigs

Published calibrations (``h36m_cameras.json``, ``humaneva_cameras.json``, copied from VideoPose3D): per camera,
``orientation`` is a unit quaternion (w, x, y, z) rotating camera -> world, ``translation`` the camera centre C in
world millimetres, intrinsics in pixels with ``radial_distortion`` [k1, k2, k3] and ``tangential_distortion``
[p1, p2]. In RigPose's convention that is ``R = R_c2w^T``, ``t = -R @ C`` (metres) and
``dist = [k1, k2, p1, p2, k3]`` (OpenCV's order, as DESIGN.md's rig example has it).

World frames and capture centres: both published worlds are z up, with the camera centres 1.4-1.6 m above z = 0
and 4-5.5 m from the origin on all sides. H36M's floor is z = 0; for HumanEva-I that is inferred (camera heights,
and optical axes meeting near (-0.1, 0, 0.9) m, a standing person's mid-body), not read from its mocap. So the
H36M rigs and `studio-8` (whose synthetic performers stand on z = 0) say ``floor_z = 0``, HumanEva-I's say nothing
(floor unknown); (0, 0, 1) m is the capture centre of every shipped rig, and `builtin_rigs` checks that every
camera sees it in front (z_cam > 0) and inside its image. HumanEva-I's S3 calibration equals S1's to 0.1 micrometre
in the source.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rigpose import geometry as g
from rigpose.rig import Camera, Rig, RigError, rotation_from_rodrigues, save_rig, validate_rig

CAPTURE_CENTER = np.array([0.0, 0.0, 1.0])  # metres, world z up (see the module docstring)
SIGNIFICANT_DIGITS = 12
H36M_SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")
HUMANEVA_SUBJECTS = ("S1", "S2", "S3")


def rotation_from_quaternion(q: Sequence[float]) -> np.ndarray:
    """Quaternion (w, x, y, z), normalised here, -> rotation matrix [3, 3] (via its axis-angle vector)."""
    q_arr = np.asarray(q, dtype=np.float64)
    w, v = q_arr[0], q_arr[1:]
    norm_v = float(np.linalg.norm(v))
    if norm_v == 0.0:
        return np.eye(3)
    angle = 2.0 * math.atan2(norm_v, float(w))
    return rotation_from_rodrigues(v / norm_v * angle)


def camera_from_published(intrinsic: dict[str, Any], extrinsic: dict[str, Any], *, name: str) -> Camera:
    """A `Camera` from one VideoPose3D-style intrinsic and extrinsic record (see the module docstring)."""
    (fx, fy), (cx, cy) = intrinsic["focal_length"], intrinsic["center"]
    k1, k2, k3 = intrinsic["radial_distortion"]
    p1, p2 = intrinsic["tangential_distortion"]
    R = rotation_from_quaternion(extrinsic["orientation"]).T  # camera->world, transposed: world->camera
    center_m = np.asarray(extrinsic["translation"], dtype=np.float64) / 1000.0
    return Camera(name=name, width=int(intrinsic["res_w"]), height=int(intrinsic["res_h"]),
                  K=np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), dist=np.array([k1, k2, p1, p2, k3]),
                  R=R, t=-R @ center_m)


def check_sees(rig: Rig, point: np.ndarray = CAPTURE_CENTER) -> None:
    """Raise `RigError` naming the camera unless every camera has world `point` (m) in front and in its image."""
    for cam in rig.cameras:
        z = float((cam.R @ point + cam.t)[2])
        if z <= 0:
            raise RigError(f"capture centre {point.tolist()} m is behind the camera (z_cam {z:.3g} m)",
                           rig_id=rig.rig_id, camera=cam.name, field="R")
        u, v = g.project(point[None], cam)[0]
        if not (0 <= u < cam.width and 0 <= v < cam.height):
            raise RigError(f"capture centre {point.tolist()} m projects to ({u:.1f}, {v:.1f}) px, outside the "
                           f"{cam.width}x{cam.height} image", rig_id=rig.rig_id, camera=cam.name, field="R")


def _published_rigs(path: Path, prefix: str, subjects: Sequence[str], *, floor_z: float | None) -> list[Rig]:
    calib = json.loads(path.read_text())
    rigs = []
    for subject in subjects:
        extrinsics = calib["extrinsics"][subject]
        if len(extrinsics) != len(calib["intrinsics"]):
            raise RigError(f"{len(extrinsics)} extrinsics for {len(calib['intrinsics'])} intrinsics",
                           source=str(path), rig_id=f"{prefix}-{subject.lower()}", field="extrinsics")
        cameras = tuple(camera_from_published(i, e, name=i["id"]) for i, e in zip(calib["intrinsics"], extrinsics,
                                                                                   strict=True))
        rigs.append(Rig(rig_id=f"{prefix}-{subject.lower()}", cameras=cameras, floor_z=floor_z))
    return rigs


def h36m_rigs(path: Path) -> list[Rig]:
    """`h36m-s1` ... `h36m-s11` from ``h36m_cameras.json``: 4 cameras named by their intrinsic ids; floor z = 0."""
    return _published_rigs(path, "h36m", H36M_SUBJECTS, floor_z=0.0)


def humaneva_rigs(path: Path) -> list[Rig]:
    """`humaneva-s1` ... `humaneva-s3` from ``humaneva_cameras.json``: cameras C1, C2, C3 (640x480); floor unknown."""
    return _published_rigs(path, "humaneva", HUMANEVA_SUBJECTS, floor_z=None)


def studio_rig(*, num_cameras: int = 8, radius: float = 4.5) -> Rig:
    """`studio-8`: 1920x1080 cameras on a ring of `radius` m, heights alternating 1.2 / 2.6 m, aimed at (0, 0, 1) m;
    floor z = 0 (the synthetic performers stand on it).

    Lenses differ a little from camera to camera (f 1390-1425 px, principal point a few px off centre, mild
    barrel distortion), as they would after a real calibration; all values are fixed, so the file is reproducible.
    """
    cameras = []
    for i in range(num_cameras):
        azimuth = 2 * math.pi * i / num_cameras
        center = np.array([radius * math.cos(azimuth), radius * math.sin(azimuth), 1.2 if i % 2 == 0 else 2.6])
        R, t = g.look_at(center, CAPTURE_CENTER)
        f = 1400.0 + 5.0 * ((3 * i) % 8) - 10.0
        K = np.array([[f, 0.0, 960.0 + (i % 3) - 1.0], [0.0, f, 540.0 + (i % 4) - 1.5], [0.0, 0.0, 1.0]])
        dist = np.array([-0.06 + 0.004 * (i % 3), 0.02 - 0.002 * (i % 2), 0.0003, -0.0002, 0.0])
        cameras.append(Camera(name=f"cam{i}", width=1920, height=1080, K=K, dist=dist, R=R, t=t))
    return Rig(rig_id=f"studio-{num_cameras}", cameras=tuple(cameras), floor_z=0.0)


def builtin_rigs(shared: Path) -> list[Rig]:
    """Every shipped rig, validated and checked to see the capture centre; `shared` holds the published
    calibrations (``h36m_cameras.json``, ``humaneva_cameras.json``)."""
    rigs = [*h36m_rigs(shared / "h36m_cameras.json"), *humaneva_rigs(shared / "humaneva_cameras.json"), studio_rig()]
    for rig in rigs:
        validate_rig(rig)
        check_sees(rig)
    return rigs


def write_rigs(rigs: Sequence[Rig], out: Path) -> list[Path]:
    """Write each rig to ``out/<rig_id>.json`` (12 significant digits); returns the paths written."""
    paths = []
    for rig in rigs:
        path = out / f"{rig.rig_id}.json"
        save_rig(rig, path, significant_digits=SIGNIFICANT_DIGITS)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: regenerate the shipped rig files."""
    parser = argparse.ArgumentParser(prog="python -m rigpose.data.synth.rigs_builtin",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder, e.g. platform/rigpose/resources/rigs (the shipped rigs)")
    parser.add_argument("--shared", type=Path, required=True,
                        help="folder holding h36m_cameras.json and humaneva_cameras.json, e.g. ../shared/data")
    args = parser.parse_args(argv)
    for path in write_rigs(builtin_rigs(args.shared), args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
