"""The MLflow pyfunc lifter: raw 2D keypoints + cameras per row in, world and camera-frame 3D poses out.

The world pose is the multi-view answer of `rigpose.config.MultiViewConfig` (the one default, or the "multi_view"
entry of the logged model's `model_config`); "uncertainty" is its per-joint uncertainty in metres (the default
method "posterior" states one; other methods give NaN). Every row is its own frame, with its own skeleton in the
refinement; only the noise levels that weigh the prior against the 2D are estimated over all of a request's rows.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from rigpose import geometry as g
from rigpose.config import MultiViewConfig
from rigpose.model.inputs import model_inputs
from rigpose.model.lifter import Lifter
from rigpose.skeleton import Skeleton

INPUT_COLUMNS = ("keypoints", "scores", "K", "dist", "R", "t")


OUTPUT_COLUMNS = ("joints_3d", "joints_cam", "num_views", "uncertainty")


ARTIFACT_KEY = "lifter"


def _stack_padded(values: Any, name: str, tail: tuple[int, ...], num_views: int) -> np.ndarray:
    """Rows of [V_i, *tail] nested lists/arrays -> [N, num_views, *tail] float64 (padding 0)."""
    out = np.zeros((len(values), num_views, *tail), np.float64)
    for i, v in enumerate(values):
        a = np.asarray(v if not isinstance(v, np.ndarray) or v.dtype != object else np.stack(
            [np.stack(list(x)) if isinstance(x, np.ndarray) and x.dtype == object else x for x in v]),
            dtype=np.float64)
        if a.ndim != 1 + len(tail) or a.shape[1:] != tail:
            raise ValueError(f"row {i}: column {name} has shape {list(a.shape)}, expected [V, "
                             f"{', '.join(map(str, tail))}]")
        out[i, :a.shape[0]] = a
    return out


def frame_arrays(df: pd.DataFrame, num_joints: int) -> tuple[np.ndarray, np.ndarray, g.CameraArrays, np.ndarray]:
    """(keypoints [N, V, J, 2] px, scores [N, V, J], cameras [N, V, ...], view_mask [N, V]) from pyfunc input rows."""
    missing = [c for c in INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"input is missing column(s) {missing}; expected {list(INPUT_COLUMNS)}")
    views = [len(v) for v in df["keypoints"]]
    V = max(views) if views else 0
    for c in INPUT_COLUMNS[1:]:
        bad = [i for i, v in enumerate(df[c]) if len(v) != views[i]]
        if bad:
            raise ValueError(f"row {bad[0]}: column {c} has {len(df[c].iloc[bad[0]])} views, keypoints has "
                             f"{views[bad[0]]}")
    J = num_joints
    kp = _stack_padded(df["keypoints"], "keypoints", (J, 2), V)
    sc = _stack_padded(df["scores"], "scores", (J,), V)
    cams = g.CameraArrays(K=_stack_padded(df["K"], "K", (3, 3), V), dist=_stack_padded(df["dist"], "dist", (5,), V),
                          R=_stack_padded(df["R"], "R", (3, 3), V), t=_stack_padded(df["t"], "t", (3,), V))
    vm = np.arange(V)[None, :] < np.asarray(views)[:, None]
    pad = ~vm
    cams.K[pad] = np.eye(3)  # padding views get harmless cameras (masked out of everything)
    cams.R[pad] = np.eye(3)
    cams.t[pad] = (0.0, 0.0, 1.0)
    return kp, sc, cams, vm


def lift_arrays(model: Lifter, skeleton: Skeleton, keypoints: np.ndarray, scores: np.ndarray,
                cameras: g.CameraArrays, view_mask: np.ndarray, *, multi_view: MultiViewConfig | None = None,
                device: str = "cpu") -> dict[str, np.ndarray]:
    """{"joints_3d" [N, J, 3] world m (by `multi_view`, default `MultiViewConfig()`), "joints_cam" [N, V, J, 3]
    camera m (single-view lifts), "num_views" [N], "uncertainty" [N, J] m (NaN when the method states none)} for raw
    2D + cameras; each row is its own frame."""
    from rigpose.model.fusion import lift_single
    from rigpose.model.multiview import estimate

    multi_view = multi_view or MultiViewConfig()
    batch = model_inputs(keypoints, scores, cameras, view_mask, root_joints=tuple(skeleton.root_joints),
                         device=device, pseudo_3d=False)
    rel, root = lift_single(model, batch)
    rows = torch.arange(len(keypoints), device=device)  # one refinement group per row: rows are independent
    X, sigma_t = estimate(model, batch, skeleton, multi_view, groups=rows)
    world = X.detach().cpu().double().numpy()
    sigma = np.full(world.shape[:2], np.nan) if sigma_t is None else sigma_t.detach().cpu().double().numpy()
    used = ((batch["w"].sum(-1) > 0) & (batch["view_mask"] > 0)).sum(-1).cpu().numpy()
    return {"joints_3d": world, "joints_cam": rel + root[..., None, :], "num_views": used.astype(np.int64),
            "uncertainty": sigma}


class LifterModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around a saved lifter (artifact "lifter" = a `model.pt` from rigpose.model.checkpoint)."""

    def load_context(self, context: Any) -> None:
        from rigpose.model.checkpoint import load_lifter

        self.model, self.skeleton, self.meta = load_lifter(context.artifacts[ARTIFACT_KEY])
        self.model.eval()
        settings = (getattr(context, "model_config", None) or {}).get("multi_view", {})
        self.multi_view = MultiViewConfig.model_validate(settings)

    def lift(self, keypoints: np.ndarray, scores: np.ndarray, cameras: g.CameraArrays, view_mask: np.ndarray
             ) -> dict[str, np.ndarray]:
        """Array fast path (batch inference): see `lift_arrays`."""
        return lift_arrays(self.model, self.skeleton, keypoints, scores, cameras, view_mask,
                           multi_view=self.multi_view)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        """Rows of raw 2D + cameras -> rows of 3D joints (see the module docstring)."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        kp, sc, cams, vm = frame_arrays(model_input, self.skeleton.num_joints)
        out = self.lift(kp, sc, cams, vm)
        return pd.DataFrame({
            "joints_3d": [x.tolist() for x in out["joints_3d"]],
            "joints_cam": [x[: int(n)].tolist() for x, n in zip(out["joints_cam"], vm.sum(1), strict=True)],
            "num_views": out["num_views"],
            "uncertainty": [x.tolist() for x in out["uncertainty"]],
        })


def example_input(keypoints: np.ndarray, scores: np.ndarray, cameras: g.CameraArrays, view_mask: np.ndarray
                  ) -> pd.DataFrame:
    """Pyfunc input rows from arrays (e.g. a few dataset frames): only the real views of each frame."""
    rows = []
    for i in range(keypoints.shape[0]):
        v = np.flatnonzero(view_mask[i])
        kp = np.nan_to_num(np.asarray(keypoints[i, v], np.float64))
        sc = np.where(np.isfinite(keypoints[i, v]).all(-1), scores[i, v], 0.0)
        rows.append({"keypoints": kp.tolist(), "scores": np.asarray(sc, np.float64).tolist(),
                     "K": np.asarray(cameras.K[i, v], np.float64).tolist(),
                     "dist": np.asarray(cameras.dist[i, v], np.float64).tolist(),
                     "R": np.asarray(cameras.R[i, v], np.float64).tolist(),
                     "t": np.asarray(cameras.t[i, v], np.float64).tolist()})
    return pd.DataFrame(rows, columns=list(INPUT_COLUMNS))
