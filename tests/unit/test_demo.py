"""`rigpose demo --rigs-only`: every shipped rig validates and triangulates real motion back within reason."""

from __future__ import annotations

from typer.testing import CliRunner

from rigpose.cli.demo import multiview_verdict
from rigpose.cli.main import app


def test_demo_rig_check_passes_on_every_shipped_rig() -> None:
    result = CliRunner().invoke(app, ["demo", "--rigs-only"])
    assert result.exit_code == 0, result.output
    for rig in ("h36m-s1", "h36m-s11", "humaneva-s1", "studio-8"):
        assert rig in result.output
    assert "DeepMimic 'walk'" in result.output


def _report(ours: float, dlt: float, robust: float) -> dict:
    return {"multi_mode": "posterior", "multi": {"posterior": {"overall": {"mpjpe_mm": ours}},
                                                 "dlt": {"overall": {"mpjpe_mm": dlt}},
                                                 "robust": {"overall": {"mpjpe_mm": robust}}}}


def test_demo_verdict_says_whether_the_multi_view_answer_beats_both_triangulations() -> None:
    line = multiview_verdict(_report(32.0, 50.0, 44.0))
    assert line is not None and "better than both" in line and "0.73 x robust" in line
    assert "NOT better" in multiview_verdict(_report(46.0, 50.0, 44.0))
    assert multiview_verdict({"multi_mode": "posterior", "multi": {}}) is None
