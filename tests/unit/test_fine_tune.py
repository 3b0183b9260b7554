"""Fine-tuning: early stopping on the label-free validation metric, and real rows mixed with a second (synthetic)
dataset's by a ratio; a tiny local-Ray training puts them together with a warm start (`model.init_from`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rigpose_testing import synthetic_batch, to_torch

from rigpose.config import LossConfig, ModelConfig, TrainJob, load_job
from rigpose.data.pipeline import build_datasets, check_mix, epoch_rows, mix_rows
from rigpose.data.reader import Dataset
from rigpose.data.schema import Frames, frames_for_rig
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.model.checkpoint import MODEL_FILE, load_lifter, save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import rigs_dir
from rigpose.rig import Rig, load_rig
from rigpose.skeleton import DEEPMIMIC16, H36M17, Skeleton
from rigpose.train import trainer
from rigpose.train.early_stop import early_stop
from rigpose.train.loop import EpochResult, fit
from rigpose.train.worker import STATE_FILE

# ------------------------------------------------------------------------------------------- early stopping


def _history(values: list[float | None]) -> list[dict[str, float]]:
    return [{"epoch": e, **({"val/reprojection_px": v} if v is not None else {})} for e, v in enumerate(values)]


def test_early_stopping_stops_after_patience_epochs_without_a_relative_improvement() -> None:
    values = [10.0, 9.0, 8.95, 9.5, 8.0]  # 8.95 is not 1% below 9.0; nor is 9.5
    states = [early_stop(_history(values[:n]), patience=2, min_delta=0.01) for n in range(1, 6)]
    assert [s.best_epoch for s in states[:4]] == [0, 1, 1, 1]
    assert [s.stale for s in states[:4]] == [0, 0, 1, 2]
    assert [s.stop for s in states] == [False, False, False, True, False]  # a later recovery restarts the count
    assert states[3].best == 9.0
    assert not early_stop(_history([10.0, 9.99, 9.98]), patience=2, min_delta=0.0).stop  # any decrease counts


def test_missing_or_non_finite_validation_values_never_count_as_the_best() -> None:
    state = early_stop(_history([None, math.nan, 5.0, math.inf]), patience=3, min_delta=0.01)
    assert (state.best_epoch, state.best, state.stale, state.stop) == (2, 5.0, 1, False)
    assert early_stop(_history([None, None]), patience=2, min_delta=0.0).stop  # no metric at all: nothing improves
    with pytest.raises(ValueError, match="patience"):
        early_stop([], patience=0, min_delta=0.0)


def test_early_stopping_needs_a_validation_split_and_is_off_by_default() -> None:
    assert load_job(None).optim.early_stop_patience is None
    with pytest.raises(ValueError, match=r"optim\.early_stop_patience needs data\.val_split"):
        load_job(None, ["optim.early_stop_patience=3", "data.val_split=null"])
    with pytest.raises(ValueError, match=r"field optim\.early_stop_patience"):
        load_job(None, ["optim.early_stop_patience=0"])


def test_fit_ends_after_the_epoch_whose_callback_says_stop() -> None:
    torch.manual_seed(0)
    model = Lifter(ModelConfig(width=16, num_blocks=1), num_joints=16)
    data = [to_torch(synthetic_batch(num_frames=4, seed=s)) for s in range(3)]
    seen: list[int] = []

    def on_epoch(result: EpochResult, step: int) -> bool:
        seen.append(result.epoch)
        return result.epoch == 1

    step = fit(model, torch.optim.Adam(model.parameters()), None, DEEPMIMIC16, train_batches=lambda e: data,
               val_batches=None, total_steps=30, loss_cfg=LossConfig(), supervision="2d", dropout=0.0,
               dropout_mode="constant", grad_clip=1.0, on_epoch=on_epoch)
    assert seen == [0, 1] and step == 6


def test_the_registered_versions_metrics_are_those_of_the_epoch_model_pt_holds() -> None:
    from rigpose.train.publish import model_epoch

    plain = [{"epoch": 0, "val/reprojection_px": 9.0}, {"epoch": 1, "val/reprojection_px": 8.0}]
    assert model_epoch(plain) == plain[1] and model_epoch([]) == {}
    stopped = [{**h, "best_epoch": 0, "stopped_early": float(h["epoch"] == 2)}
               for h in _history([5.0, 5.5, 6.0])]
    assert model_epoch(stopped)["val/reprojection_px"] == 5.0


# ------------------------------------------------------------------------------------------------ datasets

RIG_REAL, RIG_SYNTH = "h36m-s1", "studio-8"  # 4 and 8 cameras: a row's view count tells its dataset
ROWS_REAL, ROWS_VAL, ROWS_SYNTH = 40, 16, 24


def _frames(rig_id: str, rows: int, *, seed: int, skeleton: Skeleton, sequence: str) -> tuple[Frames, Rig]:
    rig = load_rig(rigs_dir() / f"{rig_id}.json")
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.3, (rows, skeleton.num_joints, 3)) + np.array([0.0, 0.0, 1.0])
    pix = np.stack([project(X, cam) for cam in rig.cameras], 1)  # [T, V, J, 2]
    return frames_for_rig(rig, sequence=sequence, keypoints=pix, subject="S1", joints_3d=X), rig


def _write(root: Path, parts: list[tuple[str, int, str]], *, skeleton: Skeleton = H36M17) -> str:
    """A committed dataset at `root`: (rig, rows, split) per sequence."""
    with DatasetWriter(str(root), skeleton=skeleton, command="test_fine_tune") as w:
        for i, (rig_id, rows, split) in enumerate(parts):
            frames, rig = _frames(rig_id, rows, seed=i, skeleton=skeleton, sequence=f"take-{split}-{i}")
            w.add(frames, rig, split=split)
        w.commit()
    return str(root)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """real: 4-camera train + val rows; synth: 8-camera train rows (three shards); other: another skeleton."""
    tmp = tmp_path_factory.mktemp("fine_tune")
    return {"real": _write(tmp / "real", [(RIG_REAL, ROWS_REAL, "train"), (RIG_REAL, ROWS_VAL, "val")]),
            "synth": _write(tmp / "synth", [(RIG_SYNTH, 8, "train")] * 3 + [(RIG_SYNTH, 5, "val")]),
            "other": _write(tmp / "other", [(RIG_REAL, 8, "train")], skeleton=DEEPMIMIC16)}


def test_an_epoch_takes_all_real_rows_and_the_ratio_of_mixed_in_rows(datasets: dict[str, str]) -> None:
    assert (mix_rows(40, 0.5), mix_rows(40, 0.2), mix_rows(30, 0.25), mix_rows(7, 0.01)) == (40, 10, 10, 0)
    real = Dataset(datasets["real"])
    assert epoch_rows(load_job(None, [f"data.url={real.root}"]).data, real) == (ROWS_REAL, 0)
    mixed = load_job(None, [f"data.url={real.root}", f"data.mix_url={datasets['synth']}", "data.mix_ratio=0.2"])
    assert epoch_rows(mixed.data, real) == (ROWS_REAL, 10)
    assert epoch_rows(mixed.model_copy(update={"data": mixed.data.model_copy(update={"max_rows": 20})}).data,
                      real) == (20, 5)
    with pytest.raises(ValueError, match=r"field data\.mix_ratio"):
        load_job(None, ["data.mix_ratio=1"])


def test_a_mix_of_another_skeleton_is_refused_naming_both_datasets(datasets: dict[str, str]) -> None:
    real, other = Dataset(datasets["real"]), Dataset(datasets["other"])
    job = load_job(None, [f"data.url={real.root}", f"data.mix_url={other.root}"])
    with pytest.raises(ValueError, match=(rf"^data\.mix_url '{other.root}': its skeleton is 'deepmimic16', that of "
                                          rf"data\.url '{real.root}' is 'h36m17'")):
        check_mix(real, other, job.data)
    with pytest.raises(ValueError, match=r"^data\.mix_url .*: no split 'test' \(data\.train_split\) to mix in"):
        check_mix(real, Dataset(datasets["synth"]), load_job(None, ["data.train_split=test"]).data)


def _job(datasets: dict[str, str], out: Path, *overrides: str) -> TrainJob:
    return load_job(None, [f"data.url={datasets['real']}", "data.batch_size=16", "model.width=32",
                           "model.num_blocks=1", "model.dropout=0", f"run.output_dir={out}", "run.name=ft",
                           "tracking.enabled=false", *overrides])


def test_a_mix_of_another_skeleton_is_refused_before_ray_starts_and_before_run_json(
        datasets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ray(address: str | None) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(trainer, "init_ray", no_ray)
    with pytest.raises(ValueError, match=r"^data\.mix_url .*its skeleton is 'deepmimic16'"):
        trainer.train(_job(datasets, tmp_path, f"data.mix_url={datasets['other']}"))
    with pytest.raises(ValueError, match=r"^data\.mix_url: .*not a RigPose dataset"):
        trainer.train(_job(datasets, tmp_path, f"data.mix_url={tmp_path / 'nothing'}"))
    assert not (tmp_path / "ft").exists()


def test_steps_per_epoch_count_the_mixed_in_rows(datasets: dict[str, str], tmp_path: Path) -> None:
    real = Dataset(datasets["real"])
    assert trainer.steps_per_epoch(_job(datasets, tmp_path), real) == ROWS_REAL // 16
    job = _job(datasets, tmp_path, f"data.mix_url={datasets['synth']}", "data.mix_ratio=0.5")
    assert trainer.steps_per_epoch(job, real) == (ROWS_REAL + ROWS_REAL) // 16


def test_the_mix_is_recorded_in_the_lineage_and_a_changed_one_refuses_to_resume(
        datasets: dict[str, str], tmp_path: Path) -> None:
    from rigpose.tracking.runs import run_params, run_tags

    real = Dataset(datasets["real"])
    job = _job(datasets, tmp_path, f"data.mix_url={datasets['synth']}", "data.mix_ratio=0.2")
    opened = trainer.open_mix(job, real)
    assert opened is not None
    mix = opened[1]
    sha = trainer.manifest_sha256(real)
    assert mix == {"dataset": datasets["synth"], "manifest_sha256": trainer.manifest_sha256(opened[0]),
                   "ratio": 0.2, "rows_per_epoch": 10}
    tags = run_tags(job, run_dir="r", manifest_sha256=sha, rig_ids=[RIG_REAL], mix=mix)
    assert (tags["rigpose.rig_ids"], tags["rigpose.manifest_sha256"]) == (RIG_REAL, sha)  # the real dataset's
    assert (tags["rigpose.mix_dataset"], tags["rigpose.mix_manifest_sha256"], tags["rigpose.mix_ratio"]) == (
        datasets["synth"], mix["manifest_sha256"], "0.2")
    params = run_params(job, manifest_sha256=sha, rig_ids=[RIG_REAL], mix=mix)
    assert (params["dataset.mix_manifest_sha256"], params["data.mix_ratio"]) == (mix["manifest_sha256"], "0.2")
    assert "rigpose.mix_dataset" not in run_tags(job, run_dir="r", manifest_sha256=sha, rig_ids=[RIG_REAL])
    run_dir = str(tmp_path / "run")
    trainer._write_json(run_dir, trainer.RUN_FILE, trainer._run_record(job, sha, mix=mix))
    moved = {**mix, "dataset": "s3://elsewhere/synth"}  # the same data somewhere else still resumes
    assert trainer._check_resumable(run_dir, trainer._run_record(job, sha, mix=moved))
    for other in ({**mix, "ratio": 0.3}, None):
        with pytest.raises(ValueError, match=r"another mixed-in dataset \(data\.mix_url manifest, data\.mix_ratio\)"):
            trainer._check_resumable(run_dir, trainer._run_record(job, sha, mix=other))


# ------------------------------------------------------------------------------------------------ with Ray



def _epoch_rows(rd: Any) -> tuple[int, int, set[bytes]]:
    """(real rows, mixed-in rows, the mixed-in rows' fingerprints) of one pass: 4 views = real, 8 = synth."""
    real = synth = 0
    seen: set[bytes] = set()
    for batch in rd.iter_batches(batch_size=None, batch_format="numpy"):
        views = batch["view_mask"].sum(-1)
        real += int((views == 4).sum())
        synth += int((views == 8).sum())
        seen |= {row.tobytes() for row in batch["kp"][views == 8].round(3)}
    return real, synth, seen


@pytest.mark.slow
@pytest.mark.parametrize(("cache", "ratio", "num_synth"), [(True, 0.2, 10), (True, 0.6, 60), (False, 0.2, 10)],
                         ids=["cached-fewer", "cached-repeated", "streaming-fewer"])  # streaming-repeated: ~1 min
def test_every_epoch_has_all_real_rows_and_the_ratio_of_mixed_in_ones(
        datasets: dict[str, str], local_ray: None, cache: bool, ratio: float, num_synth: int) -> None:
    real = Dataset(datasets["real"])
    job = load_job(None, [f"data.url={real.root}", f"data.mix_url={datasets['synth']}", f"data.mix_ratio={ratio}",
                          f"data.cache={str(cache).lower()}"])
    out = build_datasets(job.data, real, with_3d=False, seed=0, with_pseudo=False, mix=Dataset(datasets["synth"]))
    epochs = [_epoch_rows(out["train"]) for _ in range(2)]
    assert [(r, s) for r, s, _ in epochs] == [(ROWS_REAL, num_synth)] * 2
    if num_synth > ROWS_SYNTH:  # repeated: every row of the synthetic set is in
        assert all(len(seen) == ROWS_SYNTH for _, _, seen in epochs)
    elif cache:  # a new selection every epoch, from all over the synthetic set
        assert epochs[0][2] != epochs[1][2]
    val_views = {int(v) for b in out["val"].iter_batches(batch_format="numpy") for v in b["view_mask"].sum(-1)}
    assert val_views == {4}  # validation: the real dataset only


@pytest.mark.slow
def test_a_fine_tune_with_a_mix_stops_early_and_writes_the_best_epochs_weights(
        datasets: dict[str, str], local_ray: None, tmp_path: Path) -> None:
    torch.manual_seed(3)
    champion = Lifter(ModelConfig(width=32, num_blocks=1), num_joints=17)
    save_lifter(tmp_path / "champion" / MODEL_FILE, champion, H36M17, meta={"run_name": "champion"})
    # min_delta 0.99: no epoch after the first can count as better, so it stops after epoch 2 (patience 2) of 6
    job = _job(datasets, tmp_path / "runs", f"model.init_from={tmp_path / 'champion'}",
               f"data.mix_url={datasets['synth']}", "data.mix_ratio=0.5", "optim.epochs=6", "optim.warmup_steps=0",
               "optim.early_stop_patience=2", "optim.early_stop_min_delta=0.99", "run.checkpoints_to_keep=10")
    assert job.model.init_weights == str(tmp_path / "champion")
    out = trainer.train(job)
    history = out["history"]
    assert (out["stopped_early"], out["best_epoch"]) == (True, 0)
    assert [h["steps"] for h in history] == [(ROWS_REAL + ROWS_REAL) // 16] * 3  # 40 real + 40 mixed-in rows
    assert [h["best_epoch"] for h in history] == [0, 0, 0]
    assert [h["stopped_early"] for h in history] == [0.0, 0.0, 1.0]
    states = {s["epoch"]: s for s in (torch.load(p / STATE_FILE, weights_only=False)
                                      for p in (tmp_path / "runs" / "ft").glob("checkpoint_*") if p.is_dir())}
    assert sorted(states) == [0, 1, 2]
    model, _, meta = load_lifter(out["model"])
    for k, v in model.state_dict().items():  # epoch 0's weights, not the last epoch's
        torch.testing.assert_close(v, states[0]["model"][k], rtol=0, atol=0)
    assert any(not torch.equal(v, states[2]["model"][k]) for k, v in model.state_dict().items())
    assert (meta["best_epoch"], meta["stopped_early"]) == (0, True)
    mix_sha = trainer.manifest_sha256(Dataset(datasets["synth"]))
    assert meta["mix"] == {"dataset": datasets["synth"], "manifest_sha256": mix_sha, "ratio": 0.5,
                           "rows_per_epoch": ROWS_REAL}
    assert meta["init_weights"]["resolved"] == str(tmp_path / "champion")
    run_json = json.loads((tmp_path / "runs" / "ft" / trainer.RUN_FILE).read_text())
    assert run_json["mix"] == meta["mix"]
    again = trainer.train(job)  # the same run again: it stopped early, so there is nothing more to train
    assert again["resumed"] and len(again["history"]) == 3 and again["best_epoch"] == 0
