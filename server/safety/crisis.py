"""Crisis detection on what the person said, before any language model sees it.

A small model can miss or mishandle a person who says they want to die, so the check runs on rules alone,
on every utterance, and in well under a millisecond. The rules are data (`data/crisis.toml`): slang
rewrites, idioms to ignore, and patterns per level, read clause by clause so that negation ("I'm not
going to hurt myself"), someone else's story ("my friend overdosed") and the past ("years ago") are told
apart from a person at risk now.

A negation governs only its own predicate: the words after the last subject ("I", "he", ...) before the
match, so "I'm not okay and I want to die" and "no one would notice if I killed myself" are read as what
they are. What a sentence says in one clause cannot cancel intent stated in another: "I don't want to hurt
myself, but I will" and a past attempt with intent to "do it again" are crises.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any

from server.datafiles import DataFile, Invalid
from server.safety.plain import lowered

RULES_VERSION = 1
"""The layout of crisis.toml this code reads; a file of another version is refused, not half-read."""
REPLY_VERSION = 1
"""The layout of crisis_reply.toml this code reads."""
_CODE = "safety_rules_invalid"


class Level(enum.StrEnum):
    NONE = "none"
    CONCERN = "concern"
    CRISIS = "crisis"


_RANK = {Level.NONE: 0, Level.CONCERN: 1, Level.CRISIS: 2}


@dataclass(frozen=True)
class Assessment:
    level: Level
    rule: str = ""
    """The rule that decided the level ('' for none)."""
    trigger: str = ""
    """The words that matched, as read after rewriting: what the therapist sees in the safety event."""
    panic: bool = False
    """Panic in their words: reason to offer a breathing exercise."""
    ruled_out: bool = False
    """Crisis words were there but read as an idiom, negated, someone else's or in the past, or the words
    sit in an everyday context: a second opinion by similarity must not overturn that reading."""


@dataclass(frozen=True)
class _Rule:
    name: str
    level: Level
    negatable: bool
    first_person: bool
    past_is_concern: bool
    settled: bool
    patterns: tuple[re.Pattern[str], ...]


class CrisisDetector:
    def __init__(self, data: dict[str, Any]) -> None:
        """The rules in `data` (crisis.toml's document); a missing or malformed one raises KeyError,
        TypeError, ValueError or re.error, which the loader turns into one error naming the file."""
        self._rewrites = [(_compile(r["pattern"]), str(r["with"])) for r in data["rewrite"]]
        self._idioms = [_compile(r["pattern"]) for r in data["idiom"]]
        self._rules = [
            _Rule(
                name=str(r["name"]),
                level=Level(r["level"]),
                negatable=bool(r["negatable"]),
                first_person=bool(r["first_person"]),
                past_is_concern=bool(r["past_is_concern"]),
                settled=bool(r.get("settled", False)),
                patterns=tuple(_compile(p) for p in r["patterns"]),
            )
            for r in data["rule"]
        ]
        self._panic = [_compile(p) for p in data["panic"]["patterns"]]
        self._negation = _compile(data["negation"]["pattern"])
        self._negation_over = _compile(data["negation_over"]["pattern"])
        self._subject = _compile(data["subject"]["pattern"])
        self._affirm = _compile(data["affirm"]["pattern"])
        self._present = _compile(data["present"]["pattern"])
        self._again = [_compile(p) for p in data["again"]["patterns"]]
        self._negation_after = _compile(data["negation_after"]["pattern"])
        self._others = _compile(data["others"]["pattern"])
        self._past = _compile(data["past"]["pattern"])
        self._clauses = _compile(data["clauses"]["pattern"])
        self._joins = _compile(data["joins"]["pattern"])
        self._benign = _compile(data["benign"]["pattern"])
        # Crisis rules first: the first crisis match decides, and concern is read only when none matched.
        self._rules.sort(key=lambda rule: -_RANK[rule.level])

    @classmethod
    def load(cls) -> CrisisDetector:
        return RULES_FILE.load()

    def assess(self, text: str) -> Assessment:
        said = self.normalise(text)
        plain = said
        for idiom in self._idioms:
            said = idiom.sub(" ", said)
        clauses = [c.strip() for c in self._clauses.sub("\n", said).split("\n") if c.strip()]
        panic = any(p.search(said) for p in self._panic)
        ruled_out = said != plain or bool(self._benign.search(said))
        best = Assessment(Level.NONE, panic=panic)
        # Crisis words anywhere, even negated or in the past: what a later "do it again" refers back to.
        harm_words = ""
        for rule in self._rules:
            if _RANK[rule.level] <= _RANK[best.level]:
                continue
            for index, clause in enumerate(clauses):
                found = self._match(rule, clause)
                if found is None:
                    continue
                level, trigger, taken_back = found
                if rule.level == Level.CRISIS and rule.first_person:
                    harm_words = harm_words or trigger
                following = taken_back or (clauses[index + 1] if index + 1 < len(clauses) else "")
                if taken_back is not None and self._affirm.match(following):
                    # "I don't want to hurt myself, but I will", "I was suicidal years ago and I still am":
                    # the words that follow take the negation or the past back.
                    level = rule.level
                if level is None:
                    ruled_out = True
                elif _RANK[level] > _RANK[best.level]:
                    ruled_out = ruled_out or level != rule.level or rule.settled
                    best = Assessment(level, rule.name, trigger, panic)
        if best.level != Level.CRISIS and harm_words:
            again = self._intent_again(clauses)
            if again:
                best = Assessment(Level.CRISIS, "intent_again", f"{harm_words} ... {again}", panic)
        return dataclasses.replace(best, ruled_out=ruled_out and best.level != Level.CRISIS)

    def normalise(self, text: str) -> str:
        said = lowered(text)
        for pattern, replacement in self._rewrites:
            said = pattern.sub(replacement, said)
        return said.strip()

    def _match(self, rule: _Rule, clause: str) -> tuple[Level | None, str, str | None] | None:
        """The level a rule gives a clause (None when it matched but was ruled out), the words, and when a
        negation or the past set the level, the rest of the match's part of the clause after the next
        [joins] ('' when the part runs to the clause's end): words that may take it back."""
        ruled_out: tuple[Level | None, str, str | None] | None = None
        for pattern in rule.patterns:
            for found in pattern.finditer(clause):
                before = clause[: found.start()]
                if rule.negatable and self._negated(before, clause[found.end() :]):
                    ruled_out = None, found.group(0), self._next_part(clause, found)
                    continue
                if rule.first_person and self._about_someone_else(before):
                    ruled_out = None, found.group(0), None
                    continue
                if rule.past_is_concern and self._in_the_past(clause, found):
                    return Level.CONCERN, found.group(0), self._next_part(clause, found)
                return rule.level, found.group(0), None
        return ruled_out

    def _next_part(self, clause: str, found: re.Match[str]) -> str:
        join = self._joins.search(clause, found.end())
        return clause[join.end() :].strip() if join else ""

    def _negated(self, before: str, after: str) -> bool:
        """A negation in the match's own predicate (after the last subject named before it), one that
        governs a whole clause ("not that I...", "I don't think I..."), or one right after it."""
        subjects = [m.end() for m in self._subject.finditer(before)]
        own = before[subjects[-1] :] if subjects else before
        return bool(
            self._negation.search(own)
            or self._negation_over.search(before)
            or self._negation_after.match(after)
        )

    def _in_the_past(self, clause: str, found: re.Match[str]) -> bool:
        """Past words in the match's part of the clause, unless its own predicate says now ("I tried
        years ago and still want to")."""
        start = max((j.end() for j in self._joins.finditer(clause, 0, found.start())), default=0)
        end = min((j.start() for j in self._joins.finditer(clause, found.end())), default=len(clause))
        if not self._past.search(clause[start:end]):
            return False
        subjects = [m.start() for m in self._subject.finditer(clause, start, found.start())]
        after = [m.start() for m in self._subject.finditer(clause, found.end(), end)]
        own = clause[subjects[-1] if subjects else start : after[0] if after else end]
        return not self._present.search(own)

    def _intent_again(self, clauses: list[str]) -> str:
        """Intent to act on harm already named ("...and I'm going to do it again tonight"), not negated."""
        for clause in clauses:
            for pattern in self._again:
                for found in pattern.finditer(clause):
                    before = clause[: found.start()]
                    negated = self._negated(before, clause[found.end() :])
                    if not negated and not self._about_someone_else(before):
                        return found.group(0)
        return ""

    def _about_someone_else(self, before: str) -> bool:
        """Whether the last subject named before the match is someone else, not the speaker."""
        other = [m.end() for m in self._others.finditer(before)]
        if not other:
            return False
        own = [m.end() for m in re.finditer(r"\b(i|i'm|i've|i'll|i'd|me)\b", before)]
        return not own or max(other) > max(own)


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class CrisisReply:
    """The scripted crisis response for one locale, and the note a concern adds to the model's prompt."""

    lines: tuple[str, ...]
    helpline: str
    concern_note: str

    @classmethod
    def load(cls, locale: str) -> CrisisReply:
        return reply_file(locale).load()

    @classmethod
    def parse(cls, data: dict[str, Any], locale: str) -> CrisisReply:
        """The reply for `locale` (the default one's numbers when it has none of its own)."""
        locales = data["locales"]
        chosen = locales.get(locale.upper(), locales["default"])
        helpline, emergency = str(chosen["helpline"]), str(chosen["emergency"])
        lines = tuple(
            str(line).replace("{helpline}", helpline).replace("{emergency}", emergency)
            for line in data["lines"]
        )
        if not lines or helpline not in lines:
            raise Invalid("`lines` must hold the {helpline} line")
        return cls(lines=lines, helpline=helpline, concern_note=str(data["concern_note"]))


RULES_FILE = DataFile("server/data/crisis.toml", RULES_VERSION, _CODE, CrisisDetector)


def reply_file(locale: str) -> DataFile[CrisisReply]:
    return DataFile(
        "server/data/crisis_reply.toml", REPLY_VERSION, _CODE, lambda data: CrisisReply.parse(data, locale)
    )
