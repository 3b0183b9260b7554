"""Camera rigs: `Camera`/`Rig` types, the rig JSON file, OpenCV/anipose calibration TOML import, and validation.

Conventions (../DESIGN.md): world -> camera ``x_cam = R @ X_world + t``; ``K`` 3x3 in pixels; ``dist`` =
``[k1, k2, p1, p2, k3]`` with OpenCV's meaning; metres everywhere. An in-memory `Rig` is always in metres
(``units == "m"``). A rig file may say ``"units": "mm"``: only ``t`` and ``floor_z`` carry a length, so `load_rig`
divides them by 1000 and the loaded rig says ``"m"``; `save_rig` always writes metres. The optional ``floor_z``
is the world z of the floor plane (metres, world z up); absent or null means the floor is not known.

Every rejection is a `RigError` (a ``ValueError``) whose message is one line naming the file, the rig, the camera
and the field, e.g. ``x.json: rig 'h36m-s1' camera '54138969' field 'R': not a rotation (...)``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import numpy as np

from rigpose.storage import url_to_fs, write_bytes_atomic

if TYPE_CHECKING:
    from rigpose.geometry import CameraArrays

ROTATION_TOL = 1e-6  # max |R^T R - I| and |det R - 1| (DESIGN.md)
_RIG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # rig ids become file names and hive partition values
_CAMERA_KEYS = ("name", "width", "height", "K", "dist", "R", "t")
_ARRAY_SHAPES = {"K": (3, 3), "dist": (5,), "R": (3, 3), "t": (3,)}
_LENGTH_SCALE = {"m": 1.0, "mm": 1e-3}
_RIG_KEYS = ("rig_id", "units", "cameras")  # required top-level keys
_RIG_OPTIONAL_KEYS = ("floor_z",)


class RigError(ValueError):
    """A bad rig or calibration file. The message is one line: file, rig, camera, field, then the reason."""

    def __init__(self, reason: str, *, source: str | None = None, rig_id: str | None = None,
                 camera: str | None = None, field: str | None = None) -> None:
        self.reason, self.source, self.rig_id, self.camera, self.field = reason, source, rig_id, camera, field
        where = " ".join(f"{kind} {value!r}" for kind, value in
                         (("rig", rig_id), ("camera", camera), ("field", field)) if value is not None)
        head = ": ".join(p for p in (source, where) if p)
        message = f"{head}: {reason}" if head else reason
        super().__init__(" ".join(message.split()))  # one line, whatever the reason held


# ---------------------------------------------------------------------------------------------- types


@dataclass(frozen=True, eq=False)
class Camera:
    """One calibrated camera. ``x_cam = R @ X_world + t``.

    K [3, 3] pixels; dist [5] = OpenCV [k1, k2, p1, p2, k3]; R [3, 3] world -> camera rotation; t [3] metres.
    Arrays are stored as read-only float64 copies.
    """

    name: str
    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        for key, shape in _ARRAY_SHAPES.items():
            arr = np.array(getattr(self, key), dtype=np.float64)
            if arr.shape != shape:
                raise RigError(f"expected shape {shape}, got {arr.shape}", camera=str(self.name), field=key)
            arr.setflags(write=False)
            object.__setattr__(self, key, arr)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Camera):
            return NotImplemented
        return (self.name, self.width, self.height) == (other.name, other.width, other.height) and all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in _ARRAY_SHAPES
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world metres [3]: ``-R.T @ t``."""
        return -self.R.T @ self.t

    @property
    def viewing_direction(self) -> np.ndarray:
        """World unit vector [3] of the camera's +z (optical) axis: ``R[2]``."""
        return self.R[2].copy()

    @property
    def focal(self) -> tuple[float, float]:
        """(fx, fy) in pixels."""
        return float(self.K[0, 0]), float(self.K[1, 1])

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cx, cy) in pixels."""
        return float(self.K[0, 2]), float(self.K[1, 2])


@dataclass(frozen=True)
class Rig:
    """A calibrated multi-camera rig: an id, cameras in view order, ``units`` (always ``"m"`` in memory) and
    ``floor_z``, the world z (metres) of the floor plane where it is known (None: unknown)."""

    rig_id: str
    cameras: tuple[Camera, ...]
    units: str = "m"
    floor_z: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Camera names in view order."""
        return tuple(c.name for c in self.cameras)

    def __len__(self) -> int:
        return len(self.cameras)

    def camera(self, name: str) -> Camera:
        """The camera called `name` (KeyError naming the rig's cameras otherwise)."""
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"rig {self.rig_id!r} has no camera {name!r} (cameras: {', '.join(self.camera_names)})")

    def arrays(self) -> CameraArrays:
        """Stacked float64 parameters: K [V, 3, 3], dist [V, 5], R [V, 3, 3], t [V, 3] (metres)."""
        from rigpose.geometry import stack_cameras  # lazy: geometry pulls in torch

        return stack_cameras(self.cameras)

    def capture_center(self) -> np.ndarray:
        """World point [3] (m) the cameras look at: least squares over their optical axes."""
        from rigpose.geometry import closest_point_to_rays

        return closest_point_to_rays(np.stack([c.center for c in self.cameras]),
                                     np.stack([c.viewing_direction for c in self.cameras]))


# ---------------------------------------------------------------------------------------------- validation


def validate_rig(rig: Rig, *, source: str | None = None, min_cameras: int = 2) -> None:
    """Raise `RigError` (one line naming file, rig, camera, field) unless `rig` is fit for training.

    Rejects: a bad rig id, units other than "m", a ``floor_z`` that is neither None nor a finite number, fewer than
    `min_cameras` cameras, duplicate camera names, non-finite numbers, non-positive image size or focal length, a K
    not of the form [[fx, s, cx], [0, fy, cy], [0, 0, 1]], a principal point outside the image, and an R that is not
    a rotation (within 1e-6).
    """
    rid = rig.rig_id
    if not isinstance(rid, str) or not _RIG_ID.match(rid):
        raise RigError(f"expected letters, digits, '.', '_' or '-', got {rid!r}", source=source, field="rig_id")
    if rig.units != "m":
        raise RigError(f"in-memory rigs are in metres ('m'), got {rig.units!r}", source=source, rig_id=rid,
                       field="units")
    floor_z = rig.floor_z
    if floor_z is not None and (isinstance(floor_z, bool) or not isinstance(floor_z, int | float | np.floating)
                                or not math.isfinite(floor_z)):
        raise RigError(f"expected a finite number (metres) or null, got {_describe(floor_z)}", source=source,
                       rig_id=rid, field="floor_z")
    if len(rig.cameras) < min_cameras:
        raise RigError(f"{len(rig.cameras)} camera(s), need at least {min_cameras} for 2D-supervised training",
                       source=source, rig_id=rid, field="cameras")
    seen: dict[str, int] = {}
    for i, cam in enumerate(rig.cameras):
        if cam.name in seen:
            raise RigError(f"duplicate camera name (cameras {seen[cam.name]} and {i})", source=source, rig_id=rid,
                           camera=cam.name, field="name")
        seen[cam.name] = i
        reason_field = _camera_problem(cam)
        if reason_field is not None:
            raise RigError(reason_field[0], source=source, rig_id=rid, camera=cam.name, field=reason_field[1])


def _camera_problem(cam: Camera) -> tuple[str, str] | None:
    """(reason, field) of the first problem with `cam`, or None."""
    if not isinstance(cam.name, str) or not cam.name.strip():
        return f"expected a non-empty string, got {cam.name!r}", "name"
    for key in ("width", "height"):
        value = getattr(cam, key)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            return f"expected a positive integer (pixels), got {value!r}", key
    for key in _ARRAY_SHAPES:
        if not np.isfinite(getattr(cam, key)).all():
            return "non-finite value(s)", key
    return _intrinsics_problem(cam) or _rotation_problem(cam.R)


def _intrinsics_problem(cam: Camera) -> tuple[str, str] | None:
    fx, fy = cam.focal
    if fx <= 0 or fy <= 0:
        return f"non-positive focal length (fx {fx:.6g}, fy {fy:.6g})", "K"
    K = cam.K
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        return f"expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got rows 2-3 {K[1:].tolist()}", "K"
    cx, cy = cam.principal_point
    if not (0 <= cx <= cam.width and 0 <= cy <= cam.height):
        return f"principal point ({cx:.6g}, {cy:.6g}) outside the {cam.width}x{cam.height} image", "K"
    return None


def _rotation_problem(R: np.ndarray) -> tuple[str, str] | None:
    ortho = float(np.abs(R.T @ R - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if ortho > ROTATION_TOL or abs(det - 1) > ROTATION_TOL:
        return f"not a rotation (R^T R - I max {ortho:.1e}, det {det:.7g})", "R"
    return None


# ---------------------------------------------------------------------------------------------- parsing


def _numbers(value: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """`value` as a float64 array of `shape` if it is nested lists of numbers of that shape, else None."""
    try:
        arr = np.array(value, dtype=object)
    except ValueError:
        return None
    if arr.shape != shape or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in arr.flat):
        return None
    return arr.astype(np.float64)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        try:
            return f"shape {np.array(value, dtype=object).shape}"
        except ValueError:
            return "ragged nested lists"
    return f"{type(value).__name__} {value!r}"[:80]


def _require_keys(d: dict, keys: tuple[str, ...], err: Any, optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise err(f"missing key {missing[0]!r}", field=missing[0])
    unknown = sorted(set(d) - set(keys) - set(optional))
    if unknown:
        raise err(f"unknown key {unknown[0]!r} (expected {', '.join((*keys, *optional))})", field=unknown[0])


def _parse_camera(d: Any, index: int, *, scale: float, source: str, rig_id: str) -> Camera:
    name = d.get("name") if isinstance(d, dict) else None
    label = name if isinstance(name, str) else f"#{index}"

    def err(reason: str, *, field: str | None = None) -> RigError:
        return RigError(reason, source=source, rig_id=rig_id, camera=label, field=field)

    if not isinstance(d, dict):
        raise err(f"expected an object, got {_describe(d)}")
    _require_keys(d, _CAMERA_KEYS, err)
    if not isinstance(name, str):
        raise err(f"expected a string, got {_describe(name)}", field="name")
    for key in ("width", "height"):
        if isinstance(d[key], bool) or not isinstance(d[key], int):
            raise err(f"expected an integer number of pixels, got {_describe(d[key])}", field=key)
    arrays = {}
    for key, shape in _ARRAY_SHAPES.items():
        arrays[key] = _numbers(d[key], shape)
        if arrays[key] is None:
            want = "x".join(map(str, shape))
            raise err(f"expected {want} numbers, got {_describe(d[key])}", field=key)
    arrays["t"] = arrays["t"] * scale
    return Camera(name=name, width=d["width"], height=d["height"], **arrays)


def rig_from_dict(d: Any, *, source: str) -> Rig:
    """Parse a rig file's JSON object (keys, types and shapes checked; values are `validate_rig`'s job).

    ``units`` "mm" converts ``t`` and ``floor_z`` to metres. The optional ``floor_z`` (a number, or null /
    absent for an unknown floor) becomes `Rig.floor_z`. `source` names the file in error messages.
    """
    if not isinstance(d, dict):
        raise RigError(f"expected a JSON object at the top level, got {_describe(d)}", source=source)
    rig_id = d.get("rig_id")
    label = rig_id if isinstance(rig_id, str) else None

    def err(reason: str, *, field: str | None = None) -> RigError:
        return RigError(reason, source=source, rig_id=label, field=field)

    _require_keys(d, _RIG_KEYS, err, optional=_RIG_OPTIONAL_KEYS)
    if not isinstance(rig_id, str):
        raise err(f"expected a string, got {_describe(rig_id)}", field="rig_id")
    if d["units"] not in _LENGTH_SCALE:
        raise err(f"expected 'm' or 'mm', got {d['units']!r}", field="units")
    if not isinstance(d["cameras"], list):
        raise err(f"expected a list of cameras, got {_describe(d['cameras'])}", field="cameras")
    floor_z = d.get("floor_z")
    if floor_z is not None and (isinstance(floor_z, bool) or not isinstance(floor_z, int | float)):
        raise err(f"expected a number (metres, world z of the floor) or null, got {_describe(floor_z)}",
                  field="floor_z")
    scale = _LENGTH_SCALE[d["units"]]
    cameras = tuple(_parse_camera(c, i, scale=scale, source=source, rig_id=rig_id)
                    for i, c in enumerate(d["cameras"]))
    return Rig(rig_id=rig_id, cameras=cameras, units="m",
               floor_z=None if floor_z is None else float(floor_z) * scale)


def _round(x: float, significant_digits: int | None) -> float:
    x = float(x) if significant_digits is None else float(f"{x:.{significant_digits}g}")
    return x + 0.0  # -0.0 -> 0.0


def rig_to_dict(rig: Rig, *, significant_digits: int | None = None) -> dict[str, Any]:
    """The rig file's JSON object (metres). `significant_digits` rounds the floats (None: exact round trip).

    ``floor_z`` is written only when the floor is known, so rigs without one keep their files unchanged.
    """

    def nums(a: np.ndarray) -> Any:
        return np.vectorize(lambda x: _round(x, significant_digits), otypes=[object])(a).tolist()

    cameras = [{"name": c.name, "width": int(c.width), "height": int(c.height),
                **{k: nums(getattr(c, k)) for k in _ARRAY_SHAPES}} for c in rig.cameras]
    floor = {} if rig.floor_z is None else {"floor_z": _round(rig.floor_z, significant_digits)}
    return {"rig_id": rig.rig_id, "units": rig.units, **floor, "cameras": cameras}


def rig_to_json(rig: Rig, *, significant_digits: int | None = None) -> str:
    """Rig file text: one line per camera field, so diffs of re-calibrations stay readable."""
    d = rig_to_dict(rig, significant_digits=significant_digits)
    cams = ",\n".join(
        "    {\n" + ",\n".join(f"      {json.dumps(k)}: {json.dumps(v)}" for k, v in c.items()) + "\n    }"
        for c in d["cameras"]
    )
    floor = f'  "floor_z": {json.dumps(d["floor_z"])},\n' if "floor_z" in d else ""
    return (f'{{\n  "rig_id": {json.dumps(d["rig_id"])},\n  "units": {json.dumps(d["units"])},\n{floor}'
            f'  "cameras": [\n{cams}\n  ]\n}}\n')


# ---------------------------------------------------------------------------------------------- files


def _read_text(source: str) -> str:
    """UTF-8 text of a local path or fsspec URL."""
    with fsspec.open(source, "rt", encoding="utf-8") as f:
        return f.read()


def load_rig(path: str | os.PathLike[str], *, min_cameras: int = 2) -> Rig:
    """Read and validate a rig JSON file from a local path or an fsspec URL. Raises `RigError`, or OSError."""
    source = os.fspath(path)
    text = _read_text(source)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise RigError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", source=source) from e
    rig = rig_from_dict(d, source=source)
    validate_rig(rig, source=source, min_cameras=min_cameras)
    return rig


def save_rig(rig: Rig, path: str | os.PathLike[str], *, significant_digits: int | None = None,
             min_cameras: int = 2) -> None:
    """Validate `rig`, then write it to `path` (local or fsspec URL) all at once: a reader sees old or new file."""
    target = os.fspath(path)
    validate_rig(rig, source=target, min_cameras=min_cameras)
    data = rig_to_json(rig, significant_digits=significant_digits).encode("utf-8")
    fs, fs_path = url_to_fs(target)
    write_bytes_atomic(fs, fs_path, data)


# ---------------------------------------------------------------------------------------------- calibration TOML


def rotation_from_rodrigues(rvec: Any) -> np.ndarray:
    """Rodrigues rotation vector [3] (axis * angle, radians) -> rotation matrix [3, 3]; as ``cv2.Rodrigues``."""
    r = np.asarray(rvec, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(r))
    W = np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
    if theta < 1e-4:  # Taylor series: sin(x)/x and (1 - cos x)/x^2 lose precision near 0
        a, b = 1 - theta**2 / 6, 0.5 - theta**2 / 24
    else:
        a, b = math.sin(theta) / theta, (1 - math.cos(theta)) / theta**2
    return np.eye(3) + a * W + b * (W @ W)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _whole_pixels(value: Any, err: Any) -> tuple[int, int]:
    """``size = [width, height]`` as ints; integral floats (Pose2Sim writes ``[ 1088.0, 1920.0]``) are accepted."""
    if not isinstance(value, list):
        raise err(f"expected [width, height] in pixels, got {_describe(value)}", "size")
    if len(value) != 2:
        raise err(f"expected 2 numbers [width, height] in pixels, got {len(value)} ({_describe(value)})", "size")
    bad = [x for x in value if not _is_number(x)]
    if bad:
        raise err(f"size must be numbers [width, height], got {type(bad[0]).__name__} {bad[0]!r}"[:100], "size")
    fractional = [x for x in value if not (isinstance(x, int) or (math.isfinite(x) and x.is_integer()))]
    if fractional:
        raise err(f"size must be whole pixels, got {fractional[0]!r} in {value!r}", "size")
    return int(value[0]), int(value[1])


def _toml_numbers(value: Any, shape: tuple[int, ...], key: str, err: Any) -> np.ndarray:
    """`value` as float64 of `shape`; the message says whether the shape or the entries are wrong."""
    arr = _numbers(value, shape)
    if arr is None:
        try:
            got = np.array(value, dtype=object)
        except ValueError:
            got = None
        if got is not None and got.shape == shape:
            bad = next(x for x in got.flat if not _is_number(x))
            raise err(f"expected numbers, got {type(bad).__name__} {bad!r}"[:100] + " among them", key)
        raise err(f"expected numbers, got {_describe(value)}", key)  # wording kept: the CLI tests pin it
    if not np.isfinite(arr).all():
        raise err("non-finite value(s)", key)
    return arr


def _toml_camera(section: str, d: dict, *, scale: float, source: str, rig_id: str) -> Camera:
    name = d.get("name", section)
    label = str(name)

    def err(reason: str, field: str) -> RigError:
        return RigError(reason, source=source, rig_id=rig_id, camera=label, field=field)

    if d.get("fisheye"):
        raise err("fisheye calibrations are not supported (RigPose uses OpenCV's pinhole + k1,k2,p1,p2,k3)",
                  "fisheye")
    for key in ("size", "matrix", "rotation", "translation"):
        if key not in d:
            raise err(f"missing key {key!r} in section [{section}]", key)
    width, height = _whole_pixels(d["size"], err)
    dist_in = d.get("distortions", [])
    if not isinstance(dist_in, list):
        raise err(f"expected a list of at most 5 numbers [k1, k2, p1, p2, k3], got {_describe(dist_in)}",
                  "distortions")
    if len(dist_in) > 5:
        raise err(f"expected at most 5 numbers [k1, k2, p1, p2, k3], got {len(dist_in)}", "distortions")
    parsed = {key: _toml_numbers(d[key], shape, key, err) for key, shape in
              (("matrix", (3, 3)), ("rotation", (3,)), ("translation", (3,)))}
    dist = _toml_numbers(dist_in, (len(dist_in),), "distortions", err)
    return Camera(name=label, width=width, height=height, K=parsed["matrix"], dist=np.pad(dist, (0, 5 - len(dist))),
                  R=rotation_from_rodrigues(parsed["rotation"]), t=parsed["translation"] * scale)


def import_calibration_toml(path: str | os.PathLike[str], *, units: Literal["mm", "m"],
                            rig_id: str | None = None) -> Rig:
    """Read an OpenCV/anipose calibration TOML into a validated `Rig` (metres).

    Every section holding a ``matrix`` key is a camera, in file order (``[metadata]`` and the like are skipped):
    ``name`` (default: the section name), ``size = [width, height]``, ``matrix`` (3x3 K), ``distortions``
    (OpenCV order, up to 5, zero-padded), ``rotation`` (Rodrigues vector, world -> camera) and ``translation``
    (world -> camera t in `units`). `rig_id` defaults to the file's stem.
    """
    if units not in _LENGTH_SCALE:
        raise ValueError(f"units: expected 'mm' or 'm', got {units!r}")
    source = os.fspath(path)
    rig_id = rig_id if rig_id is not None else Path(source).stem
    text = _read_text(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RigError(f"not valid TOML ({e})", source=source) from e
    cameras = tuple(_toml_camera(section, d, scale=_LENGTH_SCALE[units], source=source, rig_id=rig_id)
                    for section, d in doc.items() if isinstance(d, dict) and "matrix" in d)
    rig = Rig(rig_id=rig_id, cameras=cameras, units="m")
    validate_rig(rig, source=source)
    return rig
