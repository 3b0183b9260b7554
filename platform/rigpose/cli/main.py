"""The `rigpose` command line: one Typer app that gathers the commands of each part of the platform.

Every command module registers its commands the same way, on its own `app = typer.Typer(...)` (a group's help is
that Typer's `help`), and `COMMANDS` below is the one place that says where each module's commands appear.
Command modules import only typer, rich and the light foundation modules at the top and keep the heavy imports
(torch, Ray, MLflow) inside the command functions, so that `rigpose --help` stays quick.
"""

from __future__ import annotations

from importlib import import_module

import typer

# (where, module): "" merges the module's commands into the level above (`rigpose evaluate`), a name makes them a
# group (`rigpose rig validate`), "datasets ingest" a group inside a group. In the order `rigpose --help` lists them.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("", "rigpose.cli.run"),  # version, demo, train, submit
    ("", "rigpose.cli.evaluate"),  # evaluate, lift
    ("", "rigpose.cli.viz"),  # viz
    ("rig", "rigpose.cli.rig"),
    ("datasets", "rigpose.cli.datasets"),
    ("datasets ingest", "rigpose.cli.ingest"),
    ("models", "rigpose.cli.models"),
    ("", "rigpose.cli.retrain"),  # retrain
    ("", "rigpose.cli.detect"),  # detect (the `detect` extra)
)


def build_app() -> typer.Typer:
    """The `rigpose` app, with every module of `COMMANDS` added where the table says."""
    root = typer.Typer(
        name="rigpose",
        help=(
            "RigPose: train 3D human-pose lifters from calibrated multi-camera rigs with 2D supervision only.\n\n"
            "Start with `rigpose demo`; see README.md for the whole workflow."
        ),
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    root.callback()(_global_options)
    groups = {"": root}
    for where, module in COMMANDS:
        sub: typer.Typer = import_module(module).app
        parent, _, name = where.rpartition(" ")
        if name:
            groups[parent].add_typer(sub, name=name)
            groups[where] = sub
        else:
            groups[parent].add_typer(sub)
    return root


def _global_options(
    verbose: bool = typer.Option(False, "--verbose", help="Also show Ray's, Ray Data's and MLflow's own logs."),
) -> None:
    from rigpose.cli.ui import configure_output

    configure_output(verbose=verbose)


app = build_app()


def main() -> None:
    """Entry point for `python -m rigpose`."""
    app()
