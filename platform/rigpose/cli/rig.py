"""`rigpose rig ...`: validate rig files, show a rig's cameras, import calibrations (TOML, Qualisys, OpenCV).

Where a rig file is read, a shipped rig's name (`h36m-s1`, rigpose.resources) works too.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from rigpose.resources import resolve_rig
from rigpose.rig import Rig, RigError, import_calibration_toml, load_rig, save_rig
from rigpose.rig_import import import_opencv, import_qualisys

app = typer.Typer(
    help="Camera rigs: validate, show, import calibrations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Units(StrEnum):
    """Length unit of a calibration file's translations."""

    mm = "mm"
    m = "m"


def _fail(message: str) -> None:
    # typer.echo, not rich: rich wraps long lines and the contract is one line per bad file.
    typer.echo(message, err=True)


@app.command()
def validate(
    files: Annotated[list[str], typer.Argument(
        help="Rig JSON files (local paths or fsspec URLs) or shipped rig names (h36m-s1, studio-8, ...).")],
    min_cameras: Annotated[int, typer.Option(help="Fewest cameras accepted (2D-supervised training needs 2).")] = 2,
) -> None:
    """Check rig files: rotations, focal lengths, principal points, finite numbers, unique camera names.

    Prints OK per good file; one line naming the file, rig, camera and field per bad file (stderr). Exits 1 if any
    file failed.
    """
    num_failed = 0
    for path in files:
        try:
            rig = load_rig(resolve_rig(path), min_cameras=min_cameras)
        except RigError as e:
            _fail(str(e))
            num_failed += 1
        except OSError as e:
            _fail(f"{path}: cannot read ({e.strerror or e})")
            num_failed += 1
        else:
            typer.echo(f"OK {path}: rig {rig.rig_id!r}, {len(rig)} cameras")
    if num_failed:
        raise typer.Exit(1)


@app.command("import-toml")
def import_toml(
    file: Annotated[str, typer.Argument(help="OpenCV/anipose calibration TOML (one section per camera, e.g. cam_0).")],
    out: Annotated[Path, typer.Option("--out", help="Rig JSON file to write (metres).")],
    units: Annotated[Units, typer.Option(
        help="Length unit of the TOML's translations: 'mm' or 'm' (anipose uses the board's unit). Required, "
             "because a wrong guess scales the whole rig by 1000.")],
    rig_id: Annotated[str | None, typer.Option(help="Rig id (default: the TOML file's stem).")] = None,
) -> None:
    """Convert a calibration TOML (Rodrigues rotation, world->camera translation) into a validated rig file."""
    try:
        rig = import_calibration_toml(file, units=units.value, rig_id=rig_id)  # type: ignore[arg-type]
        save_rig(rig, out)
    except RigError as e:
        _fail(str(e))
        raise typer.Exit(1) from e
    except OSError as e:
        _fail(f"{e.filename or file}: cannot read or write ({e.strerror or e})")
        raise typer.Exit(1) from e
    typer.echo(f"wrote {out}: rig {rig.rig_id!r}, {len(rig)} cameras")


def _write_imported(read: Callable[[], Rig], out: Path, file: str) -> None:
    """Run an importer, save its rig to `out`; one line on stderr and exit 1 for a bad or unreadable file."""
    try:
        rig = read()
        save_rig(rig, out)
    except RigError as e:
        _fail(str(e))
        raise typer.Exit(1) from e
    except OSError as e:
        _fail(f"{e.filename or file}: cannot read or write ({e.strerror or e})")
        raise typer.Exit(1) from e
    typer.echo(f"wrote {out}: rig {rig.rig_id!r}, {len(rig)} cameras")


@app.command("import-qualisys")
def import_qualisys_cmd(
    file: Annotated[str, typer.Argument(help="Qualisys QTM calibration export (.qca.txt, XML; lengths in mm).")],
    out: Annotated[Path, typer.Option("--out", help="Rig JSON file to write (metres).")],
    rig_id: Annotated[str | None, typer.Option(help="Rig id (default: the file name without .qca.txt).")] = None,
    binning: Annotated[int, typer.Option(
        min=1, help="Sensor pixels per video pixel, when the video was recorded binned (2: 540p from 1080p).")] = 1,
) -> None:
    """Convert a Qualisys Track Manager calibration (.qca.txt) into a validated rig file.

    Keeps the active video cameras; K in pixels of the recorded video (fov_video crop, --binning); mm -> metres.

    Example: rigpose rig import-qualisys calibration/Calib.qca.txt --out rigs/lab.json --rig-id lab
    """
    _write_imported(lambda: import_qualisys(file, rig_id=rig_id, binning=binning), out, file)


@app.command("import-opencv")
def import_opencv_cmd(
    files: Annotated[list[str], typer.Argument(
        help="OpenCV FileStorage files (YAML or XML): one per camera (name = file stem), or EasyMocap-style files "
             "with a 'names' list (intri.yml extri.yml).")],
    out: Annotated[Path, typer.Option("--out", help="Rig JSON file to write (metres).")],
    units: Annotated[Units, typer.Option(
        help="Length unit of the files' translations: 'mm' or 'm'. Required: the format does not say, and a wrong "
             "guess scales the whole rig by 1000.")],
    rig_id: Annotated[str | None, typer.Option(
        help="Rig id (default: a single file's stem, else the folder the files share).")] = None,
) -> None:
    """Convert OpenCV FileStorage calibration files (as cv2.FileStorage writes them) into a validated rig file.

    Keys: camera_matrix|K, dist_coeffs|D, R|rvec, T|tvec, image_width+image_height (all: rigpose.rig_import).

    Example: rigpose rig import-opencv calib/cam0.yml calib/cam1.yml --out rigs/lab.json --units mm --rig-id lab
    """
    _write_imported(lambda: import_opencv(files, units=units.value, rig_id=rig_id),  # type: ignore[arg-type]
                    out, ", ".join(files))


def _vec(v: np.ndarray) -> str:
    return " ".join(f"{0.0 if abs(x) < 0.005 else x:.2f}" for x in v)  # no "-0.00"


def rig_table(rig: Rig) -> Table:
    """A rich table of the rig's cameras: resolution, focal, position, viewing direction, distance to origin."""
    rows = [(cam.name, f"{cam.width}x{cam.height}", "{:.0f}/{:.0f}".format(*cam.focal), _vec(cam.center),
             _vec(cam.viewing_direction), f"{np.linalg.norm(cam.center):.2f}") for cam in rig.cameras]
    table = Table(title=f"rig {rig.rig_id}: {len(rig)} cameras (world metres, z up)", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False,
                  caption="direction: unit optical axis (world); range: distance from the origin (m)")
    for i, col in enumerate(("camera", "size", "f (px)", "position (m)", "direction", "range")):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i > 0)  # numbers never wrap
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def show(
    file: Annotated[str, typer.Argument(help="Rig JSON file (local path or fsspec URL) or shipped rig name.")],
) -> None:
    """Print a rig's cameras as a table: resolution, focal length, position, viewing direction, distance."""
    try:
        rig = load_rig(resolve_rig(file), min_cameras=1)
    except RigError as e:
        _fail(str(e))
        raise typer.Exit(1) from e
    except OSError as e:
        _fail(f"{file}: cannot read ({e.strerror or e})")
        raise typer.Exit(1) from e
    Console().print(rig_table(rig))
