"""Turn a stream of LLM text pieces into whole sentences, and make each one fit to be read aloud.

The device starts speaking as soon as the first sentence is complete, so the splitter works on a
stream: it only emits a sentence once the whitespace after its terminator has arrived, because
"Dr." or "2." could still turn out to be part of something longer.
"""

from __future__ import annotations

import logging
import re

_LOGGER = logging.getLogger(__name__)

# A run of terminators, any closing quotes, brackets or emphasis after it, then whitespace (not consumed),
# or a line break on its own: LLMs end list items and paragraphs with newlines, not full stops.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s)|\n")

# Words whose full stop does not end a sentence (compared lower-case, with the stop).
_ABBREVIATIONS = frozenset(
    {"dr.", "mr.", "mrs.", "ms.", "prof.", "st.", "jr.", "sr.", "vs.", "e.g.", "i.e.", "cf.", "approx."}
)
_INITIAL = re.compile(r"^(?:[A-Z]|(?:[A-Za-z]\.)+[A-Za-z])$")
_LIST_NUMBER = re.compile(r"^\d+$")
# A "sentence" made only of these (a stray "." or "!") has nothing to say and is dropped.
_NOT_SPEECH = " \t\r\n.!?…,;:-\"'”’()[]*_"


class SentenceSplitter:
    """Accumulates streamed text and hands back each sentence once it is certainly complete.

    A boundary inside an open stage direction -- `(takes a breath. smiles)`, `[pause. slowly]` or
    `*nods. smiles*` -- is not a boundary, so that `clean_for_speech` sees the whole aside and can
    drop it. An aside that never closes is given up on after `max_chars`, so one stray "(" cannot
    hold back the rest of the reply.
    """

    def __init__(self, max_chars: int = 400) -> None:
        self._buffer = ""
        self._max_chars = max_chars

    def feed(self, piece: str) -> list[str]:
        """Add a decoded piece; return the sentences it completed, in order, stripped, never empty."""
        self._buffer += piece
        sentences: list[str] = []
        start = 0
        for match in _BOUNDARY.finditer(self._buffer):
            candidate = self._buffer[start : match.end()]
            if not self._is_boundary(candidate, match.group()):
                continue
            sentence = candidate.strip()
            if sentence.strip(_NOT_SPEECH):
                sentences.append(sentence)
            start = match.end()
        self._buffer = self._buffer[start:]
        return sentences

    def flush(self) -> str | None:
        """Return whatever is left once the stream has ended (or None), and start afresh."""
        rest = self._buffer.strip()
        self._buffer = ""
        return rest if rest.strip(_NOT_SPEECH) else None

    def _is_boundary(self, candidate: str, terminator: str) -> bool:
        if _inside_aside(candidate):
            if len(candidate) < self._max_chars:
                return False
            _LOGGER.debug("Unclosed aside after %d chars; splitting there anyway", len(candidate))
        if terminator != ".":
            return True
        words = candidate[:-1].split()
        if not words:
            return True
        last = words[-1]
        if f"{last}.".lower() in _ABBREVIATIONS or _INITIAL.match(last):
            return False
        # "1. Breathe in" is a list marker, not a sentence; "I counted to 10. Then" is a sentence.
        return not (len(words) == 1 and _LIST_NUMBER.match(last))


def _inside_aside(text: str) -> bool:
    single_stars = text.replace("**", "").count("*")
    return text.count("(") > text.count(")") or text.count("[") > text.count("]") or single_stars % 2 == 1


_FENCE = re.compile(r"```[^\n]*\n?")
_LINK = re.compile(r"\[([^\]\n]+)\]\([^)\n]*\)")
_BULLET = re.compile(r"^[ \t]*(?:[-*+•]|\d+[.)])[ \t]+", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]*(?:#+|>+)[ \t]*", re.MULTILINE)
_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__", re.DOTALL)
_STAGE_DIRECTION = re.compile(r"\*[^*]+\*|\([^()]*\)|\[[^\[\]]*\]")
_UNDERSCORE_EMPHASIS = re.compile(r"(?<!\w)_([^_\n]+)_(?!\w)")
_MARKUP_CHARS = re.compile(r"[*_#`~]")
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, symbols and pictographs, flags
    "\u2300-\u23ff"  # watches, hourglasses, media buttons
    "\u2600-\u27bf"  # miscellaneous symbols and dingbats
    "\u2b00-\u2bff"  # stars, arrows
    "\ufe0f\u200d\u20e3"  # variation selector, zero-width joiner, keycap
    "]"
)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:…])")
_WHITESPACE = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """Strip what a TTS voice would read out literally: markdown, emojis and stage directions.

    Gemma likes `*smiles warmly*` and bullet lists; spoken, they become "asterisk smiles warmly
    asterisk". Bold and underscore emphasis keep their words; asides in *single asterisks*,
    (parentheses) or [brackets] are dropped whole. May return "" when nothing speakable is left.
    """
    text = _FENCE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _BULLET.sub("", text)
    text = _HEADING.sub("", text)
    text = _BOLD.sub(lambda m: m.group(1) or m.group(2), text)
    text = _STAGE_DIRECTION.sub(" ", text)
    text = _UNDERSCORE_EMPHASIS.sub(r"\1", text)
    text = _MARKUP_CHARS.sub("", text)
    text = _EMOJI.sub("", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _WHITESPACE.sub(" ", text).strip()
