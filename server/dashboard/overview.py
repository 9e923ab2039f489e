"""What the dashboard lists: a therapist's clients and sessions with their flags, and which sessions they have
not opened yet. Read-only SQL over the records, scoped to the clients assigned to the reader."""

from __future__ import annotations

import time
from typing import Any

from server.records.store import Records

_FLAGS = (
    "(SELECT COUNT(*) FROM safety_events e WHERE e.session_id = s.id AND e.level = 'crisis') AS crisis, "
    "(SELECT COUNT(*) FROM safety_events e WHERE e.session_id = s.id AND e.level = 'concern') AS concern, "
    "(SELECT COUNT(*) FROM safety_events e WHERE e.session_id = s.id AND e.level = 'blocked') AS blocked, "
    "(SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id AND t.role = 'user') AS turns, "
    "NOT EXISTS (SELECT 1 FROM session_reads r WHERE r.session_id = s.id AND r.therapist_id = ?) AS unread"
)


def clients(records: Records, therapist_id: int) -> list[dict[str, Any]]:
    """The reader's clients, those with a crisis first, then by their latest session."""
    query = (
        "SELECT c.pseudonym AS client, COUNT(s.id) AS sessions, MAX(s.started_at) AS last_session, "
        "COALESCE(SUM(f.crisis), 0) AS crisis, COALESCE(SUM(f.concern), 0) AS concern, "
        "COALESCE(SUM(f.unread), 0) AS unread "
        "FROM assignments a JOIN clients c ON c.id = a.client_id "
        f"LEFT JOIN sessions s ON s.client_id = c.id LEFT JOIN (SELECT s.id, {_FLAGS} FROM sessions s) f "
        "ON f.id = s.id WHERE a.therapist_id = ? GROUP BY c.id "
        "ORDER BY crisis > 0 DESC, last_session DESC, c.pseudonym"
    )
    with records.transaction() as db:
        return [dict(row) for row in db.execute(query, (therapist_id, therapist_id))]


def sessions(records: Records, therapist_id: int, client: str, limit: int = 100) -> list[dict[str, Any]]:
    """One client's sessions, newest first, with their flags and whether this reader has opened them."""
    query = (
        f"SELECT s.id, s.started_at, s.ended_at, {_FLAGS} FROM sessions s "
        "JOIN clients c ON c.id = s.client_id WHERE c.pseudonym = ? ORDER BY s.started_at DESC LIMIT ?"
    )
    with records.transaction() as db:
        return [dict(row) for row in db.execute(query, (therapist_id, client, limit))]


def mark_read(records: Records, therapist_id: int, session_id: str) -> None:
    with records.transaction() as db:
        db.execute(
            "INSERT INTO session_reads (therapist_id, session_id, t) VALUES (?, ?, ?) "
            "ON CONFLICT DO UPDATE SET t = excluded.t",
            (therapist_id, session_id, time.time()),
        )


def erasure(records: Records, client: str) -> dict[str, int]:
    """What erasing a client takes with it, counted for the confirmation page."""
    with records.transaction() as db:
        row = db.execute(
            "SELECT COUNT(DISTINCT s.id) AS sessions, "
            "(SELECT COUNT(*) FROM turns t JOIN sessions s2 ON s2.id = t.session_id "
            "WHERE s2.client_id = c.id) AS turns, "
            "(SELECT COUNT(*) FROM emotion_samples m JOIN sessions s3 ON s3.id = m.session_id "
            "WHERE s3.client_id = c.id) AS emotion_samples "
            "FROM clients c LEFT JOIN sessions s ON s.client_id = c.id WHERE c.pseudonym = ? GROUP BY c.id",
            (client,),
        ).fetchone()
    return dict(row) if row is not None else {"sessions": 0, "turns": 0, "emotion_samples": 0}
