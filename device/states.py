"""The daemon's states, and every change between them, in one place.

Each transition is one log line with how long the state it leaves lasted, so the journal alone shows where a
turn's time went: `state sending -> speaking after 1.84 s (first sentence)`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from enum import StrEnum

_LOGGER = logging.getLogger(__name__)

_KEEP = 200


class State(StrEnum):
    STARTING = "starting"
    WAITING = "waiting"
    """The server cannot be reached yet; retrying."""
    LISTENING = "listening"
    SENDING = "sending"
    """A turn is on its way; nothing heard back yet."""
    SPEAKING = "speaking"
    OFFLINE = "offline"
    """The server failed a turn: speaking the device's own exercise."""
    STOPPING = "stopping"


_ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.WAITING, State.LISTENING, State.SENDING, State.STOPPING}),
    State.WAITING: frozenset({State.LISTENING, State.SENDING, State.OFFLINE, State.STOPPING}),
    State.LISTENING: frozenset({State.SENDING, State.WAITING, State.STOPPING}),
    State.SENDING: frozenset({State.SPEAKING, State.OFFLINE, State.LISTENING, State.WAITING, State.STOPPING}),
    State.SPEAKING: frozenset({State.LISTENING, State.OFFLINE, State.WAITING, State.STOPPING}),
    State.OFFLINE: frozenset({State.LISTENING, State.WAITING, State.STOPPING}),
    State.STOPPING: frozenset(),
}


class StateMachine:
    """The current state and when it began; a transition the table does not allow is a bug, and raises."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = State.STARTING
        self._since = time.monotonic()
        self.history: collections.deque[tuple[State, State, float]] = collections.deque(maxlen=_KEEP)
        """(from, to, seconds spent in `from`) for the latest transitions; bounded, as the daemon runs for
        months (the journal has them all)."""

    def go(self, new: State, why: str = "") -> None:
        with self._lock:
            old = self.state
            if new == old:
                return
            if new not in _ALLOWED[old]:
                raise RuntimeError(f"state {old} cannot go to {new}")
            now = time.monotonic()
            spent = now - self._since
            self.state, self._since = new, now
            self.history.append((old, new, spent))
        _LOGGER.info("state %s -> %s after %.2f s%s", old, new, spent, f" ({why})" if why else "")
