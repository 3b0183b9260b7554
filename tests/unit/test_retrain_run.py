"""The retrain cycle's guards and schedule (rigpose.retrain.run): periods, a held lease skips the cycle without
training, a cycle planned again under the lease skips what another retrain finished meanwhile, the schedule repeats
until SIGTERM, a dry run changes nothing, and a warm start keeps the champion's architecture and trains its share of
the budget at its share of the learning rate."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from rigpose_testing import REPO

from rigpose.config import ModelConfig, RetrainJob, load_job
from rigpose.resources import recipes_dir
from rigpose.retrain.run import (
    LEASE_FILE,
    Outcome,
    inherit_architecture,
    parse_every,
    retrain,
    run_every,
    warm_schedule,
)
from rigpose.storage import Lease, url_to_fs


def test_periods_are_parsed_and_bad_ones_named() -> None:
    assert [parse_every(t) for t in ("45s", "30m", "6h", "1d", "1.5h")] == [45, 1800, 21600, 86400, 5400]
    for bad in ("6", "h", "0h", "-1m", "6 hours"):
        with pytest.raises(ValueError, match="every"):
            parse_every(bad)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rigpose.data.synth.build import build_dataset

    out = str(tmp_path_factory.mktemp("retrain") / "tiny")
    build_dataset(str(recipes_dir() / "tiny.yaml"), out, progress=False)
    return out


def _job(dataset: str, tmp_path: Path) -> RetrainJob:
    return RetrainJob(train_job=str(REPO / "jobs" / "train.yaml"), overrides=[
        f"data.url={dataset}", f"run.output_dir={tmp_path / 'runs'}", "tracking.model_name=unit-lifter",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])


def test_a_dry_run_lists_every_rig_as_new_without_a_champion_and_trains_nothing(dataset: str, tmp_path: Path) -> None:
    lines: list[str] = []
    out = retrain(_job(dataset, tmp_path), dry_run=True, say=lines.append)
    assert out.status == "planned" and out.candidate is None
    assert "no unit-lifter@champion yet" in lines[0] and lines[1].startswith("  h36m-s1: new rig")
    assert "would train a candidate" in lines[-1] and not (tmp_path / "runs").exists()


def test_a_retrain_finding_the_lease_held_skips_its_cycle_and_trains_nothing(dataset: str, tmp_path: Path) -> None:
    fs, path = url_to_fs(dataset)
    lines: list[str] = []
    with Lease(fs, f"{path}/{LEASE_FILE}", owner="another retrain", ttl_s=60):
        out = retrain(_job(dataset, tmp_path), say=lines.append)
    assert out.status == "busy" and "another retrain" in lines[-1] and "skipping" in lines[-1]
    assert not (tmp_path / "runs").exists()


def test_a_retrain_that_finished_while_this_one_took_the_lease_stops_it_from_training_the_stale_plan(
        dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from rigpose.data.reader import Dataset
    from rigpose.train.trainer import manifest_sha256

    job = _job(dataset, tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    acquire = Lease.acquire

    def another_retrain_finishes_first(self: Lease) -> None:
        # between this cycle's plan and its lease, another retrain gated a candidate on exactly this manifest
        client.create_registered_model("unit-lifter")
        mv = client.create_model_version("unit-lifter", source=str(tmp_path / "model"))
        client.set_model_version_tag("unit-lifter", mv.version, "rigpose.retrain.manifest_sha256",
                                     manifest_sha256(Dataset(dataset)))
        client.set_model_version_tag("unit-lifter", mv.version, "rigpose.retrain.reason", "kept the champion: ...")
        acquire(self)

    monkeypatch.setattr(Lease, "acquire", another_retrain_finishes_first)
    lines: list[str] = []
    out = retrain(job, say=lines.append)
    assert "h36m-s1: new rig" in lines[1]  # the first plan saw new data ...
    assert out.status == "nothing new" and "was already gated (candidate version 1" in lines[-1]  # ... under the lease
    assert not (tmp_path / "runs").exists()  # nothing trained
    fs, path = url_to_fs(dataset)
    assert not fs.glob(f"{path}/_retrain/lease*.json")  # and the lease was given back


def test_the_schedule_repeats_and_stops_on_sigterm_after_the_current_cycle(dataset: str, tmp_path: Path) -> None:
    calls: list[float] = []

    def cycle(job: RetrainJob, **_: object) -> Outcome:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("storage was down")  # a failed cycle is reported; the schedule goes on
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # during a cycle: it finishes, then the schedule stops
        return Outcome(status="nothing new", plan=None)  # type: ignore[arg-type]

    job = _job(dataset, tmp_path).model_copy(update={"every": "1s"})
    lines: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    n = run_every(job, say=lines.append, cycle=cycle)
    assert n == len(calls) == 3 and calls[1] - calls[0] >= 0.95  # one period between cycles
    assert any("storage was down" in ln for ln in lines) and lines[-1] == "retrain schedule stopped after 3 cycle(s)"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_warm_started_candidate_keeps_the_champions_architecture_unless_the_retrain_job_sets_it() -> None:
    champion = ModelConfig(width=512, num_blocks=2, output="ray", dropout=0.5, frame="camera")  # before defaults moved
    sets = inherit_architecture(["data.url=s3://b/ds", "model.num_blocks=3"], champion)
    # num_blocks is the job's; dropout is no shape; the frame is inherited even where it equals today's default
    assert sets == ["model.width=512", "model.output=ray", "model.frame=camera"]
    job = load_job(REPO / "jobs" / "train.yaml", [*sets, "model.num_blocks=3"])
    assert (job.model.width, job.model.output, job.model.num_blocks) == (512, "ray", 3)
    assert job.model.dropout == ModelConfig().dropout


def test_a_warm_start_trains_its_fraction_of_the_budget_at_its_fraction_of_the_learning_rate() -> None:
    steps_job = load_job(REPO / "jobs" / "train.yaml", ["optim.steps=3000", "optim.lr=3e-4", "optim.min_steps=0"])
    job = RetrainJob(warm_budget=0.4, warm_lr=0.5)
    sets = warm_schedule(job, steps_job)
    assert sets == ["optim.steps=1200", "optim.lr=0.00015"]
    applied = load_job(REPO / "jobs" / "train.yaml", ["optim.steps=3000", *sets])
    assert (applied.optim.steps, applied.optim.lr) == (1200, pytest.approx(1.5e-4))
    # an epoch budget and a step floor scale alike, never to 0
    epochs_job = load_job(REPO / "jobs" / "train.yaml", ["optim.epochs=2", "optim.min_steps=500"])
    sets = warm_schedule(RetrainJob(warm_budget=0.1, warm_lr=1.0), epochs_job)
    assert sets == ["optim.epochs=1", "optim.min_steps=50"]
    # the defaults: half the budget at 0.3 of the rate; 1.0 and 1.0 = the training job's own schedule
    assert warm_schedule(RetrainJob(), steps_job) == ["optim.steps=1500", "optim.lr=9e-05"]
    assert warm_schedule(RetrainJob(warm_budget=1.0, warm_lr=1.0), steps_job) == []
    with pytest.raises(ValueError, match="warm_budget"):
        RetrainJob(warm_budget=0)
