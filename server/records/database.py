"""The SQLite file the records live in: made private, its schema brought up to date (a data dir from an
earlier version included), and opened for each call.

One short-lived connection per call keeps this safe under gunicorn's threads without a pool; the server
holds one more open for its whole life, so that the WAL's side files stay and reads go on when the disk
fills. A write the data dir will not take raises StorageError (server/records/storage.py) and is counted in
`writes`, which /health reads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib import resources
from pathlib import Path

from server.records.storage import WriteHealth, storage_fault

_LOGGER = logging.getLogger(__name__)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a data dir made by an earlier version up to the schema; columns are only ever added."""
    wanted = {
        "sessions": {
            "rolling_summary": "TEXT NOT NULL DEFAULT ''",
            "folded_through": "INTEGER NOT NULL DEFAULT 0",
        },
        "turns": {
            "prompt": "TEXT",
            "confidence": "TEXT",
            "idempotency_key": "TEXT",
            "source": "TEXT",
            "sentences": "TEXT",
        },
        "safety_events": {
            "hypothesis": "INTEGER NOT NULL DEFAULT 1",
            "heard_as": "TEXT NOT NULL DEFAULT ''",
        },
        "devices": {"expires_at": "REAL", "revoked_at": "REAL", "last_seen": "REAL"},
        "therapists": {
            "expires_at": "REAL",
            "revoked_at": "REAL",
            "last_seen": "REAL",
            "role": "TEXT NOT NULL DEFAULT 'therapist'",
            "password_hash": "TEXT",
            "totp_secret": "TEXT",
            "totp_last": "INTEGER",
        },
    }
    for table, columns in wanted.items():
        have = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    # Indexes on added columns: schema.sql cannot make them before an old data dir has the column.
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS turns_by_key ON turns (session_id, idempotency_key)")


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return found is not None


def _enroll_from_history(db: sqlite3.Connection) -> None:
    """A data dir from before enrolment: each device is enrolled for the clients it has already served, so
    no one's Pi goes quiet on upgrade. Therapists get no assignments: an admin gives each their clients."""
    db.execute(
        "INSERT OR IGNORE INTO enrollments (device_id, client_id) "
        "SELECT DISTINCT device_id, client_id FROM sessions WHERE device_id IS NOT NULL"
    )
    if db.execute("SELECT 1 FROM therapists LIMIT 1").fetchone() is not None:
        _LOGGER.warning(
            "therapists now see only the clients assigned to them: assign each with "
            "`tadbot admin assign THERAPIST CLIENT`"
        )


def private_dir(path: Path) -> None:
    """Create `path` 0700 or tighten a looser one: it holds clients' words, whoever starts us, any umask."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def private_file(path: Path) -> None:
    """Create `path` 0600 (or tighten it) before SQLite opens it; SQLite gives -wal/-shm the same mode."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    _tighten(path, 0o600)


def _tighten(path: Path, mode: int) -> None:
    was = path.stat().st_mode & 0o777
    if was != mode:
        path.chmod(mode)
        _LOGGER.warning("%s was mode %o; tightened to %o", path, was, mode)


class Database:
    """The file and its connections; `Records` adds what is read and written through them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = WriteHealth(path.parent)
        self._held: sqlite3.Connection | None = None
        private_dir(path.parent)
        private_file(path)
        schema = resources.files("server.records").joinpath("schema.sql").read_text(encoding="utf-8")
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            scoped = _has_table(db, "enrollments")
            db.executescript(schema)
            _add_missing_columns(db)
            if not scoped:
                _enroll_from_history(db)
        for suffix in ("-wal", "-shm"):  # an older version may have left them looser
            side = path.with_name(path.name + suffix)
            if side.exists():
                _tighten(side, 0o600)

    def hold(self) -> None:
        """Keep one connection open: SQLite deletes the -wal and -shm files when its last connection
        closes, and on a full disk could not make them again, so not even a token could be read."""
        if self._held is None:
            self._held = sqlite3.connect(self.path, check_same_thread=False)
            self._held.execute("SELECT count(*) FROM sqlite_master").fetchone()

    @contextmanager
    def _connect(self, busy_timeout_s: float = 10.0) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=busy_timeout_s)
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("PRAGMA synchronous=NORMAL")
                with db:
                    yield db
                if db.total_changes:
                    self.writes.succeeded()
            finally:
                db.close()
        except (sqlite3.OperationalError, OSError) as exc:
            fault = storage_fault(exc)
            if fault is None:
                raise
            self.writes.failed(fault.cause)
            raise fault from exc

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One connection and transaction for a module that keeps its own SQL (records/retention.py)."""
        return self._connect()

    def check(self) -> None:
        with self._connect() as db:
            db.execute("SELECT 1").fetchone()
