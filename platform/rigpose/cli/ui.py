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


def configure_output(*, verbose: bool) -> None:
    """What of other libraries' output the commands show (`rigpose --verbose`): by default rigpose's own lines only.

    Quiet: MLflow's INFO logs off (DB migrations, signature checks), Ray's driver-side notices off, and once Ray
    is up `rigpose.cluster.connect.init_ray` forwards only rigpose's lines from the Ray workers (Ray Train's and
    Ray Data's logs stay in the Ray session's log files). Verbose: all of it, as the libraries print it. Set
    through the environment so that Ray workers started from this process inherit the choice.
    """
    import os

    from rigpose.cluster.connect import VERBOSE_ENV, quiet_driver_logs

    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported (here or in workers)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # its "View run ... at: URL" lines
    quiet_driver_logs()  # libraries already imported: their loggers directly


def fail(message: str) -> NoReturn:
    """Print `error: message` in red on stderr as one line (no traceback) and exit with status 1."""
    console(stderr=True).print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(1)
