"""`rigpose retrain`: retrain on new rig data and promote the candidate only if the label-free gate passes; here, on a
schedule (`--every`), or as one Ray job on a cluster (`--submit`, the way `rigpose submit` sends a training job)."""

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
                                                         "would do; train and change nothing (with --submit: on "
                                                         "the cluster)."),
    every: str = typer.Option(None, "--every", help="Keep running: a cycle now and then every 30m / 6h / 1d "
                                                    "(overrides the job's `every`); SIGTERM stops it after the "
                                                    "current cycle. Not with --submit."),
    set_: list[str] = typer.Option([], "--set", help="Override a key of the retrain job, e.g. --set "
                                                     "gate.margin=0.1 (repeatable)."),
    submit: bool = typer.Option(False, "--submit", help="Run the cycle as a Ray job on a cluster (Ray Jobs API, as "
                                                        "`rigpose submit`): detect, train, gate and promote there."),
    address: str | None = typer.Option(
        None, help="With --submit: Ray Jobs API (dashboard) address; default $RAY_API_SERVER_ADDRESS, an http "
                   "RAY_ADDRESS, or http://127.0.0.1:8265."),
    no_wait: bool = typer.Option(False, "--no-wait", help="With --submit: print the submission id and return; do "
                                                          "not follow."),
    submission_id: str | None = typer.Option(None, help="With --submit: submission id (default "
                                                        "rigpose-retrain-<model>-<time>)."),
    forward_credentials: bool = typer.Option(
        False, "--forward-credentials",
        help="With --submit: also forward AWS/MLflow credentials from this shell in the runtime env, and URL "
             "passwords (readable by anyone who can list the cluster's jobs; prefer giving the cluster its own)."),
    dry_run_submit: bool = typer.Option(False, "--dry-run-submit",
                                        help="With --submit: show what would be submitted, with the values sent "
                                             "(passwords as ***), and stop (`rigpose submit --dry-run`)."),
) -> None:
    """Detect new rigs or shards since the @champion was trained, train a candidate on all the data, compare both on
    every rig's validation split without 3D labels, promote only a better candidate (the old one keeps @previous).

    Nothing new: exit 0. Another retrain of the same dataset running: this cycle is skipped (exit 0). The
    decision, its per-rig table and reason, is printed, recorded as an MLflow run and tagged on the candidate.

    --submit runs `python -m rigpose retrain JOB_FILE --set ...` as a Ray job (the project folder uploaded as for
    `rigpose submit`; the candidate trains on that cluster) and exits 0 when the job ends SUCCEEDED. The training
    job's relative local paths become absolute for a cluster on this machine and are refused for a remote one; no
    credential is sent without --forward-credentials. A schedule of submitted cycles is the Kubernetes CronJob's
    (or cron's) job: --every is refused with --submit.
    """
    if submit:
        if every:
            _fail("retrain: --every with --submit: a submitted retrain is one cycle, one Ray job; schedule `rigpose "
                  "retrain --submit` from outside (the Kubernetes CronJob, cron), or run --every without --submit")
        _submit(job_file, set_, dry_run=dry_run, address=address, no_wait=no_wait, submission_id=submission_id,
                forward_credentials=forward_credentials, dry_run_submit=dry_run_submit)
        return
    given = [flag for flag, on in (("--address", address is not None), ("--no-wait", no_wait),
                                   ("--submission-id", submission_id is not None),
                                   ("--forward-credentials", forward_credentials),
                                   ("--dry-run-submit", dry_run_submit)) if on]
    if given:
        _fail(f"retrain: {', '.join(given)}: only with --submit")
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


def _submit(job_file: Path, sets: list[str], *, dry_run: bool, address: str | None, no_wait: bool,
            submission_id: str | None, forward_credentials: bool, dry_run_submit: bool) -> None:
    from rigpose.cli.run import send_submission
    from rigpose.cluster import submit as sub_mod

    addr = address or sub_mod.default_address()
    try:
        sub = sub_mod.build_retrain_submission(job_file, sets, address=addr, dry_run=dry_run,
                                               submission_id=submission_id, forward_credentials=forward_credentials)
    except ValueError as e:
        _fail(scrub(str(e)))
    send_submission(sub, addr, dry_run=dry_run_submit, no_wait=no_wait)
