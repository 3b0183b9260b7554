"""`rigpose rig ...` (rigpose.cli.rig) through typer's CliRunner: exit codes, OK lines and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rigpose.cli.rig import app
from rigpose.data.synth.rigs_builtin import studio_rig
from rigpose.rig import load_rig, rig_to_dict, save_rig

runner = CliRunner()


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "studio-8.json"
    save_rig(studio_rig(), path)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    d = rig_to_dict(studio_rig())
    d["cameras"][5]["R"][0][0] *= 1.05
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    return path


def test_validate_prints_ok_per_good_file_and_exits_zero(good: Path) -> None:
    result = runner.invoke(app, ["validate", str(good), str(good)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count(f"OK {good}") == 2
    assert "'studio-8', 8 cameras" in result.stdout


def test_validate_reports_a_bad_rig_in_one_line_naming_file_camera_and_field(good: Path, bad: Path) -> None:
    result = runner.invoke(app, ["validate", str(bad), str(good)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{bad}: rig 'studio-8' camera 'cam5' field 'R': not a rotation")
    assert f"OK {good}" in result.stdout  # the other files are still checked


def test_validate_reports_a_missing_file_in_one_line(tmp_path: Path, good: Path) -> None:
    missing = tmp_path / "nope.json"
    result = runner.invoke(app, ["validate", str(missing), str(good)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"{missing}: cannot read (No such file or directory)"]


def test_validate_min_cameras_option_refuses_small_rigs(good: Path) -> None:
    result = runner.invoke(app, ["validate", "--min-cameras", "9", str(good)])
    assert result.exit_code == 1
    assert "field 'cameras': 8 camera(s), need at least 9" in result.stderr


def test_import_toml_writes_a_valid_rig_in_metres(tmp_path: Path) -> None:
    toml = tmp_path / "lab.toml"
    sections = []
    for i, (x, y) in enumerate([(3.0, 0.0), (0.0, 3.0), (-3.0, 0.0)]):
        rig_cam = studio_rig().cameras[2 * i]
        sections.append(
            f'[cam_{i}]\nname = "cam{i}"\nsize = [1920, 1080]\n'
            f"matrix = {json.dumps(rig_cam.K.tolist())}\ndistortions = [-0.05, 0.01, 0.0, 0.0]\n"
            f"rotation = [0.0, 0.0, 0.0]\ntranslation = [{x * 1000}, {y * 1000}, 4000.0]\n"
        )
    toml.write_text("\n".join(sections) + "\n[metadata]\nerror = 0.3\n")
    out = tmp_path / "rigs" / "lab.json"
    result = runner.invoke(app, ["import-toml", str(toml), "--out", str(out), "--units", "mm", "--rig-id", "lab"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: rig 'lab', 3 cameras" in result.stdout
    rig = load_rig(out)
    np.testing.assert_allclose(rig.cameras[1].t, [0.0, 3.0, 4.0])
    np.testing.assert_allclose(rig.cameras[0].dist, [-0.05, 0.01, 0.0, 0.0, 0.0])


def test_import_toml_requires_units(tmp_path: Path) -> None:
    result = runner.invoke(app, ["import-toml", str(tmp_path / "x.toml"), "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    assert "--units" in result.output


def test_import_toml_reports_a_bad_calibration_in_one_line(tmp_path: Path) -> None:
    toml = tmp_path / "lab.toml"
    toml.write_text('[cam_0]\nname = "A"\nsize = [640, 480]\nmatrix = [[500.0, 0, 320], [0, 500, 240]]\n'
                    "rotation = [0, 0, 0]\ntranslation = [0, 0, 1]\n")
    out = tmp_path / "lab.json"
    result = runner.invoke(app, ["import-toml", str(toml), "--out", str(out), "--units", "m"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"{toml}: rig 'lab' camera 'A' field 'matrix': expected numbers, got shape (2, 3)"
    ]
    assert not out.exists()


def test_show_prints_a_table_of_cameras_with_positions(good: Path) -> None:
    result = runner.invoke(app, ["show", str(good)])
    assert result.exit_code == 0, result.output
    assert "rig studio-8: 8 cameras" in result.stdout
    for i in range(8):
        assert f"cam{i}" in result.stdout
    assert "1920x1080" in result.stdout
    assert "4.50 0.00 1.20" in result.stdout  # cam0's position (m)
    assert "-1.00 0.00 -0.04" in result.stdout  # cam0 looks towards the centre, slightly down


def test_show_reports_a_bad_rig_in_one_line(bad: Path) -> None:
    result = runner.invoke(app, ["show", str(bad)])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "camera 'cam5' field 'R'" in result.stderr
