"""Reading a session back for the model: the running summary and the turns after it, moving the fold point,
and the turn kept under an idempotency key with the reply a repeat replays."""

from __future__ import annotations

import json

from server.records.database import Database
from server.records.rows import Conversation, KeptTurn, Reply, Turn

_RAISED_ON_TURN = (
    "EXISTS (SELECT 1 FROM safety_events e WHERE e.turn_id = t.id AND e.level IN ('crisis', 'concern'))"
)
"""Whether the turn aliased `t` raised a crisis or a concern. Such a turn, and the reply to it, is kept out
of every summary later prompts read; the therapist's record keeps it whole."""


class ConversationRecords(Database):
    """What the model reads of a session, and the fold that keeps it within its budget."""

    def kept_turn(self, session_id: str, key: str) -> KeptTurn | None:
        """The person's turn recorded under `key`, with its crisis message and its whole reply, if any.

        The reply is the first turn from it on, before the person's next turn, that a `done` event named:
        a cut-off reply names none, and one answered again after it may."""
        with self._connect() as db:
            said = db.execute(
                "SELECT id, text, confidence FROM turns WHERE session_id = ? AND idempotency_key = ?",
                (session_id, key),
            ).fetchone()
            if said is None:
                return None
            crisis = db.execute(
                "SELECT message FROM safety_events WHERE turn_id = ? AND level = 'crisis' "
                "ORDER BY id LIMIT 1",
                (said["id"],),
            ).fetchone()
            reply = db.execute(
                "SELECT r.id, r.source, r.sentences, r.timings FROM turns r "
                "WHERE r.session_id = :session AND r.id >= :said AND r.source IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM turns n WHERE n.session_id = :session AND n.role = 'user' "
                "AND n.id > :said AND n.id < r.id) "
                "ORDER BY r.id LIMIT 1",
                {"session": session_id, "said": said["id"]},
            ).fetchone()
        return KeptTurn(
            id=said["id"],
            text=said["text"],
            confidence=json.loads(said["confidence"]) if said["confidence"] else None,
            crisis=crisis["message"] if crisis else None,
            reply=Reply(
                turn_id=reply["id"],
                source=reply["source"],
                sentences=tuple(json.loads(reply["sentences"] or "[]")),
                timings=json.loads(reply["timings"]),
            )
            if reply
            else None,
        )

    def user_turns(self, session_id: str, *, unraised: bool = False) -> list[str]:
        """What the person said, in order; `unraised` leaves out the turns that raised a crisis or concern."""
        query = "SELECT text FROM turns t WHERE session_id = ? AND role = 'user'"
        if unraised:
            query += f" AND NOT {_RAISED_ON_TURN}"
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", (session_id,))
            return [r["text"] for r in rows]

    def conversation(self, session_id: str) -> Conversation:
        """The running summary and the turns not yet folded into it, each as the model saw it."""
        with self._connect() as db:
            head = db.execute(
                "SELECT rolling_summary, folded_through FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            rows = db.execute(
                f"SELECT id, role, text, COALESCE(prompt, text) AS prompt, {_RAISED_ON_TURN} AS raised "
                "FROM turns t WHERE session_id = ? AND id > ? ORDER BY id",
                (session_id, head["folded_through"]),
            ).fetchall()
        turns: list[Turn] = []
        for row in rows:
            # A reply carries the mark of the turn it answered: it may repeat or answer their words.
            raised = bool(row["raised"]) or (row["role"] == "assistant" and bool(turns) and turns[-1].raised)
            turns.append(Turn(row["id"], row["role"], row["text"], row["prompt"], raised))
        return Conversation(
            summary=head["rolling_summary"], folded_through=head["folded_through"], turns=tuple(turns)
        )

    def fold(self, session_id: str, *, summary: str, through: int, expected_through: int) -> bool:
        """Move the fold point forward, unless someone else moved it since `expected_through` was read."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE sessions SET rolling_summary = ?, folded_through = ? "
                "WHERE id = ? AND folded_through = ?",
                (summary, through, session_id, expected_through),
            )
            return cur.rowcount == 1
