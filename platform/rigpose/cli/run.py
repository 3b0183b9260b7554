"""`rigpose version`, `demo`, `train` and `submit`: the installed version, and the three ways of running the training
job (end to end on embedded defaults, here on Ray, on a Ray cluster through the Ray Jobs API). `send_submission` is
the submit-and-follow part shared with `rigpose retrain --submit`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rigpose import __version__
from rigpose.cli.ui import fail as _fail
from rigpose.tracking.secrets import scrub

if TYPE_CHECKING:
    from rigpose.cluster.submit import Submission

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def version() -> None:
    """Print the installed rigpose version."""
    typer.echo(__version__)


@app.command()
def demo(
    seed: int = typer.Option(0, help="Seed for the rig check's pose placement and detector noise."),
    noise_px: float = typer.Option(5.0, help="Rig check: Gaussian 2D detector noise, pixels (std)."),
    epochs: int | None = typer.Option(None, help="Train this many epochs (optim.epochs) instead of the demo's steps "
                                                 "budget."),
    steps: int | None = typer.Option(None, min=1, help="Train this many optimizer steps (optim.steps; default "
                                                "rigpose.cli.demo.DEMO_STEPS)."),
    rigs_only: bool = typer.Option(False, "--rigs-only", help="Only the rig check (no dataset, training)."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where the demo dataset and run are written."),
) -> None:
    """Run the main job end to end: rig check, build the demo dataset, train from 2D only, evaluate."""
    from rigpose.cli.demo import run_demo

    if epochs is not None and steps is not None:
        _fail("demo: --epochs and --steps both set a training budget; give one")
    raise typer.Exit(run_demo(seed=seed, noise_px=noise_px, epochs=epochs, steps=steps, train=not rigs_only,
                              output_dir=output_dir))


@app.command()
def train(
    job_file: Path | None = typer.Argument(None, help="Job YAML (jobs/train.yaml); omitted = built-in defaults."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set optim.epochs=2 (repeatable)."),
) -> None:
    """Train the lifter with Ray Train over a Parquet dataset; writes <run.output_dir>/<run.name>/model.pt.

    Connects to run.ray_address, or $RAY_ADDRESS (set inside `ray job submit`), or starts a local Ray. Re-running
    a job with the same run.name resumes it from its latest checkpoint.
    """
    from rigpose.config import load_job

    try:
        job = load_job(job_file, set_)
    except ValueError as e:
        _fail(scrub(str(e)))
    from rigpose.train.trainer import train as run_training

    try:
        out = run_training(job)
    except (ValueError, RuntimeError) as e:
        _fail(scrub(str(e)))
    _print_history(out["history"])
    typer.echo(f"model: {out['model']}")


@app.command()
def submit(
    job_file: Path = typer.Argument(..., help="Job YAML inside the project folder (jobs/train.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set optim.epochs=2 (repeatable)."),
    address: str | None = typer.Option(
        None, help="Ray Jobs API (dashboard) address; default $RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, or "
                   "http://127.0.0.1:8265."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Print the submission id and return; do not follow."),
    submission_id: str | None = typer.Option(None, help="Submission id (default rigpose-<run.name>-<time>)."),
    forward_credentials: bool = typer.Option(
        False, "--forward-credentials",
        help="Also forward AWS/MLflow credentials from this shell in the runtime env, and URL passwords (readable "
             "by anyone who can list the cluster's jobs; prefer giving the cluster its own)."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Show what would be submitted, with the values sent (passwords as ***), and "
                                      "stop."),
) -> None:
    """Submit a training job to a Ray cluster (Ray Jobs API), print its submission id and follow its logs.

    Uploads the project folder (jobs/runtime_env.yaml: code as py_modules; .venv, data and outputs excluded) and
    runs `python -m rigpose train JOB_FILE --set ...` there. Exits 0 when the job ends SUCCEEDED. A cluster with
    Ray token auth needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token) here. Without
    --forward-credentials no credential is sent: URL passwords are left out of forwarded values and --set values.
    """
    from rigpose.cluster import submit as sub_mod

    addr = address or sub_mod.default_address()
    try:
        sub = sub_mod.build_submission(job_file, set_, address=addr, submission_id=submission_id,
                                       forward_credentials=forward_credentials)
    except ValueError as e:
        _fail(scrub(str(e)))
    send_submission(sub, addr, dry_run=dry_run, no_wait=no_wait)


def send_submission(sub: Submission, address: str, *, dry_run: bool, no_wait: bool) -> None:
    """Print the notes and the submission; then (unless `dry_run`: the values sent too, and stop) submit it and
    follow its logs to the end (unless `no_wait`). Exits 1 unless the job ends SUCCEEDED, 130 on Ctrl-C."""
    from rigpose.cli.ui import console
    from rigpose.cluster import submit as sub_mod

    for note in sub.notes:
        console(stderr=True).print(f"note: {scrub(note)}", soft_wrap=True, markup=False, highlight=False)
    typer.echo(sub.describe(values=dry_run))
    if dry_run:
        return
    addr = scrub(address)
    try:
        sid = sub_mod.submit(sub, address)
    except RuntimeError as e:
        _fail(scrub(str(e)))
    typer.echo(f"submitted {sid} to {addr}")
    if no_wait:
        typer.echo(f"follow it with: ray job logs --address {addr} --follow {sid}")
        return
    try:
        status = sub_mod.follow(address, sid, echo=lambda s, end="": typer.echo(s, nl=False))
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following; the job keeps running (ray job stop --address {addr} {sid})")
        raise typer.Exit(130) from None
    except RuntimeError as e:
        _fail(scrub(str(e)))
    typer.echo(f"job {sid}: {status}")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


def _print_history(history: list[dict]) -> None:
    from rich.table import Table

    from rigpose.cli.ui import console

    table = Table(title="training")
    cols = ["epoch", "train/loss", "train/cross_view", "train/supervised_3d", "val/reprojection_px", "lr",
            "frames_per_s"]
    cols = [c for c in cols if any(c in h for h in history)]
    for c in cols:
        table.add_column(c, justify="right")
    for h in history:
        table.add_row(*(f"{int(h[c]) + 1}" if c == "epoch" else f"{h[c]:.4g}" if c in h else "-" for c in cols))
    console().print(table)
