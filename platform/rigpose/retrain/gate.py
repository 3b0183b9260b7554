"""The promotion gate: a candidate becomes @champion only if its label-free held-out-view error beats the champion's.

The figure is `rigpose.metrics.heldout_view_px` (via `rigpose evaluate`'s single-view heldout_px): the definition
training validation reports as val/reprojection_px. What a gate measured is stored on the candidate's model version
as tags `rigpose.gate.*` (its figure, the data, split and rows, the champion version and figure it was compared
against, the outcome), so a promotion can be checked later.
"""

from __future__ import annotations

from dataclasses import dataclass

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
