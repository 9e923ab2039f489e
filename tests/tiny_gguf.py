"""A tiny random-weight Gemma-2 GGUF, so tests exercise real llama.cpp without downloading 1.6 GB.

The builder is the product's own (server.bench.gemma_gguf, which also makes the full-size bench model);
this module keeps the names the tests import.
"""

from __future__ import annotations

import pathlib

from server.bench.gemma_gguf import (
    BOS_ID,
    END_OF_TURN_ID,
    EOS_ID,
    GEMMA2_CHAT_TEMPLATE,
    PAD_ID,
    START_OF_TURN_ID,
    TINY,
    UNK_ID,
    write_gemma2_gguf,
)

__all__ = [
    "BOS_ID",
    "END_OF_TURN_ID",
    "EOS_ID",
    "GEMMA2_CHAT_TEMPLATE",
    "PAD_ID",
    "START_OF_TURN_ID",
    "UNK_ID",
    "build_tiny_gemma2_gguf",
]


def build_tiny_gemma2_gguf(
    path: pathlib.Path, *, favour_end_of_turn: bool = False, seed: int = 0
) -> pathlib.Path:
    """Write the tiny model to `path` and return it; the same arguments always give the same bytes.

    `favour_end_of_turn` makes `<end_of_turn>` by far the likeliest next token, so a test can see
    generation stop at the end of the model's turn instead of running to max_tokens.
    """
    return write_gemma2_gguf(path, TINY, favour_end_of_turn=favour_end_of_turn, seed=seed)
