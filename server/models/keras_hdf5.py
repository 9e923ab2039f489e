"""Reading a Keras 2 functional model from .hdf5: the graph from the file's `model_config` JSON, the weights
from `model_weights/<layer>/...`, the layers in topological order from the input, each checked for what the
ONNX converter and the NumPy reference support.

Anything unsupported, and any malformed file, raises `ModelError("convert_failed", ...)`. h5py is imported
inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from server.errors import ModelError

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
ACTIVATIONS = {
    "linear": "Identity",
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "softmax": "Softmax",
}


@dataclass
class KerasLayer:
    """One layer as the file describes it: its Keras class, config, the layers feeding it and its weights."""

    name: str
    kind: str
    config: dict[str, Any]
    inputs: list[str]
    weights: dict[str, Array] = field(default_factory=dict)


@dataclass
class KerasModel:
    """The whole graph, ready to be walked layer by layer."""

    layers: list[KerasLayer]  # topological order, input layer first
    input_shape: tuple[int, int, int]  # H, W, C
    output: str


def convert_failed(source: Path, problem: str) -> ModelError:
    """The one error every conversion problem raises, naming the file."""
    return ModelError("convert_failed", f"{source}: {problem}")


def _inbound(source: Path, layer: dict[str, Any]) -> list[str]:
    """The names of the layers feeding `layer` (Keras 2 format: [[[name, node, tensor, kwargs], ...]])."""
    nodes = layer.get("inbound_nodes", [])
    if not nodes:
        return []
    if len(nodes) != 1 or not isinstance(nodes[0], list):
        raise convert_failed(
            source, f"layer {layer.get('name')} is shared or not in Keras 2 format: {nodes!r:.120}"
        )
    names = []
    for edge in nodes[0]:
        if not isinstance(edge, list) or len(edge) < 3 or edge[1:3] != [0, 0]:
            raise convert_failed(
                source, f"layer {layer.get('name')} has an unsupported inbound edge {edge!r:.120}"
            )
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
                raise convert_failed(source, f"layer {name} has two weights named {key}")
            found[key] = np.asarray(obj[()], dtype=np.float64)

    if name in group:
        group[name].visititems(visit)
    return found


def load_keras_hdf5(source: Path) -> KerasModel:
    """Read the graph and weights; the layers come back in topological order from the input."""
    import h5py

    try:
        fh = h5py.File(source, "r")
    except OSError as exc:
        raise convert_failed(source, f"not a readable HDF5 file ({exc})") from exc
    with fh:
        raw = fh.attrs.get("model_config")
        if raw is None:
            raise convert_failed(source, "no model_config attribute (weights-only file?)")
        try:
            config = json.loads(raw)
            if config["class_name"] not in ("Model", "Functional"):
                raise convert_failed(source, f"model class {config['class_name']} is not a functional model")
            specs = {str(spec["name"]): spec for spec in config["config"]["layers"]}
            inputs = [str(edge[0]) for edge in config["config"]["input_layers"]]
            outputs = [str(edge[0]) for edge in config["config"]["output_layers"]]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise convert_failed(source, f"malformed model_config ({exc!r})") from exc
        if len(inputs) != 1 or len(outputs) != 1:
            raise convert_failed(source, f"need one input and one output, found {inputs} and {outputs}")
        group = fh.get("model_weights", fh)  # save_weights() files keep layers at the root

        order: list[KerasLayer] = []
        state: dict[str, str] = {}

        def walk(name: str) -> None:  # depth-first from the output; each layer after its inputs
            if state.get(name) == "done":
                return
            if state.get(name) == "open":
                raise convert_failed(source, f"the graph has a cycle through layer {name}")
            spec = specs.get(name)
            if spec is None:
                raise convert_failed(source, f"an edge names layer {name}, which is not in the model")
            kind = str(spec.get("class_name"))
            if kind not in _SUPPORTED:
                raise convert_failed(source, f"layer {name} has unsupported type {kind}")
            state[name] = "open"
            feeds = _inbound(source, spec)
            for feed in feeds:
                walk(feed)
            weights = _read_weights(source, group, name)
            order.append(KerasLayer(name, kind, dict(spec.get("config", {})), feeds, weights))
            state[name] = "done"

        walk(outputs[0])
    first = order[0]
    shape = first.config.get("batch_input_shape") or first.config.get("batch_shape")
    if first.kind != "InputLayer" or first.name != inputs[0] or not shape or len(shape) != 4:
        raise convert_failed(source, f"the input must be one 4-D NHWC InputLayer, found {first.kind} {shape}")
    if not all(isinstance(dim, int) and dim > 0 for dim in shape[1:]):
        raise convert_failed(source, f"the input shape {shape} must have fixed height, width and channels")
    return KerasModel(order, (shape[1], shape[2], shape[3]), outputs[0])


def layer_weight(source: Path, layer: KerasLayer, key: str, default: Array | None = None) -> Array:
    """The layer's weight `key`, else `default`; a missing weight with no default fails the conversion."""
    if key in layer.weights:
        return layer.weights[key]
    if default is not None:
        return default
    raise convert_failed(source, f"layer {layer.name} ({layer.kind}) has no weight {key}")


def layer_pair(source: Path, layer: KerasLayer, key: str, default: Any = None) -> tuple[int, int]:
    """A (height, width) setting such as kernel_size or strides, which Keras may give as one int."""
    value = layer.config.get(key, default)
    if isinstance(value, int):
        return value, value
    if not isinstance(value, list) or len(value) != 2:
        raise convert_failed(source, f"layer {layer.name} ({layer.kind}) has a bad {key}: {value!r}")
    return int(value[0]), int(value[1])


def check_layer(source: Path, layer: KerasLayer) -> None:
    """Fail on settings the converter and the reference would otherwise get silently wrong."""
    cfg = layer.config
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise convert_failed(source, f"layer {layer.name} ({layer.kind}) is not channels_last")
    if cfg.get("padding", "valid") not in ("valid", "same"):
        raise convert_failed(source, f"layer {layer.name} ({layer.kind}) has padding {cfg.get('padding')}")
    convolves = layer.kind in ("Conv2D", "SeparableConv2D")
    if convolves and layer_pair(source, layer, "dilation_rate", 1) != (1, 1):
        raise convert_failed(
            source, f"layer {layer.name} ({layer.kind}) uses dilation, which is not supported"
        )
    if layer.kind == "BatchNormalization" and cfg.get("axis", -1) not in (-1, 3, [-1], [3]):
        raise convert_failed(
            source, f"layer {layer.name} (BatchNormalization) normalises axis {cfg.get('axis')}"
        )
    if cfg.get("activation", "linear") not in ACTIVATIONS:
        raise convert_failed(
            source, f"layer {layer.name} ({layer.kind}) has activation {cfg.get('activation')}"
        )
