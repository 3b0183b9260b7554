"""`rigpose retrain`: retrain on new rig data and promote the candidate only if the label-free gate passes."""

from __future__ import annotations

from pathlib import Path

import typer

from rigpose.cli.ui import fail as _fail
from rigpose.tracking.secrets import scrub

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def retrain(
    job_file: Path = typer.Argument(Path("jobs/retrain.yaml"), help="Retrain job YAML (jobs/retrain.yaml)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what is new since the champion and what a run "
                                                         "would do; train and change nothing."),
    every: str = typer.Option(None, "--every", help="Keep running: a cycle now and then every 30m / 6h / 1d "
                                                    "(overrides the job's `every`); SIGTERM stops it after the "
                                                    "current cycle."),
    set_: list[str] = typer.Option([], "--set", help="Override a key of the retrain job, e.g. --set "
                                                     "gate.margin=0.1 (repeatable)."),
) -> None:
    """Detect new rigs or shards since the @champion was trained, train a candidate on all the data, compare both on
    every rig's validation split without 3D labels, promote only a better candidate (the old one keeps @previous).

    Nothing new: exit 0. Another retrain of the same dataset running: this cycle is skipped (exit 0). The
    decision, its per-rig table and reason, is printed, recorded as an MLflow run and tagged on the candidate.
    """
    from rigpose.config import RetrainJob, load_config
    from rigpose.retrain.run import parse_every, run_every
    from rigpose.retrain.run import retrain as run_cycle

    def say(line: str) -> None:
        typer.echo(scrub(line))

    try:
        job = load_config(RetrainJob, job_file, set_, options={"every": every} if every else None)
        if job.every:
            parse_every(job.every)
            run_every(job, dry_run=dry_run, say=say)
            return
        run_cycle(job, dry_run=dry_run, say=say)
    except (ValueError, RuntimeError) as e:
        _fail(scrub(str(e)))
