"""A crisis turn's record: written after the helpline is spoken, and retried until it lands.

A locked or full database must never hold up the helpline or turn it into an error, so the engine says the
crisis lines first and hands their record here. The record is one transaction (the person's turn, the
crisis event, the reply, the turn's face readings), so a retry never leaves half of it or writes it twice.
A few quick tries run while the stream waits to send `done`; when they all fail, one background thread
goes on trying, backing off, for RETRY_FOR_S, and logs an error if it must give up. The person never
hears about any of it. Log lines name the session, never the words.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from server.records.rows import CrisisTurn
from server.records.storage import StorageError
from server.records.store import Records

_LOGGER = logging.getLogger(__name__)

QUICK_TRIES = 3
QUICK_BUSY_S = 0.25
"""How long each quick try waits for another writer's lock: with the backoff between tries, `done` waits
about a second at most."""
QUICK_BACKOFF_S = 0.1
"""The pause after the first quick try; it doubles after each."""
RETRY_BACKOFF_S = 0.5
"""The first pause in the background; it doubles after each try, up to RETRY_BACKOFF_MAX_S."""
RETRY_BACKOFF_MAX_S = 30.0
RETRY_FOR_S = 900.0
"""How long the background goes on trying one record before it logs it as lost."""


class CrisisRecorder:
    def __init__(self, records: Callable[[], Records]) -> None:
        """`records` is read at each try: the engine's components may be replaced while it runs."""
        self._records = records
        self._queue: queue.Queue[CrisisTurn | None] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tadbot-crisis-record", daemon=True)
        self._thread.start()

    def keep(self, turn: CrisisTurn) -> int | None:
        """Write the record now if the database allows it within about a second, and return the reply's
        turn id; otherwise leave it to the background and return None. Never raises."""
        pause = QUICK_BACKOFF_S
        for attempt in range(1, QUICK_TRIES + 1):
            written, finished = self._try(turn, attempt, QUICK_BUSY_S)
            if finished:
                return written
            if attempt < QUICK_TRIES:
                time.sleep(pause)
                pause *= 2
        with self._lock:
            self._waiting += 1
            self._idle.clear()
        self._queue.put(turn)
        return None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no record waits to be written (tests, and shutdown, wait for the background)."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Give each waiting record one last try, then stop; what still cannot be written is logged."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (turn := self._queue.get()) is not None:
            self._retry(turn)
            with self._lock:
                self._waiting -= 1
                if not self._waiting:
                    self._idle.set()

    def _retry(self, turn: CrisisTurn) -> None:
        deadline = time.monotonic() + RETRY_FOR_S
        pause = RETRY_BACKOFF_S
        attempt = QUICK_TRIES
        while True:
            last = self._stopping.wait(pause) or time.monotonic() >= deadline
            attempt += 1
            # The default lock wait: here nobody is waiting for the answer.
            if self._try(turn, attempt)[1]:
                return
            if last:
                _LOGGER.error(
                    "session %s: the crisis record could not be written in %d tries and is lost; the "
                    "crisis alert, if configured, was sent",
                    turn.session_id,
                    attempt,
                )
                return
            pause = min(pause * 2, RETRY_BACKOFF_MAX_S)

    def _try(self, turn: CrisisTurn, attempt: int, busy_timeout_s: float = 10.0) -> tuple[int | None, bool]:
        """One write: (the reply's turn id, whether trying is over). A locked, busy or full database
        (StorageError) is worth another try; anything else, such as the client erased
        meanwhile, is not."""
        try:
            written = self._records().add_crisis_turn(turn, busy_timeout_s=busy_timeout_s)
        except StorageError as exc:
            _LOGGER.warning(
                "session %s: crisis record not written on try %d: %s", turn.session_id, attempt, exc.cause
            )
            return None, False
        except Exception:
            _LOGGER.exception("session %s: crisis record not written; not retried", turn.session_id)
            return None, True
        if attempt > 1:
            _LOGGER.info("session %s: crisis record written on try %d", turn.session_id, attempt)
        return written, True
