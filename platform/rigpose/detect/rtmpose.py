"""The RTMPose detector through `rtmlib` (YOLOX person boxes, then RTMPose on HALPE-26: body and feet), as Pose2Sim
runs it; its ONNX weights are never downloaded here.

`rtmlib` is not in the `detect` extra: its requirements name `opencv-python` and `opencv-contrib-python`, which
would overwrite `opencv-python-headless`'s cv2. Everything it needs at run time (numpy, onnxruntime, OpenCV, tqdm)
is rigpose's already, so install it alone: `pip install --no-deps rtmlib==0.0.16`.

Weights: rtmlib's own cache names, `<name of the model's zip>.onnx` (e.g.
`rtmpose-m_simcc-body7_pt-body7-halpe26_700e-256x192-4d3e73dd_20230605.onnx`), in the weights folder (`--weights`,
else rtmlib's cache, `$TORCH_HOME/hub/checkpoints` or `~/.cache/rtmlib/hub/checkpoints`, where rtmlib leaves them
after one run with internet). `--model lite|full|heavy` = rtmlib's modes lightweight | balanced | performance.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

import numpy as np

from rigpose.detect.errors import DetectorUnavailableError

RTMLIB_VERSION = "0.0.16"
RTMLIB_MODES = {"lite": "lightweight", "full": "balanced", "heavy": "performance"}
NUM_KEYPOINTS = 26  # HALPE-26 (rigpose.data.ingest.detectors)


def rtmlib_cache() -> Path:
    """rtmlib's checkpoint folder (rtmlib.tools.file._get_rtmhub_dir, restated: it is private)."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "rtmlib"))
    return Path(home).expanduser() / "hub" / "checkpoints"


def _import_rtmlib() -> Any:
    try:
        import rtmlib
    except ImportError:
        raise DetectorUnavailableError(
            f"the RTMPose detector needs rtmlib, which is not installed: pip install --no-deps "
            f"rtmlib=={RTMLIB_VERSION} (its other requirements are rigpose's; --no-deps keeps "
            "opencv-python-headless)") from None
    return rtmlib


def rtmpose_weights(model: str, *, weights: str | Path | None = None) -> dict[str, Any]:
    """The local files and input sizes of `model` (lite, full, heavy): {det, det_input_size, pose,
    pose_input_size}; `DetectorUnavailableError` naming the missing files and where they come from."""
    if model not in RTMLIB_MODES:
        raise ValueError(f"model {model!r}: expected one of {', '.join(RTMLIB_MODES)}")
    rtmlib = _import_rtmlib()
    mode = rtmlib.BodyWithFeet.MODE[RTMLIB_MODES[model]]
    folder = Path(weights).expanduser() if weights else rtmlib_cache()
    out: dict[str, Any] = {}
    missing = []
    for key in ("det", "pose"):
        url = mode[key]
        path = folder / (posixpath.basename(url).split(".")[0] + ".onnx")
        out[key], out[f"{key}_input_size"] = str(path), mode[f"{key}_input_size"]
        if not path.is_file():
            missing.append(f"{path.name} (end2end.onnx of {url})")
    if missing:
        raise DetectorUnavailableError(
            f"RTMPose {model!r} ({RTMLIB_MODES[model]}) weights are not in {folder} and are never downloaded here: "
            f"missing {'; '.join(missing)}; run rtmlib once where it can download them, or unzip them there under "
            "those names (or give --weights FOLDER)")
    return out


class RTMPoseBody:
    """HALPE-26 keypoints of the people in one RGB image: `detect(rgb_HW3) -> (pixels [P, 26, 2], scores [P, 26])`
    (scores are SimCC confidences, not probabilities: the ingest clips them to 1)."""

    def __init__(self, model: str = "full", *, weights: str | Path | None = None, device: str = "cpu") -> None:
        files = rtmpose_weights(model, weights=weights)
        rtmlib = _import_rtmlib()
        # Local paths: rtmlib downloads only what does not exist.
        self._body = rtmlib.BodyWithFeet(det=files["det"], det_input_size=files["det_input_size"],
                                         pose=files["pose"], pose_input_size=files["pose_input_size"],
                                         backend="onnxruntime", device=device)
        self.source = files["pose"]
        self.model = model

    def detect(self, rgb_HW3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bgr = np.ascontiguousarray(rgb_HW3[..., ::-1])  # rtmlib works on OpenCV's BGR images
        boxes = self._body.det_model(bgr)
        if len(boxes) == 0:  # RTMPose alone would take the whole image as one person's box
            return np.zeros((0, NUM_KEYPOINTS, 2)), np.zeros((0, NUM_KEYPOINTS))
        kp_PK2, score_PK = self._body.pose_model(bgr, bboxes=boxes)
        return np.asarray(kp_PK2, float).reshape(-1, NUM_KEYPOINTS, 2), np.asarray(score_PK, float).reshape(
            -1, NUM_KEYPOINTS)

    def close(self) -> None:
        pass

    def __enter__(self) -> RTMPoseBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
