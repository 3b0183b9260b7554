"""The `rigpose` command line: one Typer app that gathers the sub-commands of each part of the platform."""

from __future__ import annotations

import typer

from rigpose import __version__

app = typer.Typer(
    name="rigpose",
    help=(
        "RigPose: train 3D human-pose lifters from calibrated multi-camera rigs with 2D supervision only.\n\n"
        "Start with `rigpose demo`; see README.md for the whole workflow."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Sub-apps are imported here, not at module top, so that `rigpose --help` stays quick.
    from rigpose import rig_cli
    from rigpose.data import cli as data_cli

    app.add_typer(rig_cli.app, name="rig", help="Camera rigs: validate, show, import calibrations.")
    app.add_typer(data_cli.app, name="datasets", help="Datasets: build, ingest, validate, describe.")


@app.command()
def version() -> None:
    """Print the installed rigpose version."""
    typer.echo(__version__)


@app.command()
def demo(
    seed: int = typer.Option(0, help="Seed for the pose placement and the detector noise."),
    noise_px: float = typer.Option(5.0, help="Gaussian 2D detector noise, pixels (std)."),
) -> None:
    """Run what exists end to end: validate the shipped rigs, project real motion through them, triangulate."""
    from rigpose.demo import run_demo

    raise typer.Exit(run_demo(seed=seed, noise_px=noise_px))


_register()


def main() -> None:
    """Entry point for `python -m rigpose`."""
    app()
