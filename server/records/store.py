"""The therapist's record: SQLite in WAL mode, readable SQL, committed before anything is acknowledged.

One short-lived connection per call keeps this safe under gunicorn's threads without a pool; the server
holds one more open for its whole life, so that the WAL's side files stay and reads go on when the disk
fills. A write the data dir will not take raises StorageError (server/records/storage.py) and is counted in
`writes`, which /health reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from server.errors import NotFound
from server.records.storage import WriteHealth, storage_fault

_LOGGER = logging.getLogger(__name__)

TOKEN_PREFIX = "tdb_"


@dataclass(frozen=True)
class SessionRow:
    id: str
    client: str
    device_id: int | None
    started_at: float
    ended_at: float | None
    summary: str | None


@dataclass(frozen=True)
class Turn:
    id: int
    role: str
    text: str
    prompt: str
    raised: bool = False
    """A crisis or concern was raised on this turn, or it is the reply to one: never summarised."""


@dataclass(frozen=True)
class EmotionSample:
    """One face reading, kept for the timeline; `t` is when it was read, whenever it is written."""

    t: float
    source: str
    faces: int
    top3: list[dict[str, Any]]


@dataclass(frozen=True)
class CrisisTurn:
    """Everything a crisis turn records, written in one transaction after the helpline was spoken, so that
    a retried write never leaves half of it, or writes it twice."""

    session_id: str
    text: str
    heard_at: float
    trigger: str
    message: str
    """What the person was told: the helpline."""
    reply: str
    """The crisis lines said ('' when the device hung up before the first)."""
    replied_at: float
    timings: dict[str, Any]
    confidence: dict[str, Any] | None = None
    hypothesis: int = 1
    heard_as: str = ""
    samples: tuple[EmotionSample, ...] = ()
    key: str | None = None
    """The device's Idempotency-Key: a person's turn already recorded under it is not written again."""
    source: str | None = None
    """'crisis' when the reply was said whole; None when it was cut off, so a repeat answers it again."""
    sentences: tuple[dict[str, Any], ...] = ()
    """The sentence events said, as a repeated key replays them."""


@dataclass(frozen=True)
class Reply:
    """A reply committed whole: the turn a `done` event named, as a repeated key replays it."""

    turn_id: int
    source: str
    sentences: tuple[dict[str, Any], ...]
    timings: dict[str, Any]


@dataclass(frozen=True)
class KeptTurn:
    """A person's turn found by its idempotency key, and how far its answer got."""

    id: int
    text: str
    confidence: dict[str, Any] | None
    crisis: str | None
    """What the person was told when the turn was a crisis (the helpline); None otherwise."""
    reply: Reply | None
    """None when no whole reply was committed: the answer broke, and the turn is to be answered again."""


@dataclass(frozen=True)
class Conversation:
    """What of a session goes into the next prompt: a running summary, then the turns after it."""

    summary: str
    folded_through: int
    turns: tuple[Turn, ...]


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


_RAISED_ON_TURN = (
    "EXISTS (SELECT 1 FROM safety_events e WHERE e.turn_id = t.id AND e.level IN ('crisis', 'concern'))"
)
"""Whether the turn aliased `t` raised a crisis or a concern. Such a turn, and the reply to it, is kept out
of every summary later prompts read; the therapist's record keeps it whole."""


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


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are 256-bit random, so a plain SHA-256 is enough; only the hash is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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


class Records:
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

    # Sessions and turns ------------------------------------------------------------------------

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

    # The therapist's view ---------------------------------------------------------------------

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
