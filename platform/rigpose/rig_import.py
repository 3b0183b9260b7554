"""Calibration importers beyond anipose TOML: Qualisys QTM ``.qca.txt`` and OpenCV FileStorage YAML/XML -> `Rig`.

Both give a validated in-memory `Rig` (metres; world -> camera ``x_cam = R @ X_world + t``; K in pixels of the
video actually recorded; dist OpenCV ``[k1, k2, p1, p2, k3]``; see rigpose.rig). Every bad file is refused with a
one-line `RigError` naming the file, the camera and the field.

**Qualisys** (`import_qualisys`): the XML that Qualisys Track Manager exports (``<calibration><cameras><camera>``).
Lengths are millimetres (QTM always writes mm). Per camera: ``serial`` is the name; ``<transform>`` holds the camera
centre ``x, y, z`` (world mm) and ``r11..r33``, whose rows are the QTM camera axes in world coordinates (QTM's RT
protocol lists the same numbers transposed, as the camera -> world matrix); the QTM camera looks down its -z with y
up, so a half turn about x gives OpenCV's frame. ``<intrinsic>`` focal lengths and centre point are in subpixels
(64 per sensor pixel) of the whole sensor; ``<fov_video>`` (inclusive sensor pixels) is the part of the sensor the
video holds, so the principal point is shifted by its left/top corner, and ``binning`` (sensor pixels per video
pixel, default 1) scales pixels down. Distortion coefficients are dimensionless and taken as they are (Pose2Sim
0.10.49 divides them by 64 and by the binning like the pixel quantities; we do not). Only active video cameras are
kept (``model`` naming a video camera, or "none"/absent as in hand-written files), in file order; ``viewrotation`` is
a display hint and is ignored; a non-zero ``skew`` is refused.

**OpenCV** (`import_opencv`): what ``cv2.FileStorage`` writes, YAML (``%YAML:1.0`` header, ``!!opencv-matrix`` with
rows/cols/dt/data) or XML (``<opencv_storage>``, ``type_id="opencv-matrix"``); cv2 is not needed. Convention:

- one file per camera, camera name = the file stem (``cam0.yml`` -> ``cam0``), keys unprefixed; or a file with a
  ``names`` list (EasyMocap's ``intri.yml`` / ``extri.yml``), whose camera ``n`` has keys ``<key>_<n>``
  (``K_01``, ``dist_01``, ``R_01``...). Files with ``names`` merge by camera name, cameras in first-seen order.
- keys (the first alias present wins a group; rotations must agree when several are given):
  K: ``camera_matrix`` | ``cameraMatrix`` | ``K`` (3x3);
  dist: ``distortion_coefficients`` | ``dist_coeffs`` | ``distCoeffs`` | ``dist`` | ``D`` (4 or 5 numbers; longer
  only if the extra terms are 0; absent: no distortion);
  rotation (world -> camera): ``R`` | ``Rot`` | ``rotation`` | ``rvec`` as a 3x3 matrix or a 3-vector (Rodrigues);
  translation (world -> camera, in ``units``): ``T`` | ``t`` | ``tvec`` | ``translation`` (3 numbers);
  size: ``image_width`` + ``image_height`` | ``width`` + ``height`` | ``W`` + ``H`` | ``image_size`` | ``size``
  (``[width, height]``, whole pixels).
- ``units`` (``"mm"`` or ``"m"``) must be given: the format does not say. A ``units`` key in a file must agree.
- `rig_id` defaults to the stem of a single file, else the folder the files share.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from rigpose.rig import (
    _LENGTH_SCALE,
    Camera,
    Rig,
    RigError,
    _is_number,
    _read_text,
    rotation_from_rodrigues,
    validate_rig,
)

_SUBPIXELS = 64.0  # QTM intrinsics: subpixels per sensor pixel
_QTM_TO_OPENCV = np.diag([1.0, -1.0, -1.0])  # half turn about x: QTM camera (-z forward, y up) -> OpenCV (+z, y down)
_ErrFn = Callable[..., RigError]

# ---------------------------------------------------------------------------------------------- Qualisys


def _qtm_number(element: ET.Element, attr: str, err: _ErrFn) -> float:
    field = f"{element.tag}/{attr}"
    if attr not in element.attrib:
        raise err(f"missing attribute {attr!r} on <{element.tag}>", field=field)
    try:
        value = float(element.attrib[attr])
    except ValueError:
        raise err(f"expected a number, got {element.attrib[attr]!r}", field=field) from None
    if not math.isfinite(value):
        raise err(f"expected a finite number, got {element.attrib[attr]!r}", field=field)
    return value


def _qtm_child(camera: ET.Element, tag: str, err: _ErrFn) -> ET.Element:
    child = camera.find(tag)
    if child is None:
        raise err(f"missing element <{tag}>", field=tag)
    return child


def _qtm_video_window(fov: ET.Element, binning: int, err: _ErrFn) -> tuple[float, float, int, int]:
    """(left, top, width, height) of the recorded video: corner in sensor pixels, size in video pixels."""
    left, top, right, bottom = (_qtm_number(fov, k, err) for k in ("left", "top", "right", "bottom"))
    size = []
    for axis, lo, hi in (("width", left, right), ("height", top, bottom)):
        if not (lo.is_integer() and hi.is_integer()) or hi < lo:
            raise err(f"expected whole pixels with {lo!r} <= {hi!r}", field=f"fov_video/{axis}")
        pixels = (hi - lo + 1) / binning
        if not pixels.is_integer():
            raise err(f"{hi - lo + 1:.0f} sensor pixels do not bin by {binning} into whole video pixels",
                      field=f"fov_video/{axis}")
        size.append(int(pixels))
    return left, top, size[0], size[1]


def qualisys_camera(camera: ET.Element, *, binning: int = 1, source: str = "", rig_id: str | None = None) -> Camera:
    """One QTM ``<camera>`` element -> `Camera` (metres, OpenCV frame, pixels of the recorded video)."""
    name = camera.attrib.get("serial")

    def err(reason: str, *, field: str | None = None) -> RigError:
        return RigError(reason, source=source or None, rig_id=rig_id, camera=name, field=field)

    if not name:
        raise err("missing attribute 'serial' (the camera's name) on <camera>", field="serial")
    transform = _qtm_child(camera, "transform", err)
    rows = [[_qtm_number(transform, f"r{i}{j}", err) for j in (1, 2, 3)] for i in (1, 2, 3)]
    centre_m = np.array([_qtm_number(transform, k, err) for k in ("x", "y", "z")]) * _LENGTH_SCALE["mm"]
    R = _QTM_TO_OPENCV @ np.array(rows)  # rows of r_ij: QTM camera axes in world coordinates
    intrinsic = _qtm_child(camera, "intrinsic", err)
    if "skew" in intrinsic.attrib and _qtm_number(intrinsic, "skew", err) != 0:
        raise err(f"non-zero skew ({intrinsic.attrib['skew']}) is not supported", field="intrinsic/skew")
    left, top, width, height = _qtm_video_window(_qtm_child(camera, "fov_video", err), binning, err)
    fx, fy, cu, cv = (_qtm_number(intrinsic, k, err) / _SUBPIXELS for k in
                      ("focalLengthU", "focalLengthV", "centerPointU", "centerPointV"))
    K = np.array([[fx / binning, 0.0, (cu - left) / binning], [0.0, fy / binning, (cv - top) / binning],
                  [0.0, 0.0, 1.0]])
    dist = [_qtm_number(intrinsic, k, err) for k in ("radialDistortion1", "radialDistortion2",
                                                      "tangentalDistortion1", "tangentalDistortion2")]
    k3 = _qtm_number(intrinsic, "radialDistortion3", err) if "radialDistortion3" in intrinsic.attrib else 0.0
    return Camera(name=name, width=width, height=height, K=K, dist=np.array([*dist, k3]), R=R, t=-R @ centre_m)


def _is_video_camera(camera: ET.Element) -> bool:
    model = camera.attrib.get("model", "none").lower()
    return camera.attrib.get("active", "1") != "0" and ("video" in model or model in ("", "none"))


def _qca_stem(source: str) -> str:
    """``Calib.qca.txt`` -> ``Calib`` (Path.stem would keep ``.qca``)."""
    name = Path(source).name
    stem = re.sub(r"(\.qca)?\.txt$", "", name, flags=re.IGNORECASE)
    return stem if stem != name else Path(name).stem


def import_qualisys(path: str | os.PathLike[str], *, rig_id: str | None = None, binning: int = 1) -> Rig:
    """Read a Qualisys QTM ``.qca.txt`` calibration (mm) into a validated `Rig` in metres.

    `binning`: sensor pixels per recorded video pixel (2 for a 540p video of a 1080p sensor). `rig_id` defaults to
    the file name without ``.qca.txt``. Raises `RigError`, or OSError when the file cannot be read.
    """
    source = os.fspath(path)
    if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
        raise RigError(f"expected a positive whole number of sensor pixels per video pixel, got {binning!r}",
                       source=source, field="binning")
    rig_id = rig_id if rig_id is not None else _qca_stem(source)
    try:
        root = ET.fromstring(_read_text(source))
    except ET.ParseError as e:
        raise RigError(f"not valid XML ({e})", source=source) from e
    cameras = root.findall("cameras/camera") if root.tag == "calibration" else []
    if not cameras:
        raise RigError(f"expected <calibration><cameras><camera ...>, got root <{root.tag}> with no cameras",
                       source=source, rig_id=rig_id, field="cameras")
    video = [c for c in cameras if _is_video_camera(c)]
    if not video:
        models = sorted({c.attrib.get("model", "?") for c in cameras})
        raise RigError(f"no active video camera among {len(cameras)} (models: {', '.join(models)})",
                       source=source, rig_id=rig_id, field="cameras")
    rig = Rig(rig_id=rig_id, cameras=tuple(qualisys_camera(c, binning=binning, source=source, rig_id=rig_id)
                                           for c in video))
    validate_rig(rig, source=source)
    return rig


# ---------------------------------------------------------------------------------------------- OpenCV FileStorage


@dataclass(frozen=True)
class OpenCVMatrix:
    """An ``opencv-matrix`` node as written: ``rows``, ``cols``, ``dt`` and the row-major ``data`` (raw values)."""

    rows: Any
    cols: Any
    dt: Any
    data: Any


class _OpenCVYamlLoader(yaml.SafeLoader):
    """SafeLoader that knows ``!!opencv-matrix`` (YAML 1.0 tags expand to ``tag:yaml.org,2002:``)."""


def _construct_matrix(loader: yaml.SafeLoader, node: yaml.Node) -> OpenCVMatrix:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, "an opencv-matrix must be a mapping", node.start_mark)
    d = loader.construct_mapping(node, deep=True)
    return OpenCVMatrix(d.get("rows"), d.get("cols"), d.get("dt"), d.get("data"))


_OpenCVYamlLoader.add_constructor("tag:yaml.org,2002:opencv-matrix", _construct_matrix)


def parse_opencv_yaml(text: str, *, source: str) -> dict[str, Any]:
    """Top-level mapping of a FileStorage YAML file (``%YAML:1.0`` header allowed); matrices as `OpenCVMatrix`."""
    body = re.sub(r"\A\s*%YAML[: ]\s*\d+\.\d+[^\n]*\n", "", text)  # PyYAML wants "%YAML 1.1"; OpenCV writes "%YAML:1.0"
    try:
        doc = yaml.load(body, Loader=_OpenCVYamlLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        raise RigError(f"not valid OpenCV YAML ({' '.join(str(e).split())})", source=source) from e
    if not isinstance(doc, dict):
        raise RigError(f"expected a mapping of keys at the top level, got {type(doc).__name__}", source=source)
    return doc


def _xml_scalar(token: str) -> Any:
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token


def _xml_node(element: ET.Element) -> Any:
    children = list(element)
    if element.attrib.get("type_id") == "opencv-matrix":
        fields = {c.tag: (c.text or "").split() for c in children}
        one = {k: _xml_scalar(v[0]) if len(v) == 1 else " ".join(v) for k, v in fields.items() if k != "data"}
        return OpenCVMatrix(one.get("rows"), one.get("cols"), one.get("dt"),
                            [_xml_scalar(x) for x in fields["data"]] if "data" in fields else None)
    if children:
        if all(c.tag == "_" for c in children):
            return [_xml_node(c) for c in children]
        return {c.tag: _xml_node(c) for c in children}
    text = (element.text or "").strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1]
    tokens = [_xml_scalar(t) for t in text.split()]
    return tokens[0] if len(tokens) == 1 else tokens if all(not isinstance(t, str) for t in tokens) else text


def parse_opencv_xml(text: str, *, source: str) -> dict[str, Any]:
    """Top-level mapping of a FileStorage XML file (``<opencv_storage>``); matrices as `OpenCVMatrix`."""
    try:
        root = ET.fromstring(text.lstrip())
    except ET.ParseError as e:
        raise RigError(f"not valid XML ({e})", source=source) from e
    if root.tag != "opencv_storage":
        raise RigError(f"expected an <opencv_storage> root element, got <{root.tag}>", source=source)
    return {c.tag: _xml_node(c) for c in root}


def read_opencv_storage(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A FileStorage file's top-level keys; XML when it starts with ``<``, else YAML."""
    source = os.fspath(path)
    text = _read_text(source)
    parse = parse_opencv_xml if text.lstrip().startswith("<") else parse_opencv_yaml
    return parse(text, source=source)


_K_KEYS = ("camera_matrix", "cameraMatrix", "K")
_DIST_KEYS = ("distortion_coefficients", "dist_coeffs", "distCoeffs", "dist", "D")
_ROTATION_KEYS = ("R", "Rot", "rotation", "rvec")
_TRANSLATION_KEYS = ("T", "t", "tvec", "translation")
_SIZE_PAIRS = (("image_width", "image_height"), ("width", "height"), ("W", "H"))
_SIZE_KEYS = ("image_size", "size")
_ROTATION_AGREE = 1e-6  # max |R_a - R_b| between two rotation keys of one camera
_Found = tuple[str, str, Any]  # (file, key as written, value)


def _yaml12_number(x: Any) -> Any:
    """``"1e-3"`` -> 0.001: YAML 1.1 (PyYAML) reads a float without a dot as a string; YAML 1.2 and OpenCV do not."""
    if isinstance(x, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", x.strip()):
        return float(x)
    return x


def _opencv_array(value: Any, err: _ErrFn) -> np.ndarray:
    """An `OpenCVMatrix`, nested lists of numbers or a number -> float64 array (rows x cols for a matrix)."""
    if isinstance(value, OpenCVMatrix):
        for part in ("rows", "cols"):
            n = getattr(value, part)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise err(f"opencv-matrix {part!r} must be a positive integer, got {n!r}")
        if not isinstance(value.data, list):
            raise err(f"opencv-matrix 'data' must be a list of numbers, got {type(value.data).__name__}")
        if len(value.data) != value.rows * value.cols:
            raise err(f"opencv-matrix is {value.rows}x{value.cols} but 'data' holds {len(value.data)} numbers")
        entries, shape = value.data, (value.rows, value.cols)
    else:
        try:
            arr = np.array(value, dtype=object)
        except ValueError:
            raise err("expected numbers, got ragged nested lists") from None
        entries, shape = list(arr.flat), arr.shape
    numbers = [_yaml12_number(x) for x in entries]
    for i, x in enumerate(numbers):
        if not _is_number(x):
            raise err(f"expected numbers, got {type(x).__name__} {x!r} at entry {i}")
    out = np.array(numbers, dtype=np.float64).reshape(shape)
    if not np.isfinite(out).all():
        raise err("non-finite value(s)")
    return out


def _vector(arr: np.ndarray, n: int, what: str, err: _ErrFn) -> np.ndarray:
    """A 1-D, 1xn or nx1 array -> [n]."""
    if arr.ndim > 2 or (arr.ndim == 2 and 1 not in arr.shape) or arr.size != n:
        raise err(f"expected {what} ({n} numbers), got shape {arr.shape}")
    return arr.reshape(n)


def _opencv_dist(arr: np.ndarray, err: _ErrFn) -> np.ndarray:
    if arr.ndim > 2 or (arr.ndim == 2 and 1 not in arr.shape) or arr.size < 4:
        raise err(f"expected 4 or 5 numbers [k1, k2, p1, p2, k3], got shape {arr.shape}")
    flat = arr.reshape(-1)
    if flat.size > 5 and np.any(flat[5:] != 0):
        raise err(f"{flat.size} coefficients with non-zero terms past k3: the rational/thin-prism models are not "
                  "supported (RigPose uses k1, k2, p1, p2, k3)")
    return np.pad(flat[:5], (0, 5 - min(flat.size, 5)))


def _opencv_size(keyed: dict[str, tuple[str, Any]], suffix: str, err: _ErrFn) -> tuple[int, int]:
    """(width, height) in whole pixels from the first size keys present."""
    candidates = [((w, h), (keyed[w + suffix], keyed[h + suffix])) for w, h in _SIZE_PAIRS
                  if w + suffix in keyed and h + suffix in keyed]
    candidates += [((k,), (keyed[k + suffix],)) for k in _SIZE_KEYS if k + suffix in keyed]
    if not candidates:
        options = " | ".join([f"{w}{suffix} + {h}{suffix}" for w, h in _SIZE_PAIRS] + [k + suffix for k in _SIZE_KEYS])
        raise err(f"missing image size: one of {options}", field="size")
    keys, found = candidates[0]
    source, field = found[0][0], "+".join(k + suffix for k in keys)
    values = [v for _, v in found]
    arr = _opencv_array(values[0] if len(values) == 1 else values, lambda r: err(r, source=source, field=field))
    size = _vector(arr, 2, "[width, height]", lambda r: err(r, source=source, field=field))
    if not all(x.is_integer() and x > 0 for x in size):
        raise err(f"size must be whole positive pixels, got {size.tolist()}", source=source, field=field)
    return int(size[0]), int(size[1])


def _opencv_camera(keyed: dict[str, tuple[str, Any]], name: str, suffix: str, *, home: str, scale: float,
                   rig_id: str) -> Camera:
    """One camera from ``{key: (file, value)}``, its keys ending in `suffix` ("" for one file per camera)."""

    def err(reason: str, *, source: str = home, field: str | None = None) -> RigError:
        return RigError(reason, source=source, rig_id=rig_id, camera=name, field=field)

    def found(aliases: tuple[str, ...], what: str, *, required: bool = True) -> list[_Found]:
        hits = [(keyed[a + suffix][0], a + suffix, keyed[a + suffix][1]) for a in aliases if a + suffix in keyed]
        if required and not hits:
            raise err(f"missing {what}: one of {', '.join(a + suffix for a in aliases)}", field=aliases[0] + suffix)
        return hits

    def array(hit: _Found) -> tuple[np.ndarray, _ErrFn]:
        def field_err(reason: str) -> RigError:
            return err(reason, source=hit[0], field=hit[1])

        return _opencv_array(hit[2], field_err), field_err

    K, K_err = array(found(_K_KEYS, "camera matrix")[0])
    if K.shape != (3, 3):
        raise K_err(f"expected a 3x3 camera matrix, got shape {K.shape}")
    dist_hits = found(_DIST_KEYS, "distortion", required=False)
    dist = _opencv_dist(*array(dist_hits[0])) if dist_hits else np.zeros(5)
    rotations = []
    for hit in found(_ROTATION_KEYS, "rotation"):
        arr, rot_err = array(hit)
        R = arr if arr.shape == (3, 3) else rotation_from_rodrigues(_vector(arr, 3, "a 3x3 matrix or a Rodrigues "
                                                                             "vector", rot_err))
        rotations.append((hit[1], R))
    for key, R in rotations[1:]:
        gap = float(np.abs(R - rotations[0][1]).max())
        if gap > _ROTATION_AGREE:
            raise err(f"disagrees with {rotations[0][0]!r} (max difference {gap:.1e})", field=key)
    t_arr, t_err = array(found(_TRANSLATION_KEYS, "translation")[0])
    t = _vector(t_arr, 3, "a translation", t_err) * scale
    width, height = _opencv_size(keyed, suffix, err)
    return Camera(name=name, width=width, height=height, K=K, dist=dist, R=rotations[0][1], t=t)


def _check_units(doc: dict[str, Any], units: str, source: str, rig_id: str) -> None:
    if "units" in doc and doc["units"] != units:
        known = doc["units"] in _LENGTH_SCALE
        reason = (f"the file says {doc['units']!r} but units {units!r} were given" if known else
                  f"unknown units {doc['units']!r} (expected 'mm' or 'm')")
        raise RigError(reason, source=source, rig_id=rig_id, field="units")


def _camera_names(doc: dict[str, Any], source: str, rig_id: str) -> list[str]:
    names = doc["names"]
    names = names if isinstance(names, list) else [names]
    if not names or not all(isinstance(n, str | int) and not isinstance(n, bool) for n in names):
        raise RigError(f"expected a list of camera names, got {names!r}"[:120], source=source, rig_id=rig_id,
                       field="names")
    return [str(n) for n in names]


def opencv_cameras(docs: Sequence[tuple[str, dict[str, Any]]], *, units: Literal["mm", "m"],
                   rig_id: str) -> list[Camera]:
    """Cameras of parsed FileStorage files ``[(file, top-level keys)]``, by the module docstring's convention."""
    scale = _LENGTH_SCALE[units]
    for source, doc in docs:
        _check_units(doc, units, source, rig_id)
    with_names = [source for source, doc in docs if "names" in doc]
    if not with_names:
        return [_opencv_camera({k: (source, v) for k, v in doc.items()}, Path(source).stem, "", home=source,
                               scale=scale, rig_id=rig_id) for source, doc in docs]
    if len(with_names) != len(docs):
        lone = next(source for source, doc in docs if "names" not in doc)
        raise RigError(f"has no 'names' list but {with_names[0]} has one: give one-camera files or files with "
                       "names, not both", source=lone, rig_id=rig_id, field="names")
    keyed: dict[str, tuple[str, Any]] = {}
    names: list[str] = []
    for source, doc in docs:
        names += [n for n in _camera_names(doc, source, rig_id) if n not in names]
        for key, value in doc.items():
            if key in keyed and key not in ("names", "units"):
                raise RigError(f"also given in {keyed[key][0]}", source=source, rig_id=rig_id, field=key)
            keyed[key] = (source, value)
    home = ", ".join(source for source, _ in docs)
    return [_opencv_camera(keyed, name, f"_{name}", home=home, scale=scale, rig_id=rig_id) for name in names]


def _default_rig_id(sources: Sequence[str]) -> str:
    if len(sources) == 1:
        return Path(sources[0]).stem
    parents = {Path(s).resolve().parent for s in sources}
    if len(parents) != 1:
        raise RigError("files from several folders: give a rig id", field="rig_id")
    return parents.pop().name


def import_opencv(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, units: Literal["mm", "m"],
                  rig_id: str | None = None) -> Rig:
    """Read OpenCV FileStorage calibration files (YAML or XML; see the module docstring) into a validated `Rig`.

    `units` is the length unit of the translations ("mm" or "m"). Raises `RigError`, or OSError for an unreadable
    file.
    """
    if units not in _LENGTH_SCALE:
        raise ValueError(f"units: expected 'mm' or 'm', got {units!r}")
    sources = [os.fspath(paths)] if isinstance(paths, str | os.PathLike) else [os.fspath(p) for p in paths]
    if not sources:
        raise ValueError("import_opencv: no files given")
    rig_id = rig_id if rig_id is not None else _default_rig_id(sources)
    docs = [(s, read_opencv_storage(s)) for s in sources]
    cameras = opencv_cameras(docs, units=units, rig_id=rig_id)
    rig = Rig(rig_id=rig_id, cameras=tuple(cameras))
    home = ", ".join(sources)
    try:
        validate_rig(rig, source=home)
    except RigError as e:
        own_file = {Path(s).stem: s for s, doc in docs if "names" not in doc}.get(e.camera or "")
        if own_file is None or e.field == "name":
            raise
        raise RigError(e.reason, source=own_file, rig_id=e.rig_id, camera=e.camera, field=e.field) from e
    return rig
