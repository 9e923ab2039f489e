"""A tiny random-weight Gemma-2 GGUF, so tests exercise real llama.cpp without downloading 1.6 GB.

The builder is the product's own (server.bench.gemma_gguf, which also makes the full-size bench model);
this module keeps the names the tests import.
"""

from __future__ import annotations

import pathlib

from server.bench.gemma_gguf import TINY, write_gemma2_gguf
from server.bench.gemma_vocab import (
    BOS_ID,
    END_OF_TURN_ID,
    EOS_ID,
    GEMMA2_CHAT_TEMPLATE,
    PAD_ID,
    START_OF_TURN_ID,
    UNK_ID,
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
    "build_untokenizable_gguf",
]


def build_tiny_gemma2_gguf(
    path: pathlib.Path, *, favour_end_of_turn: bool = False, seed: int = 0
) -> pathlib.Path:
    """Write the tiny model to `path` and return it; the same arguments always give the same bytes.

    `favour_end_of_turn` makes `<end_of_turn>` by far the likeliest next token, so a test can see
    generation stop at the end of the model's turn instead of running to max_tokens.
    """
    return write_gemma2_gguf(path, TINY, favour_end_of_turn=favour_end_of_turn, seed=seed)


def build_untokenizable_gguf(path: pathlib.Path) -> pathlib.Path:
    """The tiny model with its byte tokens and its newline taken out of the vocabulary: a file that loads
    but crashes llama.cpp natively on every CPU.

    Every chat prompt holds a newline (Gemma's template puts one after each role). With no piece and no
    byte token for it, llama.cpp's tokenizer throws a C++ exception through its C API, and the process
    aborts (SIGABRT): the same kind of death as the AMX kernels' SIGSEGV, which only some CPUs show.
    """
    import gguf
    import numpy as np

    source = build_tiny_gemma2_gguf(path.with_name(f"{path.stem}.source.gguf"))
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(path), reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        if name == "tokenizer.ggml.tokens":
            value = [f"<gone{i}>" if t.startswith("<0x") or t == "\n" else t for i, t in enumerate(value)]
        kind = field.types[0]
        writer.add_key_value(
            name, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        )
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    source.unlink()
    return path
