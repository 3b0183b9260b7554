"""The writer's row buffer: rows queued for one shard partition, in contiguous arrays that are reused."""

from __future__ import annotations

from typing import Any

import numpy as np

from rigpose.data.schema import Frames
from rigpose.geometry import CameraArrays

# Arrays of `Frames` queued by the writer, with the dtype `frames_to_table` converts them to anyway.
_ROW_DTYPES: dict[str, Any] = {
    "rig_id": object, "sequence": object, "subject": object, "frame": np.int64, "keypoints": np.float32,
    "scores": np.float32, "K": np.float64, "dist": np.float64, "R": np.float64, "t": np.float64,
    "image_size": np.int32, "camera_names": object, "split": object, "view_mask": bool, "joints_3d": np.float32,
}


class RowBuffer:
    """Rows queued for one (rig, split) partition, copied once into contiguous arrays that are reused.

    The one copy is needed anyway (Arrow wants each column contiguous) and protects against a caller reusing
    its arrays; a rig's broadcast cameras are expanded here, straight from their single row.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.num_rows = 0
        self.has_3d = True

    def add(self, frames: Frames, rows: np.ndarray | None, *, min_capacity: int) -> None:
        """Append `frames` rows `rows` (None = all); grow to at least `min_capacity` + these rows if needed."""
        n = len(frames) if rows is None else len(rows)
        start, stop = self.num_rows, self.num_rows + n
        self.has_3d &= frames.joints_3d is not None
        sources = {"rig_id": frames.rig_id, "sequence": frames.sequence, "subject": frames.subject,
                   "frame": frames.frame, "keypoints": frames.keypoints, "scores": frames.scores,
                   **frames.cameras._asdict(), "image_size": frames.image_size, "camera_names": frames.camera_names,
                   "split": frames.split, "view_mask": frames.view_mask}
        if self.has_3d:
            sources["joints_3d"] = frames.joints_3d
        for name, src in sources.items():
            out = self.arrays.get(name)
            if out is not None and out.shape[1:] != src.shape[1:]:  # two rigs added under one rig_id
                raise ValueError(f"{name}: rows of shape {src.shape[1:]} cannot join rows of shape {out.shape[1:]}")
            if out is None or len(out) < stop:
                grown = np.empty((max(stop, min_capacity + n), *src.shape[1:]), dtype=_ROW_DTYPES[name])
                if out is not None:
                    grown[:start] = out[:start]
                self.arrays[name] = out = grown
            dst = out[start:stop]
            if len(src) and src.strides[0] == 0:  # one row broadcast over N (a static rig's cameras)
                dst[...] = src[0]
            elif rows is None:
                dst[...] = src
            elif src.dtype == dst.dtype:
                np.take(src, rows, axis=0, out=dst, mode="clip")  # rows are in range; "clip" skips a buffered copy
            else:
                dst[...] = src[rows]
        self.num_rows = stop

    def frames(self) -> Frames:
        """The queued rows (views of the buffer)."""
        a = {name: arr[: self.num_rows] for name, arr in self.arrays.items()}
        return Frames(rig_id=a["rig_id"], sequence=a["sequence"], subject=a["subject"], frame=a["frame"],
                      keypoints=a["keypoints"], scores=a["scores"],
                      cameras=CameraArrays(a["K"], a["dist"], a["R"], a["t"]), image_size=a["image_size"],
                      camera_names=a["camera_names"], split=a["split"], view_mask=a["view_mask"],
                      joints_3d=a["joints_3d"] if self.has_3d else None)

    def clear(self) -> None:
        self.num_rows = 0
        self.has_3d = True
