"""Check each sentence the language model wrote before the person hears it.

Gemma-2-2B follows the persona prompt most of the time, not every time, and someone in the middle of a
panic attack may do what they hear. So every sentence passes this guard on its way to the speaker: one
that names a means of self-harm, urges or praises self-harm, says others would be better off without them,
tells them to stop treatment, gives a medication dose, gives diet or calorie advice, diagnoses, claims to be
a human or a therapist, or flirts is replaced by a calm fixed sentence for its category.

Harm can be split across sentences ("You have pills in the cupboard." "Swallow them."), so each sentence is
checked alone and then with the reply so far: there, the sentences stand one a line and only a match that
reaches into the newest one counts, so words already spoken are never blamed twice.

The patterns are data (`data/guard.toml`), matched against a normalised copy of the sentence: lower case,
straight quotes and single spaces. A match is exempt only when it lies wholly inside a match of one of its
category's `allow` patterns, so "don't stop your medication" passes, while in "don't stop your
medication, skip therapy" the second instruction is still caught.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.datafiles import DataFile, Invalid
from server.safety.plain import lowered

CATEGORIES = (
    "self_harm_method",
    "encourage_harm",
    "burden",
    "stop_treatment",
    "medication_dose",
    "diet",
    "diagnosis",
    "human_claim",
    "romance",
)
"""Every category the data must define, in the order they are checked: the first that matches decides."""

VERSION = 1
"""The layout of guard.toml this code reads; a file of another version is refused, not half-read."""
_CATEGORY_KEYS = frozenset({"patterns", "allow", "fallback"})
_WHITESPACE = re.compile(r"\s+")
_LIST_NAME = re.compile(r"[a-z_]+")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Verdict:
    """What the guard decided about one sentence."""

    category: str | None
    """The category that blocked it; None when the sentence may be sent."""
    matched: str
    """The words that triggered the block, as normalised (lower case); '' when allowed."""
    replacement: str
    """The category's fallback sentence, to send instead; '' when allowed."""

    @property
    def blocked(self) -> bool:
        return self.category is not None


_ALLOWED = Verdict(None, "", "")


@dataclass(frozen=True)
class _Rule:
    category: str
    patterns: tuple[re.Pattern[str], ...]
    allow: tuple[re.Pattern[str], ...]
    fallback: str

    def first_match(self, text: str, newest: int = 0) -> str | None:
        """The first words a pattern matches outside every allowed span and ending past `newest`, or None."""
        allowed = [found.span() for pattern in self.allow for found in pattern.finditer(text)]
        for pattern in self.patterns:
            start = 0
            # Search from every start, not just after the previous match, so an exempt match cannot hide
            # an overlapping one that is not exempt.
            while (found := pattern.search(text, start)) is not None:
                exempt = any(a <= found.start() and found.end() <= b for a, b in allowed)
                if found.end() > newest and not exempt:
                    return found.group()
                start = found.start() + 1
        return None


class OutputGuard:
    """Decides, sentence by sentence, whether what the model wrote may be spoken."""

    def __init__(self, rules: tuple[_Rule, ...]) -> None:
        self._rules = rules

    @classmethod
    def load(cls) -> OutputGuard:
        """The guard shipped with the package (server/data/guard.toml)."""
        return GUARD_FILE.load()

    def check(self, sentence: str, before: Sequence[str] = ()) -> Verdict:
        """Whether `sentence` may be spoken after `before` (the reply's sentences already spoken), and if
        not, why and what to say instead."""
        text = _normal(sentence)
        verdict = self._first(text, 0)
        if verdict.blocked or not before:
            return verdict
        earlier = "\n".join(_normal(line) for line in before)
        return self._first(f"{earlier}\n{text}", len(earlier) + 1)

    def _first(self, text: str, newest: int) -> Verdict:
        for rule in self._rules:
            matched = rule.first_match(text, newest)
            if matched is not None:
                return Verdict(rule.category, matched, rule.fallback)
        return _ALLOWED


def _normal(sentence: str) -> str:
    """Lower case, straight quotes, single spaces: one line of the text the patterns read."""
    return _WHITESPACE.sub(" ", lowered(sentence)).strip()


def _parse(raw: dict[str, Any]) -> OutputGuard:
    unknown = sorted(set(raw) - {"version", "lists", *CATEGORIES})
    if unknown:
        known = ", ".join(CATEGORIES)
        raise Invalid(f"unknown key(s) {', '.join(unknown)}; the categories are {known}")
    lists = _lists(raw.get("lists", {}))
    guard = OutputGuard(tuple(_rule(category, raw.get(category), lists) for category in CATEGORIES))
    for rule in guard._rules:
        verdict = guard.check(rule.fallback)
        if verdict.blocked:
            why = f"{verdict.category} ({verdict.matched!r})"
            raise Invalid(f"[{rule.category}] fallback is itself blocked as {why}")
    return guard


def _strings(value: object) -> list[str] | None:
    """`value` as a list of non-empty strings, or None if it is anything else."""
    if isinstance(value, list) and all(isinstance(item, str) and item.strip() for item in value):
        return value
    return None


def _lists(table: object) -> dict[str, str]:
    """The [lists] table: each name becomes one non-capturing alternation that patterns use as {name}."""
    if not isinstance(table, dict):
        raise Invalid("[lists] must be a table")
    alternations: dict[str, str] = {}
    for name, items in table.items():
        words = _strings(items)
        if not _LIST_NAME.fullmatch(name) or not words:
            raise Invalid(f"lists.{name} must be a lower_case name for a list of non-empty strings")
        alternations[name] = f"(?:{'|'.join(words)})"
    return alternations


def _rule(category: str, table: object, lists: dict[str, str]) -> _Rule:
    if not isinstance(table, dict):
        raise Invalid(f"[{category}] is missing")
    unknown = sorted(set(table) - _CATEGORY_KEYS)
    if unknown:
        raise Invalid(f"[{category}] unknown key(s) {', '.join(unknown)}")
    fallback = table.get("fallback")
    if not isinstance(fallback, str) or not fallback.strip():
        raise Invalid(f"[{category}] fallback must be a non-empty sentence")
    patterns, allow = _strings(table.get("patterns")), _strings(table.get("allow", []))
    if not patterns:
        raise Invalid(f"[{category}] patterns must be a non-empty list of regexes")
    if allow is None:
        raise Invalid(f"[{category}] allow must be a list of regexes")
    return _Rule(
        category,
        tuple(_compile(f"[{category}] patterns", p, lists) for p in patterns),
        tuple(_compile(f"[{category}] allow", p, lists) for p in allow),
        fallback.strip(),
    )


def _compile(where: str, pattern: str, lists: dict[str, str]) -> re.Pattern[str]:
    def expand(found: re.Match[str]) -> str:
        name = found.group(1)
        if name not in lists:
            raise Invalid(f"{where}: {pattern!r} uses {{{name}}} but [lists] has no {name}")
        return lists[name]

    try:
        return re.compile(_PLACEHOLDER.sub(expand, pattern), re.IGNORECASE | re.MULTILINE)
    except re.error as exc:
        raise Invalid(f"{where}: {pattern!r} is not a valid regex ({exc})") from exc


GUARD_FILE = DataFile("server/data/guard.toml", VERSION, "guard_invalid", _parse)
