"""Driver side of training: a Ray Train `TorchTrainer` over Ray Data, run folders on local disk or s3://.

`train(job)` opens the dataset (manifest), connects to Ray (the job's address, $RAY_ADDRESS inside a Ray job, or
a new local Ray), builds the Ray datasets (`rigpose.data.pipeline`), runs `rigpose.train.worker.train_func` on
`scaling.num_workers` workers, and after `fit()` writes into the run folder `<run.output_dir>/<run.name>/`:
`model.pt` (what `evaluate` and `lift` take as `--model`), `history.json` and `job.json`.

The budget is counted in optimizer steps (`optim.steps`, or `optim.epochs` passes): the driver counts each rank's
steps per epoch from the manifest (`steps_per_epoch`) before Ray starts and hands it to the workers, which train
to the budget on a per-step schedule (`rigpose.train.schedule`); the progress bar runs over those steps.

The run folder is also Ray Train's storage (`RunConfig(storage_path=run.output_dir, name=run.name)`): its
`checkpoint_*` folders and checkpoint-manager snapshot live there, so re-running the same job (same run name)
resumes from the latest checkpoint, and `FailureConfig(max_failures)` restarts the workers from it after a
failure. `run.json`, written before training starts, records what the checkpoints were trained on (dataset,
manifest hash, rigs, model, supervision); a re-run that would resume them with other data or another model is refused.

Warm start (`model.init_weights`): the weights are resolved and loaded here before Ray starts (`load_init_weights`:
a models:/NAME@ALIAS URI pinned to its version, skeleton and architecture checked against the job) and go to the
workers in memory (`train_loop_config["init"]`), which start from them unless they resume from a checkpoint. Where
they came from is recorded in run.json, every checkpoint and model.pt's meta (`init_weights`).

Fine-tuning: `model.init_weights` (also `model.init_from`) from a champion, `data.mix_url` / `data.mix_ratio` to
mix a second (e.g. synthetic) dataset's training rows into every epoch (`rigpose.data.pipeline`: same skeleton,
checked here; its manifest hash is recorded in run.json, model.pt's meta and the MLflow run beside the main one's),
`optim.min_steps` so a small dataset's epochs budget is not too few steps, and `optim.early_stop_patience`: the run
stops when the label-free validation metric stops improving, and model.pt holds the best epoch's weights (the
checkpoint's `best`, see `rigpose.train.worker`), its meta and the result `best_epoch` and `stopped_early`.

Tracking (`job.tracking`, rigpose.train.publish): one MLflow run per training run (its id kept in the run folder's
`mlflow.json`, so retries and resumes log into the same run); rank 0 logs every epoch; after `fit()` the driver
logs the evaluation, artifacts and pictures and registers the model with alias `candidate`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
import time
from pathlib import Path
from typing import Any

from rigpose.cluster.connect import init_ray, session_logs_dir, verbose
from rigpose.config import TrainJob
from rigpose.data.manifest import DatasetError, ShardInfo
from rigpose.data.pipeline import build_datasets, check_mix, epoch_rows, training_shards
from rigpose.data.reader import Dataset
from rigpose.data.validate import verify_shards
from rigpose.model.checkpoint import MODEL_FILE, save_lifter
from rigpose.skeleton import Skeleton
from rigpose.storage import protocol_url, url_to_fs, write_bytes_atomic
from rigpose.train.progress import TrainingProgress
from rigpose.train.schedule import num_epochs, total_steps
from rigpose.train.worker import STATE_FILE, best_weights, build_lifter, load_state, train_func

__all__ = ["STATE_FILE", "load_init_weights", "manifest_sha256", "steps_per_epoch", "storage_root", "train"]

RUN_FILE = "run.json"
#: ModelConfig fields that decide the shapes of the lifter's weights (with the skeleton's joints) or what they mean
SHAPE_FIELDS = ("width", "num_blocks", "output", "frame")


def manifest_sha256(ds: Dataset) -> str:
    """Hash of the dataset's manifest: what a checkpoint was trained on."""
    return hashlib.sha256(ds.manifest.to_json().encode()).hexdigest()


def storage_root(output_dir: str) -> str:
    """run.output_dir as Ray Train's storage_path: URLs as they are, local paths absolute (Ray requires it)."""
    if "://" in output_dir and not output_dir.startswith("file://"):
        return output_dir.rstrip("/")
    return str(Path(output_dir.removeprefix("file://")).expanduser().resolve())


def load_init_weights(job: TrainJob, skeleton: Skeleton) -> dict[str, Any] | None:
    """The warm-start weights `job.model.init_weights` names, loaded on the driver: {"state_dict": CPU tensors,
    "source": where they came from, scrubbed, as run.json, checkpoints and model.pt record it}; None without them.

    A models:/NAME@ALIAS URI is pinned to the version the alias points at now ("resolved": models:/NAME/VERSION), so
    the weights recorded are the weights loaded even if the alias moves; registry URIs resolve on the job's tracking
    target (`rigpose.tracking.runs.resolve_target`). ValueError naming model.init_weights when they cannot be loaded,
    or when their skeleton (`skeleton`: the dataset's) or SHAPE_FIELDS differ from the job's.
    """
    from rigpose.inference.models import load_model
    from rigpose.tracking.registry import pin_model_uri
    from rigpose.tracking.runs import is_model_uri, resolve_target
    from rigpose.tracking.secrets import scrub, scrub_obj

    given = job.model.init_weights
    if given is None:
        return None
    where = f"model.init_weights {scrub(given)!r}"
    tracking_uri = resolve_target(job).uri if is_model_uri(given) else None
    local = tracking_uri is None and "://" not in given  # recorded absolute: the file, wherever the job ran from
    resolved = str(Path(given).expanduser().resolve()) if local else given
    try:
        resolved = pin_model_uri(resolved, tracking_uri=tracking_uri)
        model, model_skeleton, meta = load_model(resolved, tracking_uri=tracking_uri)
    except (ValueError, OSError, RuntimeError, KeyError) as e:  # no such file, not a model, registry errors
        raise ValueError(f"{where}: cannot load the weights ({scrub(str(e))})") from None
    if model_skeleton.name != skeleton.name:
        raise ValueError(f"{where}: its skeleton is {model_skeleton.name!r}, the dataset's is {skeleton.name!r}")
    differ = [f"model.{k} {getattr(model.config, k)!r} there, {getattr(job.model, k)!r} in the job"
              for k in SHAPE_FIELDS if getattr(model.config, k) != getattr(job.model, k)]
    if differ:
        raise ValueError(f"{where}: another architecture than the job's ({'; '.join(differ)}); set the job's model "
                         "section to the weights' architecture, or drop model.init_weights")
    source = {"init_weights": given, "resolved": resolved,
              "meta": {k: v for k, v in meta.items() if k != "init_weights"}}  # one generation of lineage
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "source": scrub_obj(source)}


def open_mix(job: TrainJob, ds: Dataset) -> tuple[Dataset, dict[str, Any]] | None:
    """The dataset data.mix_url names and its record ({"dataset", "manifest_sha256", "ratio", "rows_per_epoch"},
    what run.json, model.pt and the MLflow run keep); None without a mix. Its shards are checked against its
    manifest (data.verify) here, before Ray starts; ValueError naming data.mix_url (and data.url, for another
    skeleton: `rigpose.data.pipeline.check_mix`)."""
    if job.data.mix_url is None:
        return None
    try:
        mix = Dataset(job.data.mix_url)
    except DatasetError as e:
        raise ValueError(f"data.mix_url: {e}") from None
    verify_shards(mix, check_mix(ds, mix, job.data), mode=job.data.verify)
    return mix, {"dataset": job.data.mix_url, "manifest_sha256": manifest_sha256(mix), "ratio": job.data.mix_ratio,
                 "rows_per_epoch": epoch_rows(job.data, ds)[1]}


def _run_record(job: TrainJob, sha: str, *, init: dict[str, Any] | None = None,
                mix: dict[str, Any] | None = None) -> dict[str, Any]:
    """What run.json records, scrubbed (rigpose.tracking.secrets) as it is written: the resume check compares a
    new record with the stored one, so both are scrubbed alike. `init`: `load_init_weights`'s result; its source is
    recorded, never compared (a resumed run ignores init_weights: its checkpoint's weights win). `mix`:
    `open_mix`'s record (compared: its manifest hash and ratio)."""
    from rigpose.tracking.secrets import scrub_obj

    rig_ids = sorted(job.data.rig_ids) if job.data.rig_ids else None  # the selection, not its order, matters
    return scrub_obj({"dataset": job.data.url, "manifest_sha256": sha, "rig_ids": rig_ids,
                      "supervision": job.supervision, "job": job.model_dump(),
                      "model": job.model.model_dump(include=set(SHAPE_FIELDS)),  # the weights' shapes
                      "init_weights": init["source"] if init is not None else None, "mix": mix})


def _check_resumable(run_dir: str, record: dict[str, Any]) -> bool:
    """True when `run_dir` holds an earlier attempt of this run; ValueError when its checkpoints do not fit."""
    fs, path = url_to_fs(run_dir)
    try:
        with fs.open(f"{path}/{RUN_FILE}", "rb") as f:
            before = json.loads(f.read())
    except FileNotFoundError:
        return False
    except json.JSONDecodeError as e:
        raise ValueError(f"{run_dir}/{RUN_FILE}: not valid JSON ({e}); delete the run folder or use a new "
                         "run.name") from None

    def mixed(r: dict[str, Any]) -> dict[str, Any] | None:  # what of a mix decides the data (not its URL)
        mix = r.get("mix")
        return None if mix is None else {k: mix.get(k) for k in ("manifest_sha256", "ratio")}

    for key, what in (("manifest_sha256", "dataset manifest"), ("supervision", "supervision"),
                      ("model", "model architecture"), ("rig_ids", "rig selection (data.rig_ids)"),
                      ("mix", "mixed-in dataset (data.mix_url manifest, data.mix_ratio)")):
        was, now = (mixed(before), mixed(record)) if key == "mix" else (before.get(key), record[key])
        if was != now:
            raise ValueError(
                f"run {run_dir} exists and its checkpoints were trained with another {what} "
                f"({was!r}, now {now!r}); use a new run.name, or delete the run folder to start over")
    return True


def _write_json(run_dir: str, name: str, obj: Any) -> None:
    """`obj` as `<run_dir>/<name>`, scrubbed: no URL password or credential value reaches a run folder."""
    from rigpose.tracking.secrets import scrub_obj

    fs, path = url_to_fs(run_dir)
    write_bytes_atomic(fs, f"{path}/{name}", json.dumps(scrub_obj(obj), indent=1).encode())


def train(job: TrainJob) -> dict[str, Any]:
    """Run (or resume) a training job; returns {"run_dir", "model", "history", "checkpoint", "best_epoch",
    "stopped_early", "resumed", "tracking"} (best_epoch: the epoch whose weights model.pt holds with early stopping,
    else None; tracking: `rigpose.train.publish.publish`'s result, or None when tracking is off)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    t_start = time.time()
    import rigpose

    print(f"[rigpose] code: {Path(rigpose.__file__).parent} (rigpose {rigpose.__version__})", flush=True)
    ds = Dataset(job.data.url, job.data.manifest_version)  # pinned, or the latest version now
    shards = training_shards(ds, job.data)  # ValueError naming data.train_split / val_split / rig_ids
    verify_shards(ds, shards, mode=job.data.verify)  # DatasetError naming the first bad shard: all before Ray
    sha = manifest_sha256(ds)
    mixing = open_mix(job, ds)  # ValueError naming data.mix_url
    mix, mix_record = mixing if mixing is not None else (None, None)
    per_epoch = steps_per_epoch(job, ds)
    budget = total_steps(job.optim, per_epoch)  # ValueError: no full batch in the training split
    epochs = num_epochs(budget, per_epoch)
    storage = storage_root(job.run.output_dir)
    run_dir = f"{storage}/{job.run.name}"
    init = load_init_weights(job, ds.skeleton)  # ValueError naming model.init_weights, before anything is written
    record = _run_record(job, sha, init=init, mix=mix_record)
    resumed = _check_resumable(run_dir, record)
    if not resumed:
        _write_json(run_dir, RUN_FILE, record)
    from rigpose.train.publish import start_tracking

    tracker = start_tracking(job, ds, run_dir=run_dir, manifest_sha256=sha, mix=mix_record)
    init_ray(job.run.ray_address)
    if not verbose():  # one progress display for training (TrainingProgress): none of Ray Data's
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    try:  # with data.cache the shards are read here (materialize), else in fit()
        datasets = build_datasets(job.data, ds, with_3d=job.supervision == "3d", seed=job.optim.seed,
                                  with_pseudo=job.supervision == "2d" and job.loss.pseudo_3d > 0, mix=mix)
    except Exception as e:
        if (message := _read_failure(e, ds, shards)) is None:
            raise
        raise RuntimeError(message) from e
    metric = "val/reprojection_px" if "val" in datasets else "train/loss"
    resources = {"CPU": job.scaling.cpus_per_worker, **job.scaling.custom_resources}
    if job.scaling.use_gpu:
        resources["GPU"] = job.scaling.gpus_per_worker
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"job": job.model_dump(), "skeleton": ds.skeleton.name, "manifest_sha256": sha,
                           "t_start": t_start, "tracking": tracker.spec if tracker is not None else None,
                           "init": init, "steps_per_epoch": per_epoch},
        torch_config=TorchConfig(backend="nccl" if job.scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=job.scaling.num_workers, use_gpu=job.scaling.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=job.scaling.placement_strategy),
        run_config=RunConfig(
            name=job.run.name, storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=job.run.checkpoints_to_keep,
                                               checkpoint_score_attribute=metric, checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=job.run.max_failures)),
        datasets=datasets,
        # one worker reads its datasets itself (`Dataset.iterator()`, the executor in its own process); a
        # `streaming_split` across ranks starts a coordinator actor first (about 2 s before the first batch here)
        dataset_config=DataConfig(datasets_to_split="all" if job.scaling.num_workers > 1 else []),
    )
    try:
        # --verbose: Ray's own printing, rank 0's lines among it; otherwise one progress display fed by them
        with (contextlib.nullcontext() if verbose() else
              TrainingProgress(epochs=epochs, steps_per_epoch=per_epoch, total_steps=budget)):
            result = trainer.fit()
    except TrainingFailedError as e:  # wraps the workers' errors (WorkerGroupError): one line of them
        if (message := _read_failure(e, ds, shards)) is not None:
            raise RuntimeError(f"{message} (run folder {run_dir})") from e
        raise RuntimeError(f"training failed after {job.run.max_failures} allowed worker failure(s): "
                           f"{_cause_line(_error_text(e))} (Ray logs: {session_logs_dir()}; run folder "
                           f"{run_dir})") from e
    out = _finish(job, result, run_dir, ds.skeleton.name, mix=mix_record)
    out["resumed"] = resumed
    out["tracking"] = None
    if tracker is not None:
        from rigpose.train.publish import publish

        out["tracking"] = publish(job, tracker, ds, run_dir=run_dir, model_file=out["model"],
                                  history=out["history"], manifest_sha256=sha, mix=mix)
    return out


def steps_per_epoch(job: TrainJob, ds: Dataset) -> int:
    """Optimizer steps per epoch: each rank's full batches (`drop_last`) of its equal share of the training rows
    (Ray Train splits the train dataset with `streaming_split(equal=True)`), from the manifest's rows of the train
    split's selected shards (`data.rig_ids`) and `data.max_rows`, plus the rows data.mix_url adds to every epoch
    (`rigpose.data.pipeline.epoch_rows`). The schedule and the epochs budget use it, so a steps budget takes
    ceil(steps / this) epochs. 0 when the split has no full batch."""
    rows = sum(epoch_rows(job.data, ds))
    return rows // job.scaling.num_workers // job.data.batch_size


# What Ray Data and pyarrow say when a Parquet file cannot be read (Ray Data names the file in the first one);
# Parquet-specific, so that a worker's other failures (a checkpoint write, a bug) keep their own message.
_READ_ERRORS = ("Failed to read fragment", "Parquet magic bytes", "is not a parquet file", "Parquet file size is",
                "Couldn't deserialize thrift", "Corrupt snappy", "Unexpected end of stream")
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Invalid)(?:\([\w.]+\))?: \S")


def _error_text(e: BaseException) -> str:
    """All the text of `e`: its message, its causes' and, for Ray Train's WorkerGroupError, each worker's."""
    parts: list[str] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        c = stack.pop()
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        parts.append(f"{type(c).__name__}: {c}")
        stack += [c.__cause__, c.__context__, *getattr(c, "worker_failures", {}).values()]
    return "\n".join(parts)


def _cause_line(text: str) -> str:
    """The last `SomeError: message` line of an error text (Ray's end with retry advice), else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    causes = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    return (causes or lines or ["unknown error"])[-1].rstrip(".")


def _read_failure(e: BaseException, ds: Dataset, shards: list[ShardInfo]) -> str | None:
    """One line for an error that reading the dataset's shards caused inside Ray (they were verified before Ray
    started, so one changed since, or storage failed): the shard when the error names one, else the dataset;
    None when `e` is not a read error."""
    text = _error_text(e)
    hint = f"check the dataset with `rigpose datasets validate {ds.root}`"
    for shard in shards:
        path = posixpath.join(ds.path, shard.path)
        if path in text:  # Ray's text has the local path, or s3's bucket/key without the scheme
            return (f"reading shard {protocol_url(ds.fs, path)} failed in Ray: {_cause_line(text)}; it passed the "
                    f"check before Ray started, so it changed since or storage failed; {hint}")
    if any(mark in text for mark in _READ_ERRORS):
        return f"reading the dataset {ds.root} failed in Ray: {_cause_line(text)}; {hint}"
    return None


def _finish(job: TrainJob, result: Any, run_dir: str, skeleton_name: str, *,
            mix: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write model.pt (from the latest checkpoint: its weights, or with early stopping the best epoch's it holds),
    history.json and job.json into the run folder."""
    from rigpose.skeleton import get_skeleton

    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (see the Ray logs; run folder {run_dir})")
    state = load_state(result.checkpoint)
    skeleton = get_skeleton(skeleton_name)
    model = build_lifter(job, skeleton)
    best = best_weights(state)
    model.load_state_dict(best[1] if best is not None else state["model"])
    last = state["history"][-1] if state["history"] else {}
    stopped = bool(last.get("stopped_early", 0.0))
    from rigpose.tracking.secrets import scrub_obj

    meta = scrub_obj({"supervision": job.supervision, "dataset": job.data.url,
                      "manifest_sha256": state["manifest_sha256"], "epochs": state["epoch"] + 1,
                      "steps": state["step"], "run_name": job.run.name, "world_size": state.get("world_size", 1),
                      "init_weights": state.get("init_weights"), "mix": mix,
                      "best_epoch": best[0] if best is not None else None, "stopped_early": stopped})
    save_lifter(f"{run_dir}/{MODEL_FILE}", model, skeleton, meta=meta)
    _write_json(run_dir, "history.json", state["history"])
    _write_json(run_dir, "job.json", job.model_dump())
    return {"run_dir": run_dir, "model": f"{run_dir}/{MODEL_FILE}", "history": state["history"],
            "checkpoint": result.checkpoint.path, "best_epoch": best[0] if best is not None else None,
            "stopped_early": stopped}

