"""What a person reads: of the Ray workers' output only rigpose's own lines reach the terminal, and training shows
one progress display (plain periodic lines when stdout is not a terminal). No Ray is started here."""

from __future__ import annotations

import pytest

from rigpose.cluster import connect
from rigpose.train import progress as tp


@pytest.fixture
def dispatcher():
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as d

    seen: list[dict] = []
    d.add_handler("ray_print_logs", seen.append)  # what ray.init(log_to_driver=True) installs
    yield d, seen
    d.remove_handler("ray_print_logs")
    connect.set_worker_line_sink(None)


def test_quiet_mode_forwards_only_rigpose_lines_from_ray_workers(dispatcher, capsys: pytest.CaptureFixture) -> None:
    d, seen = dispatcher
    connect._forward_only_rigpose_lines()
    d.emit({"pid": 1, "actor_name": "RayTrainWorker", "is_err": False, "lines": [
        "Reporting training result 1: TrainingReport(...)", "[rigpose] epoch 1/2 loss=3", "Checkpoint successfully",
        "[2026-12-01 E core_worker.cc:2465] ...", "[rigpose] resuming from the checkpoint of epoch 1/2 (step 5)"]})
    d.emit({"pid": 2, "actor_name": "SplitCoordinator", "is_err": True,
            "lines": ["Execution plan of Dataset train_0", "Progress bars disabled."]})
    assert not seen  # Ray's own printer is replaced, not kept beside ours
    assert capsys.readouterr().out.splitlines() == ["[rigpose] epoch 1/2 loss=3",
                                                    "[rigpose] resuming from the checkpoint of epoch 1/2 (step 5)"]


def test_piped_training_progress_is_the_epoch_lines_plus_a_line_when_an_epoch_runs_long(
        dispatcher, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    d, _ = dispatcher
    connect._forward_only_rigpose_lines()
    clock = [0.0]
    monkeypatch.setattr(tp.time, "monotonic", lambda: clock[0])

    def worker(*lines: str) -> None:
        d.emit({"pid": 1, "is_err": False, "lines": list(lines)})

    with tp.TrainingProgress(epochs=2, steps_per_epoch=10) as bar:
        assert not bar.tty  # pytest captures stdout
        for step in (2, 4):
            clock[0] += 2.0
            worker(tp.progress_line(epoch=0, epochs=2, step=step, steps=None, loss=None, frames_per_s=900.0))
        clock[0] += tp.PLAIN_EVERY_S
        worker(tp.progress_line(epoch=0, epochs=2, step=8, steps=None, loss=None, frames_per_s=950.0))
        worker("[rigpose] epoch 1/2 loss=3.5 1000 frames/s")
        clock[0] += 2.0
        worker(tp.progress_line(epoch=1, epochs=2, step=3, steps=10, loss=3.5, frames_per_s=1000.0))
    worker("[rigpose] after training")
    assert capsys.readouterr().out.splitlines() == [
        "[rigpose] epoch 1/2 step 8/10 950 frames/s", "[rigpose] epoch 1/2 loss=3.5 1000 frames/s",
        "[rigpose] after training"]


def test_a_progress_line_carries_epoch_step_loss_and_throughput() -> None:
    line = tp.progress_line(epoch=2, epochs=12, step=40, steps=77, loss=21.5, frames_per_s=1812.25)
    assert line.startswith("[rigpose] progress ")
    assert line.endswith('{"epoch": 2, "epochs": 12, "step": 40, "steps": 77, "loss": 21.5, "frames_per_s": 1812.2}')


def test_progress_counts_the_runs_steps_of_its_budget(dispatcher, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    d, _ = dispatcher
    connect._forward_only_rigpose_lines()
    clock = [0.0]
    monkeypatch.setattr(tp.time, "monotonic", lambda: clock[0])
    line = tp.progress_line(epoch=1, epochs=3, step=4, steps=7, loss=2.0, frames_per_s=800.0, global_step=11,
                            total_steps=20)
    assert line.endswith('"global_step": 11, "total_steps": 20}')
    with tp.TrainingProgress(epochs=3, steps_per_epoch=7, total_steps=20) as bar:
        clock[0] += tp.PLAIN_EVERY_S
        d.emit({"pid": 1, "is_err": False, "lines": [line]})
        assert bar._done({"epoch": 1, "step": 4, "global_step": 11}) == 11.0  # the bar runs over the 20 steps
    assert capsys.readouterr().out.splitlines() == ["[rigpose] epoch 2/3 step 11/20 loss 2 800 frames/s"]
