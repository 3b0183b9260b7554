"""The retraining gate (rigpose.retrain.gate): per-rig scores on a rig's own rows, and the promotion rule (new
data's rigs improve by the margin, no other rig worse than the tolerance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rigpose.config import ModelConfig
from rigpose.data.schema import frames_for_rig
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.inference.evaluate import evaluate
from rigpose.model.checkpoint import save_lifter
from rigpose.model.lifter import Lifter
from rigpose.resources import rig_path
from rigpose.retrain.gate import RigScore, decide, rig_scores
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17


def s(px: float, mm: float | None = None) -> RigScore:
    return RigScore(heldout_px=px, mpjpe_mm=mm, frames=100)


def test_no_champion_promotes_the_candidate() -> None:
    d = decide({"a": s(10)}, None, targets={"a"}, rig_ids=["a"], margin=0.05, tolerance=0.02)
    assert d.promote and "no champion" in d.reason


def test_a_new_rig_improved_by_the_margin_with_old_rigs_within_tolerance_promotes() -> None:
    champion = {"old": s(10.0), "new": s(20.0)}  # "new": the champion's zero-shot error on the new rig
    candidate = {"old": s(10.15), "new": s(15.0)}
    d = decide(candidate, champion, targets={"new"}, rig_ids=["old", "new"], margin=0.1, tolerance=0.02)
    assert d.promote and "new -25.0%" in d.reason
    assert [r.ok for r in d.rows] == [True, True]


def test_an_old_rig_worse_than_the_tolerance_keeps_the_champion_and_says_which() -> None:
    champion = {"old": s(10.0), "new": s(20.0)}
    candidate = {"old": s(10.5), "new": s(12.0)}
    d = decide(candidate, champion, targets={"new"}, rig_ids=["old", "new"], margin=0.1, tolerance=0.02)
    assert not d.promote and d.reason.startswith("kept the champion: old: worse by 5.0%")


def test_a_new_rig_not_improved_enough_keeps_the_champion() -> None:
    d = decide({"new": s(19.5)}, {"new": s(20.0)}, targets={"new"}, rig_ids=["new"], margin=0.05, tolerance=0.02)
    assert not d.promote and "needs 5.0%" in d.reason


def test_a_target_rig_without_validation_rows_cannot_be_judged() -> None:
    d = decide({"old": s(9.0)}, {"old": s(10.0)}, targets={"new"}, rig_ids=["old", "new"], margin=0.05,
               tolerance=0.02)
    assert not d.promote and "new: no validation rows: cannot judge" in d.reason
    assert "new" in "\n".join(d.table()) and "-10.0%" in "\n".join(d.table())


def test_bad_rule_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        decide({}, {}, targets=set(), rig_ids=[], margin=1.5, tolerance=0.0)
    with pytest.raises(ValueError, match="targets"):
        decide({}, {}, targets={"x"}, rig_ids=["a"], margin=0.1, tolerance=0.0)


def test_rig_scores_measure_each_rig_on_its_own_rows(tmp_path: Path) -> None:
    root = str(tmp_path / "ds")
    rng = np.random.default_rng(0)
    with DatasetWriter(root, skeleton=H36M17, command="test") as w:
        for rig_name, T in (("h36m-s1", 24), ("humaneva-s1", 16)):
            rig = load_rig(rig_path(rig_name))
            X = rng.normal(0, 0.2, (T, 17, 3)) + [0.0, 0.0, 1.0]
            pix = np.stack([project(X, c) for c in rig.cameras], 1)
            w.add(frames_for_rig(rig, sequence="walk", keypoints=pix, joints_3d=X, frame=np.arange(T)), rig,
                  split="val")
        w.commit()
    torch.manual_seed(0)
    save_lifter(tmp_path / "model.pt", Lifter(ModelConfig(width=32, num_blocks=1), num_joints=17,
                                              root_joints=H36M17.root_joints), H36M17)
    scores = rig_scores(str(tmp_path / "model.pt"), root, split="val", rig_ids=["h36m-s1", "humaneva-s1", "nope"])
    assert sorted(scores) == ["h36m-s1", "humaneva-s1"]  # a rig without rows is left out
    assert (scores["h36m-s1"].frames, scores["humaneva-s1"].frames) == (24, 16)
    alone = evaluate(str(tmp_path / "model.pt"), root, split="val", modes=("single",), rig_ids=["humaneva-s1"])
    assert scores["humaneva-s1"].heldout_px == pytest.approx(alone["single"]["overall"]["heldout_px"])
    both = evaluate(str(tmp_path / "model.pt"), root, split="val", modes=("single",))
    assert both["num_frames"] == 40 and scores["h36m-s1"].mpjpe_mm is not None
    with pytest.raises(ValueError, match="no rig"):
        evaluate(str(tmp_path / "model.pt"), root, split="val", modes=("single",), rig_ids=["nope"])


def test_a_new_rig_whose_calibration_does_not_fit_its_2d_refuses_even_when_improved() -> None:
    offsets = {"old": {"c1": 1.0}, "new": {"c1": 2.0, "c2": 14.5, "c3": 3.0}}
    d = decide({"old": s(10.0), "new": s(12.0)}, {"old": s(10.0), "new": s(20.0)}, targets={"new"},
               rig_ids=["old", "new"], margin=0.05, tolerance=0.02, offsets=offsets, max_offset_px=10.0)
    assert not d.promote and "new: its calibration does not fit its 2D: camera c2's" in d.reason
    assert [(r.offset_camera, r.offset_px) for r in d.rows] == [("c1", 1.0), ("c2", 14.5)]
    assert any("14.5 px" in line for line in d.table())
    # the same offsets under the limit, or no limit: the improvement promotes
    assert decide({"old": s(10.0), "new": s(12.0)}, {"old": s(10.0), "new": s(20.0)}, targets={"new"},
                  rig_ids=["old", "new"], margin=0.05, tolerance=0.02, offsets=offsets, max_offset_px=15.0).promote
    assert decide({"old": s(10.0), "new": s(12.0)}, {"old": s(10.0), "new": s(20.0)}, targets={"new"},
                  rig_ids=["old", "new"], margin=0.05, tolerance=0.02, offsets=offsets).promote


def test_an_existing_rig_offset_is_reported_but_only_rigs_with_new_data_are_checked() -> None:
    d = decide({"old": s(10.0), "new": s(12.0)}, {"old": s(10.0), "new": s(20.0)}, targets={"new"},
               rig_ids=["old", "new"], margin=0.05, tolerance=0.02, offsets={"old": {"c1": 30.0}},
               max_offset_px=10.0)
    assert d.promote and d.rows[0].offset_px == 30.0 and d.rows[1].offset_px is None


def test_a_first_champion_on_a_miscalibrated_rig_is_not_promoted() -> None:
    d = decide({"a": s(10)}, None, targets={"a"}, rig_ids=["a"], margin=0.05, tolerance=0.02,
               offsets={"a": {"cam": 40.0}}, max_offset_px=10.0)
    assert not d.promote and d.reason.startswith("no champion yet, and the candidate is not promoted: a: its "
                                                 "calibration")
