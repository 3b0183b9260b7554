"""Typed configuration, one pydantic class per component: `jobs/train.yaml` loads (yaml.safe_load) into `TrainJob`,
`jobs/evaluate.yaml` into `EvaluateJob`; unknown keys fail loudly. Each setting has its one default and its one
description here; the model code takes these classes (`Lifter(ModelConfig, ...)`, the losses `LossConfig`, multi-view
inference `MultiViewConfig`).

`--set key.path=value` overrides are parsed as YAML scalars and applied before validation, so a bad override is
reported with the same field path as a bad file entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator


class Strict(BaseModel):
    """Base of every config class: unknown keys are errors, and a validated config is read-only (and hashable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Config = TypeVar("Config", bound=Strict)
VerifyMode = Literal["auto", "footer", "full"]  # data.verify (rigpose.data.validate.verify_shards)
VERIFY_MODES: tuple[str, ...] = get_args(VerifyMode)


class DataConfig(Strict):
    """Where the training data comes from."""

    url: str = Field("outputs/datasets/demo", description="Dataset root: local path, file:// or s3://bucket/prefix.")
    train_split: str = Field("train", description="Split used for training.")
    val_split: str | None = Field("val", description="Split for the label-free validation metric (plus MPJPE and "
                                                     "PA-MPJPE when its rows carry joints_3d); null = none.")
    rig_ids: list[str] | None = Field(None, description="Train only on these rigs (default: all rigs).")
    batch_size: int = Field(256, ge=1, description="Frames per step per worker (each frame has V views).")
    shuffle_buffer: int = Field(4096, ge=0, description="Ray Data local shuffle buffer, frames (0 = no shuffle).")
    cache: bool = Field(True, description="Materialise the preprocessed data once instead of re-reading every "
                                          "epoch (fast when it fits in the object store; off for huge datasets).")
    shuffle_files: bool = Field(True, description="Shuffle the order of row groups (streaming) or blocks (cached) anew "
                                                  "every epoch, before the local shuffle buffer.")
    max_rows: int | None = Field(None, ge=1, description="Use at most this many training rows (quick runs).")
    manifest_version: int | None = Field(None, ge=1, description="Train on this committed manifest version of the "
                                                                 "dataset (null = the latest when training starts).")
    verify: VerifyMode = Field(
        "auto", description="Check the shards training reads against the manifest before Ray starts: 'footer' = "
                            "size and Parquet footer (schema, row count); 'full' = also the sha256 (reads every "
                            "byte); 'auto' = full for local files, footer for object storage.")
    mix_url: str | None = Field(
        None, description="A second dataset (e.g. synthetic) mixed into training: every epoch takes all the "
                          "training rows of `url` and enough rows of this dataset's `train_split` (all its rigs) to "
                          "make `mix_ratio` of the epoch's rows; same skeleton as `url`. Validation stays on `url`'s "
                          "val_split. null = no mix.")
    mix_ratio: float = Field(0.5, gt=0, lt=1, description="With mix_url: the fraction of every epoch's training rows "
                                                          "taken from it (round(n x r / (1 - r)) rows for n rows of "
                                                          "url; repeated when it has fewer).")


class ModelConfig(Strict):
    """Lifter architecture (rigpose.model.lifter.Lifter); the joints come from the dataset's skeleton."""

    width: int = Field(1024, ge=8, description="Hidden width of the residual MLP (1024: measured, BENCHMARKS.md).")
    num_blocks: int = Field(2, ge=0, description="Residual blocks.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability (0: measured best, BENCHMARKS.md).")
    dropout_schedule: Literal["constant", "half"] = Field(
        "half", description="'half': dropout for the first half of the epochs, then 0 (the original report's trick).")
    output: Literal["ray", "denoised", "free"] = Field(
        "denoised", description="'ray': depths along each joint's camera ray through its input 2D; 'denoised': depths "
                           "along the rays through the network's own 2D estimate (the input's noise is not passed "
                           "through); 'free': free 3D offsets.")
    frame: Literal["camera", "person"] = Field(
        "camera", description="'camera': lift in the camera's own frame (model files without the setting too); "
                              "'person': lift in a virtual camera turned (about the camera centre) to look at the "
                              "person, then rotate back, so where the person stands in the image cannot teach the "
                              "network one rig's depths (better 2D-supervised on an unseen rig, but the 3D-supervised "
                              "lifter's floor scale breaks: BENCHMARKS.md).")
    init_weights: str | None = Field(
        None, min_length=1, validation_alias=AliasChoices("init_weights", "init_from"),
        description="Start from these weights (a model.pt file, a run folder, or an MLflow model URI "
                    "models:/NAME@ALIAS / models:/NAME/VERSION) instead of random initialisation, e.g. to fine-tune "
                    "a champion; ignored when the run resumes from its own checkpoint. Their skeleton, width, "
                    "num_blocks, output and frame must match. Also accepted as `model.init_from`.")


class LossConfig(Strict):
    """Loss weights and robustness (rigpose.model.objective); a weight of 0 skips the term."""

    cross_view: float = Field(1.0, ge=0, description="Cross-view reprojection (pixels, Huber).")
    root_depth: float = Field(20.0, ge=0, description="Root depth vs the triangulated root (metres, Huber).")
    pseudo_3d: float = Field(0.0, ge=0, description="Warm-up on triangulated pseudo-3D (metres).")
    pseudo_3d_steps: int = Field(0, ge=0, description="Steps the pseudo-3D warm-up lasts (0 = whole run).")
    inpainting: float = Field(0.05, ge=0, description="2D estimate of joints hidden from the input (pixels).")
    bone_symmetry: float = Field(10.0, ge=0, description="Left/right bone-length symmetry prior (metres).")
    huber_px: float = Field(10.0, gt=0, description="Huber threshold of the reprojection loss, pixels.")
    hide_joint_prob: float = Field(0.05, ge=0, lt=1, description="Probability of hiding a visible input joint.")


LrSchedule = Literal["cosine", "exponential", "constant"]  # optim.schedule (rigpose.train.schedule.lr_factor)


class OptimConfig(Strict):
    """Optimiser, training budget and learning-rate schedule (rigpose.train.schedule), all counted in optimizer
    steps: a run takes `steps` steps whatever the size of the dataset, unless the job sets `epochs`.

    The budget resolves to exactly one of the two: setting `epochs` (e.g. `--set optim.epochs=2`) makes the run that
    many passes over the training split and clears `steps` (null in the validated job, its tracked params and
    job.json); `steps` and `epochs` both null is an error. `min_steps` raises either to at least that many steps;
    `early_stop_patience` may end the run before its budget.
    """

    lr: float = Field(3e-4, gt=0, description="Adam peak learning rate (1e-3 diverged in measurements).")
    steps: int | None = Field(3000, ge=1, description="Training budget in optimizer steps (each of num_workers x "
                                                      "data.batch_size frames); the last epoch may be partial. "
                                                      "Ignored (null) when epochs is set.")
    epochs: int | None = Field(None, ge=1, description="When set, the budget is this many passes over the training "
                                                       "split instead of `steps` (null = use steps).")
    min_steps: int = Field(0, ge=0, description="The budget is at least this many steps: with `epochs`, "
                                                "max(epochs passes, min_steps), so that a small dataset (few steps "
                                                "an epoch) is not left undertrained (0 = no minimum).")
    schedule: LrSchedule = Field(
        "cosine", description="Learning-rate factor per step after the warm-up: 'cosine' from 1 down to "
                              "min_lr_ratio at the last step; 'exponential' lr_decay per epoch (steps_per_epoch "
                              "steps), a staircase as the former per-epoch schedule; 'constant' 1.")
    warmup_steps: int = Field(200, ge=0, description="Linear warm-up from lr/warmup_steps to lr over this many "
                                                     "first steps, every schedule; capped at a tenth of the run's "
                                                     "steps (0 = none).")
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="schedule 'cosine': the final learning rate, as a "
                                                              "fraction of lr.")
    lr_decay: float = Field(0.9, gt=0, le=1, description="schedule 'exponential' only: learning-rate factor per "
                                                         "epoch of training (applied at every epoch boundary).")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    seed: int = Field(0, description="Seed for initialisation and augmentation.")
    early_stop_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs in a row without the label-free validation metric "
                                "(val/reprojection_px) improving on its best by early_stop_min_delta; model.pt then "
                                "holds the best epoch's weights (needs data.val_split; null = train the whole "
                                "budget). The learning-rate schedule stays that of the whole budget: stopping early "
                                "truncates it.")
    early_stop_min_delta: float = Field(0.01, ge=0, lt=1, description="Relative improvement that counts for "
                                                                      "early stopping: below best x (1 - this).")

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_steps(cls, data: Any) -> Any:
        # before validation, so that a job file stating the default `steps` and an `--set optim.epochs=N` override
        # resolve to the epochs budget alone (the file cannot be told apart from an explicit steps)
        if isinstance(data, dict) and data.get("epochs") is not None:
            return {**data, "steps": None}
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> OptimConfig:
        if self.steps is None and self.epochs is None:
            raise ValueError("optim.steps and optim.epochs are both null: set the training budget with one of them")
        return self


class ScalingConfigModel(Strict):
    """Ray Train scaling (ray.train.ScalingConfig)."""

    num_workers: int = Field(1, ge=1, description="Training workers (DDP ranks); the effective batch is "
                                                  "num_workers x data.batch_size.")
    use_gpu: bool = Field(False, description="GPUs for the workers and the nccl backend; gloo on CPU otherwise.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per training worker (also its torch "
                                                          "thread count: Ray sets OMP_NUM_THREADS from it).")
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs reserved per worker when use_gpu is true.")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="Extra Ray resources per worker, e.g. {fast_disk: 1}.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How Ray places the workers on the nodes (ray.train.ScalingConfig's placement_strategy): "
                            "PACK on as few nodes as fit, SPREAD on as many as possible, STRICT_SPREAD one per "
                            "node (waits until that many nodes have room), STRICT_PACK all on one node.")
    scale_lr: bool = Field(False, description="Multiply optim.lr by num_workers (linear scaling rule for the "
                                              "num_workers-times larger effective batch).")


class RunSection(Strict):
    """Where and under what name a run writes its outputs."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Run name (folder name); re-running a name resumes it from its latest checkpoint.")
    output_dir: str = Field("outputs/runs", description="Runs are written to <output_dir>/<name>/ (checkpoints, "
                                                        "model.pt, history.json): a local path or s3://bucket/prefix.")
    ray_address: str | None = Field(None, description="Ray cluster address; null = $RAY_ADDRESS (set inside a Ray "
                                                       "job) or else a new local Ray.")
    max_failures: int = Field(0, ge=0, description="Worker failures survived (restart from the last checkpoint).")
    checkpoints_to_keep: int = Field(2, ge=1, description="Best checkpoints kept, by the validation metric.")


class TrackingConfig(Strict):
    """MLflow tracking and registration (rigpose.tracking.runs, rigpose.tracking.registry)."""

    enabled: bool = Field(True, description="Track the run in MLflow (params, per-epoch metrics, artifacts, model).")
    uri: str | None = Field(None, description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else a sqlite "
                                              "file with local artifacts in <output folder>/mlflow/.")
    experiment: str = Field("rigpose", min_length=1, description="MLflow experiment the run is logged under.")
    model_name: str | None = Field("rigpose-lifter", description="Registered model name; the new version gets "
                                                                 "the alias 'candidate'. null = log, don't register.")
    eval_split: str | None = Field(None, description="Split evaluated after training for the logged evaluation "
                                                     "JSON and pictures; null = data.val_split.")
    eval_max_rows: int = Field(2000, ge=1, description="Rows of eval_split evaluated after training.")


class TrainJob(Strict):
    """A training job: `rigpose train jobs/train.yaml [--set key=value ...]`."""

    supervision: Literal["2d", "3d"] = Field(
        "2d", description="'2d': reprojection losses only (never reads joints_3d); '3d': the 3D-supervised baseline.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    scaling: ScalingConfigModel = Field(default_factory=ScalingConfigModel)
    run: RunSection = Field(default_factory=RunSection)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainJob:
        if self.data.val_split is not None and self.data.val_split == self.data.train_split:
            raise ValueError("data.val_split must differ from data.train_split")
        if self.optim.early_stop_patience is not None and self.data.val_split is None:
            raise ValueError("optim.early_stop_patience needs data.val_split: early stopping watches the label-free "
                             "validation metric (val/reprojection_px)")
        return self


MultiViewMethod = Literal["posterior", "fusion", "refinement", "adaptation"]
MULTI_VIEW_METHODS: tuple[str, ...] = get_args(MultiViewMethod)
FusionWeighting = Literal["confidence", "uniform"]
ViewMode = Literal["single", "multi"]
VIEW_MODES: tuple[str, ...] = get_args(ViewMode)
EvaluateMode = Literal["single", "multi", "both"]
EVALUATE_MODES: tuple[str, ...] = get_args(EvaluateMode)
ADAPTATION_STEPS = 100  # method "adaptation" with adapt_steps 0: this many fine-tuning steps


class MultiViewConfig(Strict):
    """Multi-view inference (rigpose.model.multiview.lift_multiview): what is done beyond lifting each view."""

    method: MultiViewMethod = Field(
        "posterior", description="'posterior': each joint the posterior of every view's 2D (weighed by its estimated "
                                 "noise) and the fused lifts (weighed by their own uncertainty), robust "
                                 "triangulation where the two disagree, with a per-joint uncertainty; 'fusion': "
                                 "the views' lifts averaged in the world frame; 'refinement': fusion, then "
                                 "optimised against every view's 2D; 'adaptation': the lifter fine-tuned on the test "
                                 "2D first (adapt_*), then fusion and refinement.")
    weighting: FusionWeighting = Field(
        "confidence", description="Fusion weights: 'confidence' (detector scores) or 'uniform' (one per view).")
    refine_steps: int = Field(100, ge=0, description="L-BFGS iterations of the refinement (methods refinement and "
                                                     "adaptation); 0 = none.")
    prior_weight: float | None = Field(None, gt=0, description="Weight of the fused-pose prior vs the 2D in the "
                                                               "refinement; null = from the 2D noise (MAP balance).")
    bone_weight: float = Field(3.0, ge=0, description="Refinement: bone lengths constant within a sequence.")
    symmetry_weight: float = Field(0.1, ge=0, description="Refinement: left/right bone lengths equal.")
    adapt_steps: int = Field(0, ge=0, description=f"Test-time adaptation steps per batch (Adam on the batch's own "
                                                  f"multi-view 2D); the adapted lifter serves every lift of the run, "
                                                  f"single-view too. 0 = none, except that method 'adaptation' then "
                                                  f"takes {ADAPTATION_STEPS}.")
    adapt_lr: float = Field(1e-4, gt=0, description="Adaptation: Adam learning rate.")
    adapt_batch_size: int | None = Field(1024, ge=1, description="Adaptation: frames per step (null = the whole "
                                                                 "batch).")

    def steps_to_adapt(self, *, multi: bool = True) -> int:
        """Adaptation steps of a run: `adapt_steps`, or ADAPTATION_STEPS for method adaptation when it is 0 and the
        run lifts multi-view (`multi`)."""
        if self.adapt_steps == 0 and multi and self.method == "adaptation":
            return ADAPTATION_STEPS
        return self.adapt_steps


class EvaluateOptions(Strict):
    """What `rigpose evaluate` runs."""

    mode: EvaluateMode = Field("both", description="Single-view, multi-view, or both.")
    multi_heldout: bool = Field(True, description="Multi-view held-out-view px (re-runs the multi-view method once "
                                                  "per left-out view).")


class LiftOptions(Strict):
    """What `rigpose lift` writes."""

    mode: ViewMode = Field("single", description="'single': per-view camera-frame poses; 'multi': fused world poses.")


class EvaluateJob(Strict):
    """Scoring or lifting a model: `rigpose evaluate|lift --model M --config jobs/evaluate.yaml [--set key=value]`."""

    data: str | None = Field(None, description="Dataset root: local path, file:// or s3:// URL (or --data).")
    split: str = Field("test", description="Dataset split to use.")
    batch_size: int = Field(512, ge=1, description="Frames per batch (bounds memory: it grows linearly with it).")
    max_rows: int | None = Field(None, ge=1, description="Use only the first N frames (null = all).")
    drop_cameras: list[str] = Field(default_factory=list, description=(
        "Cameras, as the rig file names them, whose 2D the method never sees (evaluate still scores against "
        "it: the error into a camera the method did not see); [] = use every camera."))
    multi_view: MultiViewConfig = Field(default_factory=MultiViewConfig)
    evaluate: EvaluateOptions = Field(default_factory=EvaluateOptions)
    lift: LiftOptions = Field(default_factory=LiftOptions)


class GateConfig(Strict):
    """The promotion gate of a retrain (rigpose.retrain.gate.decide): champion vs candidate, per rig."""

    split: str = Field("val", description="Split every rig is compared on: the label-free held-out-view error "
                                         "(MPJPE too where rows carry joints_3d: reported, never required).")
    max_rows: int | None = Field(5000, ge=1, description="Rows evaluated per rig (null = all).")
    margin: float = Field(0.05, ge=0, lt=1, description="Each rig with new data must improve by at least this "
                                                        "fraction (a new rig: against the champion's zero-shot "
                                                        "error there).")
    tolerance: float = Field(0.02, ge=0, description="No other rig may get worse by more than this fraction.")
    max_offset_px: float | None = Field(10.0, gt=0, description="A rig with new data whose calibration does not fit "
                                                               "its 2D refuses: some camera's detections sit "
                                                               "steadily further than this (px) from where the "
                                                               "other cameras place the joints (null = no check; "
                                                               "rigs of 3+ cameras).")


class RetrainJob(Strict):
    """Retraining on new rigs: `rigpose retrain jobs/retrain.yaml [--dry-run] [--every 6h] [--set key=value]`."""

    train_job: str = Field("jobs/train.yaml", description="The training job the candidate is trained with (a "
                                                          "path from the current folder): its data.url is the "
                                                          "dataset watched, tracking.model_name the model.")
    overrides: list[str] = Field(default_factory=list, description="Overrides of the training job, as `rigpose "
                                                                   "train --set key=value` takes them.")
    alias: str = Field("champion", description="The alias of the model in production: what new data is compared "
                                               "with and what a better candidate takes over (the old one keeps "
                                               "`previous`).")
    warm_start: bool = Field(True, description="Start the candidate from the champion's weights, with its "
                                               "architecture unless `overrides` set it (false: from scratch, the "
                                               "training job's own initialisation and architecture).")
    warm_budget: float = Field(0.5, gt=0, le=1, description="A warm-started candidate trains this fraction of the "
                                                            "training job's budget (optim.steps, or optim.epochs, "
                                                            "and min_steps); 1 = the whole budget.")
    warm_lr: float = Field(0.3, gt=0, le=1, description="A warm-started candidate's peak learning rate, as a "
                                                        "fraction of the training job's optim.lr.")
    gate: GateConfig = Field(default_factory=GateConfig)
    every: str | None = Field(None, description="Check again every this long (30m, 6h, 1d): the command keeps "
                                                "running and stops cleanly on SIGTERM; null = once.")
    lease_ttl_s: float = Field(900.0, gt=0, description="The retrain lease on the dataset root lasts this long "
                                                        "and is renewed while a retrain runs: a retrain that dies "
                                                        "frees it after this, and no two retrains promote at once.")


def check_train_job(job: RetrainJob, train_job: TrainJob) -> str:
    """The registered model's name; ValueError naming the training job (`job.train_job`, with its overrides
    applied: `train_job`) when a retrain cannot use it (no MLflow tracking or model name, a pinned manifest)."""
    name = train_job.tracking.model_name
    if not train_job.tracking.enabled or not name:
        raise ValueError(f"{job.train_job}: tracking.enabled and tracking.model_name are needed to retrain (the "
                         "champion and its lineage live in the MLflow registry)")
    if train_job.data.manifest_version is not None:
        raise ValueError(f"{job.train_job}: data.manifest_version is set; a retrain trains on the latest version")
    return name


def _set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = d
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {dotted}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def alias_paths(cls: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """{'model.init_from': 'model.init_weights'}: every other name (a pydantic `AliasChoices`) of a setting of
    `cls` and its sections, dotted, to the setting's own."""
    out: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        if isinstance(field.validation_alias, AliasChoices):
            out.update({f"{prefix}{c}": f"{prefix}{name}" for c in field.validation_alias.choices
                        if isinstance(c, str) and c != name})
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out.update(alias_paths(field.annotation, f"{prefix}{name}."))
    return out


def _canonical_names(raw: dict[str, Any], aliases: dict[str, str], source: str) -> None:
    """Rename the other names of settings in `raw` (a job file) to their own, in place, so that an override under
    either name replaces the file's value; ValueError naming both when the file gives a setting under two."""
    for alias, name in aliases.items():
        *path, key = alias.split(".")
        node: Any = raw
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        own = name.rsplit(".", 1)[-1]
        if own in node:
            raise ValueError(f"{source}: {alias} and {name} are one setting; give it once")
        node[own] = node.pop(key)


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """['optim.epochs=2', 'data.url=s3://b/x'] -> [(path, YAML-parsed value)]; ValueError naming a bad one."""
    out = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key.path=value")
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


def load_config(cls: type[Config], path: str | os.PathLike[str] | None, overrides: list[str] | None = None, *,
                options: dict[str, Any] | None = None) -> Config:
    """Read a YAML file into `cls` (the defaults when `path` is None), apply `--set` overrides, then `options`
    ({dotted path: value}, e.g. the command line's own options, which win), validate once."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ValueError(f"{path}: no such job file") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a job file is a mapping of sections, got {type(raw).__name__}")
    aliases = alias_paths(cls)
    _canonical_names(raw, aliases, source)
    for key, value in [*parse_overrides(overrides), *(options or {}).items()]:
        _set_path(raw, aliases.get(key, key), value)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "(root)"
        raise ValueError(f"{source}: field {loc}: {first['msg']} (got {first.get('input')!r})") from None


def load_job(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> TrainJob:
    """Read a training job YAML (or the defaults when `path` is None), apply `--set` overrides, validate."""
    return load_config(TrainJob, path, overrides)


def flatten(job: Strict) -> dict[str, Any]:
    """{'optim.lr': 0.0003, ...}: the job as flat params (for tracking)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", job.model_dump())
    return out
