"""The streaming read (rigpose.data.pipeline.read_split): one fused read+preprocess task per Parquet row group,
blocks of at most the preprocessing size, the same rows as preprocessing the whole split at once, and a new
row-group order every epoch when shuffled."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rigpose.data import writer
from rigpose.data.pipeline import MODEL_COLUMNS, Preprocess, ReadPreprocess, read_split, row_groups
from rigpose.data.reader import Dataset
from rigpose.data.schema import frames_for_rig
from rigpose.geometry import project
from rigpose.resources import rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17

GROUP = 100  # rows per row group in these tests (the writer's is 16384)
ROWS = {"h36m-s1": 730, "studio-8": 260}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = str(tmp_path_factory.mktemp("stream") / "ds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "ROW_GROUP_ROWS", GROUP)
        with writer.DatasetWriter(root, skeleton=H36M17, command="test_streaming_read") as w:
            for seed, (rig_id, T) in enumerate(ROWS.items()):
                rig = load_rig(rigs_dir() / f"{rig_id}.json")
                rng = np.random.default_rng(seed)
                X = rng.normal(0, 0.3, (T, 17, 3)) + np.array([0.0, 0.0, 1.0])
                pix = np.stack([project(X, cam) for cam in rig.cameras], 1)
                w.add(frames_for_rig(rig, sequence=f"take-{rig_id}", keypoints=pix, subject="S1", joints_3d=X,
                                     frame=np.arange(T)), rig, split="train")
            w.commit()
    return Dataset(root)


def _prep(ds: Dataset) -> Preprocess:
    return Preprocess(num_joints=17, num_views=ds.manifest.max_views, root_joints=H36M17.root_joints,
                      with_3d=False, with_pseudo=False)


def _whole(ds: Dataset) -> dict[str, np.ndarray]:
    """The reference: the split's shards in manifest order, preprocessed as one block."""
    tables = [t.select(list(MODEL_COLUMNS)) for _, t in ds.iter_tables(splits=["train"])]
    return _prep(ds)(pa.concat_tables(tables))


def test_row_groups_cover_every_row_of_the_split_in_groups_of_the_writers_size(dataset: Dataset) -> None:
    groups = row_groups(dataset, "train")
    assert sum(g["rows"] for g in groups) == sum(ROWS.values())
    assert len(groups) == sum(-(-n // GROUP) for n in ROWS.values())  # ceil per rig's shard
    assert max(g["rows"] for g in groups) == GROUP
    assert row_groups(dataset, "train", rig_ids=["studio-8"]) == [g for g in groups if "studio-8" in g["url"]]


def test_read_preprocess_yields_blocks_of_at_most_its_rows_matching_the_whole_split(dataset: Dataset) -> None:
    groups = row_groups(dataset, "train")
    fn = ReadPreprocess(_prep(dataset), list(MODEL_COLUMNS), rows=40)
    blocks = list(fn({"url": np.array([g["url"] for g in groups]),
                      "row_group": np.array([g["row_group"] for g in groups])}))
    assert max(len(b["root_world"]) for b in blocks) == 40
    # a 100-row group gives 40 + 40 + 20: blocks never span groups
    assert [len(b["root_world"]) for b in blocks[:3]] == [40, 40, 20]
    ref = _whole(dataset)
    for key, value in ref.items():
        np.testing.assert_array_equal(np.concatenate([b[key] for b in blocks]), value, err_msg=key)
    with pytest.raises(ValueError, match="rows"):
        ReadPreprocess(_prep(dataset), list(MODEL_COLUMNS), rows=0)


def test_the_ray_read_gives_the_split_in_order_and_a_new_group_order_every_shuffled_epoch(
        dataset: Dataset, local_ray: None) -> None:
    from ray.data import DataContext

    ref = _whole(dataset)
    ctx = DataContext.get_current()
    before, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True  # orders comparable
    try:
        _check_orders(dataset, ref)
    finally:
        ctx.execution_options.preserve_order = before


def _check_orders(dataset: Dataset, ref: dict[str, np.ndarray]) -> None:
    plain = read_split(dataset, "train", with_pseudo=False).take_batch(batch_size=10_000)
    np.testing.assert_array_equal(plain["root_world"], ref["root_world"])
    shuffled = read_split(dataset, "train", with_pseudo=False, shuffle_seed=3)
    epochs = [shuffled.take_batch(batch_size=10_000)["root_world"] for _ in range(2)]
    key = np.lexsort(ref["root_world"].T)
    for roots in epochs:  # the same rows each epoch
        np.testing.assert_array_equal(roots[np.lexsort(roots.T)], ref["root_world"][key])
    assert not np.array_equal(epochs[0], ref["root_world"]) and not np.array_equal(epochs[0], epochs[1])
    assert len(read_split(dataset, "train", with_pseudo=False, max_rows=150).take_all()) == 150
