"""Crisis words that speech recognition mishears, put back before the crisis rules read a spoken turn.

A beam of hypotheses often differs only in punctuation, so the word that matters ("pills") may be in none
of them ("bills"). server/data/soundalikes.toml lists such measured mishearings; `restored` gives a
hypothesis with the crisis words put back, for the rules alone to read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from server.datafiles import DataFile, Invalid

VERSION = 1
"""The layout of soundalikes.toml this code reads; a file of another version is refused, not half-read."""


@dataclass(frozen=True)
class Soundalikes:
    patterns: tuple[tuple[re.Pattern[str], str], ...]

    @classmethod
    def load(cls) -> Soundalikes:
        return SOUNDALIKES_FILE.load()

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Soundalikes:
        patterns = []
        for number, entry in enumerate(data.get("soundalike", []), start=1):
            meant, heard = entry.get("meant"), entry.get("heard")
            if not isinstance(meant, str) or not meant or not isinstance(heard, list) or not heard:
                raise Invalid(f"[[soundalike]] {number} needs meant (a word) and heard (a list of words)")
            if not all(isinstance(word, str) and word.isalpha() for word in heard):
                raise Invalid(f"[[soundalike]] {number}: heard must be single words")
            alternatives = "|".join(re.escape(word) for word in heard)
            patterns.append((re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE), meant))
        return cls(tuple(patterns))

    def restored(self, text: str) -> str:
        """`text` with every misheard word replaced by the crisis word it may have been."""
        for pattern, meant in self.patterns:
            text = pattern.sub(meant, text)
        return text


SOUNDALIKES_FILE = DataFile("server/data/soundalikes.toml", VERSION, "soundalikes_invalid", Soundalikes.parse)
