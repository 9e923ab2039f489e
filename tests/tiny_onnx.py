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


ALIGN_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
"""The five-point face template (eyes, nose tip, mouth corners) of 112x112 aligned crops."""

YUNET_FACE_SIDE = 96
"""The side of every face the tiny YuNet reports, in input pixels."""


def build_tiny_yunet_onnx(path: Path) -> Path:
    """Write a stand-in for YuNet that `cv2.FaceDetectorYN` runs: it "finds" bright 96x96 squares.

    It has YuNet's input and its twelve outputs (cls/obj/bbox/kps at strides 8, 16 and 32), so OpenCV's own
    decoding and NMS run on it. Only stride 32 answers: a 3x3-cell mean of brightness scores each cell, so a
    white square laid on the 32-pixel grid peaks at its centre cell with score 1 and its edge neighbours score
    2/3. Every face is a 96x96 box centred on its cell, with the five landmarks where ALIGN_TEMPLATE_112 puts
    them, scaled to the box.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cells = YUNET_FACE_SIDE / 32
    box = np.array([0.5, 0.5, np.log(cells), np.log(cells)], np.float32)
    kps = np.array(
        [offset for point in ALIGN_TEMPLATE_112 for offset in (-1 + p * cells / 112 for p in point)],
        np.float32,
    )
    initializers = [
        numpy_helper.from_array(np.array([1, -1, 1], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "to_unit"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(box, "box"),
        numpy_helper.from_array(kps, "kps"),
    ]
    nodes = [helper.make_node("ReduceMean", ["input"], ["gray"], axes=[1], keepdims=1)]
    for stride in (8, 16, 32):
        if stride == 32:
            pool = helper.make_node(
                "AveragePool",
                ["gray"],
                [f"pool_{stride}"],
                kernel_shape=[3 * stride, 3 * stride],
                strides=[stride, stride],
                pads=[stride] * 4,
                count_include_pad=1,
            )
            scale = helper.make_node("Mul", [f"pool_{stride}", "to_unit"], [f"map_{stride}"])
        else:
            pool = helper.make_node(
                "AveragePool", ["gray"], [f"pool_{stride}"], kernel_shape=[stride] * 2, strides=[stride] * 2
            )
            scale = helper.make_node("Mul", [f"pool_{stride}", "zero"], [f"map_{stride}"])
        nodes += [
            pool,
            scale,
            helper.make_node("Reshape", [f"map_{stride}", "flat_shape"], [f"cls_{stride}"]),
            helper.make_node("Identity", [f"cls_{stride}"], [f"obj_{stride}"]),
            helper.make_node("Mul", [f"cls_{stride}", "zero"], [f"none_{stride}"]),
            helper.make_node("Add", [f"none_{stride}", "box"], [f"bbox_{stride}"]),
            helper.make_node("Add", [f"none_{stride}", "kps"], [f"kps_{stride}"]),
        ]
    outputs = [
        helper.make_tensor_value_info(f"{name}_{stride}", TensorProto.FLOAT, [1, f"n{stride}", width])
        for name, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
        for stride in (8, 16, 32)
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="tadbot-tests"
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
