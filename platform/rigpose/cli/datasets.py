"""`rigpose datasets ...`: build, ingest, validate, describe, noise-profile, reshard and vacuum datasets (local or
s3://)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from rigpose import resources
from rigpose.cli import ui

app = typer.Typer(help="Datasets: build, ingest, validate, describe, noise-profile, reshard, vacuum.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = ui.console()
err_console = ui.console(stderr=True)
_fail = ui.fail


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="Recipe YAML file, or a shipped recipe's name: tiny, demo, scale."),
    out: str = typer.Option(..., "--out", help="Dataset root: a local path, file:// or s3://bucket/prefix."),
    replace: bool = typer.Option(False, help="Replace sequences that are already in the dataset."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Build a synthetic dataset from real motion capture through calibrated rigs, as a recipe describes.

    The recipe names the rigs (shipped rig names, or your own rig files by path)
    and the dataset's skeleton: deepmimic16 (the default), or your detector's: coco17, halpe26 or h36m17.

    Recipe keys: datasets/README.md, or python -c "import rigpose.data.synth.recipe as m; help(m)".
    """
    from rigpose.data.manifest import DatasetError
    from rigpose.data.synth.build import build_dataset

    try:
        manifest = build_dataset(str(recipe_file(recipe)), out, progress=progress, replace=replace)
    except (ValueError, DatasetError) as e:
        _fail(str(e))
    _print_splits(out, manifest.splits())


def recipe_file(recipe: Path) -> Path:
    """`recipe` when it is a file, else the shipped recipe of that name (`tiny`); ValueError when neither."""
    if recipe.is_file():
        return recipe
    if recipe.suffix or len(recipe.parts) != 1:
        raise ValueError(f"{recipe}: no such recipe file")
    return resources.recipe_path(recipe.name)


def _print_splits(root: str, splits: dict) -> None:
    table = Table(title=f"dataset {root}")
    for col in ("split", "rows", "shards", "sequences", "rigs"):
        table.add_column(col, justify="left" if col in ("split", "rigs") else "right")
    for name, s in sorted(splits.items()):
        table.add_row(name, f"{s['rows']:,}", str(s["shards"]), str(s["sequences"]), ", ".join(s["rigs"]))
    console.print(table)


@app.command()
def validate(url: str = typer.Argument(..., help="Dataset root (local path, file:// or s3://).")) -> None:
    """Check manifest vs shards (presence, size, sha256, rows), schema, value ranges and rigs. Exit 1 on problems."""
    from rigpose.data.validate import validate_dataset

    report = validate_dataset(url)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    if not report.ok:
        for p in report.problems:
            err_console.print(f"[red]{p}[/red]", soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    console.print(f"OK {url}: {report.shards_checked} shards, {report.rows_checked:,} rows checked")


@app.command()
def describe(
    url: str = typer.Argument(..., help="Dataset root (local path, file:// or s3://)."),
    sample: int = typer.Option(2000, help="Rows sampled per rig for the rates and the reprojection check."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Rows per rig/split, views, missing rates, and per-camera reprojection consistency (bad calibration shows)."""
    from rigpose.data.manifest import DatasetError
    from rigpose.data.validate import describe_dataset

    try:
        d = describe_dataset(url, max_rows_per_rig=sample)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    if as_json:
        json.dump(d, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    console.print(f"dataset {url}: skeleton {d['skeleton']}, {d['rows']:,} rows")
    _print_splits(url, d["splits"])
    table = Table(title="rigs (rates and reprojection from a sample)")
    for col in ("rig", "rows", "views", "missing joints", "missing views", "median reprojection px per camera"):
        table.add_column(col, justify="left" if col == "rig" else "right")
    for rig_id, r in d["rigs"].items():
        per_cam = r.get("reprojection_px_median_per_camera", [])
        cams = " ".join(f"{name}:{'-' if math.isnan(e) else f'{e:.1f}'}"
                        for name, e in zip(r["cameras"], per_cam, strict=False))
        table.add_row(rig_id, f"{r['rows']:,}", str(r["views"]),
                      f"{r.get('missing_joint_rate', float('nan')):.1%}",
                      f"{r.get('missing_view_rate', float('nan')):.1%}", cams)
    console.print(table)


@app.command("noise-profile")
def noise_profile(
    url: str = typer.Argument(..., metavar="DATASET", help="Dataset root (local path, file:// or s3://)."),
    out: str = typer.Option(..., "--out", help="Profile JSON to write (local path or URL)."),
    split: str = typer.Option("train", "--split", help="Split to measure."),
    max_rows: int = typer.Option(20_000, "--max-rows", min=1, help="Rows used at most, spread evenly over the "
                                 "split's shards."),
    outlier_k: float = typer.Option(4.0, "--outlier-k", min=0.5, help="Outlier threshold, in robust stds of the "
                                    "residual."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Measure your 2D detector's noise per camera and joint from multi-view consistency (no 3D labels needed).

    Each view's keypoints are compared with the point triangulated robustly from the other views: the robust
    std of that residual, corrected for the triangulation's own error, is the detector's pixel noise; outlier,
    missing-joint, missing-view and left/right swap rates come with it (method and biases: python -c "import
    rigpose.data.noise_residuals as m; help(m)"). Needs rigs of 3 cameras or more.

    A recipe takes the profile so that a synthetic prior sees your detector:
    noise: {profile: profile.json} (datasets/README.md). Example:

        rigpose datasets noise-profile outputs/datasets/my-lab --split train --out my-lab-noise.json
    """
    import shlex

    from rigpose.data.manifest import DatasetError
    from rigpose.data.noise_profile import profile_dataset, save_noise_profile

    command = shlex.join(["rigpose", "datasets", "noise-profile", url, "--split", split, "--out", out,
                          "--max-rows", str(max_rows), "--outlier-k", f"{outlier_k:g}"])
    try:
        profile = profile_dataset(url, split=split, max_rows=max_rows, progress=progress, command=command,
                                  outlier_k=outlier_k)
        save_noise_profile(profile, out)
    except (DatasetError, ValueError, OSError) as e:
        _fail(str(e))
    _print_profile(profile)
    if profile.skipped_rigs:
        console.print(f"[yellow]note:[/yellow] left out rigs with fewer than 3 cameras: "
                      f"{', '.join(profile.skipped_rigs)}", soft_wrap=True)
    console.print(f"wrote {out} ({profile.rows_used:,} rows of {split!r})", highlight=False)


def _print_profile(profile: Any) -> None:
    """One row per camera and one for all: median and range over joints of the noise, then the rates."""
    table = Table(title=f"detector noise ({profile.skeleton}, {len(profile.joint_names)} joints)")
    for col in ("camera", "residuals", "noise px (median, min-max)", "outliers", "missing joints",
                "missing views", "swaps"):
        table.add_column(col, justify="left" if col == "camera" else "right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def mean(xs: list[float | None]) -> float | None:
        known = [x for x in xs if x is not None]
        return sum(known) / len(known) if known else None

    for name, s in [*profile.cameras.items(), ("all", profile.overall)]:
        std = [x for x in s.pixel_std if x is not None]
        noise = f"{sorted(std)[len(std) // 2]:.1f} ({min(std):.1f}-{max(std):.1f})" if std else "-"
        table.add_row(name, f"{sum(s.residuals):,}", noise, pct(mean(s.outlier_rate)), pct(mean(s.missing_rate)),
                      pct(s.missing_view_rate), pct(s.swap_rate), style="bold" if name == "all" else None)
    console.print(table)
    ranked = sorted((x, n) for x, n in zip(profile.overall.pixel_std, profile.joint_names, strict=True)
                    if x is not None)
    if ranked:
        console.print("noisiest joints: " + ", ".join(f"{n} {x:.1f} px" for x, n in ranked[::-1][:3])
                      + "; steadiest: " + ", ".join(f"{n} {x:.1f} px" for x, n in ranked[:3]), highlight=False)


@app.command()
def vacuum(
    url: str = typer.Argument(..., help="Dataset root (local path, file:// or s3://)."),
    grace: float = typer.Option(3600.0, "--grace", min=0, help="Remove only files older than this many seconds "
                                "whose writer's heartbeat is as old (0: every unlisted file; only while no ingest "
                                "runs)."),
    keep_versions: int = typer.Option(None, "--keep-versions", min=1, help="Also delete all but the newest N "
                                      "manifest versions (default: keep every version)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; remove nothing."),
) -> None:
    """Remove files no committed manifest lists: shards of failed or killed ingests, stale writer heartbeats."""
    from rigpose.data.commit import collect_garbage
    from rigpose.data.manifest import DatasetError

    try:
        report = collect_garbage(url, grace_s=grace, dry_run=dry_run, keep_versions=keep_versions)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    verb = "would remove" if dry_run else "removed"
    for rel in report.removed if dry_run else []:
        console.print(f"  {rel}", highlight=False)
    console.print(f"{url}: {verb} {len(report.removed)} file(s), {report.bytes_freed / 2**20:.1f} MiB"
                  + (f" ({report.versions_pruned} old manifest versions)" if report.versions_pruned else ""),
                  highlight=False)
    if report.in_progress:
        console.print(f"kept {len(report.in_progress)} unlisted file(s) of running or recent writers (younger than "
                      f"--grace {grace:g} s)", highlight=False)
    if report.superseded:
        console.print(f"kept {len(report.superseded)} shard(s) that a manifest version superseded less than --grace "
                      f"{grace:g} s ago lists (for its readers)", highlight=False)


@app.command()
def reshard(
    url: str = typer.Argument(..., metavar="URL", help="Dataset root (local path, file:// or s3://)."),
    rows_per_shard: int = typer.Option(None, "--rows-per-shard", min=1, help="Rows of a merged shard at most "
                                       "(default: the writer's, about 128 MB of a rig's rows); shards of fewer than "
                                       "half this are merged, larger ones are never split."),
    row_group_rows: int = typer.Option(16384, "--row-group-rows", min=1, help="Rows per Parquet row group of the "
                                       "new shards; shards with a larger group are rewritten."),
    rigs: list[str] = typer.Option(None, "--rig", help="Only this rig's shards (repeat for more; default all)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be rewritten; write nothing."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Compact a dataset: merge small shards of each rig/split and rewrite shards whose row groups are too big.

    The rows are copied unchanged into new shards (row groups of --row-group-rows rows, what streaming reads one
    task at a time) and committed as a new manifest version; the old version still reads (its shards stay for an
    hour, then the next commit or `rigpose datasets vacuum` removes them). Each new shard lists the shards it was
    made from, so `rigpose retrain` still sees only new data as new. Refused, with nothing committed, when
    another writer commits meanwhile. Example:

        rigpose datasets reshard s3://bucket/datasets/my-lab --dry-run
    """
    import shlex

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rigpose.data.manifest import DatasetError
    from rigpose.data.reshard import plan_reshard
    from rigpose.data.reshard import reshard as run_reshard

    command = shlex.join(["rigpose", "datasets", "reshard", url, "--row-group-rows", str(row_group_rows),
                          *(["--rows-per-shard", str(rows_per_shard)] if rows_per_shard else []),
                          *[a for r in rigs or [] for a in ("--rig", r)]])

    def bar() -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, disable=not progress, transient=True)

    try:
        with bar() as footers:
            task = footers.add_task("read shard footers", total=None)
            plan = plan_reshard(url, rows_per_shard=rows_per_shard, row_group_rows=row_group_rows,
                                rig_ids=rigs or None, advance=lambda n: footers.advance(task, n))
        _print_reshard_plan(plan)
        if dry_run and plan.rewrites:
            console.print(f"dry run: would write {len(plan.rewrites)} shard(s) of {plan.rows:,} rows in all; "
                          "nothing written", highlight=False)
        if dry_run or not plan.rewrites:
            return
        with bar() as rewrite:
            task = rewrite.add_task("reshard rows", total=plan.rows)
            manifest = run_reshard(plan, command=command, advance=lambda n: rewrite.advance(task, n))
    except (DatasetError, ValueError, OSError) as e:
        _fail(str(e))
    console.print(f"{url}: committed manifest version {manifest.version} ({plan.shards_in} shard(s) -> "
                  f"{len(plan.rewrites)}); version {plan.base.version} still reads: its shards stay for an hour, "
                  "then the next commit or `rigpose datasets vacuum` removes them", highlight=False)


def _print_reshard_plan(plan: Any) -> None:
    """The partitions a reshard changes (or that nothing needs it), before it runs."""
    if not plan.rewrites:
        console.print(f"{plan.root}: nothing to reshard ({plan.shards_checked} shard(s) checked: no row group over "
                      f"{plan.row_group_rows:,} rows, no two shards to merge); manifest version {plan.base.version} "
                      "stays", highlight=False)
        return
    table = Table(title=f"reshard {plan.root} (manifest version {plan.base.version})")
    for col in ("rig", "split", "shards", "rows rewritten"):
        table.add_column(col, justify="left" if col in ("rig", "split") else "right")
    for (rig_id, split), (now, after, rows) in plan.partitions().items():
        table.add_row(rig_id, split, f"{now} -> {after}", f"{rows:,}")
    console.print(table)
