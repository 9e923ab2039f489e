"""Guided exercises (box breathing, grounding, ...) read from `data/exercises.toml`.

Someone in a panic attack needs something steady and predictable, and a language model can be slow, absent or
wrong. So the exercises are scripts, not prompts: fixed steps the engine streams one sentence at a time, each
followed by a pause the device waits out, which work with no model at all. The wording lives in the data file;
this module checks it once at start-up (a bad file is one ConfigError that names the file and the problem) and
says which exercise, if any, an utterance asks for.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from server.datafiles import DataFile, Invalid
from server.errors import NotFound
from server.safety.plain import patterns, plain_words

_LOGGER = logging.getLogger(__name__)

VERSION = 1
"""The layout of exercises.toml this code reads; a file of another version is refused, not half-read."""
MAX_PAUSE_MS = 20_000
MAX_ROUNDS = 10

_TOP_KEYS = frozenset({"version", "default", "asks", "declines", "accepts", "talk_down"})
_EXERCISE_KEYS = frozenset({"title", "offer", "asks", "intro", "steps", "rounds", "closing"})
_STEP_KEYS = frozenset({"text", "pause_ms"})
_ID = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Step:
    """One thing to say, then a silence."""

    text: str
    """One short, plain spoken sentence."""
    pause_ms: int
    """How long the device waits after saying it; in breathing, the length of the phase the cue starts."""


@dataclass(frozen=True)
class Exercise:
    """One guided exercise, ready to speak."""

    id: str
    title: str
    """Its spoken name, e.g. "box breathing"."""
    offer: str
    """One sentence offering it, for when the engine suggests it."""
    steps: tuple[Step, ...]
    """Everything to say in order: the intro, the body once per round, the closing check-in."""
    asks: tuple[re.Pattern[str], ...]
    """Patterns for a request that names this exercise, matched against plain text (see `asked_for`)."""


@dataclass(frozen=True)
class Exercises:
    """Every exercise in the file, and which one an utterance asks for."""

    default: str
    """The id of the exercise a general request ("help me calm down") leads to."""
    by_id: Mapping[str, Exercise]
    """Every exercise, in file order, which is the order their asks are tried in."""
    asks: tuple[re.Pattern[str], ...]
    """Patterns for a general request for an exercise."""
    declines: tuple[re.Pattern[str], ...]
    """Patterns for not wanting one ("i dont want to do the breathing"); they win over every ask."""
    accepts: tuple[re.Pattern[str], ...]
    """Patterns for saying yes to an exercise that was just offered ("okay lets try")."""
    talk_down: tuple[Step, ...]
    """Said before an exercise when no language model can answer: steady words that need no model."""

    @classmethod
    def load(cls) -> Exercises:
        """The packaged exercises.toml, checked."""
        return EXERCISES_FILE.load()

    def asked_for(self, text: str) -> Exercise | None:
        """The exercise the recognised `text` asks for, or None when it asks for none.

        The text is made plain first (lower case, apostrophes dropped, other marks turned to single spaces).
        A decline wins over everything; then the first exercise, in file order, whose asks match; then a
        general ask, which means the default exercise.
        """
        plain = plain_words(text)
        if _first_match(self.declines, plain) is not None:
            return None
        for exercise in self.by_id.values():
            pattern = _first_match(exercise.asks, plain)
            if pattern is not None:
                _LOGGER.debug("Exercise %s asked for (pattern %r)", exercise.id, pattern.pattern)
                return exercise
        pattern = _first_match(self.asks, plain)
        if pattern is not None:
            _LOGGER.debug("Default exercise %s asked for (pattern %r)", self.default, pattern.pattern)
            return self.by_id[self.default]
        return None

    def accepted(self, text: str) -> bool:
        """Whether `text` says yes to an exercise just offered; a decline wins here too."""
        plain = plain_words(text)
        return _first_match(self.declines, plain) is None and _first_match(self.accepts, plain) is not None

    def get(self, exercise_id: str) -> Exercise:
        """The exercise with this id; NotFound names the known ones."""
        try:
            return self.by_id[exercise_id]
        except KeyError:
            known = ", ".join(self.by_id)
            raise NotFound("unknown_exercise", f"no exercise {exercise_id!r}; known: {known}") from None


def _first_match(patterns: Iterable[re.Pattern[str]], text: str) -> re.Pattern[str] | None:
    return next((pattern for pattern in patterns if pattern.search(text)), None)


def _parse(document: dict[str, Any]) -> Exercises:
    # Every table that is not one of the top-level keys is an exercise.
    settings = {key for key, value in document.items() if key in _TOP_KEYS or not isinstance(value, dict)}
    _check_keys(settings, _TOP_KEYS, "the top level", optional=set())
    tables = {key: value for key, value in document.items() if key not in settings}
    if not tables:
        raise Invalid("no exercises: add a table per exercise, e.g. [box_breathing]")
    by_id = {exercise_id: _exercise(exercise_id, table) for exercise_id, table in tables.items()}
    default = document["default"]
    if not isinstance(default, str) or default not in by_id:
        raise Invalid(f"default = {default!r} names no exercise; known: {', '.join(by_id)}")
    return Exercises(
        default=default,
        by_id=by_id,
        asks=patterns(document["asks"], "asks"),
        declines=patterns(document["declines"], "declines"),
        accepts=patterns(document["accepts"], "accepts"),
        talk_down=tuple(_steps(document["talk_down"], "talk_down")),
    )


def _check_keys(keys: Iterable[str], allowed: frozenset[str], where: str, optional: set[str]) -> None:
    present = set(keys)
    unknown = sorted(present - allowed)
    if unknown:
        raise Invalid(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(allowed - optional - present)
    if missing:
        raise Invalid(f"{where}: missing key {missing[0]!r}")


def _exercise(exercise_id: str, table: dict[str, Any]) -> Exercise:
    where = f"[{exercise_id}]"
    if not _ID.fullmatch(exercise_id):
        raise Invalid(f"{where}: an exercise id is lower-case letters, digits and underscores")
    _check_keys(table, _EXERCISE_KEYS, where, optional={"rounds"})
    rounds = table.get("rounds", 1)
    if type(rounds) is not int or not 1 <= rounds <= MAX_ROUNDS:
        raise Invalid(f"{where} rounds = {rounds!r}; expected a whole number from 1 to {MAX_ROUNDS}")
    return Exercise(
        id=exercise_id,
        title=_line(table["title"], f"{where} title", sentence=False),
        offer=_line(table["offer"], f"{where} offer"),
        steps=(
            *_steps(table["intro"], f"{where} intro"),
            *_steps(table["steps"], f"{where} steps") * rounds,
            *_steps(table["closing"], f"{where} closing"),
        ),
        asks=patterns(table["asks"], f"{where} asks"),
    )


def _line(value: object, where: str, *, sentence: bool = True) -> str:
    """One line of speakable text; a sentence must end with . ? or !"""
    if not isinstance(value, str) or not value.strip() or value != value.strip() or "\n" in value:
        raise Invalid(f"{where} = {value!r}; expected one line of text")
    if sentence and not value.endswith((".", "?", "!")):
        raise Invalid(f"{where} = {value!r}; a spoken sentence ends with . ? or !")
    return value


def _steps(value: object, where: str) -> list[Step]:
    if not isinstance(value, list) or not value:
        raise Invalid(f"{where}: expected a non-empty list of {{ text = ..., pause_ms = ... }}")
    steps = []
    for index, step in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(step, dict):
            raise Invalid(f"{at} = {step!r}; expected {{ text = ..., pause_ms = ... }}")
        _check_keys(step, _STEP_KEYS, at, optional=set())
        pause_ms = step["pause_ms"]
        if type(pause_ms) is not int or not 0 <= pause_ms <= MAX_PAUSE_MS:
            raise Invalid(f"{at} pause_ms = {pause_ms!r}; expected a whole number from 0 to {MAX_PAUSE_MS}")
        steps.append(Step(_line(step["text"], f"{at} text"), pause_ms))
    return steps


EXERCISES_FILE = DataFile("server/data/exercises.toml", VERSION, "exercises_invalid", _parse)
