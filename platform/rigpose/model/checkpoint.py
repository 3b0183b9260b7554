"""Save and load a trained lifter as one self-describing file (weights + architecture + skeleton + metadata).

The file is a `torch.save` dict loaded with `weights_only=True` (no pickled code): {"format": "rigpose-lifter",
"version": 1, "config": `architecture(model)`, "skeleton": name, "state_dict": ..., "meta": {...}}. `meta` holds
JSON-able facts (supervision mode, dataset manifest hash, training steps, ...). Local paths or fsspec URLs.

"config" keeps the version-1 layout (num_joints, root_joints, width, num_blocks, dropout, output, extra), so files
written by any rigpose of version 1 load in any other; training-only settings (`dropout_schedule`) are not part of
it and load as their default. `extra` holds settings added since, only where they differ from the behaviour of the
files before them (`EXTRA_FIELDS`: frame "camera"), so a file without them loads as it always did, and a rigpose that
does not know a setting refuses the file by name instead of lifting with the wrong one.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch

from rigpose.config import ModelConfig
from rigpose.model.lifter import Lifter
from rigpose.skeleton import Skeleton, get_skeleton
from rigpose.storage import url_to_fs, write_bytes_atomic

FORMAT = "rigpose-lifter"
VERSION = 1
MODEL_FILE = "model.pt"


def save_lifter(path: str | os.PathLike[str], model: Lifter, skeleton: Skeleton, *,
                meta: dict[str, Any] | None = None) -> None:
    """Write `model` (unwrapped from DDP) to `path` atomically."""
    fs, p = url_to_fs(path)
    write_bytes_atomic(fs, p, lifter_to_bytes(model, skeleton, meta=meta))


def lifter_to_bytes(model: Lifter, skeleton: Skeleton, *, meta: dict[str, Any] | None = None) -> bytes:
    """The bytes of a model file (`save_lifter`) for `model` (unwrapped from DDP); `lifter_from_bytes` reads them."""
    model = getattr(model, "module", model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": architecture(model),
        "skeleton": skeleton.name,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


#: ModelConfig fields a file records (the version-1 layout); the others only matter while training
ARCHITECTURE_FIELDS = ("width", "num_blocks", "dropout", "output")


#: settings recorded under "extra", with the value that files written before them mean
EXTRA_FIELDS = {"frame": "camera"}


def architecture(model: Lifter) -> dict[str, Any]:
    """What a saved file (and an ONNX export's metadata) records of the lifter, in the version-1 layout:
    {num_joints, root_joints, width, num_blocks, dropout, output, extra: {frame where not "camera"}}."""
    cfg = model.config.model_dump()
    extra = {k: cfg[k] for k, legacy in EXTRA_FIELDS.items() if cfg[k] != legacy}
    return {"num_joints": model.num_joints, "root_joints": list(model.root_joints),
            **{k: cfg[k] for k in ARCHITECTURE_FIELDS}, "extra": extra}


def load_lifter(path: str | os.PathLike[str], *, map_location: str = "cpu"
                ) -> tuple[Lifter, Skeleton, dict[str, Any]]:
    """(model in eval mode, skeleton, meta) from a file written by `save_lifter`, or a run folder holding one."""
    fs, p = url_to_fs(path)
    if fs.isdir(p):
        p = f"{p}/{MODEL_FILE}"
    if not fs.exists(p):
        raise ValueError(f"{path}: no such model file (expected a {MODEL_FILE} or a run folder holding one)")
    with fs.open(p, "rb") as f:
        return lifter_from_bytes(f.read(), where=str(path), map_location=map_location)


def lifter_from_bytes(data: bytes, *, where: str = "model bytes", map_location: str = "cpu"
                      ) -> tuple[Lifter, Skeleton, dict[str, Any]]:
    """(model in eval mode, skeleton, meta) from a model file's bytes (`lifter_to_bytes`); errors name `where`."""
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a non-checkpoint file
        raise ValueError(f"{where}: not a readable rigpose model ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{where}: not a rigpose lifter file (format {payload.get('format')!r})")
    if payload.get("version") != VERSION:
        raise ValueError(f"{where}: model file version {payload.get('version')}, this rigpose reads {VERSION}")
    config, joints = _architecture(where, payload["config"])
    model = Lifter(config, **joints)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, get_skeleton(payload["skeleton"]), dict(payload["meta"])


def _architecture(path: str | os.PathLike[str], stored: dict[str, Any]) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, the lifter's keyword arguments) from a file's "config" dict."""
    cfg = dict(stored)
    joints = {"num_joints": int(cfg.pop("num_joints")), "root_joints": tuple(cfg.pop("root_joints"))}
    extra = cfg.pop("extra", {}) or {}
    unknown = sorted(set(extra) - set(EXTRA_FIELDS))
    if unknown:
        raise ValueError(f"{path}: model config has 'extra' settings this rigpose does not know: {unknown}")
    cfg.update({**EXTRA_FIELDS, **extra})
    try:
        return ModelConfig.model_validate(cfg), joints
    except ValueError as e:
        raise ValueError(f"{path}: model config {cfg}: {e}") from None
