"""The synthetic-dataset recipe (rigpose/resources/recipes/*.yaml): typed, strict, loaded with `yaml.safe_load`.

Unknown keys fail naming their path (`noise.pixel_sd: unknown key`); bad values name their field. The builder
is rigpose.data.synth.build.

Recipe format (every key optional except `rigs`; defaults in brackets):

    name: demo                       # [synthetic] free text, recorded in the manifest with the whole recipe
    seed: 0                          # [0] seeds every random draw
    frames: 30000                    # [none] total frames: cycle clips x placements until reached (the last
                                     #   sequence is cut short); none = `placement.per_clip` placements per clip
    skeleton: halpe26                # [deepmimic16] the dataset's skeleton: deepmimic16 (the motion's own
                                     #   joints), or the detector's: coco17, halpe26, h36m17; joints the motion
                                     #   capture lacks (face, toes, heels) are fixed on its head and feet
                                     #   (rigpose.data.synth.targets)
    motion:
      source: deepmimic              # pybullet's DeepMimic clips (rigpose.data.synth.mocap; needs the mocap extra)
      clips: all                     # [all] or a list of names (walk, run, jump, ...)
      exclude: []                    # [] clip names left out of `all`
      fps: 30                        # [30] resample to this rate
      # or, for scale tests:
      # source: procedural           # random, smooth, anatomically bounded joint angles on DeepMimic bones
      # num_sequences: 100           # [20] distinct motions, named proc0000, proc0001, ...
      # seconds: 10                  # [10] length of each
      # fps: 30
    subjects:
      count: 5                       # [1] virtual subjects s1..sN; each placement draws one
      scale: [0.9, 1.1]              # [[1, 1]] overall bone-length factor, uniform per subject
      bone_jitter: 0.03              # [0] relative std of an extra per-bone factor (clipped at 3 sigma)
      symmetric: true                # [true] a left bone gets its right mirror's jitter
    placement:
      radius: 1.0                    # [1.0] m: floor point (x, y) uniform in a disc around the rig's capture centre
      yaw_deg: [0, 360]              # [[0, 360]] heading, uniform
      per_clip: 4                    # [1] placements per clip when `frames` is not given
    rigs: [h36m-s1, my-rig.json]     # shipped rigs by name (rigpose.resources) or rig files: your own rig's
                                     #   calibration (a path, absolute or relative to the working directory, the
                                     #   recipe's folder or one of its two parents; or an fsspec URL);
                                     #   placements are spread round-robin
    noise:                           # the detector model, see rigpose.data.synth.detector (all [0]: exact projections)
      pixel_std: 5                   # px per coordinate
      outlier_rate: 0.02             # per joint; moved by a distance uniform in outlier_px [[20, 100]]
      swap_rate: 0.01                # per frame, view and limb: left/right limb swapped
      occlusion_rate: 0.03           # per joint; occlusion_missing_fraction [0.5] of them missing, the rest kept
                                     #   with occluded_px [10] extra noise and a low score
      missing_view_rate: 0.02        # per frame and view: whole view missing
      missing_rate: 0.01             # [0] per joint: reported missing (NaN, score 0), on top of occlusions
      scores: {clean: [0.75, 1.0], outlier: [0.2, 0.6], occluded: [0.05, 0.35]}
      # profile: my-lab-noise.json   # [none] your detector's noise, measured by `rigpose datasets noise-profile`
                                     #   (a path found as rig files are, or a URL): per camera and joint
                                     #   pixel_std, outlier_rate, missing_rate; per camera swap_rate,
                                     #   missing_view_rate; outlier_px. Cameras are matched by name (others take
                                     #   the profile's `overall`), joints by name (a recipe joint the profile
                                     #   lacks is an error). A key written beside `profile` overrides the
                                     #   profile's value for every camera and joint; occlusion_* and scores
                                     #   are not measured and keep their own values
    splits:
      by: placement                  # [placement] sequences of each clip split by placement; `clip`: whole
                                     #   clips; `time`: every placement cut in time (first 80% train, ...)
      fractions: {train: 0.8, val: 0.1, test: 0.1}   # [{train: 1}] must sum to 1
      held_out_clips: [jump, kick]   # [] every placement of these clips goes to `held_out_split`
      held_out_split: test_clips     # [test_clips]
    calibration_error:               # a drifted calibration: the 2D stays the projection through the rigs as
                                     #   given, but the cameras written into the rows and the dataset's rig
                                     #   files are each camera's calibration perturbed (seeded; rig_id kept):
      rotation_deg: 2.0              # [0] turned by this angle about a random axis (about its own centre)
      translation_m: 0.05            # [0] its centre moved this far (m) in a random direction
      focal_rel: 0.0                 # [0] fx and fy scaled by 1 + or - this (random sign); below 1
    max_invalid_fraction: 0.01       # [0.01] frames with no valid view go to quarantine; fail above this share
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from rigpose.config import Strict
from rigpose.data.synth.detector import DetectorNoise
from rigpose.data.synth.targets import SkeletonName

_SPLIT_NAME = r"^[A-Za-z0-9_.-]+$"


class DeepMimicMotion(Strict):
    """Real motion capture: pybullet's DeepMimic clips."""

    source: Literal["deepmimic"] = Field(description="motion-capture clips shipped with pybullet")
    clips: Literal["all"] | list[str] = Field("all", description="clip names, or `all`")
    exclude: list[str] = Field(default_factory=list, description="clip names left out")
    fps: float = Field(30.0, gt=0, le=1000, description="frame rate to resample the clips to (Hz)")


class ProceduralMotion(Strict):
    """Random, smooth, anatomically bounded joint angles on the DeepMimic skeleton (for scale tests only)."""

    source: Literal["procedural"] = Field(description="procedural motion")
    num_sequences: int = Field(20, ge=1, le=100_000, description="number of distinct motions")
    seconds: float = Field(10.0, gt=0, description="length of each motion (s)")
    fps: float = Field(30.0, gt=0, le=1000, description="frame rate (Hz)")


class Subjects(Strict):
    """Virtual subjects: bone-length scaling of the motion."""

    count: int = Field(1, ge=1, description="number of virtual subjects (s1, s2, ...)")
    scale: tuple[float, float] = Field((1.0, 1.0), description="(low, high) overall bone-length factor, uniform")
    bone_jitter: float = Field(0.0, ge=0, le=0.2, description="relative std of a per-bone factor on top")
    symmetric: bool = Field(True, description="left bones take the jitter of their right mirror")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected 0 < low <= high, got {list(v)}")
        return v


class Placement(Strict):
    """Where and how each copy of a clip is put in the rig's capture volume."""

    radius: float = Field(1.0, ge=0, description="floor positions are uniform in this disc (m) around the rig's "
                                                 "capture centre")
    yaw_deg: tuple[float, float] = Field((0.0, 360.0), description="(low, high) heading in degrees, uniform")
    per_clip: int = Field(1, ge=1, description="placements per clip when `frames` is not given")


class Splits(Strict):
    """How sequences are assigned to splits."""

    by: Literal["placement", "clip", "time"] = Field("placement", description="unit assigned to a split")
    fractions: dict[str, float] = Field(default_factory=lambda: {"train": 1.0},
                                        description="split name -> share; shares sum to 1")
    held_out_clips: list[str] = Field(default_factory=list, description="clips whose every placement goes to "
                                                                        "`held_out_split` (new-motion test)")
    held_out_split: str = Field("test_clips", pattern=_SPLIT_NAME, description="split of the held-out clips")

    @model_validator(mode="after")
    def _check(self) -> Splits:
        if not self.fractions:
            raise ValueError("fractions: need at least one split")
        for name, share in self.fractions.items():
            if not re.match(_SPLIT_NAME, name):
                raise ValueError(f"fractions: split name {name!r} must be letters, digits, '.', '_' or '-'")
            if not 0 < share <= 1:
                raise ValueError(f"fractions.{name}: expected a share in (0, 1], got {share}")
        if abs(sum(self.fractions.values()) - 1) > 1e-6:
            raise ValueError(f"fractions: shares sum to {sum(self.fractions.values())}, expected 1")
        if self.held_out_clips and self.held_out_split in self.fractions:
            raise ValueError(f"held_out_split {self.held_out_split!r} is also in fractions")
        return self


class CalibrationError(Strict):
    """How far the calibration written into the dataset is from the rig that made the 2D (all 0: exact)."""

    rotation_deg: float = Field(0.0, ge=0, le=180, description="each camera turned by this angle (degrees) about a "
                                                               "random axis through its centre")
    translation_m: float = Field(0.0, ge=0, description="each camera centre moved this far (m), random direction")
    focal_rel: float = Field(0.0, ge=0, lt=1, description="each camera's fx, fy scaled by 1 + or - this "
                                                          "(random sign)")

    @property
    def exact(self) -> bool:
        """No error at all: the rows carry the rigs as given."""
        return self.rotation_deg == 0 and self.translation_m == 0 and self.focal_rel == 0


class Recipe(Strict):
    """How a synthetic dataset is built (module docstring: the file format)."""

    name: str = Field("synthetic", description="free text, recorded in the manifest")
    seed: int = Field(0, ge=0, description="seeds every random draw")
    frames: int | None = Field(None, ge=1, description="total frames (cycles clips x placements); none = "
                                                       "placement.per_clip placements of every clip")
    skeleton: SkeletonName = Field(
        "deepmimic16", description="the dataset's skeleton: the motion's own joints, or a detector's (joints the "
                                   "motion capture lacks fixed on its head and feet: rigpose.data.synth.targets)")
    motion: Annotated[DeepMimicMotion | ProceduralMotion, Field(discriminator="source")] = Field(
        default_factory=lambda: DeepMimicMotion(source="deepmimic"), description="motion source")
    subjects: Subjects = Field(default_factory=Subjects, description="virtual subjects")
    placement: Placement = Field(default_factory=Placement, description="placement in the capture volume")
    rigs: list[str] = Field(min_length=1, description="shipped rig names or rig files; placements are spread over them")
    noise: DetectorNoise = Field(default_factory=DetectorNoise, description="simulated 2D detector")
    splits: Splits = Field(default_factory=Splits, description="split assignment")
    calibration_error: CalibrationError = Field(
        default_factory=CalibrationError, description="a drifted calibration: the cameras written into the rows and "
                                                      "rig files perturbed, the 2D left the true rigs' projection")
    max_invalid_fraction: float = Field(0.01, ge=0, le=1, description="largest share of frames with no valid "
                                                                     "view (quarantined) before the build fails")


def _validation_message(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid recipe"]
    for err in e.errors():
        parts = [str(p) for p in err["loc"]]
        if parts[:1] == ["motion"] and parts[1:2] in (["deepmimic"], ["procedural"]):
            del parts[1]  # the union's tag, not a key the user wrote
        loc = ".".join(parts) or "<root>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_recipe(data: Any, *, source: str = "<recipe>") -> Recipe:
    """A `Recipe` from a mapping; ValueError naming each bad or unknown key by its path (`noise.pixel_sd`)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a recipe is a mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ValueError(_validation_message(e, source)) from None


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read a recipe YAML file (`yaml.safe_load`) into a `Recipe`."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
    return parse_recipe(data, source=os.fspath(path))
