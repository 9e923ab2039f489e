"""The turns streaming right now, by session and by idempotency key.

A device that lost a reply sends the same turn again under the same `Idempotency-Key`. While the first
attempt is still streaming, the repeat is refused with 409 `turn_in_progress` (it may yet finish and be
replayed from the record). The idle sweep leaves a session alone while one of its turns streams.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any

from server.errors import TadbotError

RETRY_AFTER_S = 5
"""What a repeat of a turn still streaming is asked to wait."""


class TurnInProgress(TadbotError):
    status = 409
    retry_after_s = RETRY_AFTER_S


class TurnsInFlight:
    def __init__(self) -> None:
        self._sessions: Counter[str] = Counter()
        self._keys: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def begin(self, session_id: str, key: str | None) -> None:
        """Count a turn in; refuse a key whose first attempt still streams."""
        with self._lock:
            if key is not None:
                if (session_id, key) in self._keys:
                    raise TurnInProgress(
                        "turn_in_progress",
                        "a turn with this Idempotency-Key is still being answered; send it again in "
                        f"{RETRY_AFTER_S} s to get its reply from the record",
                    )
                self._keys.add((session_id, key))
            self._sessions[session_id] += 1

    def end(self, session_id: str, key: str | None) -> None:
        with self._lock:
            if key is not None:
                self._keys.discard((session_id, key))
            self._sessions[session_id] -= 1
            if self._sessions[session_id] <= 0:
                del self._sessions[session_id]

    def busy(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions


class TurnStream:
    """A turn's events. Reading them to the end, or closing the stream (the device hung up), ends the turn
    in flight, also when it never started: a WSGI server closes a response it never read, and closing a
    generator that never ran would run none of its `finally`."""

    def __init__(self, events: Generator[dict[str, Any]], end: Callable[[], None]) -> None:
        self._events = events
        self._end: Callable[[], None] | None = end

    def __iter__(self) -> TurnStream:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return next(self._events)
        except BaseException:
            self.close()
            raise

    def __del__(self) -> None:
        # Like a generator: one dropped without being closed is closed.
        self.close()

    def close(self) -> None:
        """Close the events first, so a cut-off reply is recorded before a repeat can look for it."""
        try:
            self._events.close()
        finally:
            end, self._end = self._end, None
            if end is not None:
                end()
