"""rigpose.inference.lift_ray: Ray Data batch inference from an MLflow registry model (sqlite registry in tmp,
local Ray)
writes the same rows as the in-process `predict.lift_dataset` with the same weights, fails clearly on a bad URI, and
leaves no file behind when it fails."""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from rigpose.config import ModelConfig
from rigpose.data.reader import Dataset, iter_frames
from rigpose.data.synth.build import build_dataset, load_recipe
from rigpose.data.synth.recipe import ProceduralMotion
from rigpose.inference.lift import lift_dataset
from rigpose.inference.lift_ray import lift_dataset_ray
from rigpose.model.checkpoint import save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import recipes_dir
from rigpose.skeleton import DEEPMIMIC16
from rigpose.tracking.registry import absolute_mlflow_uri, pin_model_uri

NAME = "bl-lifter"
pytestmark = pytest.mark.slow  # a local Ray and its actors: ~30-60 s for the module on 2 cores


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    from rigpose.cluster.connect import init_ray, shutdown_ray

    init_ray(None)
    yield
    shutdown_ray()


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The tiny dataset, a small random lifter file, and that file registered as NAME@candidate in a sqlite MLflow
    (the process's tracking URI points there for the module)."""
    from mlflow.tracking import MlflowClient

    from rigpose.tracking.pyfunc import example_input
    from rigpose.tracking.registry import register
    from rigpose.tracking.runs import TrackingTarget, mlflow_uri

    root = tmp_path_factory.mktemp("batch_lift")
    recipe = load_recipe(recipes_dir() / "tiny.yaml")
    if importlib.util.find_spec("pybullet_data") is None:  # no mocap clips here: procedural motion instead
        recipe = recipe.model_copy(update={
            "motion": ProceduralMotion(source="procedural", num_sequences=4, seconds=4),
            "splits": recipe.splits.model_copy(update={"held_out_clips": []})})
    build_dataset(recipe, str(root / "tiny"), progress=False)
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=16, root_joints=(0,))
    save_lifter(root / "model.pt", model, DEEPMIMIC16)

    target = TrackingTarget(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="t",
                            artifact_location=(root / "art").as_uri())
    client = MlflowClient(target.uri)
    run_id = client.create_run(client.create_experiment("t", artifact_location=target.artifact_location)).info.run_id
    frames = next(iter_frames(Dataset(str(root / "tiny")), split="test", batch_size=2, max_rows=2))
    example = example_input(frames.keypoints, frames.scores, frames.cameras, frames.view_mask)
    reg = register(target, run_id=run_id, model_file=str(root / "model.pt"), example=example, name=NAME, tags={})
    with mlflow_uri(target.uri):  # restores the process-wide URI and $MLFLOW_TRACKING_URI afterwards
        yield {"data": str(root / "tiny"), "model": str(root / "model.pt"), "dir": str(root), "uri": target.uri,
               "version": reg.version}


def _sorted(table: pa.Table, mode: str) -> pa.Table:
    keys = ["rig_id", "sequence", "frame", *(["view"] if mode == "single" else [])]
    return table.sort_by([(k, "ascending") for k in keys])


def _assert_same_rows(got: pa.Table, want: pa.Table, mode: str) -> None:
    got, want = _sorted(got, mode), _sorted(want, mode)
    assert got.schema.equals(want.schema, check_metadata=False)
    assert got.num_rows == want.num_rows
    for name in got.column_names:
        a, b = got.column(name), want.column(name)
        if pa.types.is_list(a.type):
            assert a.is_null().equals(b.is_null()), name
            x = np.asarray(a.drop_null().to_pylist(), np.float64)
            y = np.asarray(b.drop_null().to_pylist(), np.float64)
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0, err_msg=name)
        else:
            assert a.to_pylist() == b.to_pylist(), name


@pytest.mark.parametrize("mode", ["multi"])  # single view: the model-file test below; both share lift_frames
def test_ray_lift_from_the_registry_writes_the_rows_of_the_in_process_lift(
        registered: dict[str, str], local_ray: None, mode: str) -> None:
    import os

    env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    out = Path(registered["dir"]) / f"ray_{mode}.parquet"
    ref = Path(registered["dir"]) / f"ref_{mode}.parquet"
    info = lift_dataset_ray(f"models:/{NAME}@candidate", registered["data"], split="test", out_url=str(out),
                            mode=mode, batch_size=16, concurrency=2)
    want = lift_dataset(registered["model"], registered["data"], split="test", out_url=str(ref), mode=mode,
                        batch_size=16)
    got = pq.read_table(out)
    _assert_same_rows(got, pq.read_table(ref), mode)
    assert (info["rows"], info["frames"]) == (want["rows"], want["frames"])
    assert info["model"] == f"models:/{NAME}/{registered['version']}"  # the alias, pinned for every actor
    meta = got.schema.metadata
    assert meta[b"rigpose.model"] == f"models:/{NAME}@candidate".encode() and meta[b"rigpose.mode"] == mode.encode()
    assert {k: v for k, v in meta.items() if k != b"rigpose.model"} == {
        k: v for k, v in pq.read_schema(ref).metadata.items() if k != b"rigpose.model"}
    assert not list(Path(registered["dir"]).glob(".*.tmp"))
    # MLflow's process-wide URIs are left alone (a leaked registry URI broke later runs in the same process)
    assert {k: os.environ.get(k) for k in env_before} == env_before


def _copy_with_bad_pages(src: str, dst: Path, column: str) -> Path:
    """A copy of dataset `src` whose test shard has unreadable pages in `column` (its page headers overwritten)."""
    shutil.copytree(src, dst)
    shard = dst / Dataset(str(dst)).shards(splits=["test"])[0].path
    meta = pq.read_metadata(shard)
    data = bytearray(shard.read_bytes())
    for rg in range(meta.num_row_groups):
        for i in range(meta.num_columns):
            chunk = meta.row_group(rg).column(i)
            if chunk.path_in_schema.split(".")[0] == column:
                for offset in (chunk.dictionary_page_offset, chunk.data_page_offset):
                    if offset:
                        data[offset:offset + 16] = b"\xff" * 16
    shard.write_bytes(bytes(data))
    with pytest.raises(OSError, match="page header"):
        pq.read_table(shard, columns=[column])
    return dst


def test_ray_lift_of_a_model_file_never_reads_joints_3d_and_keeps_row_order_and_max_rows(
        registered: dict[str, str], local_ray: None, tmp_path: Path) -> None:
    no3d = _copy_with_bad_pages(registered["data"], tmp_path / "bad3d", "joints_3d")
    out, ref = tmp_path / "ray_file.parquet", tmp_path / "ref_file.parquet"
    info = lift_dataset_ray(registered["model"], str(no3d), split="test", out_url=str(out), batch_size=7,
                            max_rows=30, concurrency=1)
    lift_dataset(registered["model"], registered["data"], split="test", out_url=str(ref), batch_size=7, max_rows=30)
    got, want = pq.read_table(out), pq.read_table(ref)
    assert info["frames"] == 30 and got.num_rows == want.num_rows == info["rows"]
    assert info["model"] == registered["model"]
    assert got.equals(want)  # the same rows in the same order (single view: no batch dependence)


def test_a_bad_model_uri_raises_value_error_naming_it(registered: dict[str, str], tmp_path: Path) -> None:
    for uri in (f"models:/{NAME}@nope", "models:/no-such-model/3", "runs:/0123456789abcdef/model"):
        with pytest.raises(ValueError, match=re.escape(uri)):
            lift_dataset_ray(uri, registered["data"], split="test", out_url=str(tmp_path / "x.parquet"))
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="@nope"):
        pin_model_uri(f"models:/{NAME}@nope")


def test_a_run_that_fails_while_writing_leaves_no_file(registered: dict[str, str], local_ray: None,
                                                       tmp_path: Path) -> None:
    bad = _copy_with_bad_pages(registered["data"], tmp_path / "badkp", "keypoints")
    out = tmp_path / "out" / "lift.parquet"
    with pytest.raises(OSError, match="page header"):  # raised by a Ray read task while the file is open
        lift_dataset_ray(f"models:/{NAME}@candidate", str(bad), split="test", out_url=str(out), batch_size=16,
                         concurrency=1)
    assert out.parent.is_dir() and not any(out.parent.iterdir())  # neither the file nor its temp file
    with pytest.raises(ValueError, match="is a directory"):
        lift_dataset_ray(f"models:/{NAME}@candidate", registered["data"], split="test", out_url=str(tmp_path))


def test_relative_sqlite_uris_are_made_absolute_for_the_actors(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_mlflow_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert absolute_mlflow_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_mlflow_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_lift_cli_names_a_bad_registry_model_and_keeps_ray_options_for_ray_runs(registered: dict[str, str],
                                                                               tmp_path: Path) -> None:
    """(A successful `rigpose lift --model models:/...` run: tests/integration/test_mlflow.py, S3 to S3.)"""
    from rigpose.cli.evaluate import app
    out = tmp_path / "cli.parquet"
    r = CliRunner().invoke(app, ["lift", "--model", "models:/nope@x", "--data", registered["data"],
                                 "--out", str(out)])
    assert r.exit_code == 1 and "models:/nope@x" in r.output
    r = CliRunner().invoke(app, ["lift", "--model", registered["model"], "--data", registered["data"],
                                 "--out", str(out), "--concurrency", "2"])
    assert r.exit_code == 1 and "--ray" in r.output
