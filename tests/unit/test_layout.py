"""The package's import order: each layer imports only the layers before it, and no module imports itself in a circle;
and nothing imports Ray at import time.

The order is written once, in `LAYERS`; a module's layer is its first dotted part below `rigpose` (foundation modules
are one layer together). Every import counts, lazy ones inside functions included, read from the source with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "rigpose"

# Lowest first. A module may import its own layer and the layers before it, never one after it.
LAYERS: list[set[str]] = [
    {"__init__", "config", "geometry", "skeleton", "rig", "rig_import", "storage", "resources"},
    {"metrics"},
    {"model"},
    {"data"},
    {"detect"},  # 2D keypoints from videos: writes what data.ingest reads, needs none of it
    {"tracking", "registry"},  # registry.py: the LifterModel import of models logged before the layout
    {"inference"},
    {"cluster"},
    {"train"},
    {"retrain"},
    {"cli", "__main__"},
]


def layer_of(module: str) -> int:
    """Index in LAYERS of `rigpose.<part>...` (or the package itself)."""
    parts = module.split(".")
    assert parts[0] == "rigpose", module
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"rigpose.{top} is in no layer: add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every `rigpose` import in the file, `from rigpose.x import y` giving rigpose.x.y when y is a
    module, else rigpose.x."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "rigpose"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "rigpose":
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / sub.replace(".", "/") / "__init__.py"
                ).exists()
                found.append((node.lineno, sub if is_module else node.module))
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_layer() -> None:
    for name in all_modules():
        layer_of(name)


def test_no_module_imports_a_later_layer() -> None:
    upward = []
    for name, path in all_modules().items():
        mine = layer_of(name)
        for line, target in imports_of(path):
            if layer_of(target) > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_circle_between_modules() -> None:
    modules = all_modules()
    graph = {name: {t for _, t in imports_of(p) if t in modules and t != name} for name, p in modules.items()}
    # a package's __init__ importing its own submodules is how re-exports work, not a circle
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".") and modules[name].name == "__init__.py")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rigpose.train.trainer import train\n")
    assert imports_of(bad) == [(2, "rigpose.train.trainer")]
    assert layer_of("rigpose.train.trainer") > layer_of("rigpose.model.lifter")


def _module_level_ray_imports(path: Path) -> list[int]:
    """Lines where `path` imports Ray outside any function or class body (that is, when it is imported)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = []
    for node in tree.body:
        nodes = [node] if not isinstance(node, ast.If) else [*node.body, *node.orelse]  # `if TYPE_CHECKING:` too
        for n in nodes:
            names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                     [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
            if any(name == "ray" or name.startswith("ray.") for name in names) and not (
                    isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
                lines.append(n.lineno)
    return lines


def test_no_module_or_test_imports_ray_when_it_is_imported() -> None:
    """Importing Ray fixes its token-auth mode (RAY_AUTH_MODE) for the rest of the process: a module or test file
    that imports Ray at its top, collected before the integration fixtures set token auth, makes every Ray of the
    test run refuse the token. Ray is imported inside the functions that use it (also keeps `rigpose --help` quick)."""
    repo = PACKAGE.parents[1]
    files = sorted([*all_modules().values(), *(repo / "tests").rglob("*.py")])
    offenders = {str(p.relative_to(repo)): lines for p in files if (lines := _module_level_ray_imports(p))}
    assert offenders == {}
