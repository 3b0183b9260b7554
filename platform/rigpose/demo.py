"""`rigpose demo`: the end-to-end path on embedded defaults (what `make demo` runs).

Today: validate every shipped rig, put real motion capture (pybullet's DeepMimic clips) in each rig's capture
volume, project it through the calibrated cameras with detector-like noise, triangulate it back (weighted DLT
and robust DLT) and print the 3D error and the reprojection error per rig.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rigpose import geometry as g
from rigpose.rig import RigError, load_rig

RIGS_DIR = Path(__file__).resolve().parents[2] / "datasets" / "rigs"


def demo_motion(num_frames: int = 120) -> tuple[str, np.ndarray]:
    """(description, joints [T, J, 3] metres, root-centred) of real motion capture, or a synthetic fallback."""
    try:
        from rigpose.data.motion import clip_joints

        joints = clip_joints("walk")[:num_frames]
        return "DeepMimic 'walk' clip (pybullet)", joints - joints[:, :1]
    except ImportError:  # pybullet is the `mocap` extra; the Makefile installs it
        rng = np.random.default_rng(0)
        return "random points (install rigpose[mocap] for real motion)", rng.normal(0, 0.3, (num_frames, 16, 3))


def run_demo(*, seed: int = 0, noise_px: float = 5.0, outlier_rate: float = 0.02,
             rigs_dir: Path = RIGS_DIR, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code (0 when every shipped rig validates)."""
    console = console or Console()
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
