"""`make demo-cluster`: the demo of `make demo` (`rigpose.cli.demo`) on the local stack (`stack.py`): the dataset
on its S3 endpoint, the training submitted as a Ray job with 2 workers, one on each Ray node, tracked on its MLflow
server, then the evaluation and the champion gate here, on the model read back from the registry.

Run it in a shell that sourced the stack's env file (`source infra/local/.state/env`; the Makefile does). The
training budget is half the demo's steps: 2 workers take twice the frames per step, so it sees the same frames.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rigpose.cli import ui
from rigpose.cli.demo import DEMO_RECIPE, DEMO_STEPS, multiview_verdict, registry_step, rig_check

REPO = Path(__file__).resolve().parents[2]
NEEDED_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI")
RUN_NAME = "demo-cluster"
MODEL_NAME = "rigpose-lifter"  # jobs/train.yaml's tracking.model_name


def train_overrides(data_url: str, runs_url: str) -> list[str]:
    """The `--set` values of the submitted training: S3 data and runs, 2 workers on 2 nodes, the demo's frames."""
    return [f"data.url={data_url}", f"run.output_dir={runs_url}", f"run.name={RUN_NAME}", "scaling.num_workers=2",
            "scaling.placement_strategy=STRICT_SPREAD", f"optim.steps={DEMO_STEPS // 2}"]


def main() -> int:
    missing = [k for k in NEEDED_ENV if not os.environ.get(k)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: run `make up` and `source infra/local/.state/env` first "
                         "(or `make demo-cluster`, which does both)")
    bucket = os.environ.get("RIGPOSE_STACK_BUCKET", "rigpose")
    data_url, runs_url = f"s3://{bucket}/datasets/demo", f"s3://{bucket}/runs"
    console = ui.console()
    t0 = time.monotonic()

    console.rule("[bold]1/5 dataset (on the stack's S3 endpoint)")
    from rigpose.data.manifest import read_manifest
    from rigpose.data.synth.build import build_dataset

    if read_manifest(data_url) is None:
        manifest = build_dataset(str(DEMO_RECIPE), data_url, progress=True)
        console.print(f"built {data_url}: {manifest.num_rows:,} frames")
    else:
        console.print(f"{data_url} already exists")
    console.rule("[bold]2/5 rigs")
    if rig_check(console=console):
        return 1

    console.rule("[bold]3/5 train: a Ray job on the stack, 2 workers on 2 nodes (2D supervision only)")
    command = [str(Path(sys.executable).parent / "rigpose"), "submit", "jobs/train.yaml",
               *(a for v in train_overrides(data_url, runs_url) for a in ("--set", v))]
    console.print(" ".join(command[1:]), soft_wrap=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        console.print("[red]the training job failed[/red] (its log is above; `ray job logs <id>` shows it again)")
        return 1

    console.rule("[bold]4/5 evaluate (the registered model, read back from MLflow)")
    from mlflow import MlflowClient

    from rigpose.cli.evaluate import print_results
    from rigpose.inference.evaluate import evaluate

    uri = os.environ["MLFLOW_TRACKING_URI"]
    version = MlflowClient(uri).get_model_version_by_alias(MODEL_NAME, "candidate")
    report = evaluate(f"models:/{MODEL_NAME}/{version.version}", data_url, split="test")
    print_results(report, console=console)
    if verdict := multiview_verdict(report):
        console.print(verdict)

    console.rule("[bold]5/5 model registry (the stack's MLflow server)")
    code = registry_step({"tracking": {"registered": version, "uri": uri, "ui": f"open {uri}"}}, data_url,
                         console=console)
    console.print(f"demo-cluster: {time.monotonic() - t0:.0f} s; the run's folder: {runs_url}/{RUN_NAME}/")
    return code


if __name__ == "__main__":
    sys.exit(main())
