"""Text cleaning for counsel-chat: what a therapist wrote for a web page, made into what a companion says.

The CSV lost the page's paragraphs, so sentences run together ("self-esteem.Otherwise"); answers end with
signatures, closings and practice adverts; some point at links or phone numbers, and a few go on in
Spanish. The rules that are data (closings, credentials, advert phrases, word lists) live in cleaning.toml
beside this module.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass
from typing import Any

from server.for_training import DataFile, SentenceSplitter

_MARK = "\x00"
"""Stands where a link or address was taken out, until its sentence is judged."""
_LINK_ASIDE = re.compile(rf"\s*\([^()]*{_MARK}[^()]*\)")

_TAG = re.compile(r"<[/!]?[A-Za-z][^>]{0,500}>")
_BLOCK_TAG = re.compile(r"<\s*(?:br|/p|/div|/li|/h\d)\s*/?\s*>", re.IGNORECASE)
_SPACES = re.compile(r"[\u00a0\u2000-\u200b\u202f\u205f\u3000\t\r\f\v]")
_URL = re.compile(
    r"(?:https?://|www\.)[^\s<>\"]*[^\s<>\".,;:!?)\]]"
    r"|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov|ca|uk|info|us|io)\b(?:/[^\s<>\"]*[^\s<>\".,;:!?)\]])?",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\[email\s*protected\]", re.IGNORECASE)
_PHONE = re.compile(r"(?<!\d)(?:\+?1[-. ]?)?(?:\(\d{3}\)\s?|\d{3}[-. ]?)\d{3}[-. ]\d{4}(?!\d)")
_GLUED = re.compile(r"(?<=[a-z][.!?])(?=[¿¡]?[A-ZÁÉÍÓÚ][a-zñáéíóú])")
_SENTENCE = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[.!?])\s+")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?\s*\)|\[\s*\]")
_SPANISH_LETTERS = re.compile("[¿¡áéíóúñ]")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])(?=\s|$)")
_TRAILING = re.compile(r"[\s,;:~\-–—]+$")
# A sign-off starts after a sentence end, a comma or a separator, or at the very start.
_LEAD = r"(?:^|[.!?,;:~)\-–—]\s*|\n\s*)"
# "-Sarah", "~Mark", "-IJP": a dashed name or initials closing the answer.
_DASHED = re.compile(r"(?:^|(?<=[\s.!?]))(?P<cut>[-~–—]\s*[A-Z][\w.'’]*(?:\s+[A-Z][\w.'’]*){0,2})$")
_NAME = r"(?:Dr\.?\s*)?[A-Z][\w'’-]*\.?(?:\s+(?:[A-Z]\.|[A-Z][\w'’-]+)){0,3}"


@dataclass(frozen=True)
class _Rules:
    version: int
    signature: re.Pattern[str]
    closing: re.Pattern[str]
    closing_tail_words: int
    signer_tail_words: int
    dangling: re.Pattern[str]
    dangling_before: re.Pattern[str]
    advert: re.Pattern[str]
    english: frozenset[str]
    spanish: frozenset[str]


RULES_VERSION = 1
"""The layout of cleaning.toml this code reads; a file of another version is refused, not half-read."""


@functools.cache
def _rules() -> _Rules:
    return DataFile("training/llm/cleaning.toml", RULES_VERSION, "bad_cleaning_rules", _parse_rules).load()


def _parse_rules(data: dict[str, Any]) -> _Rules:
    credentials = "|".join(re.escape(c) for c in sorted(data["credentials"], key=len, reverse=True))
    credential = rf"(?<![A-Za-z])(?:{credentials})(?![A-Za-z])"
    closings = "|".join(re.escape(c) for c in sorted(data["closings"], key=len, reverse=True))
    dangling = "|".join(re.escape(w) for w in data["dangling_words"])
    return _Rules(
        version=int(data["version"]),
        signature=re.compile(
            rf"{_LEAD}(?P<cut>[-~]?\s*{_NAME}\s*,?\s*{credential}(?:[\s,/]+{credential})*"
            r"(?:\s*\([^)]*\))?[\s.,]*)$"
        ),
        closing=re.compile(
            rf"{_LEAD}(?P<cut>(?:{closings})(?:\s+to\s+(?:you|all))?\s*(?:[,:~\-–—]|$)(?P<tail>[^\n]*))$",
        ),
        closing_tail_words=int(data["closing_tail_words"]),
        signer_tail_words=int(data["signer_tail_words"]),
        dangling=re.compile(rf"(?:\b(?:{dangling})|:)\W*$", re.IGNORECASE),
        dangling_before=re.compile(rf"(?:^|\b(?:{dangling})|:)[\s(]*{_MARK}", re.IGNORECASE),
        advert=re.compile("|".join(re.escape(p) for p in data["advert_phrases"]), re.IGNORECASE),
        english=frozenset(data["language"]["english"]),
        spanish=frozenset(data["language"]["spanish"]),
    )


def rules_version() -> int:
    """cleaning.toml's version, recorded in the data card."""
    return _rules().version


def _markup_to_text(text: str) -> str:
    """HTML tags out (block ends become line breaks), entities decoded, odd spaces made plain."""
    text = _BLOCK_TAG.sub("\n", html.unescape(text))
    return _SPACES.sub(" ", _TAG.sub(" ", text))


def _collapse(text: str) -> str:
    return " ".join(text.split())


def clean_question(text: str) -> str:
    """A question as one plain paragraph: no markup, links or addresses."""
    text = _URL.sub(" ", _EMAIL.sub(" ", _markup_to_text(text)))
    return _collapse(_GLUED.sub(" ", text))


def clean_answer(text: str, signer: str = "") -> str:
    """An answer as the companion could say it: no markup, links, phone numbers, Spanish or sign-off.

    `signer` is the counsel-chat therapistInfo of the answer's author: their own name at the end of the
    answer is a signature even without credentials. A sentence with a phone number is dropped (practice
    adverts, and hotline numbers, which the server's safety rules give instead), as is any other advert
    (cleaning.toml); a sentence that pointed at a link goes when, without the link, it dangles ("Visit
    their site at"), else only the link goes. The first sentence in Spanish ends the answer: a few
    answers repeat themselves in Spanish after the English.
    """
    rules = _rules()
    text = _markup_to_text(text)
    text = _LINK_ASIDE.sub("", _URL.sub(_MARK, _EMAIL.sub(_MARK, text)))
    text = _GLUED.sub(" ", text)
    kept = []
    for sentence in _SENTENCE.split(text):
        if _is_spanish(sentence):
            break
        if _PHONE.search(sentence) or rules.advert.search(sentence):
            continue
        if _MARK in sentence:
            if rules.dangling_before.search(sentence) or rules.dangling.search(sentence.replace(_MARK, " ")):
                continue
            sentence = sentence.replace(_MARK, " ")
            if len(sentence.split()) < 3:
                continue
        kept.append(sentence)
    text = _EMPTY_BRACKETS.sub(" ", _collapse(" ".join(kept)))
    return _strip_sign_off(_SPACE_BEFORE_PUNCTUATION.sub(r"\1", _collapse(text)), signer_names(signer))


def _strip_sign_off(text: str, names: tuple[str, ...]) -> str:
    """Cut signature, closing and signer's name from the end, in any order, until none is left."""
    rules = _rules()
    signer = None
    if names:
        alternatives = "|".join(re.escape(n) for n in names)
        signer = re.compile(rf"{_LEAD}(?P<cut>[-~]?\s*(?:Dr\.?\s*)?(?:{alternatives})\b(?P<tail>.*))$")
    while True:
        before = text
        match = rules.signature.search(text)
        if match:
            text = text[: match.start("cut")]
        match = rules.closing.search(text)
        if match and len(match["tail"].split()) <= rules.closing_tail_words:
            text = text[: match.start("cut")]
        match = _DASHED.search(text)
        if match:
            text = text[: match.start("cut")]
        match = signer.search(text) if signer else None
        if match and len(match["tail"].split()) <= rules.signer_tail_words:
            text = text[: match.start("cut")]
        text = _TRAILING.sub("", text)
        if text == before:
            return text


def signer_names(therapist_info: str) -> tuple[str, ...]:
    """First and last name from counsel-chat's therapistInfo, whose name runs into the title on the page
    ("Sherry Katz, LCSWCouples and Family Therapist" → Sherry, Katz)."""
    name = re.split(r"[,(;]", therapist_info, maxsplit=1)[0]
    name = re.sub(r"^\s*Dr\.?\s+", "", re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name))
    words = []
    for word in name.split():
        if not re.fullmatch(r"[A-Z][a-z'’-]{2,}", word):
            break
        words.append(word)
    return tuple(words[:2])


def _language_votes(text: str) -> tuple[int, int]:
    """(English words, Spanish words) among the text's words, by cleaning.toml's lists and Spanish letters."""
    rules = _rules()
    words = re.findall(r"[¿¡]?[^\W\d_]+", text.lower())
    spanish = sum(w in rules.spanish or bool(_SPANISH_LETTERS.search(w)) for w in words)
    return sum(w in rules.english for w in words), spanish


def _is_spanish(sentence: str) -> bool:
    """Opens with ¿ or ¡, or has at least two Spanish words and more of them than English ones."""
    english, spanish = _language_votes(sentence)
    return sentence.lstrip().startswith(("¿", "¡")) or (spanish >= 2 and spanish > english)


def looks_english(text: str) -> bool:
    """Whether a text is in English rather than Spanish, the one other language counsel-chat holds."""
    english, spanish = _language_votes(text)
    return english >= spanish


def first_sentences(text: str, count: int) -> tuple[str, bool]:
    """The first `count` sentences, split as the server splits a reply for speech (paragraphs count as
    sentences); True when something was cut."""
    splitter = SentenceSplitter()
    sentences = splitter.feed(text + "\n")
    rest = splitter.flush()
    sentences += [rest] if rest else []
    if len(sentences) <= count:
        return text, False
    return " ".join(sentences[:count]), True


def word_count(text: str) -> int:
    return len(text.split())
