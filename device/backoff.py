"""Growing waits between retries, so a loop that cannot get what it needs neither spins nor floods the log."""

from __future__ import annotations

import threading
from collections.abc import Sequence

DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits after the 1st, 2nd, ... failure in a row; the last one repeats."""


class Backoff:
    """Counts failures in a row and says how long to wait and whether this failure is worth a log line.

    `stop` ends a wait early; the loop that owns the back-off then gives up. Tests use it to end a retry
    loop that would otherwise go on for as long as the hardware or server stays away.
    """

    def __init__(self, delays: Sequence[float] = DELAYS_S, stop: threading.Event | None = None) -> None:
        if not delays:
            raise ValueError("a back-off needs at least one delay")
        self._delays = tuple(delays)
        self._stop = stop or threading.Event()
        self.failures = 0

    def failed(self) -> float:
        """Count one more failure; returns the seconds to wait before the next try."""
        self.failures += 1
        return self._delays[min(self.failures, len(self._delays)) - 1]

    @property
    def worth_logging(self) -> bool:
        """True on the 1st, 2nd, 4th, 8th ... failure in a row: an outage of a day costs a dozen lines."""
        return self.failures & (self.failures - 1) == 0

    def wait(self, seconds: float) -> bool:
        """Sleep `seconds`; False (at once) when stopped, so the caller knows to give up."""
        return not self._stop.wait(seconds)

    def reset(self) -> None:
        """The thing works again: the next failure starts from the shortest wait."""
        self.failures = 0
