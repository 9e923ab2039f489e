"""The device's last resort for a crisis: its own copy of the crisis reply, and a small rule set to know when.

The server answers a crisis with a scripted reply, but a stream can break before that reply is whole, or
before it begins: the server restarts, a cable comes loose, the model fails. Then the generic "my answer
got cut off" would meet someone in danger. So the device ships `crisis_reply.toml` byte for byte as the
server does, and `crisis_words.toml`, a few high-precision patterns it reads the person's words with.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.datafiles import read_versioned
from device.errors import DeviceError

REPLY_VERSION = 1
WORDS_VERSION = 1
"""The layouts of crisis_reply.toml and crisis_words.toml this code reads; others are refused."""


@dataclass(frozen=True)
class CrisisWords:
    """Rules read clause by clause; a match counts unless a negation comes before it in its clause."""

    clause_breaks: re.Pattern[str]
    negation: re.Pattern[str]
    rules: tuple[tuple[str, re.Pattern[str]], ...]

    def match(self, words: str) -> str | None:
        """The name of the first rule that reads `words` as a crisis, or None."""
        said = words.lower().replace("\u2019", "'").replace("\u2018", "'")
        for clause in self.clause_breaks.split(said):
            if not clause:
                continue
            for name, pattern in self.rules:
                found = pattern.search(clause)
                if found is not None and not self.negation.search(clause[: found.start()]):
                    return name
        return None


@dataclass(frozen=True)
class CrisisFallback:
    """What the device says when a turn breaks on words of crisis: the reply's lines for its locale."""

    words: CrisisWords
    reply: tuple[str, ...]

    def lines_for(
        self, words: str, server_crisis: bool, sent: Collection[str]
    ) -> tuple[str, tuple[str, ...]] | None:
        """Who read this broken turn as a crisis and the lines still to say, or None when nobody did.

        When the server had flagged the crisis, the lines its stream already brought are not said twice.
        """
        if server_crisis:
            return "the server", tuple(line for line in self.reply if line not in sent)
        rule = self.words.match(words)
        return None if rule is None else (f"the device's rule {rule}", self.reply)


def _pattern(raw: Any, where: str, key: str) -> re.Pattern[str]:
    if not isinstance(raw, str) or not raw:
        raise DeviceError("bad_crisis_words", f"{where}: {key} must be a regular expression")
    try:
        return re.compile(raw, re.IGNORECASE)
    except re.error as exc:
        raise DeviceError("bad_crisis_words", f"{where}: {key} is not a valid pattern: {exc}") from exc


def load_crisis_words(path: Path | None = None) -> CrisisWords:
    """Read the packaged crisis_words.toml (or `path`); a bad file is one DeviceError naming what is wrong."""
    document, where = read_versioned("crisis_words.toml", path, "bad_crisis_words", WORDS_VERSION)
    rules = document.get("rules")
    if not isinstance(rules, dict) or not rules:
        raise DeviceError("bad_crisis_words", f"{where} has no [rules]")
    return CrisisWords(
        _pattern(document.get("clause_breaks"), where, "clause_breaks"),
        _pattern(document.get("negation"), where, "negation"),
        tuple((name, _pattern(raw, where, f"[rules] {name}")) for name, raw in rules.items()),
    )


def load_crisis_reply(locale: str, path: Path | None = None) -> tuple[str, ...]:
    """The reply's lines for `locale` (a country code; one not listed gets [locales.default]), as the
    server fills them in, from the packaged crisis_reply.toml or `path`."""
    document, where = read_versioned("crisis_reply.toml", path, "bad_crisis_reply", REPLY_VERSION)
    try:
        locales = document["locales"]
        chosen = locales.get(locale.upper(), locales["default"])
        helpline, emergency = str(chosen["helpline"]), str(chosen["emergency"])
        lines = tuple(
            str(line).replace("{helpline}", helpline).replace("{emergency}", emergency)
            for line in document["lines"]
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise DeviceError("bad_crisis_reply", f"{where}: {type(exc).__name__}: {exc}") from exc
    if helpline not in lines:
        raise DeviceError("bad_crisis_reply", f"{where}: `lines` must hold the {{helpline}} line")
    return lines


def load_crisis_fallback(locale: str) -> CrisisFallback:
    """The packaged rules and the reply for `locale` ([device] locale)."""
    return CrisisFallback(load_crisis_words(), load_crisis_reply(locale))
