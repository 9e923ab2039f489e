"""The rows the records hand back and take in: a session, a turn, a face reading, a whole crisis turn, a
turn kept under its idempotency key, and what of a session goes into the next prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SessionRow:
    id: str
    client: str
    device_id: int | None
    started_at: float
    ended_at: float | None
    summary: str | None


@dataclass(frozen=True)
class Turn:
    id: int
    role: str
    text: str
    prompt: str
    raised: bool = False
    """A crisis or concern was raised on this turn, or it is the reply to one: never summarised."""


@dataclass(frozen=True)
class EmotionSample:
    """One face reading, kept for the timeline; `t` is when it was read, whenever it is written."""

    t: float
    source: str
    faces: int
    top3: list[dict[str, Any]]


@dataclass(frozen=True)
class CrisisTurn:
    """Everything a crisis turn records, written in one transaction after the helpline was spoken, so that
    a retried write never leaves half of it, or writes it twice."""

    session_id: str
    text: str
    heard_at: float
    trigger: str
    message: str
    """What the person was told: the helpline."""
    reply: str
    """The crisis lines said ('' when the device hung up before the first)."""
    replied_at: float
    timings: dict[str, Any]
    confidence: dict[str, Any] | None = None
    hypothesis: int = 1
    heard_as: str = ""
    samples: tuple[EmotionSample, ...] = ()
    key: str | None = None
    """The device's Idempotency-Key: a person's turn already recorded under it is not written again."""
    source: str | None = None
    """'crisis' when the reply was said whole; None when it was cut off, so a repeat answers it again."""
    sentences: tuple[dict[str, Any], ...] = ()
    """The sentence events said, as a repeated key replays them."""


@dataclass(frozen=True)
class Reply:
    """A reply committed whole: the turn a `done` event named, as a repeated key replays it."""

    turn_id: int
    source: str
    sentences: tuple[dict[str, Any], ...]
    timings: dict[str, Any]


@dataclass(frozen=True)
class KeptTurn:
    """A person's turn found by its idempotency key, and how far its answer got."""

    id: int
    text: str
    confidence: dict[str, Any] | None
    crisis: str | None
    """What the person was told when the turn was a crisis (the helpline); None otherwise."""
    reply: Reply | None
    """None when no whole reply was committed: the answer broke, and the turn is to be answered again."""


@dataclass(frozen=True)
class Conversation:
    """What of a session goes into the next prompt: a running summary, then the turns after it."""

    summary: str
    folded_through: int
    turns: tuple[Turn, ...]
