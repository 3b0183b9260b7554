"""The `rigpose viz` page in a real browser: headless Chromium runs its script, which draws every bone the data
holds (the page's data-rendered marker against a count made here from the embedded JSON) without a script error,
at the first frame and at one opened by `#frame=K`; and a screenshot shows the skeleton's colours, not a blank page.

Needs a headless Chromium on PATH (Debian: `apt-get install chromium-headless-shell`); skipped without one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rigpose_testing import synthetic_batch

from rigpose.inference.viz import page_html
from rigpose.inference.viz_page import DATA_ID, MARKER_ID
from rigpose.resources import rig_path
from rigpose.rig import load_rig
from rigpose.skeleton import DEEPMIMIC16

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
BROWSER_PACKAGE = "chromium-headless-shell"  # Debian's package: /usr/bin/chromium-headless-shell
WINDOW = (1400, 1000)  # screenshot size, px
TIMEOUT_S = 120
LEFT_RGB, RIGHT_RGB = (0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)  # the page's bone colours (left blue, right red)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless Chromium ({', '.join(BROWSERS)}) on PATH: install the Debian package "
                f"{BROWSER_PACKAGE} (apt-get install {BROWSER_PACKAGE})")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A page of 20 synthetic frames through the h36m-s1 rig: 2D 2 px off the exact projections, one detection
    and one camera's frame missing, one unknown 3D joint."""
    batch = synthetic_batch(20, seed=5)
    X = batch["joints_3d"].astype(np.float64)
    kp = batch["kp"] + np.random.default_rng(0).normal(0, 2.0, batch["kp"].shape)
    kp[0, 1, 3] = np.nan
    kp[3, 2] = np.nan
    X[3, 9] = np.nan
    rig = load_rig(rig_path("h36m-s1"))
    path = tmp_path_factory.mktemp("viz_browser") / "page.html"
    path.write_text(page_html(X, DEEPMIMIC16, rig, kp, title="browser test"), encoding="utf-8")
    return path


def chromium(browser: str, profile: Path, *args: str) -> str:
    """Run headless Chromium once (its own profile folder; virtual time, so timers and the first paint settle);
    its stdout."""
    cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


class _Marker(HTMLParser):
    """The attributes of <main id=MARKER_ID> in a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "main" and dict(attrs).get("id") == MARKER_ID:
            self.attrs = dict(attrs)


def marker(dom: str) -> dict[str, str | None]:
    parser = _Marker()
    parser.feed(dom)
    assert parser.attrs is not None, f"no <main id={MARKER_ID}> in the dumped DOM: {dom[:500]}"
    return parser.attrs


def embedded(path: Path) -> dict:
    match = re.search(rf'<script type="application/json" id="{DATA_ID}">(.*?)</script>', path.read_text(), re.S)
    assert match is not None
    return json.loads(match.group(1))


def expected_segments(data: dict, i: int) -> int:
    """Bones with both joints known at frame i: the 3D view's, and every camera's detections and reprojections."""
    def bones(points: list) -> int:
        return sum(points[c] is not None and points[p] is not None for c, p in data["bones"])

    return bones(data["joints"][i]) + sum(bones(c["observed"][i]) + bones(c["reprojected"][i])
                                          for c in data["cameras"])


@pytest.mark.parametrize("frame", [0, 3])
def test_the_page_draws_every_known_bone_of_the_frame_without_a_script_error(
        browser: str, page: Path, tmp_path: Path, frame: int) -> None:
    data = embedded(page)
    url = page.as_uri() + (f"#frame={frame}" if frame else "")
    got = marker(chromium(browser, tmp_path / "profile", "--dump-dom", url))
    assert got.get("data-render-error") is None, got["data-render-error"]
    assert got.get("data-frame") == str(frame)
    want = expected_segments(data, frame)
    full = len(data["bones"]) * (1 + 2 * len(data["cameras"]))
    assert want < full  # the missing 2D and 3D take bones away: the count is not just "everything"
    assert got.get("data-rendered") == str(want)


def test_a_screenshot_shows_the_skeleton_not_a_blank_page(browser: str, page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    chromium(browser, tmp_path / "profile", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot, or a tiny one"
    with Image.open(shot) as img:
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    assert rgb.shape[:2] == (WINDOW[1], WINDOW[0])
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50, "a (nearly) single-colour screenshot"
    for name, colour in (("left bones", LEFT_RGB), ("right bones", RIGHT_RGB)):
        near = (np.abs(rgb - np.array(colour)).max(-1) <= 12).sum()
        assert near > 500, f"{name}: {near} pixels of colour {colour} (the skeleton did not draw)"
