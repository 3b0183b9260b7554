"""rigpose.resources: shipped rigs and recipes are package data, found by name from any working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rigpose import resources
from rigpose.cli.main import app
from rigpose.data.synth.build import load_rigs
from rigpose.data.synth.recipe import load_recipe, parse_recipe

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "rigpose"


def test_shipped_files_live_inside_the_package() -> None:
    assert resources.rigs_dir() == PACKAGE / "resources" / "rigs"
    assert {"h36m-s1", "h36m-s11", "humaneva-s1", "studio-8"} <= set(resources.rig_names())
    assert resources.recipe_names() == ["demo", "scale", "tiny"]


def test_pyproject_ships_every_resource_as_package_data() -> None:
    import tomllib

    globs = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "resources").rglob("*")
               if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    assert shipped and all(any(Path(f).match(g) for g in globs["rigpose"]) for f in shipped), shipped


def test_a_rig_name_or_the_old_repository_path_resolves_to_the_shipped_file(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no repository around: names must not depend on the working directory
    shipped = str(resources.rigs_dir() / "h36m-s1.json")
    assert resources.resolve_rig("h36m-s1") == shipped
    assert resources.resolve_rig("datasets/rigs/h36m-s1.json") == shipped
    assert resources.resolve_rig("s3://bucket/h36m-s1.json") == "s3://bucket/h36m-s1.json"
    assert resources.resolve_rig("other/h36m-s1.json") == "other/h36m-s1.json"  # left for load_rig to report
    (tmp_path / "h36m-s1").write_text("{}")
    assert resources.resolve_rig("h36m-s1") == "h36m-s1"  # an existing file wins over a name


def test_an_unknown_name_fails_listing_what_is_shipped() -> None:
    with pytest.raises(ValueError, match=r"no shipped rig 'h36m-s2'; shipped rigs: .*h36m-s1"):
        resources.rig_path("h36m-s2")
    with pytest.raises(ValueError, match=r"no shipped recipe 'huge'; shipped recipes: demo, scale, tiny"):
        resources.recipe_path("huge")
    with pytest.raises(ValueError, match=r"no shipped recipe"):
        resources.recipe_path("../recipes/tiny")


def test_recipe_rigs_resolve_by_name_and_by_the_old_repository_path(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = parse_recipe({"rigs": ["h36m-s1", "datasets/rigs/studio-8.json"]})
    assert [r.rig_id for r in load_rigs(recipe)] == ["h36m-s1", "studio-8"]
    assert [r.rig_id for r in load_rigs(load_recipe(resources.recipe_path("tiny")))] == ["h36m-s1"]
    with pytest.raises(ValueError, match=r"no rig file 'h36m-s2' .* no shipped rig of that name \(shipped: "):
        load_rigs(parse_recipe({"rigs": ["h36m-s2"]}))


def test_rig_commands_take_a_shipped_rig_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["rig", "validate", "h36m-s1", "studio-8"])
    assert r.exit_code == 0, r.output
    assert "OK h36m-s1: rig 'h36m-s1', 4 cameras" in r.output and "OK studio-8: rig 'studio-8', 8 cameras" in r.output
    r = CliRunner().invoke(app, ["rig", "show", "humaneva-s2"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "rig humaneva-s2: 3 cameras" in r.output, r.output


def test_datasets_build_names_a_missing_recipe_in_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["datasets", "build", "huge", "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "no shipped recipe 'huge'" in r.output
    r = CliRunner().invoke(app, ["datasets", "build", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "nope.yaml: no such recipe file" in r.output
