"""Sessions a device left open are ended by the server: the device may have lost power, the network or
its state, and a session never ended keeps its state in memory and never reaches the vector memory.

One background thread wakes every SWEEP_MAX_S (sooner for a short `server.session_idle_s`) and hands the
job the time before which a session counts as idle. A failing sweep is logged and tried again at the next
wake; it never takes the thread down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)

SWEEP_MAX_S = 60.0
"""The longest wait between sweeps: a session is ended at most this long after it became idle."""
SWEEP_MIN_S = 0.05


class IdleSweep:
    def __init__(self, idle_s: float, sweep: Callable[[float], object]) -> None:
        """`sweep(before)` ends the sessions with nothing since `before` (a time.time()); `idle_s` 0: off."""
        self._idle_s = idle_s
        self._sweep = sweep
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.interval_s = min(SWEEP_MAX_S, max(SWEEP_MIN_S, idle_s / 4))
        if idle_s > 0:
            self._thread = threading.Thread(target=self._run, name="tadbot-idle-sweep", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _LOGGER.warning("the idle-session sweep did not stop within %g s", timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self._sweep(time.time() - self._idle_s)
            except Exception:
                _LOGGER.exception("the idle-session sweep failed; trying again in %g s", self.interval_s)
