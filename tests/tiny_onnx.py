"""A tiny deterministic ONNX emotion classifier, built during the test run so tests never download a model."""

from __future__ import annotations

import json
from pathlib import Path

FER2013_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER2013's output order, the one most public FER models keep."""

_OPSET = 13
_IR_VERSION = 8  # Pinned: newer onnx writes IR versions that older onnxruntime wheels refuse to load.


def build_tiny_fer_onnx(
    path: Path,
    *,
    color: str = "gray",
    layout: str = "NCHW",
    size: int = 48,
    output: str = "logits",
    seed: int = 0,
) -> Path:
    """Write a Flatten + Gemm classifier (seeded random weights, FER2013 labels) and its manifest beside it.

    Same arguments, same bytes: tests may compare readings across builds. The weights are random, so the
    readings mean nothing; the tests check plumbing, shapes and contracts, not accuracy.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = 1 if color == "gray" else 3
    shape = [1, channels, size, size] if layout == "NCHW" else [1, size, size, channels]
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 0.05, size=(channels * size * size, len(FER2013_LABELS))).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=len(FER2013_LABELS)).astype(np.float32)

    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weights", "bias"], ["logits"]),
    ]
    if output == "probs":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes,
        "tiny_fer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, len(FER2013_LABELS)])],
        initializer=[numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="tadbot-tests"
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    manifest = {
        "labels": list(FER2013_LABELS),
        "input_size": [size, size],
        "color": color,
        "layout": layout,
        "normalize": {"scale": 1 / 255, "mean": [0.0], "std": [1.0]},
        "output": output,
        "aligned": False,
        "source": f"tests/tiny_onnx.py, random weights, seed {seed}",
        "license": "MIT",
    }
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path


def rewrite_manifest(path: Path, **changes: object) -> None:
    """Change manifest keys in place; a value of None removes the key."""
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest), encoding="utf-8")
