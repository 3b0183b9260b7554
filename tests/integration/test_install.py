"""A non-editable install works on its own, with no checkout next to it.

A fresh virtual environment gets torch at the Makefile's pin, then `pip install` (not editable) of a copy of the
project with the `mocap` extra (the tiny recipe's DeepMimic clips); the copy is deleted before anything runs. From an
unrelated working directory, `rigpose --help`, `rigpose rig validate` of shipped rigs (by name and by installed path)
and `rigpose datasets build` of the shipped `tiny` recipe must exit 0 and leave a dataset manifest. About 4 minutes
on 2 busy cores, nearly all of it pip installing torch, Ray, MLflow and the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("pyproject.toml", "README.md")  # with platform/: everything the wheel is built from


def torch_pin() -> str:
    """TORCH_VERSION of the Makefile (what `make setup` installs before the project)."""
    found = re.search(r"^TORCH_VERSION\s*:?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert found, "Makefile: no TORCH_VERSION"
    return found.group(1)


def _env(venv: Path) -> dict[str, str]:
    """This environment without anything that points Python at the checkout or at the test's own venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with torch (the Makefile's pin) and rigpose[mocap] installed from a copy; its folder."""
    root = tmp_path_factory.mktemp("install")
    src, venv = root / "src", root / "venv"
    shutil.copytree(REPO / "platform", src / "platform",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, src / name)
    env = _env(venv)
    _run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=root, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", f"torch=={torch_pin()}"], env=env, cwd=root, timeout=600)
    _run([*pip, "install", f"{src}[mocap]"], env=env, cwd=root, timeout=600)  # builds a wheel, installs it
    shutil.rmtree(src)  # nothing may lead back to project files
    return venv


def test_installed_wheel_runs_without_the_checkout(venv: Path, tmp_path: Path) -> None:
    env, work = _env(venv), tmp_path / "elsewhere"
    work.mkdir()
    rigpose = str(venv / "bin" / "rigpose")
    where = _run([str(venv / "bin" / "python"), "-c", "import rigpose.resources as r; print(r.rigs_dir())"],
                 env=env, cwd=work, timeout=60).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO), where

    assert "datasets" in _run([rigpose, "--help"], env=env, cwd=work, timeout=60).stdout
    validated = _run([rigpose, "rig", "validate", "h36m-s1", "studio-8", str(Path(where) / "humaneva-s1.json")],
                     env=env, cwd=work, timeout=60).stdout
    assert validated.count("OK ") == 3, validated

    out = work / "datasets" / "tiny"
    _run([rigpose, "datasets", "build", "tiny", "--out", str(out), "--no-progress"], env=env, cwd=work, timeout=300)
    assert (out / "manifest.json").is_file()
    _run([rigpose, "datasets", "validate", str(out)], env=env, cwd=work, timeout=120)
