"""The queue for the one language model: how many turns hold or wait for it, bounded by `llm.queue_max`.

Turns that need no model (a crisis, an exercise) never take a place, and background work (the running
summary) waits until no turn holds one.
"""

from __future__ import annotations

import threading

from server.errors import LlmError


class ModelQueue:
    def __init__(self, queue_max: int) -> None:
        self._limit = 1 + queue_max
        self._turns = 0
        self._changed = threading.Condition()

    def admit(self) -> None:
        """Take a place for one turn, or refuse at once when too many already wait for the model."""
        with self._changed:
            if self._turns >= self._limit:
                raise LlmError(
                    "llm_busy",
                    f"{self._turns} turns are already in progress or waiting; try again in a few seconds",
                    503,
                )
            self._turns += 1

    def release(self) -> None:
        with self._changed:
            self._turns -= 1
            self._changed.notify_all()

    @property
    def busy(self) -> bool:
        """Whether a turn holds or waits for the model: background work should give way."""
        return self._turns > 0

    def wait_until_idle(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._turns == 0)
