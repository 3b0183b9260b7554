"""Checks on rows before they enter a dataset: per-row quarantine reasons and whole-input refusals.

Shape letters: N rows (frames), V views, J joints.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rigpose.data.manifest import DatasetError
from rigpose.data.schema import Frames

QUARANTINE_REASONS = np.array(["", "infinite keypoint", "non-finite score", "non-finite camera",
                               "NaN keypoint with non-zero score", "no valid view", "infinite joints_3d"],
                              dtype=object)


def _per_row(a: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N, X]: one row of values per frame (a view when `a` is contiguous)."""
    return a.reshape(len(a), -1) if len(a) else a.reshape(0, 0)


def _rows_all_finite(a: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N] bool, every value of the row finite. A row broadcast over N is checked once."""
    if len(a) and a.strides[0] == 0:
        return np.broadcast_to(np.isfinite(a[0]).all(), (len(a),))
    return np.isfinite(_per_row(a)).all(1)


def _any_per_row(bad: np.ndarray) -> np.ndarray | bool:
    """[N, ...] bool -> [N] any per row; plain False when nothing is set (one quick pass over the whole array)."""
    return _per_row(bad).any(1) if bad.any() else False


def quarantine_codes(frames: Frames) -> np.ndarray:
    """[N] int8 index into `QUARANTINE_REASONS` (0 = good row): the first failing check of `quarantine_reasons`."""
    kp, sc = frames.keypoints, frames.scores
    # Per coordinate, not `.any(-1)`: NumPy reduces a size-2 last axis one row at a time (~10x slower).
    kp_nan = np.isnan(kp[..., 0]) | np.isnan(kp[..., 1])
    checks = [
        _any_per_row(np.isinf(kp)),
        _any_per_row(~np.isfinite(sc)),
        ~np.all([_rows_all_finite(a) for a in frames.cameras], axis=0),
        _any_per_row(kp_nan & (sc != 0)),
        ~_per_row(frames.valid()).any(1),
    ]
    if frames.joints_3d is not None:
        checks.append(_any_per_row(np.isinf(frames.joints_3d)))
    codes = np.zeros(len(frames), dtype=np.int8)
    for code, bad in reversed(list(enumerate(checks, start=1))):  # the first check that fails wins
        codes[bad] = code
    return codes


def quarantine_reasons(frames: Frames) -> np.ndarray:
    """[N] reason strings ("" = good row) for rows that must not enter a dataset.

    Infinite values anywhere, a NaN keypoint whose score is not 0, or no valid view at all. (NaN with score 0
    is the normal way to say "missing" and is kept.)
    """
    return QUARANTINE_REASONS[quarantine_codes(frames)]


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N] values -> (same [N-1] bool: row i+1 equals row i, first value of each run of equal values)."""
    same = values[1:] == values[:-1]
    return same, values[np.concatenate([[0], np.flatnonzero(~same) + 1])] if len(values) else values[:0]


def distinct(values: np.ndarray) -> list[Any]:
    """Sorted distinct values of [N] `values` (as `np.unique`), fast when equal values come in runs."""
    return sorted(set(_runs(values)[1].tolist()))


def sequence_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(values, return_inverse=True)` of [N] values: (sorted distinct values [S], code [N] int64 into
    them), the sort done on the runs of equal values only (the rows of a sequence come in runs)."""
    values = np.asarray(values)
    if not len(values):
        return values[:0], np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
    names, run_code = np.unique(values[starts], return_inverse=True)
    return names, np.repeat(run_code.reshape(-1).astype(np.int64), np.diff(np.append(starts, len(values))))


def unordered_steps(sequence: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where `frame` [N] does not strictly increase within a sequence (its rows in their order), in one sort.

    Returns (names [S]: the sorted distinct sequences, code [N] and frames [N]: every row's sequence (index into
    names) and frame with the rows grouped by sequence (stable: each sequence's rows in their order), bad [B]:
    positions p into those where rows p and p + 1 are one sequence's consecutive rows and the frame does not
    increase). `bad` ascends: by sequence name, then row.
    """
    names, code = sequence_codes(sequence)
    order = np.argsort(code, kind="stable")
    code, frames = code[order], np.asarray(frame)[order]
    bad = np.flatnonzero((code[1:] == code[:-1]) & (frames[1:] <= frames[:-1]))
    return names, code, frames, bad


def unordered_sequences(sequence: np.ndarray, frame: np.ndarray) -> list[Any]:
    """The sequences (sorted) of [N] `sequence` whose `frame` [N] does not strictly increase in row order."""
    names, code, _, bad = unordered_steps(sequence, frame)
    return names[np.unique(code[bad])].tolist()


def check_frames(frames: Frames, *, source: str) -> None:
    """Whole-input errors (not row quarantine): scores outside [0, 1], non-monotonic frames within a sequence."""
    sc = frames.scores
    bad = (sc < 0) | (sc > 1)
    if bad.any():
        bad &= np.isfinite(sc)  # +-inf is quarantined per row, not refused
    if bad.any():
        n, v, j = np.argwhere(bad)[0]
        raise DatasetError(
            f"{source}: field 'scores' outside [0, 1]: {sc[n, v, j]} at row {n}, view {v}, joint {j}"
        )
    if len(frames) < 2:
        return
    # Fast path: each sequence is one run of rows and frames increase within runs. Else group rows by sequence.
    same, starts = _runs(frames.sequence)
    if len(set(starts.tolist())) == len(starts) and (np.diff(frames.frame)[same] > 0).all():
        return
    names, code, f, steps = unordered_steps(frames.sequence, frames.frame)
    if len(steps):
        p = int(steps[0])  # the first bad step of the first bad sequence (by name)
        i = p - int(np.searchsorted(code, code[p]))  # the step's place among that sequence's rows
        raise DatasetError(
            f"{source}: field 'frame' not strictly increasing in sequence {names[code[p]]!r}: {f[p]} then "
            f"{f[p + 1]} at row {i + 1}"
        )
