"""Detector model for synthetic 2D keypoints: pixel noise, outliers, left/right swaps, occlusions, missing views.

`detect` turns clean projections [N, V, J, 2] into what a 2D detector would report, in this order (every draw
from the one generator passed in, so a seeded generator gives identical arrays):

1. left/right swap: per (frame, view, limb) with `swap_rate`, the limb's left and right joints trade places
   (a limb is a chain of the skeleton's left joints and its mirror: for deepmimic16 an arm or a leg);
2. Gaussian pixel noise, std `pixel_std` per coordinate; the joint's score falls linearly from `scores.clean[1]`
   to `scores.clean[0]` as its error grows to 3 sigma (70%) plus a uniform random share (30%);
3. outliers: per joint with `outlier_rate`, moved in a random direction by a distance uniform in `outlier_px`,
   score uniform in `scores.outlier`;
4. occlusion: per joint with `occlusion_rate`; a share `occlusion_missing_fraction` becomes missing, the rest
   stays with extra Gaussian noise (`occluded_px`) and a score uniform in `scores.occluded`;
5. dropped joint: per joint with `missing_rate`, reported missing (what a noise profile measures);
6. missing view: per (frame, view) with `missing_view_rate` the whole view is missing;
7. a joint whose true or reported position lies outside the image, or behind the camera, is missing.

The rates and stds of 2, 3 and 5 may differ per view and joint, those of 1 and 6 per view (`ViewNoise`: what a
noise profile of the user's own 2D gives, rigpose.data.noise_profile.view_noise); `DetectorNoise` alone gives
every view and joint the same, and its `profile` is resolved by the build (rigpose.data.synth.build).
Missing = NaN keypoint and score 0 (DESIGN.md). Shape letters: N frames, V views, J joints, L limbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from rigpose.config import Strict
from rigpose.skeleton import Skeleton

Range = tuple[float, float]


def _check_range(name: str, r: Range, lo: float, hi: float | None = None) -> None:
    if not (lo <= r[0] <= r[1] and (hi is None or r[1] <= hi)):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be (low, high) with low <= high, both {bound}; got {list(r)}")


class DetectorScores(Strict):
    """Detector confidence ranges, all within [0, 1]."""

    clean: Range = Field((0.75, 1.0), description="(low, high) score of a detected joint: high at zero error, "
                                                   "falling toward low as the pixel error grows to 3 sigma")
    outlier: Range = Field((0.2, 0.6), description="(low, high) uniform score of an outlier")
    occluded: Range = Field((0.05, 0.35), description="(low, high) uniform score of an occluded joint that is kept")

    @model_validator(mode="after")
    def _ranges(self) -> DetectorScores:
        for name in ("clean", "outlier", "occluded"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        return self


class DetectorNoise(Strict):
    """What the simulated 2D detector gets wrong. Rates are probabilities in [0, 1]; all zero = exact projections."""

    pixel_std: float = Field(0.0, ge=0, description="Gaussian pixel noise, std per coordinate (px)")
    outlier_rate: float = Field(0.0, ge=0, le=1, description="probability that a joint is an outlier")
    outlier_px: Range = Field((20.0, 100.0), description="(low, high) distance (px) an outlier is moved, uniform")
    swap_rate: float = Field(0.0, ge=0, le=1, description="probability, per frame, view and limb, that the "
                                                          "limb's left and right joints are swapped")
    occlusion_rate: float = Field(0.0, ge=0, le=1, description="probability that a joint is occluded")
    occlusion_missing_fraction: float = Field(0.5, ge=0, le=1, description="share of occluded joints reported "
                                              "missing (NaN, score 0); the others get a low score and extra noise")
    occluded_px: float = Field(10.0, ge=0, description="extra Gaussian std (px) of occluded joints that are kept")
    missing_rate: float = Field(0.0, ge=0, le=1, description="probability that a joint is reported missing "
                                                             "(NaN, score 0) on top of occlusions")
    missing_view_rate: float = Field(0.0, ge=0, le=1, description="probability that a whole view of a frame is "
                                                                  "missing (all joints NaN, score 0)")
    scores: DetectorScores = Field(default_factory=DetectorScores, description="detector confidence model")
    profile: str | None = Field(None, min_length=1, description="noise profile JSON (`rigpose datasets "
                                "noise-profile`): per camera and joint pixel_std, outlier_rate, missing_rate, and "
                                "per camera swap_rate, missing_view_rate, outlier_px; keys written next to it "
                                "override the profile's values for every camera and joint")

    @model_validator(mode="after")
    def _ranges(self) -> DetectorNoise:
        _check_range("outlier_px", self.outlier_px, 0.0)
        return self


@dataclass(frozen=True)
class ViewNoise:
    """The per-view, per-joint part of the detector model for one rig's V views and J joints.

    Rates are probabilities, stds px per coordinate; the model's other settings (occlusions, scores) come from
    the `DetectorNoise` passed to `detect` alongside.
    """

    pixel_std: np.ndarray  # [V, J] px, float64
    outlier_rate: np.ndarray  # [V, J]
    missing_rate: np.ndarray  # [V, J]
    swap_rate: np.ndarray  # [V] per (frame, limb)
    missing_view_rate: np.ndarray  # [V] per frame
    outlier_px: Range  # (low, high) distance an outlier is moved (px)

    @staticmethod
    def uniform(noise: DetectorNoise, num_views: int, num_joints: int) -> ViewNoise:
        """`noise`'s scalars for every view and joint."""
        VJ = (num_views, num_joints)
        return ViewNoise(pixel_std=np.full(VJ, noise.pixel_std), outlier_rate=np.full(VJ, noise.outlier_rate),
                         missing_rate=np.full(VJ, noise.missing_rate), swap_rate=np.full(num_views, noise.swap_rate),
                         missing_view_rate=np.full(num_views, noise.missing_view_rate), outlier_px=noise.outlier_px)

    def check(self, num_views: int, num_joints: int) -> None:
        """ValueError unless the arrays are [V, J] / [V] with stds >= 0 and rates in [0, 1]."""
        for name in ("pixel_std", "outlier_rate", "missing_rate", "swap_rate", "missing_view_rate"):
            a = getattr(self, name)
            shape = (num_views,) if name in ("swap_rate", "missing_view_rate") else (num_views, num_joints)
            if a.shape != shape:
                raise ValueError(f"ViewNoise.{name}: expected shape {shape}, got {a.shape}")
            if not (np.isfinite(a).all() and (a >= 0).all() and (name == "pixel_std" or (a <= 1).all())):
                raise ValueError(f"ViewNoise.{name}: expected finite values >= 0 (rates <= 1)")
        _check_range("outlier_px", self.outlier_px, 0.0)


def limb_pairs(skeleton: Skeleton) -> list[tuple[np.ndarray, np.ndarray]]:
    """(left joints, mirrored right joints) per limb: chains of left joints from the one attached to the trunk."""
    mirror = dict(zip(skeleton.left, skeleton.right, strict=True))
    limbs: dict[int, list[int]] = {}
    for j in skeleton.left:
        top = j
        while skeleton.parents[top] in mirror:
            top = skeleton.parents[top]
        limbs.setdefault(top, []).append(j)
    return [(np.array(ls), np.array([mirror[j] for j in ls])) for ls in limbs.values()]


def _swap_limbs(kp_NVJ2: np.ndarray, rate_V: np.ndarray, limbs: list[tuple[np.ndarray, np.ndarray]],
                rng: np.random.Generator) -> None:
    """Swap, in place, each limb's left and right joints in a random `rate_V[v]` share of (frame, view v, limb)."""
    N, V, _, _ = kp_NVJ2.shape
    swap_NVL = rng.random((N, V, len(limbs)), dtype=np.float32) < rate_V.astype(np.float32)[:, None]
    for l_idx, (left, right) in enumerate(limbs):
        n, v = np.nonzero(swap_NVL[..., l_idx])
        n, v = n[:, None], v[:, None]
        kp_NVJ2[n, v, left], kp_NVJ2[n, v, right] = kp_NVJ2[n, v, right], kp_NVJ2[n, v, left]


def _uniform(rng: np.random.Generator, r: Range, n: int) -> np.ndarray:
    return (r[0] + (r[1] - r[0]) * rng.random(n, dtype=np.float32)).astype(np.float32)


def _inside(kp_NVJ2: np.ndarray, image_size_V2: np.ndarray) -> np.ndarray:
    """[N, V, J] keypoint finite and within (0, width) x (0, height)."""
    N, V, J, _ = kp_NVJ2.shape
    half_VX = np.repeat(np.asarray(image_size_V2, dtype=np.float32) / 2, J, axis=0).reshape(V, J * 2)
    with np.errstate(invalid="ignore"):  # NaN compares False: missing
        ok_NVX = np.abs(kp_NVJ2.reshape(N, V, J * 2) - half_VX) < half_VX
    return ok_NVX.view(np.uint16).reshape(N, V, J) == 0x0101  # both coordinates' bools True (one byte each)


def _at(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Indices of the True entries of a sparse mask (indexing with them beats indexing with the mask)."""
    return np.nonzero(mask)


def detect(clean_NVJ2: np.ndarray, image_size_V2: np.ndarray, noise: DetectorNoise, rng: np.random.Generator,
           *, skeleton: Skeleton, views: ViewNoise | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clean projections [N, V, J, 2] (px; NaN behind the camera) -> (keypoints [N, V, J, 2], scores [N, V, J]),
    float32, as the detector described in the module docstring would report them.

    `views` gives per-view, per-joint stds and rates (default: `noise`'s scalars everywhere; the same draws, so
    a uniform `views` reproduces `noise` alone bit for bit)."""
    if clean_NVJ2.ndim != 4 or clean_NVJ2.shape[-1] != 2:
        raise ValueError(f"clean keypoints: expected shape [N, V, J, 2], got {clean_NVJ2.shape}")
    if clean_NVJ2.shape[2] != skeleton.num_joints:
        raise ValueError(f"clean keypoints have {clean_NVJ2.shape[2]} joints, {skeleton.name!r} has "
                         f"{skeleton.num_joints}")
    kp = np.array(clean_NVJ2, dtype=np.float32)  # a copy: edited in place below
    N, V, J, _ = kp.shape
    if views is None:
        views = ViewNoise.uniform(noise, V, J)
    views.check(V, J)
    # rates compared in float32, as a Python float is against a float32 array: the same draws either way
    outlier_VJ, missing_VJ = views.outlier_rate.astype(np.float32), views.missing_rate.astype(np.float32)
    if (views.swap_rate > 0).any():
        _swap_limbs(kp, views.swap_rate, limb_pairs(skeleton), rng)
    visible = _inside(kp, image_size_V2)
    lo, hi = noise.scores.clean
    std_VJ = views.pixel_std
    if (std_VJ > 0).any():
        err_NVJ2 = rng.standard_normal((N, V, J, 2), dtype=np.float32) * std_VJ.astype(np.float32)[..., None]
        kp += err_NVJ2
        err_NVJ = np.sqrt(err_NVJ2[..., 0] ** 2 + err_NVJ2[..., 1] ** 2)  # not .sum(-1): slow on a size-2 axis
        jitter = rng.random((N, V, J), dtype=np.float32)
        with np.errstate(divide="ignore"):  # std 0: no error, the top score (below)
            per_px_VJ = np.where(std_VJ > 0, 0.7 / (3 * std_VJ), 0.0).astype(np.float32)
        share = err_NVJ * per_px_VJ + np.float32(0.3) * jitter
        scores = np.float32(hi) - np.float32(hi - lo) * np.minimum(share, np.float32(1.0))
        if not (std_VJ > 0).all():
            scores = np.where(std_VJ > 0, scores, np.float32(hi))
    else:
        scores = np.full((N, V, J), hi, dtype=np.float32)
    if (outlier_VJ > 0).any():
        out = _at(rng.random((N, V, J), dtype=np.float32) < outlier_VJ)
        n = len(out[0])
        dist, angle = _uniform(rng, views.outlier_px, n), _uniform(rng, (0.0, 2 * np.pi), n)
        kp[out] += dist[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
        scores[out] = _uniform(rng, noise.scores.outlier, n)
    missing = ~visible
    if noise.occlusion_rate > 0:
        occ = np.flatnonzero(rng.random((N, V, J), dtype=np.float32) < noise.occlusion_rate)
        gone = rng.random(len(occ), dtype=np.float32) < noise.occlusion_missing_fraction
        kept = np.unravel_index(occ[~gone], (N, V, J))
        kp[kept] += rng.standard_normal((len(kept[0]), 2), dtype=np.float32) * np.float32(noise.occluded_px)
        scores[kept] = _uniform(rng, noise.scores.occluded, len(kept[0]))
        missing.reshape(-1)[occ[gone]] = True
    if (missing_VJ > 0).any():
        missing |= rng.random((N, V, J), dtype=np.float32) < missing_VJ
    if (views.missing_view_rate > 0).any():
        rate_V = views.missing_view_rate.astype(np.float32)
        missing |= (rng.random((N, V), dtype=np.float32) < rate_V)[..., None]
    missing |= ~_inside(kp, image_size_V2)
    gone = _at(missing)
    kp[gone] = np.nan
    scores[gone] = 0.0
    return kp, scores
