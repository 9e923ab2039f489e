"""A turn's vocabulary: what comes in (TurnInput), the events that stream out, where a reply came from,
and the small records the turn router hands to the replies it chooses.

Every turn stream ends with `done` or `error`. The event types are a closed set, so the device and the
tests can match on them.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from server.records.rows import EmotionSample
from server.safety.care import Line
from server.safety.crisis import Assessment


class EventType(enum.StrEnum):
    TRANSCRIPT = "transcript"
    EMOTIONS = "emotions"
    SAFETY = "safety"
    COMMAND = "command"
    SENTENCE = "sentence"
    DONE = "done"
    ERROR = "error"


def event(kind: EventType, **fields: Any) -> dict[str, Any]:
    return {"type": str(kind), **fields}


@dataclass(frozen=True)
class TurnInput:
    """A validated turn: decoded audio (or typed text) and decoded frames, all in memory."""

    audio: Any = None
    text: str | None = None
    frames: Sequence[Any] = field(default_factory=tuple)


class Source(enum.StrEnum):
    """Where a reply came from; the `done` event says which."""

    LLM = "llm"
    CRISIS = "crisis"
    EXERCISE = "exercise"
    OFFLINE = "offline"
    COMMAND = "command"


@dataclass(frozen=True)
class Said:
    """The person's words for this turn, as their turn is recorded."""

    text: str
    confidence: dict[str, Any] | None
    key: str | None = None
    """The device's Idempotency-Key."""
    again: int | None = None
    """The recorded turn's id when it is answered again after its first answer broke."""


@dataclass(frozen=True)
class HeardCrisis:
    """A turn read as a crisis, as the crisis reply records it."""

    said: Said
    source: int
    """The speech hypothesis that read as a crisis (0: the transcript itself)."""
    read_as: str
    """The words that did, when not the transcript (another hypothesis, or one with a misheard crisis word
    put back): the safety event keeps them, since the transcript alone would not show why."""
    assessment: Assessment
    samples: tuple[EmotionSample, ...]


def sentence_fields(line: Line) -> dict[str, Any]:
    """A `sentence` event's fields, as streamed and as a repeated key replays them."""
    if line.pause_ms:
        return {"text": line.text, "pause_ms": line.pause_ms}
    return {"text": line.text}


def top3_json(top3: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"label": e.label, "score": e.score} for e in top3]


def ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
