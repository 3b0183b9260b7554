"""Choosing the same person in every view of a multi-person frame, from the rig's geometry alone.

A detector sees everybody; a multi-view row must hold one person. Without tracked ids, `choose_people` picks per
frame the combination (one candidate per view, or none) whose views agree best in 3D. A frame where no view holds
more than one person is kept as detected (its quality is the quarantine's and the training's business), unless the
sequence has several people in some frame (`crowd`: then each view may have missed a different one of them, and
three or more views holding one person each are checked as below); otherwise:

1. Candidates per view are ranked by their torso confidence (mean score of shoulders and hips); at most
   `max_candidates` per view and the 3 views with the most confident candidate propose, so a frame costs at most
   3 x 6 x 6 = 108 hypotheses, whatever the crowd (all of a frame's are scored at once, vectorised).
2. Each pair of candidates from two proposing views is triangulated (shoulders and hips, weighted DLT on the
   undistorted normalised coordinates) and reprojected into every view; each view takes its candidate nearest
   the reprojection (median torso distance, px) if it lies within the gate, `gate_fraction` (0.3) of the
   reprojected torso's length (shoulder centre to hip centre), else nobody (that person was not detected
   there). The point is then refitted on all the views taken and the views choose again, twice.
3. Score (MSAC): the root mean over the views that hold people of the error squared where taken, the gate squared
   where not. Hypotheses seen by fewer than 2 views are out. Among those within `consistent_ratio` (1.5) x the
   best score + 1 px (two real people, both consistent), the one within `same_person_m` (0.3 m) of the previous
   frame's choice in 3D is kept, so a sequence follows one person while both are seen equally well; then the
   best score. No hypothesis seen by 2 views: each view keeps its most confident person.

Measured on two people 1 m apart (a translated copy of one pose, so only geometry tells them apart), 4 cameras,
4 px detector noise, each person missed in 10% of the views: 4 of 1,584 views took a person more than 30 px away
from the frame's chosen person; 3 cameras, 8 px, 0.6 m apart: 39 of 1,144. The choice may switch from one person
to the other when a miss makes the other one better seen: give tracked ids (`person_id`) to follow one person.
People within a fraction of a torso of each other in one view cannot be told apart there.

Shape letters: V views, P people (candidates) of a view, C candidates kept, A torso joints, N proposals, J joints.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np

from rigpose.geometry import CameraArrays, project, triangulate_normalized, undistort

TORSO = (5, 6, 11, 12)  # coco17 left/right shoulder, left/right hip: the joints detectors find most reliably


def torso_confidence(score_PJ: np.ndarray) -> np.ndarray:
    """Mean torso score [P] of people with scores [P, J] (coco17; 0 = missing)."""
    return np.asarray(score_PJ)[:, list(TORSO)].mean(-1)


def torso_normalized(kp_PJ2: np.ndarray, camera: Any) -> np.ndarray:
    """Undistorted normalised coordinates [P, A, 2] of the torso joints of people kp [P, J, 2] (px) seen by
    `camera` (NaN stays NaN). Batch many frames' people into one call: undistortion is the costly step."""
    return np.asarray(undistort(np.asarray(kp_PJ2, np.float64)[:, list(TORSO)], camera))


def choose_people(
    cands: list[Any],
    torso_xy: list[np.ndarray | None],
    cameras: CameraArrays,
    gate_px: np.ndarray,
    *,
    previous: np.ndarray | None = None,
    max_candidates: int = 6,
    gate_fraction: float = 0.3,
    consistent_ratio: float = 1.5,
    same_person_m: float = 0.3,
    crowd: bool = False,
) -> list[int]:
    """Index of the chosen person in each view (-1: nobody). `cands[v]`: None or an object with `kp` [P, J, 2]
    pixels (NaN missing) and `score` [P, J]; `torso_xy[v]`: `torso_normalized` of those people; `cameras` fields
    [V, ...]; `gate_px` [V] the largest gate per view (px); `previous`: torso_xy [V, A, 2] of the last frame's
    choice (NaN where that view had nobody), for continuity; `crowd`: the sequence has several people somewhere,
    so views holding one person each may hold different people and are checked too. See the module docstring."""
    conf = [torso_confidence(c.score) if c is not None else np.zeros(0) for c in cands]
    if all(len(c) <= 1 for c in conf) and not (crowd and sum(len(c) > 0 for c in conf) > 2):
        return [0 if len(c) else -1 for c in conf]
    keep = [np.argsort(-c, kind="stable")[:max_candidates] for c in conf]
    best_first = [int(k[0]) if len(k) else -1 for k in keep]
    seen = [v for v, k in enumerate(keep) if len(k)]
    if len(seen) < 2:
        return best_first
    V, A, C = len(cands), len(TORSO), max(len(k) for k in keep)
    torso = np.full((V, C, A, 2), np.nan)  # candidates' torso pixels
    xy = np.full((V, C, A, 2), np.nan)  # ... undistorted, normalised
    tconf = np.zeros((V, C))
    for v, k in enumerate(keep):
        if len(k):
            torso[v, : len(k)] = cands[v].kp[k][:, list(TORSO)]
            xy[v, : len(k)] = np.asarray(torso_xy[v])[k]
            tconf[v, : len(k)] = conf[v][k]
    top = sorted(seen, key=lambda v: -conf[v][keep[v][0]])[:3]
    props = np.array([(i, a, j, b) for i, j in itertools.combinations(sorted(top), 2)
                      for a in range(len(keep[i])) for b in range(len(keep[j]))])
    assign, err, gate, centre = _score_proposals(props, torso, xy, cameras, gate_px, gate_fraction)
    if (assign >= 0).sum(-1).max() < 2:  # no two views agree on anyone: the most confident per view
        return best_first
    # MSAC: an explained view costs its error squared, a view with people but none explained costs the gate squared
    has = np.array([len(k) > 0 for k in keep])
    rms = np.sqrt(np.where(assign >= 0, err**2, np.where(has, gate**2, 0.0)).sum(-1) / has.sum())  # [N] px
    pool = ((assign >= 0).sum(-1) >= 2) & np.isfinite(centre).all(-1)  # seen consistently by 2+ views
    pool &= rms <= consistent_ratio * rms[pool].min() + 1.0
    prev = _centre(previous, cameras)
    if prev is not None and pool.sum() > 1:
        # two people both consistent: follow the previous frame's person (its best hypothesis)
        dist = np.linalg.norm(centre - prev, axis=-1)
        pool &= dist <= dist[pool].min() + same_person_m
    rank = np.where(pool, rms, np.inf)
    n = int(np.argmin(rank))
    return [int(keep[v][c]) if c >= 0 else -1 for v, c in enumerate(assign[n])]


def _score_proposals(props: np.ndarray, torso: np.ndarray, xy: np.ndarray, cameras: CameraArrays,
                     gate_px: np.ndarray, gate_fraction: float) -> tuple[np.ndarray, ...]:
    """For proposals [N, 4] = (view i, candidate a, view j, candidate b): the candidate each view takes
    (assign [N, V], -1 none), its median torso reprojection error [N, V] px, the gate [N, V] px and the torso
    centre [N, 3] m. The pair's point picks the views' candidates, then the point is refitted on every picked view
    and the views pick again (twice): a combination mixing two people then shows in every view's error."""
    views = props[:, [0, 2]]  # [N, 2]
    xy_pair = np.stack([xy[props[:, 0], props[:, 1]], xy[props[:, 2], props[:, 3]]], 1)  # [N, 2, A, 2]
    R, t = np.asarray(cameras.R), np.asarray(cameras.t)
    X = _triangulate(xy_pair, R[views], t[views])  # [N, A, 3]
    V = torso.shape[0]
    for step in range(3):
        assign, err, gate = _nearest(X, torso, cameras, gate_px, gate_fraction)
        if step == 2:
            break
        picked = xy[np.arange(V), np.maximum(assign, 0)]  # [N, V, A, 2]
        X_all = _triangulate(np.where((assign >= 0)[..., None, None], picked, np.nan), R, t)
        X = np.where(np.isfinite(X_all), X_all, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # torsos nobody triangulated
        centre = np.nanmean(X, axis=1)  # [N, 3]
    return assign, err, gate, centre


def _triangulate(xy: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Torso points [..., A, 3] from normalised xy [..., V, A, 2] (NaN = not seen) of cameras R, t [..., V, ...]."""
    w = np.isfinite(xy).all(-1).astype(np.float64)
    return triangulate_normalized(np.nan_to_num(xy), R, t, w)


def _nearest(X: np.ndarray, torso: np.ndarray, cameras: CameraArrays, gate_px: np.ndarray,
             gate_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per proposal and view, the candidate nearest to the reprojected torso X [N, A, 3]: (assign [N, V], -1 when
    beyond the gate; its median torso distance [N, V] px; the gate [N, V] px = `gate_fraction` of the reprojected
    torso's length, at least 3 px, at most `gate_px`)."""
    proj = project(X[:, None], cameras)  # [N, V, A, 2]
    d = np.linalg.norm(proj[:, :, None] - torso[None], axis=-1)  # [N, V, C, A]
    # TORSO = shoulders then hips: the torso's length is shoulder-centre to hip-centre
    length = np.linalg.norm(proj[:, :, :2].mean(-2) - proj[:, :, 2:].mean(-2), axis=-1)  # [N, V]
    gate = np.clip(np.where(np.isfinite(length), gate_fraction * length, gate_px[None]), 3.0, gate_px[None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: candidate padding, unseen torsos
        e = np.nanmedian(d, axis=-1)  # [N, V, C]
    e = np.where(np.isfinite(e), e, np.inf)
    best = e.argmin(-1)  # [N, V]
    best_err = np.take_along_axis(e, best[..., None], -1)[..., 0]
    return np.where(best_err <= gate, best, -1), best_err, gate


def _centre(torso_xy: np.ndarray | None, cameras: CameraArrays) -> np.ndarray | None:
    """Triangulated torso centre [3] (m) of one person's torso_xy [V, A, 2]; None where it cannot be had."""
    if torso_xy is None:
        return None
    w = np.isfinite(torso_xy).all(-1).astype(np.float64)
    X = triangulate_normalized(np.nan_to_num(torso_xy), np.asarray(cameras.R), np.asarray(cameras.t), w)
    X = X[np.isfinite(X).all(-1)]
    return X.mean(0) if len(X) else None
