"""Terminal output shared by the commands: consoles that stay readable when piped, and one-line errors."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

PIPED_WIDTH = 140  # rich falls back to 80 columns off a terminal, which truncates the result tables


def console(*, stderr: bool = False) -> Console:
    """A rich Console: the terminal's width on a terminal, `PIPED_WIDTH` columns when piped (make, CI, logs)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)


def fail(message: str) -> NoReturn:
    """Print `error: message` in red on stderr as one line (no traceback) and exit with status 1."""
    console(stderr=True).print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(1)
