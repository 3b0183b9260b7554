"""Export a trained lifter's network to ONNX, and run such a file with ONNX Runtime (CPU).

The ONNX graph is `Lifter.forward` alone, in eval mode, with a dynamic batch axis. Shape letters: B batch (one view
each), J joints.

| graph input  | shape     | meaning                                                                            |
|--------------|-----------|------------------------------------------------------------------------------------|
| xy           | [B, J, 2] | undistorted normalised image coordinates: pixels undistorted and multiplied by K^-1 |
|              |           | (`rigpose.geometry.undistort`); NaN allowed where the joint is missing              |
| scores       | [B, J]    | detector confidences in [0, 1]; 0 = missing joint (its xy is ignored)               |

Graph outputs are `LiftOutput`'s fields, in camera-frame metres: X [B, J, 3], rel [B, J, 3] (root-relative),
root [B, 3], xy_used [B, J, 2] (LiftOutput.xy, renamed because ONNX names must be unique and `xy` is the input),
xy_pred [B, J, 2]. `onnx_lift` returns them under LiftOutput's own names (`xy`, not `xy_used`).

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. With torch 2.13 (pinned <2.14) it traces
this graph-only MLP exactly (no data-dependent control flow), in ~0.2 s, needing only `onnx`; the torch.export-based
exporter needs `onnxscript` as well and took ~5-30 s per export here for the same graph and the same numbers.
Its deprecation warning is silenced below; switching is one flag (`dynamo=True`, `dynamic_shapes=`) when torch
drops it.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from rigpose.model.checkpoint import architecture
from rigpose.model.lifter import Lifter, LiftOutput
from rigpose.skeleton import Skeleton
from rigpose.storage import url_to_fs, write_bytes_atomic

FORMAT = "rigpose-lifter-onnx"
VERSION = 1
INPUT_NAMES = ("xy", "scores")
OUTPUT_NAMES = ("X", "rel", "root", "xy_used", "xy_pred")  # LiftOutput's fields, `xy` renamed (see above)
DEFAULT_OPSET = 17  # first opset with a native LayerNormalization; run by every current ONNX runtime
MAX_OPSET = 20  # the TorchScript exporter's newest
MIN_OPSET = 17

INPUT_CONTRACT = (
    "Inputs: xy [B, J, 2] float32 undistorted normalised image coordinates of one view's 2D keypoints (pixels "
    "undistorted and multiplied by K^-1, not pixels), NaN allowed where missing; scores [B, J] float32 detector "
    "confidences in [0, 1], 0 = missing joint (its xy is ignored). Outputs, camera frame, metres: X [B, J, 3]; "
    "rel [B, J, 3] = X - root; root [B, 3] (mean of the root joints); xy_used [B, J, 2] the 2D placed per joint "
    "(input where visible, predicted where missing); xy_pred [B, J, 2] the network's own 2D estimate."
)
_DOCS = {
    "xy": "[B, J, 2] undistorted normalised image coordinates (K^-1 applied); NaN allowed where scores is 0",
    "scores": "[B, J] confidences in [0, 1]; 0 = missing joint",
    "X": "[B, J, 3] joints in the camera frame, metres",
    "rel": "[B, J, 3] X minus root, metres",
    "root": "[B, 3] root (mean of the root joints) in the camera frame, metres",
    "xy_used": "[B, J, 2] normalised 2D per joint: the input where visible, xy_pred where missing",
    "xy_pred": "[B, J, 2] the network's own normalised 2D estimate",
}


def export_onnx(model: Lifter, path: str | os.PathLike[str], *, skeleton: Skeleton | None = None,
                opset: int | None = None) -> Path:
    """Write `model` (unwrapped from DDP; not modified) to the local file `path` (*.onnx) atomically; its Path.

    The graph has a dynamic batch axis, passes `onnx.checker` (full check) and carries the input contract as its
    doc string plus metadata_props (format, lifter config, and the skeleton's name, joint names, parents, root
    joints when `skeleton` is given). A failure leaves `path` as it was (no partial file).
    """
    model = getattr(model, "module", model)
    if not isinstance(model, Lifter):
        raise TypeError(f"model: expected a rigpose Lifter, got {type(model).__name__}")
    out = _check_path(path)
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    J = model.num_joints
    if skeleton is not None and skeleton.num_joints != J:
        raise ValueError(f"skeleton {skeleton.name!r} has {skeleton.num_joints} joints, the model {J}")
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"model has non-finite parameters ({', '.join(bad[:3])}...): refusing to export")

    net = copy.deepcopy(model).to("cpu", torch.float32).eval()  # the caller's model keeps its device and mode
    proto = _trace(net, opset)
    _describe(proto, model, skeleton, opset)
    onnx.checker.check_model(proto, full_check=True)
    fs, p = url_to_fs(out)
    write_bytes_atomic(fs, p, proto.SerializeToString())
    return out


def onnx_lift(path: str | os.PathLike[str], xy: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported lifter with ONNX Runtime (CPU): xy [B, J, 2] normalised coords, scores [B, J].

    Returns float32 arrays under LiftOutput's field names: X, rel, root, xy, xy_pred (see the module docstring).
    Opens a new session per call: for repeated use keep an `onnxruntime.InferenceSession` yourself.
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such ONNX file")
    try:
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types for unreadable models
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    inputs = {i.name: i.shape for i in session.get_inputs()}
    if set(inputs) != set(INPUT_NAMES):
        raise ValueError(f"{path}: not a rigpose lifter (inputs {sorted(inputs)}, expected {list(INPUT_NAMES)})")
    J = inputs["xy"][1]
    xy = np.asarray(xy, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if xy.ndim != 3 or xy.shape[1:] != (J, 2):
        raise ValueError(f"xy: expected [B, {J}, 2], got {xy.shape}")
    if scores.shape != xy.shape[:2]:
        raise ValueError(f"scores: expected {xy.shape[:2]}, got {scores.shape}")
    outputs = session.run(list(OUTPUT_NAMES), {"xy": xy, "scores": scores})
    return dict(zip(LiftOutput._fields, outputs, strict=True))


def _check_path(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path: expected str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if "://" in text:
        raise ValueError(f"{text}: export writes local files only (copy the file to object storage afterwards)")
    out = Path(text)
    if out.suffix != ".onnx":
        raise ValueError(f"{text}: the ONNX file name must end in .onnx")
    if out.is_dir():
        raise ValueError(f"{text}: is a directory, expected an .onnx file path")
    return out


def _trace(net: Lifter, opset: int) -> onnx.ModelProto:
    """Trace `net` (CPU, eval) into an ONNX model in memory, batch axis named B."""
    J = net.num_joints
    # any finite example works (the graph has no value-dependent branches); B = 2 so no size-1 axis is specialised
    xy_BJ2 = torch.linspace(-0.2, 0.2, 2 * J * 2).reshape(2, J, 2)
    scores_BJ = torch.ones(2, J)
    batch = {0: "B"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Known and harmless here: the exporter's own deprecation notice (see the module docstring), and the tracer
        # flagging Lifter.forward's input shape checks, which only read the static J and 2 axes.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"rigpose\.model\.lifter")
        torch.onnx.export(
            net, (xy_BJ2, scores_BJ), buf, dynamo=False, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch for name in INPUT_NAMES + OUTPUT_NAMES},
        )
    return onnx.load_model_from_string(buf.getvalue())


def _describe(proto: onnx.ModelProto, model: Lifter, skeleton: Skeleton | None, opset: int) -> None:
    """Doc strings and metadata_props: the input contract, the lifter config and the skeleton."""
    proto.producer_name = "rigpose"
    proto.doc_string = INPUT_CONTRACT
    proto.graph.doc_string = INPUT_CONTRACT
    for value in [*proto.graph.input, *proto.graph.output]:
        value.doc_string = _DOCS[value.name]
    meta = {
        "rigpose.format": FORMAT,
        "rigpose.format_version": str(VERSION),
        "rigpose.input_contract": INPUT_CONTRACT,
        "rigpose.opset": str(opset),
        "rigpose.lifter_config": json.dumps(architecture(model)),
        "rigpose.num_joints": str(model.num_joints),
        "rigpose.output": model.config.output,
        "rigpose.root_joints": json.dumps(list(model.root_joints)),
    }
    if skeleton is not None:
        meta |= {
            "rigpose.skeleton": skeleton.name,
            "rigpose.joint_names": json.dumps(list(skeleton.joint_names)),
            "rigpose.parents": json.dumps(list(skeleton.parents)),
            "rigpose.skeleton_root_joints": json.dumps(list(skeleton.root_joints)),
        }
    onnx.helper.set_model_props(proto, meta)
