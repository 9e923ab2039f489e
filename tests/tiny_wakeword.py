"""Tiny stand-ins for openWakeWord's three ONNX models, built during the test run so tests never download.

They take and give the shapes the real models do, so `device.wakeword` runs them exactly as it runs those:

- `melspectrogram.onnx`: [1, samples] -> [1, 1, frames, 32], frames = 1 + (samples - 512) // 160. Each frame
  is the log power of 32 bands, 125 Hz apart, in a Hann-windowed 512-sample window: a plain spectrogram.
- `embedding_model.onnx`: [batch, 76, 32, 1] -> [batch, 1, 1, 96]: the window's mean band powers, three times.
- the word model: [1, 16, 96] -> [1, 1]: a sigmoid of how far the band at `wake_hz` stands above the other
  bands over the 16 embeddings (about two seconds), so a loud tone at `wake_hz` "says the wake word", and
  silence, hiss or a tone elsewhere does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import GraphProto

WAKE_HZ = 1000.0
"""The wake word's pitch: band 7 of the stand-in spectrogram."""
WORD = "hey_tadbot_v0.1"
"""The stand-in word model's file name, without .onnx: `wake_word = "hey_tadbot"` finds it."""

_OPSET = 13
_IR_VERSION = 8  # Pinned: newer onnx writes IR versions that older onnxruntime wheels refuse to load.
_BANDS = 32
_BAND_HZ = 125.0
_WINDOW = 512
_HOP = 160
_GAIN = 2.0
"""Sigmoid slope per unit of band contrast (openWakeWord's units: a tenth of the log power in dB)."""
_CONTRAST = 3.0
"""Band contrast that scores 0.5: a tone at -6 dBFS reaches about 7 once it fills the context."""


def _save(graph: GraphProto, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="tadbot-tests"
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _melspectrogram(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    n = np.arange(_WINDOW)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / _WINDOW)
    freqs = _BAND_HZ * (np.arange(_BANDS) + 1)
    phase = 2 * np.pi * freqs[:, None] * n[None, :] / 16_000
    kernels = np.concatenate([hann * np.cos(phase), hann * np.sin(phase)])[:, None, :].astype(np.float32)
    constants: dict[str, np.ndarray] = {
        "kernels": kernels,
        "shape_1d": np.array([1, 1, -1], dtype=np.int64),
        "shape_pairs": np.array([1, 2, _BANDS, -1], dtype=np.int64),
        "pair_axis": np.array([1], dtype=np.int64),
        "one": np.array(1.0, dtype=np.float32),
        "db": np.array(10 / np.log(10), dtype=np.float32),
        "channel_axis": np.array([1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Reshape", ["input", "shape_1d"], ["audio"]),
        helper.make_node("Conv", ["audio", "kernels"], ["parts"], strides=[_HOP]),
        helper.make_node("Mul", ["parts", "parts"], ["squares"]),
        helper.make_node("Reshape", ["squares", "shape_pairs"], ["pairs"]),
        helper.make_node("ReduceSum", ["pairs", "pair_axis"], ["power"], keepdims=0),
        helper.make_node("Add", ["power", "one"], ["power_1"]),
        helper.make_node("Log", ["power_1"], ["log_power"]),
        helper.make_node("Mul", ["log_power", "db"], ["decibels"]),
        helper.make_node("Transpose", ["decibels"], ["frames"], perm=[0, 2, 1]),
        helper.make_node("Unsqueeze", ["frames", "channel_axis"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_melspectrogram",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "frames", _BANDS])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    _save(graph, path)


def _embedding(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    shape = np.array([-1, 1, 1, _BANDS], dtype=np.int64)
    nodes = [
        helper.make_node("ReduceMean", ["input_1"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["bands"]),
        helper.make_node("Concat", ["bands", "bands", "bands"], ["output"], axis=3),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_embedding",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["batch", 76, _BANDS, 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 1, 3 * _BANDS])],
        initializer=[numpy_helper.from_array(shape, "shape")],
    )
    _save(graph, path)


def _word(path: Path, wake_hz: float, frames: int) -> None:
    from onnx import TensorProto, helper, numpy_helper

    band = round(wake_hz / _BAND_HZ) - 1
    weights = np.zeros((3 * _BANDS, 1), dtype=np.float32)
    weights[:_BANDS, 0] = -_GAIN / (_BANDS - 1)
    weights[band, 0] = _GAIN
    constants = {"weights": weights, "bias": np.array([[-_GAIN * _CONTRAST]], dtype=np.float32)}
    nodes = [
        helper.make_node("ReduceMean", ["x.1"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["contrast"]),
        helper.make_node("Add", ["contrast", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_word",
        [helper.make_tensor_value_info("x.1", TensorProto.FLOAT, [1, frames, 3 * _BANDS])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    _save(graph, path)


def build_tiny_wakeword(
    directory: Path, *, word: str = WORD, wake_hz: float = WAKE_HZ, frames: int = 16
) -> Path:
    """Write the three models into `directory`, laid out as `tadbot models pull wakeword` leaves them.

    Same arguments, same bytes. Returns the word model's path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _melspectrogram(directory / "melspectrogram.onnx")
    _embedding(directory / "embedding_model.onnx")
    _word(directory / f"{word}.onnx", wake_hz, frames)
    return directory / f"{word}.onnx"
