"""`rigpose demo`: the main job end to end on embedded defaults (what `make demo` runs).

1. data: build `outputs/datasets/demo` from the shipped `demo` recipe (skipped when it already exists).
2. rigs: validate every shipped rig; project real motion capture (pybullet's DeepMimic clips) through each with
   detector-like noise and triangulate it back (weighted and robust DLT): a table of 3D and reprojection errors.
3. train: the job defaults (`TrainJob()`, which `jobs/train.yaml` spells out; 2D supervision only) on a local Ray,
   with a budget of DEMO_STEPS optimizer steps (or the caller's `steps` / `epochs`); the model lands in
   `outputs/runs/demo/model.pt`.
4. evaluate: the trained lifter on the test split against triangulation baselines; a table and a JSON file.
5. registry: training logged the run to MLflow and registered the model as `rigpose-lifter@candidate`; it becomes
   `@champion` when its held-out-view error on the test split beats the current champion's (or there is none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rigpose import geometry as g
from rigpose import resources
from rigpose.cli import ui
from rigpose.rig import RigError, load_rig

# Package data, so the demo runs from an installed wheel too; the job is the code's defaults (no file needed).
RIGS_DIR = resources.rigs_dir()
DEMO_RECIPE = resources.recipe_path("demo")
# The demo's training budget, optimizer steps: ~15.6 epochs of the demo dataset's 77 steps (19.9k training frames,
# batch 256), about 5 minutes of the default 1024-wide lifter on 2 cores; the library default (optim.steps) is longer.
DEMO_STEPS = 1200


def demo_motion(num_frames: int = 120) -> tuple[str, np.ndarray]:
    """(description, joints [T, J, 3] metres, root-centred) of real motion capture, or a synthetic fallback."""
    try:
        from rigpose.data.synth.mocap import clip_joints

        joints = clip_joints("walk")[:num_frames]
        return "DeepMimic 'walk' clip (pybullet)", joints - joints[:, :1]
    except ImportError:  # pybullet is the `mocap` extra; the Makefile installs it
        rng = np.random.default_rng(0)
        return "random points (install rigpose[mocap] for real motion)", rng.normal(0, 0.3, (num_frames, 16, 3))


def rig_check(*, seed: int = 0, noise_px: float = 5.0, outlier_rate: float = 0.02,
              rigs_dir: Path = RIGS_DIR, console: Console | None = None) -> int:
    """Step 1: returns the process exit code (0 when every shipped rig validates)."""
    console = console or ui.console()
    rng = np.random.default_rng(seed)
    rig_files = sorted(rigs_dir.glob("*.json"))
    if not rig_files:
        console.print(f"[red]no rig files in {rigs_dir}[/red]")
        return 1
    what, motion = demo_motion()
    console.print(f"[bold]RigPose demo[/bold]: {len(rig_files)} rigs, motion = {what}, {len(motion)} frames, "
                  f"detector noise {noise_px:g} px + {outlier_rate:.0%} outliers")
    table = Table(title="Project real motion through each rig, triangulate it back")
    for col in ("rig", "cameras", "DLT MPJPE (mm)", "robust MPJPE (mm)", "reproj. error (px)", "per camera (px)"):
        table.add_column(col, justify="right" if col not in ("rig",) else "left")
    failures = 0
    for path in rig_files:
        try:
            rig = load_rig(path)
        except RigError as e:
            console.print(f"[red]{e}[/red]")
            failures += 1
            continue
        X = motion + rig.capture_center()  # [T, J, 3] world metres
        cams = rig.arrays()
        clean = g.project(X[:, None], cams)  # [T, V, J, 2]
        noisy = clean + rng.normal(0, noise_px, clean.shape)
        outliers = rng.random(clean.shape[:-1]) < outlier_rate
        noisy[outliers] += rng.normal(0, 80.0, (int(outliers.sum()), 2))
        dlt = g.triangulate(noisy, cams)
        robust = g.triangulate_robust(noisy, cams)
        err_VJ = g.reprojection_error(robust, noisy, cams)  # [T, V, J] px
        per_cam = " ".join(f"{np.nanmedian(err_VJ[:, v]):.1f}" for v in range(len(rig.cameras)))
        table.add_row(
            rig.rig_id, str(len(rig.cameras)),
            f"{1000 * np.nanmean(np.linalg.norm(dlt - X, axis=-1)):.1f}",
            f"{1000 * np.nanmean(np.linalg.norm(robust - X, axis=-1)):.1f}",
            f"{np.nanmedian(err_VJ):.2f}", per_cam,
        )
    console.print(table)
    console.print("MPJPE = mean 3D joint error against the true motion; reprojection error = median pixel distance "
                  "between the robust triangulation projected back and the noisy 2D.")
    return 1 if failures else 0


def run_demo(*, seed: int = 0, noise_px: float = 5.0, output_dir: Path = Path("outputs"), epochs: int | None = None,
             steps: int | None = None, train: bool = True, console: Console | None = None) -> int:
    """All steps; returns the process exit code. The training budget: `epochs` passes over the data, or `steps`
    optimizer steps (default DEMO_STEPS); ValueError when both are given."""
    if epochs is not None and steps is not None:
        raise ValueError(f"demo: give the training budget as epochs ({epochs}) or steps ({steps}), not both")
    console = console or ui.console()
    data_url = str(output_dir / "datasets" / "demo")
    if train:
        from rigpose.data.manifest import read_manifest
        from rigpose.data.synth.build import build_dataset

        console.rule("[bold]1/5 dataset")
        if read_manifest(data_url) is None:
            manifest = build_dataset(str(DEMO_RECIPE), data_url, progress=True)
            console.print(f"built {data_url}: {manifest.num_rows:,} frames, splits "
                          f"{ {k: v['rows'] for k, v in manifest.splits().items()} }")
        else:
            console.print(f"{data_url} already exists (delete it to rebuild)")
    console.rule("[bold]2/5 rigs")
    code = rig_check(seed=seed, noise_px=noise_px, console=console)
    if code or not train:
        return code
    console.rule("[bold]3/5 train (2D supervision only)")
    from rigpose.config import load_job
    from rigpose.train.trainer import train as run_training

    overrides = [f"data.url={data_url}", f"run.output_dir={output_dir / 'runs'}", "run.name=demo"]
    overrides.append(f"optim.epochs={epochs}" if epochs is not None else f"optim.steps={steps or DEMO_STEPS}")
    out = run_training(load_job(None, overrides))
    last = out["history"][-1]
    console.print(f"trained {int(last['step'])} steps ({int(last['epoch']) + 1} epochs): val held-out-view "
                  f"reprojection {last.get('val/reprojection_px', float('nan')):.2f} px; model {out['model']}")
    console.rule("[bold]4/5 evaluate")
    from rigpose.cli.evaluate import print_results
    from rigpose.inference.evaluate import evaluate

    report = evaluate(out["model"], data_url, split="test", json_path=str(Path(out["run_dir"]) / "evaluation.json"))
    print_results(report, console=console)
    verdict = multiview_verdict(report)
    if verdict:
        console.print(verdict)
    console.print(f"evaluation JSON: {Path(out['run_dir']) / 'evaluation.json'}")
    console.rule("[bold]5/5 model registry (MLflow)")
    return registry_step(out, data_url, console=console)


def multiview_verdict(report: dict) -> str | None:
    """One line: the lifter's multi-view MPJPE against weighted and robust triangulation of the same 2D (None when
    the report has no multi-view 3D metrics)."""
    multi = report.get("multi") or {}
    method = report.get("multi_mode")

    def mm(name: str) -> float | None:
        return ((multi.get(name) or {}).get("overall") or {}).get("mpjpe_mm")

    ours, dlt, robust = mm(method), mm("dlt"), mm("robust")
    if None in (ours, dlt, robust):
        return None
    better = ours < min(dlt, robust)
    return (f"multi-view ({method}): {ours:.1f} mm, {ours / robust:.2f} x robust triangulation ({robust:.1f} mm) and "
            f"{ours / dlt:.2f} x weighted DLT ({dlt:.1f} mm): "
            + ("better than both" if better else "NOT better than triangulation"))


def registry_step(out: dict, data_url: str, *, console: Console) -> int:
    """Gate the new @candidate against @champion and print where the MLflow UI opens."""
    from rigpose.retrain.gate import champion_gate

    tracked = out.get("tracking")
    if not tracked:
        console.print("tracking is off in the job file (tracking.enabled: false): nothing registered")
        return 0
    reg = tracked["registered"]
    uri = tracked["uri"]
    if reg is not None:
        from rigpose.tracking.secrets import scrub

        gate = champion_gate(reg.name, reg.version, data_url=data_url, split="test", uri=uri)
        console.print(f"registered {reg.name} version {reg.version} as @candidate (MLflow run {reg.run_id})")
        if gate.champion_px is None and gate.promoted:
            console.print(f"no @champion yet: version {reg.version} is now {reg.name}@champion "
                          f"(held-out-view error {gate.candidate_px:.2f} px)")
        elif gate.promoted:
            console.print(f"candidate {gate.candidate_px:.2f} px beats champion v{gate.champion_version} "
                          f"{gate.champion_px:.2f} px: version {reg.version} is now {reg.name}@champion")
        elif gate.champion_px is None:
            console.print(f"version {reg.version} already is {reg.name}@champion")
        else:
            console.print(f"candidate {gate.candidate_px:.2f} px does not beat champion v{gate.champion_version} "
                          f"{gate.champion_px:.2f} px: @champion stays on version {gate.champion_version}")
        console.print(f"use it: MLFLOW_TRACKING_URI={scrub(uri)} rigpose lift --model models:/{reg.name}@champion "
                      f"--data {data_url} --out outputs/lift.parquet", soft_wrap=True)
    console.print(f"MLflow UI: {tracked['ui']}", soft_wrap=True)
    return 0
