"""Early stopping on the label-free validation metric, as a pure function of a run's per-epoch history.

A run with `optim.early_stop_patience: P` stops after the epoch that makes P epochs in a row without the metric
(`METRIC`, held-out-view reprojection px, lower is better) improving on its best by `optim.early_stop_min_delta`
(relative). The history holds every epoch since the run began (a resumed attempt restores it from its checkpoint),
so the decision after a resume is the one the straight run would have made. The validation metric is all-reduced
before any rank sees it: every rank takes the same decision from the same history (`rigpose.train.worker` also
agrees on it with one collective).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

METRIC = "val/reprojection_px"


@dataclass(frozen=True)
class EarlyStop:
    """Where a run stands: `best_epoch` (0-based, the one whose weights model.pt gets; None while no epoch had a
    finite metric), its `best` value, `stale` epochs since it, and whether to `stop` after the latest epoch."""

    best_epoch: int | None
    best: float | None
    stale: int
    stop: bool


def early_stop(history: Sequence[Mapping[str, float]], *, patience: int, min_delta: float,
               metric: str = METRIC) -> EarlyStop:
    """The early-stopping state after the last epoch of `history` (per-epoch metric dicts with "epoch", in order).

    An epoch is the new best when its `metric` is below best x (1 - `min_delta`) (the first finite one always is);
    a missing or non-finite value never improves. `stop` once `patience` epochs have passed since the best.
    """
    if patience < 1 or not 0 <= min_delta < 1:
        raise ValueError(f"early stopping: patience {patience} (>= 1), min_delta {min_delta} (0 <= it < 1)")
    best_epoch: int | None = None
    best: float | None = None
    stale = 0
    for h in history:
        value = h.get(metric)
        if value is not None and math.isfinite(value) and (best is None or value < best * (1.0 - min_delta)):
            best_epoch, best, stale = int(h["epoch"]), float(value), 0
        else:
            stale += 1
    return EarlyStop(best_epoch=best_epoch, best=best, stale=stale, stop=stale >= patience)
