"""The record's schema: a data dir from an earlier version is brought up to date on open, nothing lost."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.records.store import Records

# The turns table as versions before idempotency keys made it.
OLD_TURNS = """
CREATE TABLE turns (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    timings TEXT NOT NULL DEFAULT '{}',
    prompt TEXT,
    confidence TEXT
);
INSERT INTO turns (session_id, role, text, created_at) VALUES ('old-session', 'user', 'said before', 1.0);
"""


def test_an_old_data_dir_gets_the_key_columns_and_its_unique_index(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_TURNS)
    records = Records(path)
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(turns)")}
        index = db.execute("SELECT sql FROM sqlite_master WHERE name = 'turns_by_key'").fetchone()
        kept = db.execute("SELECT text FROM turns").fetchall()
    assert {"idempotency_key", "source", "sentences"} <= columns
    assert index == ("CREATE UNIQUE INDEX turns_by_key ON turns (session_id, idempotency_key)",)
    assert kept == [("said before",)]
    Records(path)  # opening it again changes nothing and fails on nothing
    session_id = records.start_session("ola", None)
    assert records.kept_turn(session_id, "k") is None


def test_a_person_turn_is_written_once_under_its_key(tmp_path: Path) -> None:
    records = Records(tmp_path / "db.sqlite3")
    session_id = records.start_session("pia", None)
    other = records.start_session("pia", None)
    first = records.add_turn(session_id, "user", "hello", key="k")
    assert records.add_turn(session_id, "user", "hello", prompt="seen by the model", key="k") == first
    assert records.add_turn(other, "user", "hello", key="k") != first, "a key belongs to one session"
    assert records.add_turn(session_id, "user", "hello") != first, "no key: every turn is its own"
    kept = records.kept_turn(session_id, "k")
    assert kept is not None and (kept.id, kept.text, kept.reply) == (first, "hello", None)
    assert records.conversation(session_id).turns[0].prompt == "seen by the model"
    assert records.user_turns(session_id) == ["hello", "hello"]


def test_the_reply_found_for_a_key_is_the_whole_one_before_the_next_turn(tmp_path: Path) -> None:
    records = Records(tmp_path / "db.sqlite3")
    session_id = records.start_session("quin", None)
    said = records.add_turn(session_id, "user", "hi", key="k")
    records.add_turn(session_id, "assistant", "Hel", {"interrupted": True})
    kept = records.kept_turn(session_id, "k")
    assert kept is not None and kept.reply is None, "a cut-off reply is no reply to replay"
    whole = records.add_turn(
        session_id,
        "assistant",
        "Hello. Breathe.",
        {"total_ms": 5.0},
        source="llm",
        sentences=[{"text": "Hello."}, {"text": "Breathe.", "pause_ms": 4000}],
    )
    records.add_turn(session_id, "user", "next", key="k2")
    records.add_turn(session_id, "assistant", "Later.", {}, source="llm", sentences=[{"text": "Later."}])
    kept = records.kept_turn(session_id, "k")
    assert kept is not None and kept.id == said and kept.crisis is None and kept.reply is not None
    assert (kept.reply.turn_id, kept.reply.source, kept.reply.timings) == (whole, "llm", {"total_ms": 5.0})
    assert kept.reply.sentences == ({"text": "Hello."}, {"text": "Breathe.", "pause_ms": 4000})


@pytest.mark.parametrize("activity", ["turn", "frame"])
def test_idle_sessions_are_the_open_ones_with_no_turn_or_frame_since(tmp_path: Path, activity: str) -> None:
    records = Records(tmp_path / "db.sqlite3")
    quiet, active, ended = (records.start_session("ray", None) for _ in range(3))
    records.end_session(ended, "over")
    cut = time.time()
    if activity == "turn":
        records.add_turn(active, "user", "still here")
    else:
        records.add_emotion_sample(active, "frame", 0, [])
    records.start_session("ray", None)  # started since: not idle either
    assert records.idle_sessions(cut) == [quiet]
    assert records.idle_sessions(cut - 60) == []


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A shell's usual umask, under which a plain mkdir/connect would give 0755/0644."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.usefixtures("loose_umask")
def test_a_new_data_dir_and_its_database_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "data"
    records = Records(data / "tadbot.sqlite3")
    with records.transaction() as db:  # -wal and -shm exist while a connection has written
        db.execute("INSERT INTO audit_log (t, actor, action, target) VALUES (1, 'a', 'b', 'c')")
        db.commit()
        assert _mode(data) == 0o700
        for name in ("tadbot.sqlite3", "tadbot.sqlite3-wal", "tadbot.sqlite3-shm"):
            assert _mode(data / name) == 0o600, name


@pytest.mark.usefixtures("loose_umask")
def test_a_loose_existing_data_dir_is_tightened_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    db_path = data / "tadbot.sqlite3"
    sqlite3.connect(db_path).close()
    db_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="server.records.database"):
        Records(db_path)
    assert (_mode(data), _mode(db_path)) == (0o700, 0o600)
    assert [r.getMessage() for r in caplog.records if str(data) + " was" in r.getMessage()] == [
        f"{data} was mode 755; tightened to 700"
    ]
