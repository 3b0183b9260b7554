"""2D keypoints from videos, offline (`rigpose detect`): a pose detector over each camera's video, writing the
keypoint files that `rigpose datasets ingest mediapipe | openpose` reads. Needs the `detect` extra
(`pip install 'rigpose[detect]'`): MediaPipe (weights: `rigpose.detect.mediapipe`), or RTMPose through rtmlib
(`rigpose.detect.rtmpose`); neither downloads anything.

frames.py (videos and image folders), mediapipe.py, rtmpose.py (the detectors), writers.py (MediaPipe / OpenPose
JSON), run.py (`detect_videos`, the progress bars).
"""

from rigpose.detect.errors import DetectorUnavailableError
from rigpose.detect.run import DETECTORS, CameraResult, DetectSummary, detect_videos

__all__ = ["DETECTORS", "CameraResult", "DetectSummary", "DetectorUnavailableError", "detect_videos"]
