"""Retraining on a new rig end to end (`rigpose retrain`): real `mlflow server`, the S3 endpoint, local Ray.

A dataset on S3 with rig A -> the first retrain trains and promotes a champion (no champion yet) -> a second run
reports nothing new -> rig B (another rig, another camera count) is ingested -> `--dry-run` lists it and changes
nothing -> a retrain trains a candidate warm-started from the champion, gates both rigs and moves the alias or
keeps it with the reason; the decision is an MLflow run with `decision.json` and tags on the candidate; the
candidate's lineage names both rigs -> a run reports nothing new -> rig C lands with a corrupted calibration (its
cameras 3 degrees and 5 cm off the ones that made its 2D) -> the retrain trains a candidate and the gate refuses it,
naming the calibration; the champion stays.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rigpose_testing import tiny_retrain_job, tiny_retrain_recipe
from typer.testing import CliRunner

from rigpose.cli.main import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "rt-lifter"
RIG_A, RIG_B, RIG_C = "h36m-s1", "humaneva-s1", "h36m-s5"


def _run(*args: str) -> str:
    r = CliRunner().invoke(app, ["retrain", *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_retrain_promotes_a_first_champion_then_gates_a_new_rig(bucket: str, server: str, local_ray: None,
                                                               tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from rigpose.data.synth.build import build_dataset

    data = f"{bucket}/datasets/retrain"
    build_dataset(str(tiny_retrain_recipe(tmp_path, RIG_A)), data, progress=False)
    job = tiny_retrain_job(tmp_path, data=data, server=server, model=MODEL, experiment="retrain-it", gate_rows=200)
    client = MlflowClient(tracking_uri=server, registry_uri=server)

    first = _run(str(job))
    assert f"{RIG_A}: new rig" in first and "no champion yet" in first
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert "nothing new" in _run(str(job))

    build_dataset(str(tiny_retrain_recipe(tmp_path, RIG_B)), data, progress=False)  # a new rig lands (3 cameras, not 4)
    planned = _run(str(job), "--dry-run")
    assert f"{RIG_B}: new rig" in planned and f"{RIG_A}:" not in planned.split("since")[1].split("would")[0]
    assert "would train a candidate" in planned and len(client.search_model_versions(f"name='{MODEL}'")) == 1

    out = _run(str(job))
    assert "warm-started from rt-lifter version 1" in out
    table = [ln for ln in out.splitlines() if ln.strip().startswith((RIG_A, RIG_B)) and " px" in ln]
    assert len(table) == 2, out  # both rigs gated, the champion's zero-shot figure on the new rig among them
    promoted = "is now version 2" in out
    aliases = client.get_registered_model(MODEL).aliases
    assert aliases["champion"] == ("2" if promoted else "1")
    assert aliases.get("previous") == ("1" if promoted else None)
    v2 = client.get_model_version(MODEL, "2")
    assert v2.tags["rigpose.retrain.promoted"] == str(promoted).lower()
    assert set(v2.tags["rigpose.rig_ids"].split(",")) == {RIG_A, RIG_B}  # lineage: every rig it saw
    reason = v2.tags["rigpose.retrain.reason"]
    assert reason in out and reason.startswith("promoted" if promoted else "kept the champion")
    decision_run = v2.tags["rigpose.retrain.decision_run"]
    record = json.loads(client.download_artifacts(decision_run, "decision.json", str(tmp_path)) and
                        (tmp_path / "decision.json").read_text())
    assert record["targets"] == [RIG_B] and record["promoted"] == promoted
    assert [r["rig_id"] for r in record["decision"]["rows"]] == [RIG_A, RIG_B]
    assert record["decision"]["rows"][1]["champion"] is not None  # the old champion's zero-shot error on rig B

    assert "nothing new" in _run(str(job))
    assert "🏃" not in out and "View run" not in out  # rigpose's own lines only (MLflow's URL lines are off)

    champion = client.get_registered_model(MODEL).aliases["champion"]
    corrupted = tiny_retrain_recipe(tmp_path, RIG_C, calibration_error={"rotation_deg": 3.0, "translation_m": 0.05})
    build_dataset(str(corrupted), data, progress=False)
    out = _run(str(job))
    assert f"{RIG_C}: new rig" in out and "training candidate" in out
    assert f"kept the champion: {RIG_C}: its calibration does not fit its 2D" in out, out
    assert client.get_registered_model(MODEL).aliases["champion"] == champion
    v3 = client.get_model_version(MODEL, "3")
    assert v3.tags["rigpose.retrain.promoted"] == "false" and "recalibrate" in v3.tags["rigpose.retrain.reason"]
