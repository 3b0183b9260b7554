"""`rigpose demo --rigs-only`: every shipped rig validates and triangulates real motion back within reason."""

from __future__ import annotations

from typer.testing import CliRunner

from rigpose.cli.main import app


def test_demo_rig_check_passes_on_every_shipped_rig() -> None:
    result = CliRunner().invoke(app, ["demo", "--rigs-only"])
    assert result.exit_code == 0, result.output
    for rig in ("h36m-s1", "h36m-s11", "humaneva-s1", "studio-8"):
        assert rig in result.output
    assert "DeepMimic 'walk'" in result.output
