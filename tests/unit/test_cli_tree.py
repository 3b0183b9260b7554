"""The `rigpose` command tree (every command, sub-command, argument and option) matches tests/unit/cli_tree.txt.

The listing is read off the live Typer app (`typer.main.get_command`), so a command or option that is added,
renamed, dropped or changes type or default shows up as a diff here and in review. Help texts are left out: they
change often and say nothing about how a script calls the command. After a deliberate change, regenerate with

    .venv/bin/python tests/unit/test_cli_tree.py --write
"""

from __future__ import annotations

import difflib
import enum
import re
import sys
from pathlib import Path
from typing import Any

LISTING = Path(__file__).with_name("cli_tree.txt")
REGENERATE = ".venv/bin/python tests/unit/test_cli_tree.py --write"
# Path constraints (typer.Option/Argument keywords) and their defaults; only the ones that differ are listed.
_PATH_FLAGS = {"exists": False, "file_okay": True, "dir_okay": True, "writable": False, "readable": True,
               "resolve_path": False, "allow_dash": False}


def _value(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return repr(value.value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)


def _type(param: Any) -> str:
    """`int`, `str | None`, `Mode choices=[...]`, `Path exists=True dir_okay=False`, `int min=1`."""
    desc, info = param.type_descriptor, param.type_descriptor.parameter_info
    annotation = desc.annotation
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)  # typing.X, pathlib.Path, rigpose...Mode
    extra = []
    if desc.is_choice:
        extra.append(f"choices={_value(list(desc.choices))}")
    for name in ("min", "max"):
        if getattr(param, name, None) is not None:
            extra.append(f"{name}={getattr(param, name)!r}")
    if desc.is_path:
        extra += [f"{k}={getattr(info, k)!r}" for k, default in _PATH_FLAGS.items() if getattr(info, k) != default]
    return " ".join([text, *extra])


def _param(param: Any, ctx: Any) -> str:
    kind = param.param_type_name
    names = " ".join(param.opts) if kind == "option" else param.name.upper()
    if param.secondary_opts:
        names += " / " + " ".join(param.secondary_opts)
    fields = [f"{kind} {names}", f"type={_type(param)}"]
    fields.append("required" if param.required else f"default={_value(param.get_default(ctx, call=False))}")
    if param.multiple or param.nargs != 1:
        fields.append("multiple" if param.multiple else f"nargs={param.nargs}")
    if getattr(param, "hidden", False):
        fields.append("hidden")
    return "  " + "  ".join(fields)


def cli_tree(command: Any, path: str = "rigpose", parent: Any = None) -> list[str]:
    """One line per command (its full path), then one indented line per argument and option, sub-commands after,
    in the order `--help` shows them. `command` is what `typer.main.get_command` returns (Typer's own click)."""
    ctx = command.context_class(command, info_name=path.rsplit(" ", 1)[-1], parent=parent)
    lines = [path + ("  (hidden)" if getattr(command, "hidden", False) else "")]
    lines += [_param(p, ctx) for p in command.get_params(ctx) if p.name != "help"]
    for name in command.list_commands(ctx) if hasattr(command, "list_commands") else []:
        sub = command.get_command(ctx, name)
        if sub is not None:
            lines += cli_tree(sub, f"{path} {name}", ctx)
    return lines


def live_tree() -> str:
    import typer

    from rigpose.cli.main import app

    return "\n".join(cli_tree(typer.main.get_command(app))) + "\n"


def test_cli_tree_matches_the_checked_in_listing() -> None:
    live, listed = live_tree(), LISTING.read_text() if LISTING.exists() else ""
    if live != listed:
        diff = "".join(difflib.unified_diff(listed.splitlines(True), live.splitlines(True),
                                            f"{LISTING.name} (checked in)", "live `rigpose` app"))
        raise AssertionError(f"the rigpose command tree changed:\n{diff}\nIf the change is deliberate, regenerate "
                             f"the listing: {REGENERATE}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        LISTING.write_text(live_tree())
        print(f"wrote {LISTING}")
    elif not sys.argv[1:]:
        sys.stdout.write(live_tree())
    else:
        sys.exit(f"usage: {sys.argv[0]} [--write]   (no argument: print the live tree)")
