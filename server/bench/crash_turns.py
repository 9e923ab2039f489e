"""The simulated device's side of `tadbot bench crash`: sending a turn and reading its events, killing the
server at a seeded point of one turn's stream, and the tally of what was acknowledged and what failed.
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from server.bench.live import LiveServer, OpenTurn, TurnRefused
from server.bench.utterances import Utterance

KILL_AFTER_EVENTS = 8
"""A kill by events falls after 0 (before the first) to this many; past a stream's end, right after `done`."""
KILL_DELAY_S = 2.0
"""A kill by time falls this long at most after the turn is sent."""
TURN_TIMEOUT_S = 120.0
"""The longest the device waits for any part of an answer."""


@dataclass(frozen=True)
class Acknowledged:
    """A turn whose `done` arrived: what the device said, heard back and was told was kept."""

    session_id: str
    key: str
    said: str
    """The transcript the server sent: the words it records."""
    turn_id: int | None
    source: str
    sentences: tuple[str, ...]


@dataclass
class Attempt:
    """What the device got from one try at a turn."""

    events: int = 0
    said: str | None = None
    sentences: list[str] = field(default_factory=list)
    done: dict[str, Any] | None = None
    error: str = ""
    """An error event's code, an HTTP refusal, or how the connection broke."""

    def acknowledged(self, session_id: str, key: str) -> Acknowledged | None:
        if self.done is None:
            return None
        turn_id = self.done.get("turn_id")
        return Acknowledged(
            session_id,
            key,
            self.said or "",
            None if turn_id is None else int(turn_id),
            str(self.done.get("source", "")),
            tuple(self.sentences),
        )


@dataclass
class Tally:
    """The run's counts and every failure found, with what showed it."""

    acknowledged: dict[tuple[str, str], Acknowledged] = field(default_factory=dict)
    kill_points: Counter[str] = field(default_factory=Counter)
    """Where in the broken turn the kill fell: before its first event, mid-stream, or after `done`."""
    kills_by: Counter[str] = field(default_factory=Counter)
    """What chose the moment: a count of events, or a delay."""
    failures: dict[str, list[str]] = field(default_factory=dict)
    spoken: int = 0
    typed: int = 0
    memory_items: list[int] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    """How long each restart took, to the model loaded."""
    lost: set[tuple[str, str]] = field(default_factory=set)

    def fail(self, check: str, detail: str) -> None:
        self.failures.setdefault(check, []).append(detail)

    def keep(self, ack: Acknowledged | None) -> None:
        if ack is not None:
            self.acknowledged[(ack.session_id, ack.key)] = ack


def send_turn(server: LiveServer, session_id: str, utterance: Utterance, key: str) -> Attempt:
    """One try at a turn, read to its end."""
    attempt = Attempt()
    try:
        call = server.open_turn(
            session_id, utterance.text, audio=utterance.wav, key=key, timeout=TURN_TIMEOUT_S
        )
    except OSError as exc:
        attempt.error = f"not sent: {type(exc).__name__}: {exc}"
        return attempt
    try:
        _read(call, attempt, None)
    finally:
        call.close()
    return attempt


def kill_during_turn(
    server: LiveServer, session_id: str, utterance: Utterance, key: str, rng: random.Random, tally: Tally
) -> Attempt:
    """A turn during which the server is killed: after a number of its events, or after a delay."""
    attempt = Attempt()
    by_events = rng.random() < 0.5
    after_events = rng.randint(0, KILL_AFTER_EVENTS)
    timer = threading.Timer(rng.uniform(0, KILL_DELAY_S), server.kill)
    if not by_events:
        timer.start()
    try:
        call: OpenTurn | None = server.open_turn(
            session_id, utterance.text, audio=utterance.wav, key=key, timeout=TURN_TIMEOUT_S
        )
    except OSError as exc:  # the delay ran out before the request was sent
        attempt.error, call = f"not sent: {type(exc).__name__}", None
    try:
        if call is not None:
            _read(call, attempt, after_events if by_events else None)
        if by_events:
            server.kill()
    finally:
        if call is not None:
            call.close()
        if not by_events:
            timer.join()
    tally.kill_points[kill_point(attempt)] += 1
    tally.kills_by["events" if by_events else "delay"] += 1
    return attempt


def kill_point(attempt: Attempt) -> str:
    """Where in its turn the kill fell, as the report counts it."""
    return "after_done" if attempt.done else "mid_stream" if attempt.events else "before_first_event"


def _read(call: OpenTurn, attempt: Attempt, stop_after: int | None) -> None:
    """Read the turn's events into `attempt`, stopping after `stop_after` of them (None: to the end)."""
    if stop_after == 0:
        return
    try:
        for item in call.events():
            attempt.events += 1
            kind = item.get("type")
            if kind == "transcript":
                attempt.said = str(item["text"])
            elif kind == "sentence":
                attempt.sentences.append(str(item["text"]))
            elif kind == "done":
                attempt.done = item
            elif kind == "error":
                attempt.error = f"error event {item.get('code')}: {item.get('message')}"
            if stop_after is not None and attempt.events >= stop_after:
                return
    except TurnRefused as exc:
        attempt.error = f"refused: {exc}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        attempt.error = f"broken: {type(exc).__name__}"
