"""When the data dir will not take a write: a full disk, a card remounted read-only, a database held locked.

The person must still hear their reply, so such a failure is told apart from a bug: it becomes one
`StorageError` (503 with Retry-After, never a traceback), the turn goes on unrecorded, and /health says
degraded until a write succeeds again. Log lines name the failure, never the words that were lost.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from server.errors import TadbotError

_LOGGER = logging.getLogger(__name__)

LOW_DISK_MB = 50
"""Below this much free space /health says degraded, before writes begin to fail."""

_FAULTS = (
    "database or disk is full",
    "disk i/o error",
    "readonly database",
    "read-only file system",
    "unable to open database file",
    "database is locked",
    "no space left",
)
"""SQLite's and the kernel's words for a data dir that cannot be written; anything else is a bug."""


class StorageError(TadbotError):
    status = 503
    retry_after_s = 30.0

    def __init__(self, cause: str) -> None:
        super().__init__(
            "storage_unavailable",
            f"the server cannot write to its data dir just now ({cause}); try again in a minute. Its "
            "admin sees why in GET /api/v1/health and the server log",
        )
        self.cause = cause


def storage_fault(exc: BaseException) -> StorageError | None:
    """The StorageError `exc` amounts to, if it is a storage failure rather than a bug."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, (sqlite3.OperationalError, OSError)):
        cause = str(exc)
        if any(fault in cause.lower() for fault in _FAULTS):
            return StorageError(cause)
    return None


class WriteHealth:
    """The last write failure of one data dir, until a write succeeds again: what /health reports."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._failed: tuple[float, str] | None = None
        self._lock = threading.Lock()

    def failed(self, cause: str) -> None:
        with self._lock:
            first = self._failed is None
            self._failed = (time.time(), cause)
        if first:
            _LOGGER.error("the data dir %s stopped taking writes: %s", self.data_dir, cause)

    def succeeded(self) -> None:
        with self._lock:
            was, self._failed = self._failed, None
        if was is not None:
            _LOGGER.warning("the data dir %s takes writes again", self.data_dir)

    def problem(self) -> str | None:
        """Why the data dir is not healthy, or None: a failed write, no write access, or little space."""
        with self._lock:
            failed = self._failed
        if failed is not None:
            return f"writes fail since {time.strftime('%H:%M:%S', time.localtime(failed[0]))}: {failed[1]}"
        if not os.access(self.data_dir, os.W_OK):
            return "the data dir is read-only"
        free_mb = shutil.disk_usage(self.data_dir).free / 2**20
        if free_mb < LOW_DISK_MB:
            return f"only {free_mb:.0f} MB free on the data dir's disk"
        return None
