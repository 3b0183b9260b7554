"""Files shipped inside the package: camera rigs (`rigs/<name>.json`) and dataset recipes (`recipes/<name>.yaml`).

They are package data (pyproject.toml), read through these functions with `importlib.resources`, so an installed
wheel has everything `rigpose demo` and `rigpose datasets build` need; nothing here looks for a repository.
A shipped rig is named by its file stem (`h36m-s1`) wherever a rig file is expected: recipes, `rigpose rig ...`,
`rigpose datasets ingest --rig`. `datasets/rigs/<name>.json`, where these rigs lived before they moved into the
package, still names the shipped rig when no such file exists, so older recipes and commands keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path, PurePosixPath

LEGACY_RIGS_DIR = PurePosixPath("datasets/rigs")  # the rigs' home in the repository before they shipped here


def _folder(name: str) -> Path:
    folder = files(__name__) / name
    if not isinstance(folder, Path):  # a zip import; pip always installs a wheel unpacked
        raise RuntimeError(f"rigpose's {name}/ is not on the file system ({folder}): install rigpose unpacked")
    return folder


def rigs_dir() -> Path:
    """The folder of the shipped rig files (`<rig_id>.json`)."""
    return _folder("rigs")


def recipes_dir() -> Path:
    """The folder of the shipped recipes: `tiny` (tests), `demo` (`rigpose demo`), `scale` (the benchmark)."""
    return _folder("recipes")


def rig_names() -> list[str]:
    """Names (rig ids) of the shipped rigs, sorted."""
    return sorted(p.stem for p in rigs_dir().glob("*.json"))


def recipe_names() -> list[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def rig_path(name: str) -> Path:
    """The file of shipped rig `name` (`h36m-s1`); ValueError listing the shipped rigs when there is none."""
    return _shipped("rig", rigs_dir(), name, ".json", rig_names)


def recipe_path(name: str) -> Path:
    """The file of shipped recipe `name` (`tiny`, `demo`); ValueError listing the shipped recipes when there is none."""
    return _shipped("recipe", recipes_dir(), name, ".yaml", recipe_names)


def _shipped(kind: str, folder: Path, name: str, suffix: str, names: Callable[[], list[str]]) -> Path:
    path = folder / f"{name}{suffix}"
    if "/" in name or "\\" in name or not path.is_file():
        raise ValueError(f"no shipped {kind} {name!r}; shipped {kind}s: {', '.join(names())}")
    return path


def shipped_rig(ref: str) -> Path | None:
    """The shipped rig file `ref` names (`h36m-s1`, or the old `datasets/rigs/h36m-s1.json`), else None."""
    ref_path = PurePosixPath(ref.replace("\\", "/"))
    if ref_path.parent == LEGACY_RIGS_DIR and ref_path.suffix == ".json":
        ref = ref_path.stem
    elif len(ref_path.parts) != 1 or ref_path.suffix:
        return None
    path = rigs_dir() / f"{ref}.json"
    return path if path.is_file() else None


def resolve_rig(ref: str) -> str:
    """What `rigpose.rig.load_rig` should read for `ref`: an fsspec URL or an existing file as given, else the shipped
    rig it names, else `ref` itself (so the caller reports the missing file as it always did)."""
    if "://" in ref or Path(ref).is_file():
        return ref
    shipped = shipped_rig(ref)
    return str(shipped) if shipped is not None else ref
