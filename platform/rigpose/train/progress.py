"""The driver's one training progress display, fed by the lines rank 0 prints (forwarded by Ray to the driver).

Rank 0 prints `[rigpose] progress {json}` every few seconds (`progress_line`) and `[rigpose] epoch E/N step S/T ...`
after every epoch. On a terminal the driver shows one bar over the run's optimizer steps (its budget: epoch, step of
the budget, last epoch's loss, frames/s) with the epoch lines above it; off a terminal (make, CI, a log file) the
epoch lines are the periodic lines, plus a progress line when an epoch runs for long without one.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from types import TracebackType
from typing import Any

from rigpose.cluster.connect import MARK, set_worker_line_sink

PROGRESS = f"{MARK} progress "
PLAIN_EVERY_S = 30.0  # off a terminal: a progress line when nothing was printed for this long


def progress_line(*, epoch: int, epochs: int, step: int, steps: int | None, loss: float | None,
                  frames_per_s: float, global_step: int | None = None, total_steps: int | None = None) -> str:
    """The line rank 0 prints: epoch 0-based, step within the epoch, steps per epoch (None: not known yet),
    loss of the last finished epoch; `global_step` of `total_steps`: the run's steps so far, of its budget."""
    fields: dict[str, Any] = {"epoch": epoch, "epochs": epochs, "step": step, "steps": steps, "loss": loss,
                              "frames_per_s": round(frames_per_s, 1)}
    if global_step is not None:
        fields.update(global_step=global_step, total_steps=total_steps)
    return PROGRESS + json.dumps(fields)


class TrainingProgress:
    """Context manager around `fit()`: takes the forwarded worker lines (see `rigpose.cluster.connect`) and shows
    them as one bar on a terminal or as plain lines otherwise. `steps_per_epoch`: the driver's count; `total_steps`:
    the run's budget (the bar's length; None: a bar of `epochs`)."""

    def __init__(self, *, epochs: int, steps_per_epoch: int | None, total_steps: int | None = None) -> None:
        self.epochs, self.steps, self.total_steps = epochs, steps_per_epoch, total_steps
        self.tty = sys.stdout.isatty()
        self.last_print = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> TrainingProgress:
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]train[/bold]"), BarColumn(), TextColumn("{task.fields[text]}"),
                                 TimeElapsedColumn(), transient=False)
            total = float(self.total_steps if self.total_steps else self.epochs)
            self._task = self._bar.add_task("train", total=total, text="starting Ray workers")
            self._bar.start()
        set_worker_line_sink(self.line)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        set_worker_line_sink(None)
        if self._bar is not None:
            self._bar.stop()

    def line(self, line: str) -> None:
        """One forwarded worker line."""
        if not line.startswith(PROGRESS):
            self._print(line)
            return
        try:
            p = json.loads(line[len(PROGRESS):])
        except json.JSONDecodeError:
            return
        self.steps = p.get("steps") or self.steps
        loss = f" loss {p['loss']:.4g}" if p.get("loss") is not None else ""
        if p.get("global_step") is not None:  # the run's step of its budget
            self.total_steps = p.get("total_steps") or self.total_steps
            of = f"/{self.total_steps}" if self.total_steps else ""
            where = f"step {p['global_step']}{of}"
        else:
            where = f"step {p['step']}{f'/{self.steps}' if self.steps else ''}"
        text = f"epoch {p['epoch'] + 1}/{p['epochs']} {where}{loss} {p['frames_per_s']:.0f} frames/s"
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done(p), text=text)
        elif time.monotonic() - self.last_print >= PLAIN_EVERY_S:
            self._print(f"{MARK} {text}")

    def _done(self, p: dict[str, Any]) -> float:
        """How far a progress line is, in the bar's unit (steps of the budget, else epochs)."""
        if self.total_steps and p.get("global_step") is not None:
            return float(p["global_step"])
        return p["epoch"] + (min(p["step"] / self.steps, 1.0) if self.steps else 0.0)

    def _print(self, line: str) -> None:
        self.last_print = time.monotonic()
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
            if line.startswith(f"{MARK} epoch "):
                words = line.split()
                with contextlib.suppress(IndexError, ValueError):  # "[rigpose] epoch E/N step S/T ...": to S
                    if not self.total_steps:  # a bar of epochs: to the end of E
                        self._bar.update(self._task, completed=float(words[2].split("/")[0]))
                    elif words[3] == "step":
                        self._bar.update(self._task, completed=float(words[4].split("/")[0]))
        else:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
