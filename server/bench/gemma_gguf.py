"""Random-weight Gemma-2 GGUF files: a tiny one for the tests, a full-size Gemma-2-2B for the LLM bench.

Both come from one builder. The file has Gemma-2's architecture, hyperparameter keys, tensor set,
control tokens and real chat template; only the weights are random, and the sizes are whatever the
spec says. At full size llama.cpp does exactly the work the real model costs per token, so the bench
can time this machine without downloading 1.7 GB of weights whose answers it does not need.

One embedding dimension is reserved as a "token class" channel so that sampling favours whole words
over byte, control and filler tokens, and the text that comes out is made of words -- enough for
sentence splitting and streaming to have something to chew on. The tokenizer, with its English
dictionary, is in `server.bench.gemma_vocab`; the random weights are in `server.bench.gemma_weights`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.bench.gemma_vocab import (
    BOS_ID,
    END_OF_TURN_ID,
    EOS_ID,
    GEMMA2_CHAT_TEMPLATE,
    N_REAL_TOKENS,
    PAD_ID,
    UNK_ID,
    english_words,
    vocabulary,
)
from server.bench.gemma_weights import tensor_plan
from server.errors import ModelError
from server.models.quantize import Progress, llama_log, quantize_q4_k_m

if TYPE_CHECKING:
    import gguf

_LOGGER = logging.getLogger(__name__)

_CHECKED_KEYS = (
    "general.architecture",
    "general.name",
    "general.file_type",
    "gemma2.block_count",
    "gemma2.embedding_length",
)


@dataclass(frozen=True)
class GemmaSpec:
    """A Gemma-2 model's hyperparameters, and the scales of its random weights."""

    name: str
    """general.name in the file; also names the bench's cached file."""
    n_layer: int
    """Transformer blocks."""
    n_embd: int
    """Hidden size."""
    n_ff: int
    """Feed-forward hidden size."""
    n_head: int
    """Query heads."""
    n_head_kv: int
    """Key/value heads (grouped-query attention)."""
    head_dim: int
    """Width of each head, for queries, keys and values alike."""
    n_ctx: int
    """Context length the model was trained for."""
    sliding_window: int
    """Span of the local-attention layers (every other layer in Gemma-2)."""
    n_vocab: int | None = None
    """Vocabulary size: the real words padded with unused filler tokens; None for the real words alone."""
    attn_logit_softcap: float = 50.0
    """Gemma-2 squashes attention scores into (-50, 50) with tanh."""
    final_logit_softcap: float = 30.0
    """...and the output logits into (-30, 30)."""
    rms_eps: float = 1e-6
    rope_freq_base: float = 10000.0
    embedding_std: float = 0.15
    """Spread of the random embedding rows. With tied embeddings each token also votes for itself, by
    about sqrt(n_embd) * n_embd * std**2 / rms(residual) in the logits; that must stay well under the class
    channel's pull, or the model repeats its last token (a newline, forever)."""
    class_strength: float = 1.5
    """Value of the token class channel (embedding dimension 0) for a whole word."""
    class_output_gain: float = 20.0
    """Final norm's gain on the class channel: how strongly the next token's class follows this one's."""
    block_gain: float = 6.0
    """Post-norm gain of each block: enough randomness that the model does not repeat its last token
    (tied embeddings otherwise favour exactly that)."""
    matrix_gain: float = 0.6
    """Spread of the projection matrices, relative to 1/sqrt(fan-in)."""

    def __post_init__(self) -> None:
        if min(self.n_layer, self.n_embd, self.n_ff, self.n_head, self.n_head_kv, self.head_dim) < 1:
            raise ValueError(f"{self.name}: every size must be at least 1")
        if self.n_head % self.n_head_kv:
            raise ValueError(f"{self.name}: n_head {self.n_head} is not a multiple of n_head_kv")
        if self.n_vocab is not None and self.n_vocab < N_REAL_TOKENS:
            raise ValueError(f"{self.name}: n_vocab must be at least {N_REAL_TOKENS}, the real tokens")

    @property
    def vocab_size(self) -> int:
        return self.n_vocab or N_REAL_TOKENS


TINY = GemmaSpec(
    name="tadbot-tiny-gemma2-test",
    n_layer=2,
    n_embd=64,
    n_ff=128,
    n_head=2,
    n_head_kv=1,
    head_dim=32,
    n_ctx=512,
    sliding_window=256,
)
"""Small enough to build in milliseconds for every test run."""

GEMMA2_2B = GemmaSpec(
    name="gemma-2-2b-random-en",
    n_layer=26,
    n_embd=2304,
    n_ff=9216,
    n_head=8,
    n_head_kv=4,
    head_dim=256,
    n_ctx=8192,
    sliding_window=4096,
    n_vocab=256000,
    embedding_std=0.02,  # 0.15 here makes a token's vote for itself ~57 logits, the class channel's ~50
)
"""Gemma-2-2B's real shape: per token, llama.cpp does the work the real model does."""


def write_gemma2_gguf(
    path: Path,
    spec: GemmaSpec,
    *,
    favour_end_of_turn: bool = False,
    seed: int = 0,
    words: Sequence[str] = (),
    progress: Progress | None = None,
) -> Path:
    """Write an F16 model (norms in F32, as llama.cpp wants them) to `path` and return it.

    `words` are dictionary entries to tokenize English with (see `server.bench.gemma_vocab`): whole words, and
    WordPiece continuations written "##ing".

    Tensors are made and written one at a time, so memory stays near the largest tensor (1.2 GB for
    Gemma-2-2B's embeddings) rather than the file's size. The same arguments always give the same bytes.
    `favour_end_of_turn` makes `<end_of_turn>` by far the likeliest next token, so a test can see
    generation stop at the end of the model's turn instead of running to max_tokens.
    """
    import gguf
    import numpy as np

    tokens, scores, types, classes = vocabulary(spec, words)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA2])
    _add_metadata(writer, spec, tokens, scores, types)
    token_class = np.array(classes)
    if favour_end_of_turn:
        token_class[END_OF_TURN_ID] = 3.0
    plan = tensor_plan(spec, np.random.default_rng(seed), token_class)
    sizes = [math.prod(shape) * np.dtype(dtype).itemsize for _, shape, dtype, _ in plan]
    for (name, shape, dtype, _), nbytes in zip(plan, sizes, strict=True):
        writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
    total, written = sum(sizes), 0
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, _, _, make in plan:
            tensor = make()
            writer.write_tensor_data(tensor)
            written += tensor.nbytes
            if progress:
                progress("write", written, total)
    finally:
        writer.close()
    _LOGGER.debug("Wrote Gemma-2 GGUF %s (%s, %d tokens, %d bytes)", path, spec.name, len(tokens), written)
    return path


def bench_gguf_path(models_dir: Path, spec: GemmaSpec = GEMMA2_2B) -> Path:
    """Where `ensure_bench_gemma` keeps the quantised model for `spec`."""
    return models_dir / "bench" / f"{spec.name}-q4_k_m.gguf"


def ensure_bench_gemma(
    models_dir: Path,
    progress: Progress | None = None,
    *,
    spec: GemmaSpec = GEMMA2_2B,
    n_threads: int = 0,
    words: Sequence[str] | None = None,
) -> Path:
    """The Q4_K_M model for `spec` under `models_dir/bench/`, built once (minutes at full size; 0 threads
    quantise on every core) and reused after. Its dictionary is `words`, by default the English vocabulary
    of the embedder the server uses.

    The F16 intermediate and the quantised file are written under temporary names beside the target and
    the target appears only by a rename, so a killed build never leaves a file that looks finished.
    """
    target = bench_gguf_path(models_dir, spec)
    if target.is_file() and is_bench_gguf(target, spec):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    f16, part = target.with_name(target.name + ".f16.part"), target.with_name(target.name + ".part")
    _LOGGER.info("bench model %s: building %s", spec.name, target)
    started = time.monotonic()
    try:
        write_gemma2_gguf(
            f16, spec, words=english_words(models_dir) if words is None else words, progress=progress
        )
        written = time.monotonic()
        quantize_q4_k_m(f16, part, n_threads=n_threads, progress=progress)
        os.replace(part, target)
    except OSError as exc:
        raise ModelError(
            "bench_model_failed",
            f"could not build {target}: {exc}. Building needs free space for an F16 copy of the model "
            "beside the result: 7 GB in all for Gemma-2-2B.",
        ) from exc
    finally:
        f16.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    _LOGGER.info(
        "bench model %s: built %s, %d bytes (write %.1f s, quantise %.1f s)",
        spec.name,
        target,
        target.stat().st_size,
        written - started,
        time.monotonic() - written,
    )
    return target


def is_bench_gguf(path: Path, spec: GemmaSpec) -> bool:
    """Whether llama.cpp accepts `path` as a whole Q4_K_M file of `spec`.

    Loading only the vocabulary takes under a second, and llama.cpp still checks that every tensor's data
    lies inside the file, so a truncated file fails; gguf's reader takes 20 s over 256,000 tokens.
    """
    import llama_cpp

    try:
        with llama_log():
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except ValueError as exc:
        _LOGGER.warning("bench model %s is unreadable (%s); rebuilding it", path, exc)
        return False
    found = [llm.metadata.get(key) for key in _CHECKED_KEYS] + [str(llm.n_vocab())]
    llm.close()
    expected = [
        "gemma2",
        spec.name,
        str(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M),
        str(spec.n_layer),
        str(spec.n_embd),
        str(spec.vocab_size),
    ]
    if found != expected:
        _LOGGER.warning("bench model %s is not %s (found %s); rebuilding it", path, spec.name, found)
    return found == expected


def _add_metadata(
    writer: gguf.GGUFWriter, spec: GemmaSpec, tokens: list[str], scores: list[float], types: list[int]
) -> None:
    import gguf

    writer.add_name(spec.name)
    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_sliding_window(spec.sliding_window)
    writer.add_attn_logit_softcapping(spec.attn_logit_softcap)
    writer.add_final_logit_softcapping(spec.final_logit_softcap)
    writer.add_rope_freq_base(spec.rope_freq_base)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_eot_token_id(END_OF_TURN_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(GEMMA2_CHAT_TEMPLATE)
