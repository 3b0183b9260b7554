"""After training (driver side): evaluate, log artifacts and pictures to the run's MLflow run, register the model.

`start_tracking` runs before `fit()` (creates or finds the run, logs params and lineage tags; never fails the job);
`publish` runs after it: the epochs' metrics the run lacks (rank 0 leaves the last ones to the driver, see
`rigpose.train.worker`), evaluation JSON on the eval split, the job file, the dataset manifest, the metric history,
PNG pictures (`rigpose.inference.plots`) and a `rigpose viz` page of a few eval-split frames (plots/viz.html), then
the pyfunc model registered as a new version with alias `candidate` (`rigpose.tracking.registry.register`, retried
with backoff; a registry that cannot be reached fails the job).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rigpose.config import TrainJob
from rigpose.data.reader import Dataset
from rigpose.tracking.runs import (
    RunLogger,
    RunSpec,
    TrackingTarget,
    quiet_when_piped,
    read_run_id,
    resolve_target,
    run_params,
    run_tags,
    scrub,
)

RESTART_ATTEMPTS = 7  # tries (waits of 1, 2, ... 32 s: about a minute) for a tracking server seen up in this run


def say(message: str) -> None:
    """One `[rigpose]` line on stdout, scrubbed (`rigpose.tracking.secrets.scrub`)."""
    sys.stdout.write(f"[rigpose] {scrub(message)}\n")
    sys.stdout.flush()


def start_tracking(job: TrainJob, ds: Dataset, *, run_dir: str, manifest_sha256: str,
                   mix: dict[str, Any] | None = None) -> RunLogger | None:
    """The run's logger (None when tracking is off); creates the MLflow run now when the server answers. `mix`:
    the mixed-in dataset's record (`rigpose.train.trainer.open_mix`), logged as params and lineage tags."""
    if not job.tracking.enabled:
        return None
    quiet_when_piped()
    target = resolve_target(job)
    rig_ids = sorted(job.data.rig_ids) if job.data.rig_ids else sorted(ds.manifest.rigs)
    spec = RunSpec(target=target, run_name=job.run.name, run_dir=run_dir,
                   params=run_params(job, manifest_sha256=manifest_sha256, rig_ids=rig_ids, mix=mix),
                   tags=run_tags(job, run_dir=run_dir, manifest_sha256=manifest_sha256, rig_ids=rig_ids, mix=mix))
    logger = RunLogger(spec, warn=say)
    if logger.flush():
        say(f"MLflow run {logger.run_id} (experiment {target.experiment!r}, {_where(target)})")
    return logger


def model_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of the epoch whose weights model.pt holds: with early stopping the best epoch's (`best_epoch`),
    else the last epoch's ({} without epochs)."""
    last = history[-1] if history else {}
    best = last.get("best_epoch")
    return next((h for h in history if best is not None and h.get("epoch") == best), last)


def _where(target: TrackingTarget) -> str:
    return scrub(target.uri) if not target.uri.startswith("sqlite") else target.uri.removeprefix("sqlite:///")


def _example(ds: Dataset, split: str, n: int = 2) -> Any:
    from rigpose.inference.lift import iter_frames
    from rigpose.tracking.pyfunc import example_input

    frames = next(iter_frames(ds, split=split, batch_size=n, max_rows=n))
    return example_input(frames.keypoints, frames.scores, frames.cameras, frames.view_mask)


def _pictures(model_file: str, ds: Dataset, split: str, max_rows: int) -> dict[str, bytes]:
    from rigpose.inference.lift import iter_frames
    from rigpose.inference.plots import run_figures
    from rigpose.inference.viz import first_sequence_page
    from rigpose.model.checkpoint import load_lifter

    model, skeleton, _ = load_lifter(model_file)
    frames = next(iter_frames(ds, split=split, batch_size=min(max_rows, 512), max_rows=min(max_rows, 512),
                              with_3d=True))
    # viz.html: the first sequence of the sample, a few frames, as `rigpose viz` draws it (rigpose.inference.viz)
    return {**run_figures(model, frames, skeleton),
            "viz.html": first_sequence_page(model, skeleton, frames, ds.rig, info={"split": split})}


def publish(job: TrainJob, logger: RunLogger, ds: Dataset, *, run_dir: str, model_file: str,
            history: list[dict[str, Any]], manifest_sha256: str, mix: Dataset | None = None) -> dict[str, Any]:
    """Evaluation + artifacts + registration; returns {"run_id", "evaluation", "registered" (or None), "uri", "ui"}.
    `mix`: the mixed-in dataset (data.mix_url), whose manifest is logged beside the main one's."""
    from rigpose.inference.evaluate import evaluate
    from rigpose.tracking.registry import metric_tags, register

    logger.run_id = logger.run_id or read_run_id(run_dir, logger.spec.target)  # a worker may have created it
    logger.backfill(history)  # first: the epochs rank 0 leaves to the driver (rigpose.train.worker.REGISTERED_AFTER)
    logger.flush()
    split = job.tracking.eval_split or job.data.val_split or job.data.train_split
    if split not in ds.manifest.splits():
        raise ValueError(f"tracking.eval_split: {ds.root} has no split {split!r}; has {sorted(ds.manifest.splits())}")
    with tempfile.TemporaryDirectory() as tmp:
        local_model = str(Path(tmp) / "model.pt")  # the weights file is logged from a local copy
        from rigpose.storage import url_to_fs

        fs, path = url_to_fs(model_file)
        fs.get_file(path, local_model)
        report = evaluate(local_model, job.data.url, split=split, max_rows=job.tracking.eval_max_rows,
                          modes=("single", "multi"))  # held-out multi-view too: all "multi" holds without labels
        report["model"] = model_file
        logger.log_artifact_bytes("evaluation.json", json.dumps(report, indent=1).encode())
        logger.log_artifact_bytes("job.yaml", yaml.safe_dump(job.model_dump(), sort_keys=False).encode())
        logger.log_artifact_bytes("dataset/manifest.json", ds.manifest.to_json().encode())
        if mix is not None:
            logger.log_artifact_bytes("dataset/mix_manifest.json", mix.manifest.to_json().encode())
        logger.log_artifact_bytes("history.json", json.dumps(history, indent=1).encode())
        try:
            for name, png in _pictures(local_model, ds, split, job.tracking.eval_max_rows).items():
                logger.log_artifact_bytes(f"plots/{name}", png)
        except Exception as e:  # pictures are for people; a plotting problem must not lose the model
            say(f"pictures skipped ({type(e).__name__}: {e})")
        single = report.get("single", {}).get("overall", {})
        final = {f"eval/{k}": v for k, v in single.items() if isinstance(v, int | float) and not k.startswith("num")}
        last = history[-1] if history else {}
        logger.log_metrics(final, step=int(last.get("epoch", 0)))
        stop_tags = ({"rigpose.best_epoch": str(int(last["best_epoch"])),
                      "rigpose.stopped_early": str(bool(last.get("stopped_early")))} if "best_epoch" in last else {})
        logger.set_tags({"rigpose.model_file": model_file, "rigpose.eval_split": split, **stop_tags})
        # a server that took this run's metrics and is down now is likely restarting: wait for it about a minute
        # (7 attempts); one never reached gets 15 s (5)
        sent = logger.flush_with_retries(attempts=RESTART_ATTEMPTS if logger.run_id is not None else 5)
        out: dict[str, Any] = {"run_id": logger.run_id, "evaluation": report, "registered": None,
                               "uri": logger.spec.target.uri, "ui": logger.spec.target.ui_command()}
        if not sent:
            say(f"MLflow at {scrub(logger.spec.target.uri)} did not take every artifact of this run")
        name = job.tracking.model_name
        if name is None:
            return out
        if logger.run_id is None:
            raise RuntimeError(f"cannot register model {name!r}: the MLflow tracking server "
                               f"{scrub(logger.spec.target.uri)} was unreachable for the whole run (the model is at "
                               f"{model_file}; retry when it is back)")
        # the version shows one figure per split and metric: training validation's val/* (the whole val split) and,
        # for another eval split only, the evaluation's (same definitions, rigpose.metrics: a second figure for
        # the val split would differ only by tracking.eval_max_rows)
        metrics = {k: v for k, v in model_epoch(history).items() if k.startswith("val/")}
        if split != job.data.val_split:
            metrics.update({f"eval/{k}": v for k, v in single.items()
                            if k in ("heldout_px", "mpjpe_mm", "pa_mpjpe_mm")})
        tags = {**logger.spec.tags, "rigpose.run_id": logger.run_id, "rigpose.eval_split": split,
                **metric_tags(metrics)}
        reg = register(logger.spec.target, run_id=logger.run_id, model_file=local_model,
                       example=_example(ds, split), name=name, tags=tags, attempts=RESTART_ATTEMPTS, warn=say)
    say(f"registered {reg.uri} with alias @candidate (run {reg.run_id})")
    out["registered"] = reg
    return out
