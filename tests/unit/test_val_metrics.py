"""Validation MPJPE / PA-MPJPE during training: the same numbers as `rigpose.metrics`'s single-view section, only
for the val split, only where rows carry joints_3d, and one fixed-size all-reduce per rank whatever its shard held."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rigpose import geometry as g
from rigpose import metrics as ev
from rigpose.config import ModelConfig
from rigpose.data.pipeline import Preprocess, build_datasets, labels_3d, split_has_3d
from rigpose.data.reader import Dataset
from rigpose.data.schema import Frames, frames_for_rig, frames_from_table, frames_to_table
from rigpose.data.writer import DatasetWriter
from rigpose.inference.lift import lift_single, model_batch
from rigpose.model.lifter import Lifter
from rigpose.resources import rigs_dir
from rigpose.rig import Rig, load_rig
from rigpose.skeleton import H36M17
from rigpose.train.loop import validate

ROOTS = H36M17.root_joints
ROWS = 10


def _rig(rig_id: str) -> Rig:
    return load_rig(rigs_dir() / f"{rig_id}.json")


def _frames(rig: Rig, *, seed: int, labelled: bool, sequence: str = "take") -> Frames:
    """Noisy 2D of random poses; with labels: a few unlabelled joints, an unknown root, a whole unlabelled row."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.3, (ROWS, 17, 3)) + np.array([0.0, 0.0, 1.0])
    pix = np.stack([g.project(X, cam) for cam in rig.cameras], 1) + rng.normal(0, 2.0, (ROWS, len(rig.cameras), 17, 2))
    pix[3, 1] = np.nan  # a view with no 2D at all: not a pose
    pix[5, 0, 2:4] = np.nan
    joints_3d = None
    if labelled:
        joints_3d = X.astype(np.float32)
        joints_3d[1, 4:6] = np.nan  # unlabelled joints are left out of the pose's mean
        joints_3d[2, ROOTS[0]] = np.nan  # unknown root: no root-relative pose
        joints_3d[6] = np.nan  # a row without labels
    return frames_for_rig(rig, sequence=sequence, keypoints=pix, subject="S1", joints_3d=joints_3d)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    """A 4-camera rig's labelled rows, then an 8-camera rig's unlabelled ones (null joints_3d)."""
    return pa.concat_tables([frames_to_table(_frames(_rig("h36m-s1"), seed=0, labelled=True)),
                             frames_to_table(_frames(_rig("studio-8"), seed=1, labelled=False))])


@pytest.fixture(scope="module")
def model() -> Lifter:
    torch.manual_seed(0)
    return Lifter(ModelConfig(width=32, num_blocks=1, dropout=0.0), num_joints=17).eval()


def _val_batches(table: pa.Table, blocks: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """What the val dataset yields: Preprocess(eval_3d) on each block of rows, as tensors."""
    prep = Preprocess(num_joints=17, num_views=8, root_joints=ROOTS, with_3d=False, eval_3d=True)
    return [{k: torch.from_numpy(v) for k, v in prep(table.slice(a, n)).items()} for a, n in blocks]


# labelled rows only / labelled and unlabelled rows / unlabelled rows only (joints_3d from an all-null column)
BLOCKS = [(0, 6), (6, 8), (14, 6)]


def _reference(model: Lifter, table: pa.Table) -> dict[str, float]:
    """rigpose.metrics's single-view MPJPE / PA-MPJPE, NumPy, on the same rows (mean over the finite poses)."""
    frames = frames_from_table(table, num_joints=17, num_views=8, with_3d=True)
    batch = model_batch(frames, H36M17)  # 2D only
    rel, _ = lift_single(model, batch)  # [B, V, J, 3], NaN for views without 2D and padding
    R, t = batch["R"].double().numpy(), batch["t"].double().numpy()
    gt = ev.root_relative(g.world_to_camera(frames.joints_3d.astype(np.float64)[:, None], R, t), ROOTS)
    out = {}
    for name, fn in (("mpjpe_mm", ev.mpjpe), ("pa_mpjpe_mm", ev.pa_mpjpe)):
        per_pose = fn(rel, gt)
        out[name] = float(per_pose[np.isfinite(per_pose)].mean())
    return out


def test_validate_mpjpe_equals_rigpose_evaluate_single_view_on_the_same_frames(model: Lifter,
                                                                                 table: pa.Table) -> None:
    out = validate(model, _val_batches(table, BLOCKS), root_joints=ROOTS)
    ref = _reference(model, table)
    assert set(out) == {"reprojection_px", "mpjpe_mm", "pa_mpjpe_mm"}
    for name, value in ref.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-15, err_msg=name)  # the metric functions themselves
    assert out["pa_mpjpe_mm"] < out["mpjpe_mm"]


def test_validate_counts_only_labelled_views_that_have_2d(model: Lifter, table: pa.Table) -> None:
    # 10 rows x 4 real views of the labelled rig, less the unlabelled row, the unknown-root row and one view
    # without 2D; the 8-camera rig's rows have no labels: counted through a reduce that records the sums
    seen: list[torch.Tensor] = []
    validate(model, _val_batches(table, BLOCKS), root_joints=ROOTS, reduce=lambda x: seen.append(x) or x)
    (total,) = seen
    assert total.shape == (6,) and total.dtype == torch.float64
    assert total[3] == total[5] == (ROWS - 2) * 4 - 1


def test_a_val_split_without_3d_labels_gives_no_mpjpe_keys(model: Lifter, table: pa.Table) -> None:
    unlabelled = _val_batches(table, [(ROWS, ROWS)])  # eval_3d columns present, every joints_3d_ok 0
    assert float(unlabelled[0]["joints_3d_ok"].sum()) == 0
    no_columns = [{k: v for k, v in b.items() if not k.startswith("joints_3d")} for b in unlabelled]
    for batches in (unlabelled, no_columns, []):
        out = validate(model, batches, root_joints=ROOTS)
        assert set(out) == {"reprojection_px"}
    assert validate(model, unlabelled, root_joints=ROOTS) == validate(model, no_columns, root_joints=ROOTS)


@pytest.mark.parametrize("halves", [(BLOCKS[:2], BLOCKS[2:]), (BLOCKS, [])],
                         ids=["one-rank-without-labels", "one-rank-without-batches"])
def test_two_ranks_summed_by_reduce_give_the_one_pass_metrics(model: Lifter, table: pa.Table,
                                                              halves: tuple[list, list]) -> None:
    ranks = [_val_batches(table, blocks) for blocks in halves]
    local: list[torch.Tensor] = []  # each rank's own sums: what it hands to the all-reduce
    for batches in ranks:
        validate(model, batches, root_joints=ROOTS, reduce=lambda x: local.append(x.clone()) or x)
    assert [x.shape for x in local] == [(6,), (6,)]  # the same collective on both ranks
    per_rank = [validate(model, batches, root_joints=ROOTS, reduce=lambda x, r=r: x + local[1 - r])
                for r, batches in enumerate(ranks)]
    whole = validate(model, _val_batches(table, BLOCKS), root_joints=ROOTS)
    for out in per_rank:
        assert set(out) == set(whole) == {"reprojection_px", "mpjpe_mm", "pa_mpjpe_mm"}
        for name in whole:
            np.testing.assert_allclose(out[name], whole[name], rtol=1e-6, err_msg=name)


def test_labels_3d_masks_unknown_rows_and_joints_and_keeps_the_keys_of_an_unlabelled_block(table: pa.Table) -> None:
    labelled = labels_3d(table.slice(0, ROWS), num_joints=17)
    X = frames_from_table(table.slice(0, ROWS), num_joints=17).joints_3d
    ok = np.isfinite(X).all(-1)
    assert not ok[6].any() and not ok[1, 4:6].any() and ok.sum() == ROWS * 17 - 17 - 2 - 1
    np.testing.assert_array_equal(labelled["joints_3d_ok"], ok.astype(np.float32))
    np.testing.assert_array_equal(labelled["joints_3d"], np.where(ok[..., None], X, 0.0))
    empty = labels_3d(table.slice(ROWS, ROWS), num_joints=17)
    assert {k: (v.shape, v.dtype) for k, v in empty.items()} == {k: (v.shape, v.dtype) for k, v in labelled.items()}
    assert not empty["joints_3d_ok"].any() and not empty["joints_3d"].any()


def test_preprocess_refuses_required_and_optional_labels_together() -> None:
    with pytest.raises(ValueError, match=r"with_3d .* eval_3d"):
        Preprocess(num_joints=17, num_views=8, root_joints=ROOTS, with_3d=True, eval_3d=True)


# ---------------------------------------------------------------------------------------------- with Ray


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """train: labelled (so that a leak would show); val: one labelled and one unlabelled rig; test: unlabelled."""
    root = str(tmp_path_factory.mktemp("val_metrics") / "ds")
    four, eight = _rig("h36m-s1"), _rig("studio-8")
    with DatasetWriter(root, skeleton=H36M17, command="test_val_metrics") as w:
        w.add(_frames(four, seed=2, labelled=True, sequence="train-a"), four, split="train")
        w.add(_frames(eight, seed=3, labelled=True, sequence="train-b"), eight, split="train")
        w.add(_frames(four, seed=0, labelled=True, sequence="val-a"), four, split="val")
        w.add(_frames(eight, seed=1, labelled=False, sequence="val-b"), eight, split="val")
        w.add(_frames(four, seed=4, labelled=False, sequence="test-a"), four, split="test")
        w.commit()
    return Dataset(root)


def test_split_has_3d_reads_it_from_the_parquet_footers(dataset: Dataset) -> None:
    assert split_has_3d(dataset, "train") and split_has_3d(dataset, "val")
    assert not split_has_3d(dataset, "test")
    assert not split_has_3d(dataset, "val", rig_ids=["studio-8"])


@pytest.mark.parametrize("with_3d", [False, True], ids=["2d", "3d-baseline"])
@pytest.mark.parametrize(("val_split", "labelled"), [("val", True), ("test", False)])
def test_build_datasets_asks_for_labels_in_val_only_when_it_has_them_and_in_train_only_for_the_3d_baseline(
        dataset: Dataset, monkeypatch: pytest.MonkeyPatch, with_3d: bool, val_split: str, labelled: bool) -> None:
    from rigpose.config import DataConfig
    from rigpose.data import pipeline

    calls: dict[str, dict] = {}
    monkeypatch.setattr(pipeline, "read_split", lambda ds, split, **kw: calls.setdefault(split, kw))
    data = DataConfig(url=dataset.root, train_split="train", val_split=val_split, cache=False)
    build_datasets(data, dataset, with_3d=with_3d, seed=0)
    assert (calls["train"]["with_3d"], calls["train"]["eval_3d"]) == (with_3d, False)
    assert (calls[val_split]["with_3d"], calls[val_split]["eval_3d"]) == (False, labelled)



@pytest.mark.slow
def test_build_datasets_gives_val_the_3d_labels_and_2d_training_never(dataset: Dataset, local_ray: None,
                                                                     model: Lifter) -> None:
    from rigpose.config import DataConfig

    data = DataConfig(url=dataset.root, train_split="train", val_split="val", cache=False)
    out = build_datasets(data, dataset, with_3d=False, seed=0, with_pseudo=False)
    assert not {"joints_3d", "joints_3d_ok"} & set(out["train"].schema().names)  # labelled rows, never read
    # the worker's path: one split with a labelled and an unlabelled shard, batched across blocks
    batches = list(out["val"].iter_torch_batches(batch_size=7, dtypes=torch.float32))
    assert all({"joints_3d", "joints_3d_ok"} <= set(b) for b in batches)
    val = validate(model, batches, root_joints=ROOTS)
    ref = _reference(model, dataset.read_table(splits=["val"]))
    for name, value in ref.items():
        np.testing.assert_allclose(val[name], value, rtol=1e-5, err_msg=name)
