"""One held-out-view error: training validation's val/reprojection_px and `rigpose evaluate`'s single-view heldout_px
are the same number on the same model and rows (`rigpose.metrics.heldout_view_px`), the gate's figure too."""

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
