"""A session's life in the records: started for a client, read back, found idle, and ended."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable

from server.errors import NotFound
from server.records.database import Database
from server.records.rows import SessionRow


class SessionRecords(Database):
    """Sessions and the clients they are for."""

    def start_session(self, client: str, device_id: int | None) -> str:
        session_id = uuid.uuid4().hex
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO clients (pseudonym, created_at) VALUES (?, ?) "
                "ON CONFLICT (pseudonym) DO NOTHING",
                (client, now),
            )
            (client_id,) = db.execute("SELECT id FROM clients WHERE pseudonym = ?", (client,)).fetchone()
            db.execute(
                "INSERT INTO sessions (id, client_id, device_id, started_at) VALUES (?, ?, ?, ?)",
                (session_id, client_id, device_id, now),
            )
        return session_id

    def session(self, session_id: str) -> SessionRow:
        with self._connect() as db:
            row = db.execute(
                "SELECT s.id, c.pseudonym AS client, s.device_id, s.started_at, s.ended_at, s.summary "
                "FROM sessions s JOIN clients c ON c.id = s.client_id WHERE s.id = ?",
                (session_id,),
            ).fetchone()
        if row is None:
            raise NotFound(
                "unknown_session", f"no session {session_id!r}; start one with POST /api/v1/sessions"
            )
        return SessionRow(**dict(row))

    def idle_sessions(self, before: float) -> list[str]:
        """Open sessions with nothing since `before`: not started, no turn and no face reading since."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id FROM sessions s WHERE ended_at IS NULL AND started_at < :before "
                "AND NOT EXISTS (SELECT 1 FROM turns t "
                "WHERE t.session_id = s.id AND t.created_at >= :before) "
                "AND NOT EXISTS (SELECT 1 FROM emotion_samples e "
                "WHERE e.session_id = s.id AND e.t >= :before) "
                "ORDER BY started_at",
                {"before": before},
            )
            return [r["id"] for r in rows]

    def open_sessions(self, session_ids: Iterable[str]) -> set[str]:
        """Which of these sessions are still open: not ended, and not erased."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id FROM sessions WHERE ended_at IS NULL AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(session_ids)),),
            )
            return {r["id"] for r in rows}

    def end_session(self, session_id: str, summary: str) -> int:
        """Close the session (idempotent) and return how many exchanges it held."""
        with self._connect() as db:
            db.execute(
                "UPDATE sessions SET ended_at = COALESCE(ended_at, ?), summary = ? WHERE id = ?",
                (time.time(), summary, session_id),
            )
            (count,) = db.execute(
                "SELECT COUNT(*) FROM turns WHERE session_id = ? AND role = 'user'", (session_id,)
            ).fetchone()
        return int(count)
