"""The promotion gate: a candidate becomes @champion only if its label-free held-out-view error beats the champion's.

The figure is `rigpose.metrics.heldout_view_px` (via `rigpose evaluate`'s single-view heldout_px): the definition
training validation reports as val/reprojection_px. What a gate measured is stored on the candidate's model version
as tags `rigpose.gate.*` (its figure, the data, split and rows, the champion version and figure it was compared
against, the outcome), so a promotion can be checked later.

Per rig (for retraining on new rigs): `rig_scores` measures a model on every rig's validation rows alone, and
`decide` applies the retraining rule to the champion's and the candidate's tables: each rig the new data touched
must improve by at least `margin` (relative; for a new rig, against the champion's zero-shot error there), and no
other rig may get worse by more than `tolerance`. MPJPE is in the table where rows carry `joints_3d`, reported and
never required. A target rig whose calibration does not fit its own 2D (`calibration_offsets`: a camera whose
detections sit steadily more than `max_offset_px` from where the other cameras place the joints) refuses too:
reprojection through a wrong calibration misleads both training and the gate's own figure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from rigpose.tracking.registry import CHAMPION, client_for, download_lifter_file, promote

GATE_TAG_PREFIX = "rigpose.gate."


@dataclass(frozen=True)
class GateResult:
    """Candidate vs champion on the same data: the label-free held-out-view error (px, lower is better)."""

    candidate_version: str
    champion_version: str | None
    candidate_px: float
    champion_px: float | None
    promoted: bool


def champion_gate(name: str, candidate_version: str, *, data_url: str, split: str, uri: str | None = None,
                  max_rows: int | None = 5000, alias: str = CHAMPION) -> GateResult:
    """Evaluate the candidate and the current champion on `split` of `data_url` (single-view held-out-view
    reprojection error, needs no 3D labels); point `alias` at the candidate when there is no champion yet or the
    candidate's error is lower."""
    import shutil
    import tempfile

    from rigpose.inference.evaluate import evaluate

    client = client_for(uri)
    try:
        champion: str | None = str(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # no such alias yet
        champion = None
    tmp = tempfile.mkdtemp(prefix="rigpose-gate-")
    try:
        def heldout(version: str) -> float:
            weights = download_lifter_file(f"models:/{name}/{version}", f"{tmp}/v{version}", tracking_uri=uri)
            report = evaluate(weights, data_url, split=split, modes=("single",), max_rows=max_rows)
            return float(report["single"]["overall"]["heldout_px"])

        cand_px = heldout(candidate_version)
        champ_px = heldout(champion) if champion not in (None, str(candidate_version)) else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    promoted = champion is None or (champ_px is not None and cand_px < champ_px)
    record = {"heldout_px": f"{cand_px:.6g}", "data": data_url, "split": split,
              "max_rows": "all" if max_rows is None else str(max_rows), "alias": alias,
              "champion_version": champion or "none",
              "champion_heldout_px": "none" if champ_px is None else f"{champ_px:.6g}",
              "promoted": str(promoted).lower()}
    for key, value in record.items():  # before the alias moves: a promoted version always carries its figure
        client.set_model_version_tag(name, str(candidate_version), f"{GATE_TAG_PREFIX}{key}", value)
    if promoted:
        promote(name, candidate_version, alias, uri=uri)
    return GateResult(candidate_version=str(candidate_version), champion_version=champion, candidate_px=cand_px,
                      champion_px=champ_px, promoted=promoted)


@dataclass(frozen=True)
class RigScore:
    """A model on one rig's rows of a split: the label-free held-out-view error and, where labelled, MPJPE."""

    heldout_px: float
    mpjpe_mm: float | None
    frames: int


def _rigs_with_rows(data: Any, split: str, rig_ids: list[str]) -> list[str]:
    """The rigs of `rig_ids` that have shards in `split` of `data` (a dataset URL or an open `Dataset`)."""
    from rigpose.data.reader import Dataset

    ds = data if isinstance(data, Dataset) else Dataset(data)
    if split not in ds.manifest.splits():
        return []
    return [rig for rig in rig_ids if ds.shards(splits=[split], rig_ids=[rig])]


def rig_scores(model_path: str, data_url: str, *, split: str, rig_ids: list[str],
               max_rows: int | None = 5000) -> dict[str, RigScore]:
    """`model_path` evaluated single-view on each rig's rows of `split` alone (at most `max_rows` per rig); rigs
    without rows there, or without a finite held-out-view error, are left out."""
    from rigpose.inference.evaluate import evaluate

    out: dict[str, RigScore] = {}
    for rig in _rigs_with_rows(data_url, split, rig_ids):
        report = evaluate(model_path, data_url, split=split, modes=("single",), max_rows=max_rows, rig_ids=[rig])
        overall = report["single"]["overall"]
        px = overall.get("heldout_px")
        if px is None or not math.isfinite(px):
            continue
        out[rig] = RigScore(heldout_px=float(px), mpjpe_mm=overall.get("mpjpe_mm"), frames=int(report["num_frames"]))
    return out


def calibration_offsets(data_url: str, *, split: str, rig_ids: list[str],
                        max_rows: int | None = 5000) -> dict[str, dict[str, float]]:
    """{rig: {camera: px}}: `rigpose.data.noise_residuals.camera_offsets` of each rig's rows of `split` (at most
    `max_rows`, the first ones); rigs with no rows there or under 3 cameras are left out."""
    from rigpose.data.noise_residuals import camera_offsets
    from rigpose.data.reader import Dataset, iter_frames

    ds = Dataset(data_url)
    out: dict[str, dict[str, float]] = {}
    for rig in _rigs_with_rows(ds, split, rig_ids):
        blocks = iter_frames(ds, split=split, batch_size=2048, max_rows=max_rows, rig_ids=[rig])
        if offsets := camera_offsets(blocks):
            out[rig] = offsets
    return out


@dataclass(frozen=True)
class RigVerdict:
    """One row of a gate's table."""

    rig_id: str
    target: bool  # the new data touched this rig: it must improve by the margin
    champion: RigScore | None  # for a new rig: the champion's zero-shot error
    candidate: RigScore | None
    change: float | None  # candidate / champion - 1 (held-out-view px); negative = better
    ok: bool
    why: str
    offset_px: float | None = None  # the rig's worst camera offset (`calibration_offsets`); None: not measured
    offset_camera: str | None = None


@dataclass(frozen=True)
class Decision:
    """A gate's outcome: promote or not, the reason in one line, and the per-rig table."""

    promote: bool
    reason: str
    rows: tuple[RigVerdict, ...]
    margin: float
    tolerance: float
    max_offset_px: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[str]:
        """The per-rig table as lines for the terminal."""
        def fmt(s: RigScore | None) -> str:
            if s is None:
                return "-"
            return f"{s.heldout_px:.2f} px" + (f" / {s.mpjpe_mm:.1f} mm" if s.mpjpe_mm is not None else "")

        lines = [f"{'rig':<16} {'role':<9} {'champion':>20} {'candidate':>20} {'change':>8} {'calib':>8}  verdict"]
        for r in self.rows:
            change = f"{100 * r.change:+.1f}%" if r.change is not None else "-"
            calib = f"{r.offset_px:.1f} px" if r.offset_px is not None else "-"
            lines.append(f"{r.rig_id:<16} {'new data' if r.target else 'existing':<9} {fmt(r.champion):>20} "
                         f"{fmt(r.candidate):>20} {change:>8} {calib:>8}  {r.why}")
        return lines


def decide(candidate: dict[str, RigScore], champion: dict[str, RigScore] | None, *, targets: set[str],
           rig_ids: list[str], margin: float, tolerance: float, offsets: dict[str, dict[str, float]] | None = None,
           max_offset_px: float | None = None) -> Decision:
    """The retraining rule over `rig_ids`: promote when there is no champion, or when every rig in `targets` (new
    rigs, rigs with new data) improves by at least `margin` (candidate <= champion x (1 - margin)) and no other rig
    gets worse by more than `tolerance` (candidate <= champion x (1 + tolerance)). A target rig the candidate
    cannot be measured on refuses; other rigs without a figure are reported and skipped. `offsets` ({rig: {camera:
    px}}, `calibration_offsets`) go into the table; with `max_offset_px`, a target rig whose worst camera passes it
    refuses (also without a champion: a model trained through that calibration is no champion to keep)."""
    if not 0 <= margin < 1 or tolerance < 0:
        raise ValueError(f"margin must be in [0, 1) and tolerance >= 0, got {margin} and {tolerance}")
    if max_offset_px is not None and max_offset_px <= 0:
        raise ValueError(f"max_offset_px must be positive (or None: no check), got {max_offset_px}")
    if unknown := sorted(targets - set(rig_ids)):
        raise ValueError(f"targets {unknown} are not among the rigs compared {rig_ids}")
    rows, failures = [], []
    for rig in rig_ids:
        cand, champ = candidate.get(rig), (champion or {}).get(rig)
        target = rig in targets
        change = cand.heldout_px / champ.heldout_px - 1 if cand and champ and champ.heldout_px > 0 else None
        if champion is None:
            ok, why = True, "no champion to compare"
        elif cand is None:
            ok, why = not target, "no validation rows: cannot judge" if target else "no validation rows (skipped)"
        elif champ is None:
            ok, why = True, "the champion has no figure here (skipped)"
        elif target:
            ok = change is not None and change <= -margin
            why = (f"improved by {-100 * change:.1f}% (>= {100 * margin:.1f}%)" if ok else
                   f"improved by {-100 * (change or 0):.1f}%, needs {100 * margin:.1f}%")
        else:
            ok = change is not None and change <= tolerance
            why = (f"within tolerance ({100 * tolerance:.1f}%)" if ok else
                   f"worse by {100 * (change or 0):.1f}%, more than the tolerance {100 * tolerance:.1f}%")
        worst = max((offsets or {}).get(rig, {}).items(), key=lambda kv: kv[1], default=(None, None))
        if target and max_offset_px is not None and worst[1] is not None and worst[1] > max_offset_px:
            ok, why = False, (f"its calibration does not fit its 2D: camera {worst[0]}'s detections sit {worst[1]:.1f}"
                              f" px from where the other cameras place the joints (limit {max_offset_px:g} px); "
                              "recalibrate the rig")
        rows.append(RigVerdict(rig_id=rig, target=target, champion=champ, candidate=cand, change=change, ok=ok,
                               why=why, offset_px=worst[1], offset_camera=worst[0]))
        if not ok:
            failures.append(f"{rig}: {why}")
    if failures:
        reason = ("no champion yet, and the candidate is not promoted: " if champion is None
                  else "kept the champion: ") + "; ".join(failures)
    elif champion is None:
        reason = "no champion yet: the candidate becomes the champion"
    else:
        reason = ("promoted: " + ", ".join(f"{r.rig_id} {100 * r.change:+.1f}%" for r in rows
                                           if r.target and r.change is not None)
                  + f"; no other rig worse by more than {100 * tolerance:.1f}%")
    return Decision(promote=not failures, reason=reason, rows=tuple(rows), margin=margin, tolerance=tolerance,
                    max_offset_px=max_offset_px)
