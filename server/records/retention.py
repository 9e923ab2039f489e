"""Data retention: purge sessions last active before a cutoff, with everything recorded or remembered of them.

`tadbot admin purge` runs this; tadbot-retention.timer runs it daily with `retention.days`. The server may
be running meanwhile: the records go in one SQLite transaction (WAL lets the server read on), and the
vector memory is purged afterwards by metadata filter, which a running server's chromadb sees at once.

A client left with no sessions keeps its pseudonym row. The row holds no words, and keeping it keeps
`DELETE /api/v1/clients/{client}` working for that client, which erases by pseudonym (and answers 404
for a client it does not know).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock
from typing import Protocol

from server.config import Settings
from server.errors import ConfigError, TadbotError
from server.records.store import Records
from server.sections import MAX_RETENTION_DAYS


class Memory(Protocol):
    """What a purge needs of the vector memory (server.memory.store.Memory), which lies beside the records."""

    def sessions_before(self, ts: float) -> set[str]: ...

    def forget_sessions(self, session_ids: Iterable[str], *, dry_run: bool = False) -> int: ...


# A session's last activity: its end, else its latest turn or face reading, else its start.
_DUE = """
INSERT INTO purged
SELECT s.id FROM sessions s
WHERE COALESCE(s.ended_at, MAX(
    s.started_at,
    COALESCE((SELECT MAX(t.created_at) FROM turns t WHERE t.session_id = s.id), 0),
    COALESCE((SELECT MAX(e.t) FROM emotion_samples e WHERE e.session_id = s.id), 0)
)) < ?
"""
# Children first: deleting a turn would cascade to its safety events and hide them from the count.
_TABLES = ("safety_events", "emotion_samples", "turns")


@dataclass(frozen=True)
class PurgeReport:
    before: datetime
    dry_run: bool
    sessions: int
    turns: int
    emotion_samples: int
    safety_events: int
    memories: int
    memory_error: str = ""
    """Why the memories were not purged (or counted); empty when they were."""

    def line(self) -> str:
        """The one summary line the CLI prints, the same every day so a journal is easy to scan."""
        memories = f"{self.memories} memories"
        if self.memory_error:
            memories = "memories not counted" if self.dry_run else "memories not purged"
        return (
            f"{'would purge' if self.dry_run else 'purged'} {self.sessions} sessions ({self.turns} turns, "
            f"{self.emotion_samples} emotion samples, {self.safety_events} safety events, {memories}) "
            f"older than {self.before:%Y-%m-%d}"
        )


def parse_days(flag: str, text: str) -> int:
    """A day count from the command line; a bad one is a one-line error, as a bad config value is."""
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise ConfigError(
            "bad_days", f"{flag} {text!r}: give a whole number of days from 1 to {MAX_RETENTION_DAYS}"
        )
    return days


def cutoff_for(days: int, today: date | None = None) -> datetime:
    """Local midnight starting the day `days` days ago.

    Whole days make "older than YYYY-MM-DD" exact, and a daily run keeps `days` whole days plus today.
    """
    return datetime.combine((today or date.today()) - timedelta(days=days), clock.min)


def purge_data_dir(
    settings: Settings, days: int, open_memory: Callable[[], Memory | None], *, dry_run: bool = False
) -> PurgeReport:
    """Purge the configured data dir: the records, then the vector memory `open_memory` gives (None where
    none was ever made)."""
    records = Records(settings.data_path / "tadbot.sqlite3")
    return purge(records, open_memory, cutoff_for(days), dry_run=dry_run)


def purge(
    records: Records, open_memory: Callable[[], Memory | None], before: datetime, *, dry_run: bool = False
) -> PurgeReport:
    """Delete sessions last active before `before`, then their memories; `dry_run` only counts.

    The records go even when the memory cannot be reached: the report says so, and a re-run finds the
    memories left behind, since their sessions are gone from the records.
    """
    cutoff = before.timestamp()
    sessions, counts = _purge_records(records, cutoff, before, dry_run)
    memories, memory_error = 0, ""
    try:
        memory = open_memory()
        if memory is not None:
            memories = _purge_memories(memory, records, sessions, cutoff, dry_run)
    except (TadbotError, ImportError) as exc:
        reason = exc.message if isinstance(exc, TadbotError) else str(exc)
        memory_error = "the vector memory could not be reached, so memories were " + (
            f"not counted: {reason}"
            if dry_run
            else f"not purged (the records were); fix it and re-run the purge: {reason}"
        )
    return PurgeReport(
        before=before,
        dry_run=dry_run,
        sessions=len(sessions),
        turns=counts["turns"],
        emotion_samples=counts["emotion_samples"],
        safety_events=counts["safety_events"],
        memories=memories,
        memory_error=memory_error,
    )


def _purge_records(
    records: Records, cutoff: float, before: datetime, dry_run: bool
) -> tuple[list[str], dict[str, int]]:
    """One transaction, taken for writing up front, so no turn lands between choosing and deleting."""
    with records.transaction() as db:
        db.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
        db.execute("CREATE TEMP TABLE purged (id TEXT PRIMARY KEY)")
        db.execute(_DUE, (cutoff,))
        sessions = [row["id"] for row in db.execute("SELECT id FROM purged")]
        counts = {table: _count(db, table) for table in _TABLES}
        if not dry_run:
            for table in _TABLES:
                db.execute(f"DELETE FROM {table} WHERE session_id IN (SELECT id FROM purged)")
            db.execute("DELETE FROM sessions WHERE id IN (SELECT id FROM purged)")
            # Counts and the cutoff only: the audit log never says whose sessions went.
            db.execute(
                "INSERT INTO audit_log (t, actor, action, target) VALUES (?, ?, ?, ?)",
                (
                    time.time(),
                    "admin",
                    "purge",
                    f"{len(sessions)} sessions, {counts['turns']} turns, {counts['emotion_samples']} "
                    f"emotion samples, {counts['safety_events']} safety events; last active before "
                    f"{before.isoformat(timespec='minutes')}",
                ),
            )
        db.execute("DROP TABLE temp.purged")
    return sessions, counts


def _count(db: sqlite3.Connection, table: str) -> int:
    (count,) = db.execute(
        f"SELECT COUNT(*) FROM {table} WHERE session_id IN (SELECT id FROM purged)"
    ).fetchone()
    return int(count)


def _purge_memories(
    memory: Memory, records: Records, sessions: Iterable[str], cutoff: float, dry_run: bool
) -> int:
    """The purged sessions' memories, and any older one whose session is no longer in the records."""
    stale = memory.sessions_before(cutoff)
    with records.transaction() as db:
        kept = {row["id"] for row in db.execute("SELECT id FROM sessions")}
    return memory.forget_sessions({*sessions, *(stale - kept)}, dry_run=dry_run)
