"""The training pipeline's per-block preprocessing and rig selection, without Ray, on a real 4+8-camera dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rigpose import geometry as g
from rigpose.data.pipeline import MODEL_COLUMNS, Preprocess, check_rig_ids
from rigpose.data.reader import Dataset
from rigpose.data.schema import Frames, frames_for_rig
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.model.inputs import ROOT_BUDGET_M, UNDISTORT_BUDGET_PX, prepare_arrays
from rigpose.resources import rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17

RIG_VIEWS = {"h36m-s1": 4, "studio-8": 8}
ROWS = {"h36m-s1": 12, "studio-8": 9}


def _frames(rig, *, seed: int) -> Frames:
    """Random H36M17 poses near the capture centre, seen by every camera of `rig`, a few keypoints missing."""
    rng = np.random.default_rng(seed)
    T = ROWS[rig.rig_id]
    X = rng.normal(0, 0.3, (T, 17, 3)) + np.array([0.0, 0.0, 1.0])
    pix = np.stack([project(X, cam) for cam in rig.cameras], 1)  # [T, V, J, 2]
    pix[2, 1, 5] = np.nan  # missing keypoints: NaN, and score 0 (frames_for_rig's default)
    pix[4, 0, 11:13] = np.nan
    return frames_for_rig(rig, sequence=f"take-{rig.rig_id}", keypoints=pix, subject="S1", joints_3d=X)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = str(tmp_path_factory.mktemp("pipeline") / "ds")
    with DatasetWriter(root, skeleton=H36M17, command="test_pipeline") as w:
        for seed, rig_id in enumerate(RIG_VIEWS):
            rig = load_rig(rigs_dir() / f"{rig_id}.json")
            w.add(_frames(rig, seed=seed), rig, split="train")
        w.commit()
    return Dataset(root)


def _model_table(ds: Dataset, columns: list[str]) -> pa.Table:
    """The shards of every rig as the pipeline reads them: Parquet files straight from the manifest's URLs."""
    return pa.concat_tables([pq.read_table(url, columns=columns) for url in ds.shard_urls(splits=["train"])])


def _preprocess(ds: Dataset, *, with_3d: bool = False, with_pseudo: bool = True) -> Preprocess:
    return Preprocess(num_joints=ds.skeleton.num_joints, num_views=ds.manifest.max_views,
                      root_joints=ds.skeleton.root_joints, with_3d=with_3d, with_pseudo=with_pseudo)


def test_the_test_dataset_holds_two_rigs_with_different_camera_counts(dataset: Dataset) -> None:
    assert {r: int(info["num_cameras"]) for r, info in dataset.manifest.rigs.items()} == RIG_VIEWS
    assert dataset.manifest.max_views == 8
    assert sorted({s.rig_id for s in dataset.shards(splits=["train"])}) == sorted(RIG_VIEWS)


def test_preprocess_pads_every_row_to_the_largest_rig_with_zero_weight_on_padded_views(dataset: Dataset) -> None:
    table = _model_table(dataset, list(MODEL_COLUMNS))
    out = _preprocess(dataset)(table)
    views = table.column("num_views").to_numpy().astype(int)
    assert sorted(np.unique(views)) == [4, 8]
    assert out["kp"].shape == (sum(ROWS.values()), 8, 17, 2) and out["w"].shape == (sum(ROWS.values()), 8, 17)
    np.testing.assert_array_equal(out["view_mask"].sum(1), views)
    padded = np.arange(8)[None, :] >= views[:, None]  # [N, V]
    assert padded.any()
    np.testing.assert_array_equal(out["view_mask"][padded], 0.0)
    np.testing.assert_array_equal(out["w"][padded], 0.0)
    np.testing.assert_array_equal(out["kp"][padded], 0.0)
    np.testing.assert_array_equal(out["xy"][padded], 0.0)
    # on real views a keypoint weighs its score (1), except the 3 per rig written missing (score 0)
    real = out["w"][~padded]
    assert np.isin(real, [0.0, 1.0]).all() and (real == 0.0).sum() == 3 * len(RIG_VIEWS)
    assert out["root_ok"].all()


def test_a_block_of_only_4_camera_rows_is_still_padded_to_the_datasets_8_views(dataset: Dataset) -> None:
    (url,) = dataset.shard_urls(splits=["train"], rig_ids=["h36m-s1"])
    out = _preprocess(dataset)(pq.read_table(url, columns=list(MODEL_COLUMNS)))
    assert out["kp"].shape == (ROWS["h36m-s1"], 8, 17, 2)
    np.testing.assert_array_equal(out["view_mask"], np.repeat([[1.0] * 4 + [0.0] * 4], ROWS["h36m-s1"], 0))


def test_preprocess_equals_prepare_arrays_on_the_same_rows_read_by_the_dataset_reader(dataset: Dataset) -> None:
    out = _preprocess(dataset)(_model_table(dataset, list(MODEL_COLUMNS)))
    frames = dataset.read_frames(with_3d=False, splits=["train"])
    ref = prepare_arrays(frames.keypoints, frames.scores, frames.cameras, frames.view_mask,
                         root_joints=H36M17.root_joints)
    assert set(out) == set(ref)
    for key in ref:
        np.testing.assert_array_equal(out[key], ref[key], err_msg=key)


@pytest.mark.parametrize("rig_id", ["h36m-s1", "studio-8"])
def test_float32_preprocessing_agrees_with_a_float64_reference_within_budget(rig_id: str) -> None:
    rng = np.random.default_rng(3)
    rig = load_rig(rigs_dir() / f"{rig_id}.json")
    N, V = 400, len(rig.cameras)
    X = rig.capture_center() + rng.normal(0, 0.4, (N, 17, 3))
    cams = g.CameraArrays(*(np.broadcast_to(a, (N, *a.shape)) for a in rig.arrays()))
    kp = (g.project(X[:, None], cams) + rng.normal(0, 5.0, (N, V, 17, 2))).astype(np.float32)  # as stored
    kp[rng.random((N, V, 17)) < 0.05] += np.float32(200.0)  # outliers
    scores = rng.uniform(0.2, 1.0, (N, V, 17)).astype(np.float32)
    kp[scores < 0.3] = np.nan
    scores[scores < 0.3] = 0.0
    view_mask = rng.random((N, V)) > 0.1
    out = prepare_arrays(kp, scores, cams, view_mask, root_joints=H36M17.root_joints)
    # the float64 reference: every step in float64 from the same (float32) keypoints, NaN where not valid
    valid = np.isfinite(kp).all(-1) & (scores > 0) & view_mask[..., None]
    kp64 = np.where(valid[..., None], kp.astype(np.float64), np.nan)
    xy = g.undistort(kp64, cams)
    X_ref = g.triangulate_robust(kp64, cams, np.where(valid, scores, 0.0))
    err_px = np.abs(out["xy"] - np.where(valid[..., None], xy, 0.0)).max(-1) * cams.K[..., 0, 0][..., None]
    assert err_px.max() < UNDISTORT_BUDGET_PX
    ok = np.isfinite(X_ref).all(-1)
    assert ok.mean() > 0.9
    np.testing.assert_array_equal(out["pseudo_ok"], ok)
    err_m = np.linalg.norm(out["pseudo_world"] - np.where(ok[..., None], X_ref, 0.0), axis=-1)
    far = np.linalg.norm(X_ref - rig.capture_center(), axis=-1) > 5.0  # ill-posed: nearly parallel rays
    assert err_m[ok & ~far].max() < ROOT_BUDGET_M
    assert (err_m[ok & far] < 1e-5 * np.linalg.norm(X_ref[ok & far], axis=-1)).all()  # relative, float32 inputs
    root_ref = X_ref[:, list(H36M17.root_joints)].mean(1)
    inside = np.isfinite(root_ref).all(-1) & (np.linalg.norm(root_ref - rig.capture_center(), axis=-1) < 5.0)
    np.testing.assert_allclose(out["root_world"][inside], root_ref[inside], atol=ROOT_BUDGET_M, rtol=0)


def test_preprocess_without_pseudo_3d_gives_the_same_root_and_no_pseudo_arrays(dataset: Dataset) -> None:
    table = _model_table(dataset, list(MODEL_COLUMNS))
    full, root_only = _preprocess(dataset)(table), _preprocess(dataset, with_pseudo=False)(table)
    assert set(full) - set(root_only) == {"pseudo_world", "pseudo_ok"}
    for key in root_only:
        np.testing.assert_allclose(root_only[key], full[key], atol=1e-6, err_msg=key)


def test_preprocess_needs_only_the_model_columns_when_2d_supervised(dataset: Dataset) -> None:
    table = _model_table(dataset, list(MODEL_COLUMNS))
    assert table.column_names == list(MODEL_COLUMNS)  # no joints_3d, no rig_id / split / sequence keys
    out = _preprocess(dataset)(table)
    assert "joints_3d" not in out and len(out["kp"]) == table.num_rows


def test_3d_supervision_on_rows_without_joints_3d_is_refused_by_name(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="joints_3d"):
        _preprocess(dataset, with_3d=True)(_model_table(dataset, list(MODEL_COLUMNS)))


def test_3d_supervision_passes_the_stored_joints_3d_through(dataset: Dataset) -> None:
    out = _preprocess(dataset, with_3d=True)(_model_table(dataset, [*MODEL_COLUMNS, "joints_3d"]))
    np.testing.assert_array_equal(out["joints_3d"], dataset.read_frames(splits=["train"]).joints_3d)


@pytest.mark.parametrize("rig_ids", [None, ["h36m-s1"], ["h36m-s1", "studio-8"]])
def test_check_rig_ids_accepts_all_rigs_or_rigs_the_dataset_has(dataset: Dataset, rig_ids: list[str] | None) -> None:
    assert check_rig_ids(dataset, rig_ids) is None


def test_check_rig_ids_names_the_field_and_the_unknown_rig(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match=r"data\.rig_ids: .* no rig \['nope'\]; it has \['h36m-s1', 'studio-8'\]"):
        check_rig_ids(dataset, ["h36m-s1", "nope"])


def test_check_rig_ids_refuses_an_empty_list(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match=r"data\.rig_ids: an empty list selects nothing"):
        check_rig_ids(dataset, [])
