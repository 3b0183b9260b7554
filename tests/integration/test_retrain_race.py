"""Two `rigpose retrain` processes started at once on one dataset (S3 endpoint, `mlflow server`): one trains and
promotes, the other finds the retrain lease held (or, planning again under it, nothing new) and trains nothing;
the registry ends with one version, the champion, and no lease object is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rigpose_testing import REPO, stop_with_children

from rigpose.resources import recipes_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "race-lifter"
RIGPOSE = str(Path(sys.executable).parent / "rigpose")


def test_two_retrains_started_at_once_never_both_train_or_promote(bucket: str, server: str, tmp_path: Path) -> None:
    import s3fs
    from mlflow.tracking import MlflowClient

    from rigpose.data.synth.build import build_dataset

    recipe = yaml.safe_load((recipes_dir() / "tiny.yaml").read_text())
    recipe.update(frames=200)
    recipe["splits"].update(fractions={"train": 0.7, "val": 0.3}, held_out_clips=[])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    data = f"{bucket}/datasets/race"
    build_dataset(str(tmp_path / "tiny.yaml"), data, progress=False)
    job = tmp_path / "retrain.yaml"
    job.write_text(yaml.safe_dump({"train_job": str(REPO / "jobs" / "train.yaml"), "overrides": [
        f"data.url={data}", "data.val_split=val", "optim.epochs=1", "model.width=32", "model.num_blocks=1",
        "data.batch_size=64", f"run.output_dir={tmp_path / 'runs'}", f"tracking.uri={server}",
        f"tracking.model_name={MODEL}", "tracking.experiment=retrain-race", "tracking.eval_max_rows=100"],
        "gate": {"max_rows": 100}}))

    logs = [tmp_path / f"retrain-{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("w") as f:
            procs.append(subprocess.Popen([RIGPOSE, "retrain", str(job)], stdout=f, stderr=subprocess.STDOUT,
                                          env={**os.environ, "NO_COLOR": "1"}, cwd=tmp_path))
    try:
        codes = [p.wait(timeout=420) for p in procs]
    finally:
        for p in procs:
            stop_with_children(p)
    outs = [log.read_text() for log in logs]
    assert codes == [0, 0], outs
    trained = [o for o in outs if "is now version 1" in o]
    assert len(trained) == 1, outs  # exactly one promoted ...
    other = outs[1 - outs.index(trained[0])]
    assert "skipping this cycle" in other or "nothing new" in other, other  # ... the other trained nothing

    client = MlflowClient(tracking_uri=server, registry_uri=server)
    assert [mv.version for mv in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    s3fs.S3FileSystem.clear_instance_cache()
    assert not s3fs.S3FileSystem().glob(f"{data.removeprefix('s3://')}/_retrain/lease*.json")
