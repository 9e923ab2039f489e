"""The daemon's states, and every change between them, in one place.

Each transition is one log line with how long the state it leaves lasted, so the journal alone shows where a
turn's time went: `state sending -> speaking after 1.84 s (first sentence)`.

The state machine is also the only thing that opens and closes the microphone's half-duplex gate: shut from
the moment a turn is sent until its whole reply has been said (sentences that stream in with gaps between
them included), open again, after the room's echo, when the device is listening.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from enum import StrEnum
from typing import Protocol

_LOGGER = logging.getLogger(__name__)

_KEEP = 200


class State(StrEnum):
    STARTING = "starting"
    WAITING = "waiting"
    """The server cannot be reached yet; retrying."""
    LISTENING = "listening"
    HEARING = "hearing"
    """The person is speaking: from the endpointer's start of speech to its end."""
    SENDING = "sending"
    """A turn is on its way; nothing heard back yet."""
    SPEAKING = "speaking"
    OFFLINE = "offline"
    """The server failed a turn: speaking the device's own exercise."""
    ENDED = "ended"
    """No session: the person said goodbye, or was silent for `idle_end_s`. Nothing is said or posted
    until they speak again."""
    STOPPING = "stopping"


_SHUT = frozenset({State.SENDING, State.SPEAKING, State.OFFLINE, State.STOPPING})
"""States in which the microphone is muted: the device is talking, or about to."""


_ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset(
        {State.WAITING, State.LISTENING, State.SENDING, State.SPEAKING, State.STOPPING}
    ),
    State.WAITING: frozenset({State.LISTENING, State.SENDING, State.SPEAKING, State.OFFLINE, State.STOPPING}),
    State.LISTENING: frozenset(
        {State.HEARING, State.SENDING, State.SPEAKING, State.WAITING, State.ENDED, State.STOPPING}
    ),
    State.HEARING: frozenset(
        {State.LISTENING, State.ENDED, State.SENDING, State.SPEAKING, State.WAITING, State.STOPPING}
    ),
    State.SENDING: frozenset(
        {State.SPEAKING, State.OFFLINE, State.LISTENING, State.WAITING, State.ENDED, State.STOPPING}
    ),
    State.SPEAKING: frozenset(
        {State.SENDING, State.LISTENING, State.OFFLINE, State.WAITING, State.ENDED, State.STOPPING}
    ),
    State.OFFLINE: frozenset({State.LISTENING, State.SPEAKING, State.WAITING, State.ENDED, State.STOPPING}),
    State.ENDED: frozenset(
        {State.HEARING, State.SENDING, State.SPEAKING, State.WAITING, State.LISTENING, State.STOPPING}
    ),
    State.STOPPING: frozenset(),
}


class Muting(Protocol):
    """The microphone's half-duplex gate (device.listen.Gate), as the state machine drives it."""

    def mute(self) -> None: ...

    def unmute(self, tail_s: float = ...) -> None: ...


class StateMachine:
    """The current state and when it began; a transition the table does not allow is a bug, and raises."""

    def __init__(self, gate: Muting | None = None, *, tail_s: float = 0.3) -> None:
        self._gate = gate
        self._tail_s = tail_s
        self._lock = threading.Lock()
        self.state = State.STARTING
        self._since = time.monotonic()
        self.history: collections.deque[tuple[State, State, float]] = collections.deque(maxlen=_KEEP)
        """(from, to, seconds spent in `from`) for the latest transitions; bounded, as the daemon runs for
        months (the journal has them all)."""

    def go_from(self, expected: frozenset[State], new: State, why: str = "") -> State | None:
        """Go to `new` only from one of the `expected` states, in one step: for another thread (the
        listener's), whose view of the state may be stale. Returns the state it left, or None."""
        with self._lock:
            old = self.state
            if old not in expected:
                return None
            self._go(old, new, why)
        return old

    def go(self, new: State, why: str = "") -> None:
        with self._lock:
            self._go(self.state, new, why)

    def _go(self, old: State, new: State, why: str) -> None:
        """One transition, under the lock."""
        if new == old:
            return
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"state {old} cannot go to {new}")
        now = time.monotonic()
        spent = now - self._since
        self.state, self._since = new, now
        self.history.append((old, new, spent))
        if self._gate is not None and (new in _SHUT) != (old in _SHUT):
            if new in _SHUT:
                self._gate.mute()
            else:
                self._gate.unmute(self._tail_s)
        _LOGGER.info("state %s -> %s after %.2f s%s", old, new, spent, f" ({why})" if why else "")
