"""One held-out-view error: training validation's val/reprojection_px and `rigpose evaluate`'s single-view heldout_px
are the same number on the same model and rows (`rigpose.metrics.heldout_view_px`), the gate's figure too; a root
thrown off the image by a 2D outlier counts as `HELDOUT_MAX_PX`, not as the lens polynomial's blow-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rigpose import geometry as g
from rigpose.config import ModelConfig
from rigpose.data.pipeline import Preprocess
from rigpose.data.reader import Dataset
from rigpose.data.schema import Frames, frames_for_rig
from rigpose.data.writer import DatasetWriter
from rigpose.inference.evaluate import evaluate
from rigpose.model.checkpoint import save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import rigs_dir
from rigpose.rig import Rig, load_rig
from rigpose.skeleton import H36M17
from rigpose.train.loop import validate

ROOTS = H36M17.root_joints
ROWS = 12


def _rig(rig_id: str) -> Rig:
    return load_rig(rigs_dir() / f"{rig_id}.json")


def _frames(rig: Rig, *, seed: int) -> Frames:
    """Noisy 2D of random poses, with a view without 2D, missing joints and uneven detector scores."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.3, (ROWS, 17, 3)) + np.array([0.0, 0.0, 1.0])
    pix = np.stack([g.project(X, cam) for cam in rig.cameras], 1) + rng.normal(0, 2.0, (ROWS, len(rig.cameras), 17, 2))
    pix[3, 1] = np.nan  # a view with no 2D at all: not lifted, not a target
    pix[5, 0, 2:4] = np.nan
    scores = rng.uniform(0.2, 1.0, pix.shape[:-1])  # the figure counts every observed keypoint once, not by score
    scores[np.isnan(pix).any(-1)] = 0.0
    return frames_for_rig(rig, sequence=f"take-{seed}", keypoints=pix, scores=scores, subject="S1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path, Lifter]:
    root = tmp_path_factory.mktemp("heldout")
    four, eight = _rig("h36m-s1"), _rig("studio-8")  # two rigs: padded views in the 4-camera rows
    with DatasetWriter(str(root / "ds"), skeleton=H36M17, command="test_heldout_definition") as w:
        w.add(_frames(four, seed=0), four, split="val")
        w.add(_frames(eight, seed=1), eight, split="val")
        w.commit()
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=32, num_blocks=1, dropout=0.0), num_joints=17).eval()
    save_lifter(root / "model.pt", model, H36M17, meta={"test": True})
    return Dataset(str(root / "ds")), root / "model.pt", model


def test_validation_reprojection_px_equals_evaluate_heldout_px_on_the_same_model_and_rows(setup) -> None:
    ds, model_file, model = setup
    report = evaluate(str(model_file), ds.root, split="val", modes=("single",))
    table = ds.read_table(splits=["val"])
    prep = Preprocess(num_joints=17, num_views=ds.manifest.max_views, root_joints=ROOTS, with_3d=False,
                      with_pseudo=False)
    # what the val Ray dataset yields, in uneven batches across the two rigs' rows
    batches = [{k: torch.from_numpy(v) for k, v in prep(table.slice(a, n)).items()} for a, n in ((0, 7), (7, 17))]
    val = validate(model, batches, root_joints=ROOTS)
    np.testing.assert_allclose(val["reprojection_px"], report["single"]["overall"]["heldout_px"], rtol=1e-5)
    assert report["single"]["overall"]["num_heldout"] > 0


def test_a_root_thrown_off_the_image_by_a_2d_outlier_counts_as_the_cap_and_leaves_other_rows_exact() -> None:
    """Perfect lifts and 2D on a 3-camera rig (two views left to triangulate each held-out root); one row's root
    joints in camera 1 are 400 px off: the roots placed from that view land off the target image, where the
    distortion polynomial gives far more than any real error."""
    from rigpose.metrics import HELDOUT_MAX_PX, heldout_view_errors, heldout_view_px, leave_one_out_roots

    rig = _rig("humaneva-s1")
    rng = np.random.default_rng(0)
    X = rng.normal(0, 0.3, (ROWS, 17, 3)) + np.array([*rig.capture_center()[:2], 1.0])
    cams = rig.arrays()
    cams_B = g.CameraArrays(*(np.broadcast_to(a, (ROWS, *a.shape)) for a in cams))
    kp = np.stack([g.project(X, c) for c in rig.cameras], 1)
    kp[0, 1, list(ROOTS), 0] += 400.0
    w = np.ones(kp.shape[:-1])
    X_cam = np.einsum("vik,bjk->bvji", cams.R, X) + cams.t[None, :, None]
    rel = X_cam - X_cam[:, :, list(ROOTS)].mean(2, keepdims=True)
    err = heldout_view_px(rel, kp, w, cams_B, ROOTS)
    # the same figure without the cap: the lifts at the same roots, projected through the lens polynomial
    roots = leave_one_out_roots(kp, w, cams_B, ROOTS)
    world = np.einsum("bsji,bsik->bsjk", rel, cams_B.R) + roots[:, :, None]
    raw = np.stack([np.linalg.norm(g.project(world[0, s], rig.cameras[t]) - kp[0, t], axis=-1)
                    for s in range(3) for t in range(3) if s != t])
    assert np.nanmax(raw) > 10 * HELDOUT_MAX_PX  # the blow-up the cap is there for
    assert np.nanmax(err[0]) == HELDOUT_MAX_PX and np.nanmax(err) == HELDOUT_MAX_PX
    np.testing.assert_allclose(err[1:][np.isfinite(err[1:])], 0.0, atol=1e-6)  # the other rows: perfect lifts
    np.testing.assert_array_equal(np.isnan(err), np.isnan(heldout_view_errors(rel, roots, kp, w, cams_B)))
