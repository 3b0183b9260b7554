"""Two `rigpose retrain` processes started at once on one dataset (S3 endpoint, `mlflow server`): one trains and
promotes, the other finds the retrain lease held (or, planning again under it, nothing new) and trains nothing;
the registry ends with one version, the champion, and no lease object is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rigpose_testing import stop_with_children, tiny_retrain_job, tiny_retrain_recipe

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "race-lifter"
RIGPOSE = str(Path(sys.executable).parent / "rigpose")


def test_two_retrains_started_at_once_never_both_train_or_promote(bucket: str, server: str, tmp_path: Path) -> None:
    import s3fs
    from mlflow.tracking import MlflowClient

    from rigpose.data.synth.build import build_dataset

    data = f"{bucket}/datasets/race"
    build_dataset(str(tiny_retrain_recipe(tmp_path, "h36m-s1", frames=200)), data, progress=False)
    job = tiny_retrain_job(tmp_path, data=data, server=server, model=MODEL, experiment="retrain-race", gate_rows=100)

    # two processes as a shell starts them: each its own local Ray (not a $RAY_ADDRESS another test's Ray left)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "NO_COLOR": "1"}
    logs = [tmp_path / f"retrain-{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("w") as f:
            procs.append(subprocess.Popen([RIGPOSE, "retrain", str(job)], stdout=f, stderr=subprocess.STDOUT,
                                          env=env, cwd=tmp_path))
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
