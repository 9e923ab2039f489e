"""A tiny random-weight Gemma-2 GGUF, so tests exercise real llama.cpp without downloading 1.6 GB.

The file has Gemma-2's architecture, hyperparameter keys, tensor set, control tokens and real chat
template; only the sizes are tiny and the weights random. One embedding dimension is reserved as a
"token class" channel so that sampling favours whole words over byte tokens and the text that comes
out is made of words -- enough for sentence splitting and streaming to have something to chew on.
"""

from __future__ import annotations

import logging
import pathlib

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
_WORDS = _WORD_TEXT.split()

_N_EMBD = 64
_N_HEAD = 2
_N_HEAD_KV = 1
_HEAD_DIM = 32
_N_FF = 128
_N_LAYER = 2
_N_CTX = 512
_SLIDING_WINDOW = 256

# Strength of the "token class" channel (dimension 0) and of each block's contribution; chosen so
# that words win over bytes and control tokens, while the blocks add enough randomness that the
# model does not just repeat its last token (tied embeddings otherwise favour exactly that).
_CLASS_STRENGTH = 1.5
_CLASS_OUTPUT_GAIN = 20.0
_BLOCK_GAIN = 6.0
_EMBEDDING_STD = 0.15
_MATRIX_GAIN = 0.6
_PUNCTUATION_CLASS = 0.5
_CHAR_CLASS = 0.1


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = list(_SPECIAL)
    types = [gguf.TokenType.CONTROL] * len(_SPECIAL)
    types[UNK_ID] = gguf.TokenType.UNKNOWN  # as in Google's Gemma vocab
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = list(dict.fromkeys([*_CHARS, *(f"▁{word}" for word in _WORDS)]))
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # SPM merges prefer higher scores: longer pieces first, single characters last.
    scores = [0.0] * (len(_SPECIAL) + 256) + [float(len(piece)) - 100.0 for piece in pieces]
    return tokens, scores, [int(t) for t in types]


def _token_class(token: str, kind: int) -> float:
    """+1 for whole words, a little less for punctuation, -1 for everything a reader would not want."""
    if kind != gguf.TokenType.NORMAL:
        return -1.0
    if token.startswith("▁") and len(token) > 1:
        return 1.0
    return _PUNCTUATION_CLASS if token in ".,!?\n" else _CHAR_CLASS


def build_tiny_gemma2_gguf(
    path: pathlib.Path, *, favour_end_of_turn: bool = False, seed: int = 0
) -> pathlib.Path:
    """Write the tiny model to `path` and return it; the same arguments always give the same bytes.

    `favour_end_of_turn` makes `<end_of_turn>` by far the likeliest next token, so a test can see
    generation stop at the end of the model's turn instead of running to max_tokens.
    """
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA2])
    writer.add_name("tadbot-tiny-gemma2-test")
    writer.add_context_length(_N_CTX)
    writer.add_embedding_length(_N_EMBD)
    writer.add_block_count(_N_LAYER)
    writer.add_feed_forward_length(_N_FF)
    writer.add_head_count(_N_HEAD)
    writer.add_head_count_kv(_N_HEAD_KV)
    writer.add_key_length(_HEAD_DIM)
    writer.add_value_length(_HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(_SLIDING_WINDOW)
    writer.add_attn_logit_softcapping(50.0)
    writer.add_final_logit_softcapping(30.0)
    writer.add_rope_freq_base(10000.0)
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

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * (_MATRIX_GAIN / np.sqrt(cols))).astype(np.float16)

    def norm(gain: float, class_gain: float) -> np.ndarray:
        weight = np.full(_N_EMBD, gain, dtype=np.float32)
        weight[0] = class_gain
        return weight

    embeddings = rng.standard_normal((n_vocab, _N_EMBD)) * _EMBEDDING_STD
    token_class = np.array([_token_class(token, kind) for token, kind in zip(tokens, types, strict=True)])
    if favour_end_of_turn:
        token_class[END_OF_TURN_ID] = 3.0
    embeddings[:, 0] = token_class * _CLASS_STRENGTH
    writer.add_tensor("token_embd.weight", embeddings.astype(np.float16))
    writer.add_tensor("output_norm.weight", norm(1.0, _CLASS_OUTPUT_GAIN))

    q_dim, kv_dim = _N_HEAD * _HEAD_DIM, _N_HEAD_KV * _HEAD_DIM
    for layer in range(_N_LAYER):
        blk = f"blk.{layer}"
        writer.add_tensor(f"{blk}.attn_norm.weight", norm(1.0, 1.0))
        writer.add_tensor(f"{blk}.attn_q.weight", matrix(q_dim, _N_EMBD))
        writer.add_tensor(f"{blk}.attn_k.weight", matrix(kv_dim, _N_EMBD))
        writer.add_tensor(f"{blk}.attn_v.weight", matrix(kv_dim, _N_EMBD))
        writer.add_tensor(f"{blk}.attn_output.weight", matrix(_N_EMBD, q_dim))
        # The class channel must pass through the blocks untouched, so their outputs skip it.
        writer.add_tensor(f"{blk}.post_attention_norm.weight", norm(_BLOCK_GAIN, 0.0))
        writer.add_tensor(f"{blk}.ffn_norm.weight", norm(1.0, 1.0))
        writer.add_tensor(f"{blk}.ffn_gate.weight", matrix(_N_FF, _N_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.weight", matrix(_N_FF, _N_EMBD))
        writer.add_tensor(f"{blk}.ffn_down.weight", matrix(_N_EMBD, _N_FF))
        writer.add_tensor(f"{blk}.post_ffw_norm.weight", norm(_BLOCK_GAIN, 0.0))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _LOGGER.debug("Wrote tiny Gemma-2 GGUF %s (%d tokens, %d bytes)", path, n_vocab, path.stat().st_size)
    return path
