"""rigpose.inference.viz / `rigpose viz`: the page's embedded data parses back, its reprojections of exact 3D are
the 2D the synthetic data was made from (and OpenCV's projection), missing input comes out null, the page loads
nothing from outside, bad shapes are refused by name; the command writes a page from a tiny model and dataset and
names the choices when a sequence or camera is unknown. (The page's drawing: tests/integration/test_viz_browser.py.)
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rigpose_testing import synthetic_batch
from typer.testing import CliRunner

from rigpose.cli import viz as viz_cli
from rigpose.cli.main import app
from rigpose.config import ModelConfig
from rigpose.data.schema import frames_for_rig
from rigpose.data.writer import DatasetWriter
from rigpose.inference import viz
from rigpose.inference.viz_page import DATA_ID
from rigpose.model.checkpoint import save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import rig_path
from rigpose.rig import load_rig
from rigpose.skeleton import DEEPMIMIC16

RIG = load_rig(rig_path("h36m-s1"))  # the rig synthetic_batch projects through


class _DataBlob(HTMLParser):
    """The text of <script type="application/json" id=DATA_ID>, and every src/href attribute of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.text, self.links = False, "", []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]
        self.inside = tag == "script" and a.get("id") == DATA_ID and a.get("type") == "application/json"

    def handle_endtag(self, tag: str) -> None:
        self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text += data


def parse_page(page: str) -> tuple[dict, list[str]]:
    """(the page's embedded data, its src/href values)."""
    blob = _DataBlob()
    blob.feed(page)
    return json.loads(blob.text), blob.links


def exact(num_frames: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(world joints [B, J, 3] m, the pixels [B, V, J, 2] they were projected to without noise)."""
    batch = synthetic_batch(num_frames, seed=3)
    return batch["joints_3d"].astype(np.float64), batch["kp"].astype(np.float64)


def as_array(points: list) -> np.ndarray:
    """[B][J] of [k] or None -> [B, J, k] float, NaN for None."""
    k = len(next(p for row in points for p in row if p is not None))
    return np.array([[[np.nan] * k if p is None else p for p in row] for row in points], np.float64)


# ---------------------------------------------------------------------------------------------- the page


def test_the_embedded_data_parses_back_to_page_data_with_every_frame_camera_and_joint() -> None:
    X, kp = exact()
    page = viz.page_html(X, DEEPMIMIC16, RIG, kp, frame_ids=np.arange(100, 112), info={"model": "m.pt"})
    data, _ = parse_page(page)
    assert data == viz.page_data(X, DEEPMIMIC16, RIG, kp, frame_ids=np.arange(100, 112))
    assert data["frames"] == list(range(100, 112)) and data["num_source_frames"] == 12
    assert data["joint_names"] == list(DEEPMIMIC16.joint_names) and len(data["bones"]) == len(DEEPMIMIC16.bones)
    assert [c["name"] for c in data["cameras"]] == list(RIG.camera_names)
    assert [(c["width"], c["height"]) for c in data["cameras"]] == [(c.width, c.height) for c in RIG.cameras]
    np.testing.assert_allclose(as_array(data["joints"]), X, atol=0.0005 + 1e-12)  # 1 mm
    assert "m.pt" in page and "12 of 12" in page
    assert viz.page_bytes(X, DEEPMIMIC16, RIG, kp, frame_ids=np.arange(100, 112), info={"model": "m.pt"}) == (
        page.encode("utf-8"))


def test_reprojections_of_exact_3d_are_the_2d_the_synthetic_data_was_made_from_and_opencvs() -> None:
    X, kp = exact()
    data = viz.page_data(X, DEEPMIMIC16, RIG, kp)
    for v, cam in enumerate(data["cameras"]):
        got = as_array(cam["reprojected"])
        np.testing.assert_allclose(got, kp[:, v], atol=0.05 + 1e-9)  # rounded to 0.1 px
        rig_cam = RIG.cameras[v]
        want, _ = cv2.projectPoints(X.reshape(-1, 1, 3), cv2.Rodrigues(rig_cam.R)[0], rig_cam.t, rig_cam.K,
                                    rig_cam.dist)
        np.testing.assert_allclose(got, want.reshape(X.shape[0], -1, 2), atol=0.05 + 1e-6)
        assert all(e is not None and e <= 0.01 for e in cam["error_px"]) and cam["mean_error_px"] <= 0.01
    assert np.abs(RIG.arrays().dist).max() > 0  # the rig's lens distortion took part


def test_the_error_beside_each_camera_is_the_mean_pixel_distance_of_the_joints_seen_that_frame() -> None:
    X, kp = exact(4)
    moved = kp.copy()
    moved[:, 2, :8, 0] += 3.0  # camera 2: half the joints 3 px to the right, the rest exact
    moved[:, 2, 8:12] = np.nan  # ... four of the exact ones missing
    cam = viz.page_data(X, DEEPMIMIC16, RIG, moved)["cameras"][2]
    assert cam["error_px"] == [2.0] * 4  # 8 joints at 3 px, 4 at 0 px: 24 / 12
    assert cam["mean_error_px"] == 2.0


def test_missing_2d_and_3d_come_out_null_not_nan() -> None:
    X, kp = exact(3)
    kp[1, 2, 5] = np.nan  # one detection missing
    kp[2, 0] = np.nan  # a camera that saw nothing in one frame
    X[0, 7] = np.nan  # one unknown 3D joint: no reprojection anywhere
    page = viz.page_html(X, DEEPMIMIC16, RIG, kp)
    assert "NaN" not in page.split(f'id="{DATA_ID}">', 1)[1].split("</script>", 1)[0]
    data, _ = parse_page(page)
    cams = data["cameras"]
    assert cams[2]["observed"][1][5] is None and cams[2]["reprojected"][1][5] is not None
    assert cams[0]["observed"][2] == [None] * 16 and cams[0]["error_px"][2] is None
    assert data["joints"][0][7] is None and all(c["reprojected"][0][7] is None for c in cams)
    assert all(p is not None for p in data["joints"][0][:7] + data["joints"][0][8:])


def test_the_page_loads_nothing_from_outside() -> None:
    X, kp = exact(3)
    page = viz.page_html(X, DEEPMIMIC16, RIG, kp, title="</script><script src=http://x>", info={"a": "<b>"})
    _, links = parse_page(page)
    assert links == []  # no src= or href= at all: inline script and style only
    assert not re.search(r"https?:", page.replace("http://x", ""))  # the title above is escaped, not a tag
    assert "<script src" not in page and "&lt;/script&gt;" in page
    for word in ("fetch(", "XMLHttpRequest", "import(", "@import", "url("):
        assert word not in page, word


def test_more_frames_than_the_cap_are_evenly_spaced_and_the_page_says_so() -> None:
    X, kp = exact(50)
    page = viz.page_html(X, DEEPMIMIC16, RIG, kp, frame_ids=np.arange(50) * 2, max_frames=20)
    data, _ = parse_page(page)
    assert len(data["frames"]) == 20 and data["frames"][0] == 0 and data["frames"][-1] == 98
    assert np.ptp(np.diff(data["frames"])) <= 2  # even spacing, to the rounding of one step (2 frame ids)
    assert "20 of 50 frames of the sequence, evenly spaced" in page


def test_shapes_that_do_not_fit_the_skeleton_or_rig_are_refused_naming_the_argument() -> None:
    X, kp = exact(3)
    with pytest.raises(ValueError, match=r"observed_BVJ2: expected shape \[3, 4, 16, 2\].*got \(3, 3, 16, 2\)"):
        viz.page_html(X, DEEPMIMIC16, RIG, kp[:, :3])
    with pytest.raises(ValueError, match=r"joints_BJ3: expected shape \[B >= 1, 16, 3\]"):
        viz.page_html(X[:, :15], DEEPMIMIC16, RIG, kp)
    with pytest.raises(ValueError, match=r"observed_BVJ2: expected shape \[2, "):
        viz.page_html(X[:2], DEEPMIMIC16, RIG, kp)
    with pytest.raises(ValueError, match="frame_ids"):
        viz.page_html(X, DEEPMIMIC16, RIG, kp, frame_ids=[1, 2])
    with pytest.raises(ValueError, match="joints_BJ3: infinite"):
        viz.page_html(np.where(X > 1, np.inf, X), DEEPMIMIC16, RIG, kp)


def test_a_sequence_is_named_alone_or_with_its_rig_and_an_unknown_one_lists_the_choices() -> None:
    pairs = [("a", "walk"), ("a", "jump"), ("b", "walk")]
    assert viz.pick_sequence(sorted(pairs), None, where="w") == ("a", "jump")
    assert viz.pick_sequence(pairs, "jump", where="w") == ("a", "jump")
    assert viz.pick_sequence(pairs, "b/walk", where="w") == ("b", "walk")
    with pytest.raises(ValueError, match=r"'walk': w has it in rigs a, b; name one as RIG/walk"):
        viz.pick_sequence(pairs, "walk", where="w")
    with pytest.raises(ValueError, match=r"'run': w has no such sequence \(sequences: a/walk, jump, b/walk\)"):
        viz.pick_sequence(pairs, "run", where="w")


def test_the_commands_default_frame_cap_is_the_pages() -> None:
    assert viz_cli.MAX_FRAMES == viz.MAX_FRAMES


# ---------------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A dataset of two sequences of the h36m-s1 rig ("walk", 40 frames, "jump", 8) made from exact
    projections, one detection missing, and a tiny untrained model (as the `rigpose lift` tests use)."""
    root = tmp_path_factory.mktemp("viz")
    with DatasetWriter(str(root / "data"), skeleton=DEEPMIMIC16, command="test_viz") as writer:
        for name, n, seed in (("walk", 40, 0), ("jump", 8, 1)):
            batch = synthetic_batch(n, seed=seed)
            kp = batch["kp"].copy()
            kp[0, 1, 3] = np.nan
            writer.add(frames_for_rig(RIG, sequence=name, keypoints=kp, joints_3d=batch["joints_3d"]), RIG,
                       split="test")
        writer.commit()
    torch.manual_seed(0)
    save_lifter(root / "model.pt", Lifter(ModelConfig(width=32, num_blocks=1), num_joints=16, root_joints=(0,)),
                DEEPMIMIC16)
    return {"data": str(root / "data"), "model": str(root / "model.pt"), "dir": str(root)}


def run_viz(*args: str) -> object:
    return CliRunner(env={"COLUMNS": "220"}).invoke(app, ["viz", *args])


def test_viz_writes_a_page_of_the_first_sequence_from_a_tiny_model(tiny: dict[str, str]) -> None:
    out = Path(tiny["dir"]) / "pages" / "multi.html"
    r = run_viz("--model", tiny["model"], "--data", tiny["data"], "--max-frames", "16", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert f"wrote {out}: h36m-s1/jump, 8 of 8 frames, 4 cameras" in r.output  # "jump" < "walk"
    data, links = parse_page(out.read_text())
    assert data["frames"] == list(range(8)) and links == []
    assert data["cameras"][1]["observed"][0][3] is None
    assert sum(p is not None for p in data["joints"][0]) == 16  # the fused lift answers every joint


def test_viz_single_view_draws_the_named_cameras_lift_and_caps_the_frames(tiny: dict[str, str]) -> None:
    out = Path(tiny["dir"]) / "single.html"
    r = run_viz("--model", tiny["model"], "--data", tiny["data"], "--sequence", "walk", "--mode", "single",
                "--camera", RIG.camera_names[2], "--max-frames", "10", "--out", str(out))
    assert r.exit_code == 0, r.output
    page = out.read_text()
    data, _ = parse_page(page)
    assert len(data["frames"]) == 10 and data["frames"][-1] == 39 and data["num_source_frames"] == 40
    assert f"single view {RIG.camera_names[2]}" in page and "10 of 40 frames of the sequence" in page


@pytest.mark.parametrize(("args", "message"), [
    (["--sequence", "run"], "sequence 'run': .* has no such sequence (sequences: jump, walk)"),
    (["--mode", "single", "--camera", "nope"], "camera 'nope': rig 'h36m-s1' has no such camera (cameras: "
                                               + ", ".join(RIG.camera_names) + ")"),
    (["--camera", RIG.camera_names[0]], "--camera picks the camera whose lift is drawn with --mode single"),
    (["--split", "train"], "no split 'train'; has ['test']"),
])
def test_viz_refuses_bad_input_in_one_line_naming_the_choices(tiny: dict[str, str], args: list[str],
                                                              message: str) -> None:
    out = Path(tiny["dir"]) / "bad.html"
    r = run_viz("--model", tiny["model"], "--data", tiny["data"], "--out", str(out), *args)
    assert r.exit_code == 1
    assert re.search(re.escape(message).replace(r"\.\*", ".*"), r.output), r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_a_runs_page_shows_the_first_sequence_of_the_sample(tiny: dict[str, str]) -> None:
    from rigpose.data.reader import Dataset
    from rigpose.model.checkpoint import load_lifter

    model, skeleton, _ = load_lifter(tiny["model"])
    ds = Dataset(tiny["data"])
    frames = ds.read_frames(splits="test", with_3d=True)
    body = viz.first_sequence_page(model, skeleton, frames, ds.rig, max_frames=5)
    data, _ = parse_page(body.decode("utf-8"))
    first = frames.sequence[0]
    assert len(data["frames"]) == 5 and data["num_source_frames"] == int((frames.sequence == first).sum())
