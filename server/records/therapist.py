"""The therapist's view of the records: a caller's sessions, one session whole, the audit log, and erasing a
client."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from server.errors import NotFound
from server.records.sessions import SessionRecords

_LOGGER = logging.getLogger(__name__)


class TherapistRecords(SessionRecords):
    """Reads a session through `session`, so it stands on the session records."""

    def list_sessions(self, clients: Sequence[str]) -> list[dict[str, Any]]:
        """The sessions of these clients (a caller's own), newest first."""
        query = (
            "SELECT s.id, c.pseudonym AS client, s.started_at, s.ended_at, "
            "(SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id AND t.role = 'user') AS turns, "
            "(SELECT COUNT(*) FROM safety_events e WHERE e.session_id = s.id) AS safety_events, "
            "EXISTS (SELECT 1 FROM safety_events e WHERE e.session_id = s.id AND e.level = 'crisis') "
            "AS crisis "
            "FROM sessions s JOIN clients c ON c.id = s.client_id"
        )
        marks = ", ".join("?" * len(clients))
        with self._connect() as db:
            rows = db.execute(
                query + f" WHERE c.pseudonym IN ({marks}) ORDER BY s.started_at DESC", tuple(clients)
            ).fetchall()
        return [{**dict(r), "crisis": bool(r["crisis"])} for r in rows]

    def session_log(self, session_id: str) -> dict[str, Any]:
        """Everything a therapist reads about one session."""
        head = self.session(session_id)
        with self._connect() as db:
            turns = [
                {
                    **dict(r),
                    "timings": json.loads(r["timings"]),
                    "confidence": json.loads(r["confidence"]) if r["confidence"] else None,
                }
                for r in db.execute(
                    "SELECT id, role, text, created_at, timings, confidence, source FROM turns "
                    "WHERE session_id = ? ORDER BY id",
                    (session_id,),
                )
            ]
            emotions = [
                {**dict(r), "top3": json.loads(r["top3"])}
                for r in db.execute(
                    "SELECT t, source, faces, top3 FROM emotion_samples WHERE session_id = ? ORDER BY t, id",
                    (session_id,),
                )
            ]
            safety = [
                dict(r)
                for r in db.execute(
                    "SELECT turn_id, t, level, trigger, message, hypothesis, heard_as FROM safety_events "
                    "WHERE session_id = ? ORDER BY t, id",
                    (session_id,),
                )
            ]
        return {
            "session_id": head.id,
            "client": head.client,
            "started_at": head.started_at,
            "ended_at": head.ended_at,
            "summary": head.summary,
            "turns": turns,
            "emotion_samples": emotions,
            "safety_events": safety,
        }

    def audit(self, actor: str, action: str, target: str = "") -> None:
        with self._connect() as db:
            self.audit_in(db, actor, action, target)

    @staticmethod
    def audit_in(db: sqlite3.Connection, actor: str, action: str, target: str) -> None:
        """The audit line inside the caller's transaction: the action and its line commit together."""
        db.execute(
            "INSERT INTO audit_log (t, actor, action, target) VALUES (?, ?, ?, ?)",
            (time.time(), actor, action, target),
        )

    def audit_lines(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest lines of the audit log, newest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT t, actor, action, target FROM audit_log ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in rows]

    def require_client(self, client: str) -> None:
        with self._connect() as db:
            if db.execute("SELECT 1 FROM clients WHERE pseudonym = ?", (client,)).fetchone() is None:
                raise NotFound("unknown_client", f"no client {client!r}")

    def delete_client(self, client: str, actor: str) -> dict[str, int]:
        """Erase a client and, through the cascades, every session, turn, sample and event of theirs."""
        with self._connect() as db:
            row = db.execute("SELECT id FROM clients WHERE pseudonym = ?", (client,)).fetchone()
            if row is None:
                raise NotFound("unknown_client", f"no client {client!r}")
            (sessions,) = db.execute(
                "SELECT COUNT(*) FROM sessions WHERE client_id = ?", (row["id"],)
            ).fetchone()
            db.execute("DELETE FROM clients WHERE id = ?", (row["id"],))
            # The audit line records that an erasure happened, not who was erased.
            self.audit_in(db, actor, "delete_client", f"{sessions} sessions")
        _LOGGER.info("erased a client: %d sessions", sessions)
        return {"sessions": int(sessions)}
