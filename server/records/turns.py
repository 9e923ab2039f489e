"""Writing a turn: the person's words and the reply, their timings, the face readings and the safety events
raised on the way; a crisis turn in one transaction."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from server.records.database import Database
from server.records.rows import CrisisTurn, EmotionSample


def _insert_turn(
    db: sqlite3.Connection,
    session_id: str,
    role: str,
    text: str,
    at: float,
    timings: dict[str, Any] | None = None,
    prompt: str | None = None,
    confidence: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    source: str | None = None,
    sentences: Sequence[dict[str, Any]] | None = None,
) -> int:
    """A turn already recorded under `key` is not written again: its id comes back, with the new
    `prompt` when one is given (the turn answered again is what the model saw last)."""
    (turn_id,) = db.execute(
        "INSERT INTO turns (session_id, role, text, created_at, timings, prompt, confidence, "
        "idempotency_key, source, sentences) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (session_id, idempotency_key) "
        "DO UPDATE SET prompt = COALESCE(excluded.prompt, turns.prompt) RETURNING id",
        (
            session_id,
            role,
            text,
            at,
            json.dumps(timings or {}),
            prompt,
            json.dumps(confidence) if confidence else None,
            key,
            source,
            json.dumps(list(sentences)) if sentences is not None else None,
        ),
    ).fetchone()
    return int(turn_id)


def _insert_safety_event(
    db: sqlite3.Connection,
    session_id: str,
    turn_id: int | None,
    at: float,
    level: str,
    trigger: str,
    message: str,
    hypothesis: int,
    heard_as: str,
) -> None:
    db.execute(
        "INSERT INTO safety_events (session_id, turn_id, t, level, trigger, message, hypothesis, heard_as) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, turn_id, at, level, trigger, message, hypothesis, heard_as),
    )


def _insert_samples(db: sqlite3.Connection, session_id: str, samples: Sequence[EmotionSample]) -> None:
    db.executemany(
        "INSERT INTO emotion_samples (session_id, t, source, faces, top3) VALUES (?, ?, ?, ?, ?)",
        [(session_id, s.t, s.source, s.faces, json.dumps(s.top3)) for s in samples],
    )


class TurnRecords(Database):
    """What a turn writes; each call commits before it returns, so nothing is acknowledged unkept."""

    def add_turn(
        self,
        session_id: str,
        role: str,
        text: str,
        timings: dict[str, Any] | None = None,
        prompt: str | None = None,
        confidence: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        source: str | None = None,
        sentences: Sequence[dict[str, Any]] | None = None,
    ) -> int:
        """`prompt` is the turn as the model saw or wrote it, when that differs from the words kept;
        `confidence`, for a spoken turn, how sure speech recognition was of each word. `key`, on the
        person's turn: the device's Idempotency-Key (a turn already recorded under it keeps its one row).
        `source` and `sentences`, on the turn a `done` event names: what a repeated key replays."""
        with self._connect() as db:
            return _insert_turn(
                db,
                session_id,
                role,
                text,
                time.time(),
                timings,
                prompt,
                confidence,
                key=key,
                source=source,
                sentences=sentences,
            )

    def add_crisis_turn(self, turn: CrisisTurn, *, busy_timeout_s: float = 10.0) -> int:
        """The whole crisis turn, or nothing; returns the reply's id (the person's, when nothing was said).
        A person's turn already recorded under the turn's key (a repeat whose first record landed late) is
        not written again.

        `busy_timeout_s`: how long to wait for another writer's lock before giving up with
        StorageError, which the caller retries (server/conversation/crisis_record.py)."""
        with self._connect(busy_timeout_s) as db:
            said = _insert_turn(
                db, turn.session_id, "user", turn.text, turn.heard_at, {}, None, turn.confidence, key=turn.key
            )
            _insert_safety_event(
                db,
                turn.session_id,
                said,
                turn.heard_at,
                "crisis",
                turn.trigger,
                turn.message,
                turn.hypothesis,
                turn.heard_as,
            )
            _insert_samples(db, turn.session_id, turn.samples)
            if not turn.reply:
                return said
            return _insert_turn(
                db,
                turn.session_id,
                "assistant",
                turn.reply,
                turn.replied_at,
                turn.timings,
                source=turn.source,
                sentences=turn.sentences,
            )

    def set_timings(self, turn_id: int, timings: dict[str, Any], *, source: str | None = None) -> None:
        """`source`: the turn is the one a `done` event named (a command with nothing to say)."""
        with self._connect() as db:
            db.execute(
                "UPDATE turns SET timings = ?, source = COALESCE(?, source) WHERE id = ?",
                (json.dumps(timings), source, turn_id),
            )

    def add_emotion_sample(
        self, session_id: str, source: str, faces: int, top3: list[dict[str, Any]]
    ) -> None:
        self.add_emotion_samples(session_id, [EmotionSample(time.time(), source, faces, top3)])

    def add_emotion_samples(self, session_id: str, samples: Sequence[EmotionSample]) -> None:
        if not samples:
            return
        with self._connect() as db:
            _insert_samples(db, session_id, samples)

    def add_safety_event(
        self,
        session_id: str,
        turn_id: int | None,
        level: str,
        trigger: str,
        message: str,
        *,
        hypothesis: int = 1,
        heard_as: str = "",
    ) -> None:
        """`trigger`: the words that raised it; `message`: what the person was told, or what was blocked;
        `hypothesis`: which of speech recognition's hypotheses raised it (1, the transcript, unless
        another one read as a crisis), and `heard_as` that hypothesis's words when it was not the first."""
        with self._connect() as db:
            _insert_safety_event(
                db, session_id, turn_id, time.time(), level, trigger, message, hypothesis, heard_as
            )
