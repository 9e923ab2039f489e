"""Retention: `tadbot admin purge` deletes exactly the old sessions, their rows and their memories, and
nothing else, on a real SQLite file and a real chromadb store."""

from __future__ import annotations

import dataclasses
import os
import re
import time
import tomllib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.access.policy import Access
from server.config import describe, load_settings
from server.memory.embedding import MiniLMEmbedder
from server.memory.store import Memory
from server.records.retention import PurgeReport, cutoff_for, purge
from server.records.store import Records
from server.sections import RetentionSection
from tests.conftest import tadbot

DAY = 86400.0

# name: (client, started, turn times, face reading times, ended), all in days ago, and whether the first
# turn raised a safety event. Every turn is remembered, and so is the summary of an ended session.
SESSIONS: dict[str, tuple[str, float, tuple[float, ...], tuple[float, ...], float | None, bool]] = {
    "ana-old": ("ana", 100, (100, 100), (100,), 99.9, True),
    "ana-old-open": ("ana", 90, (90,), (), None, False),
    "ana-open-spoke-lately": ("ana", 100, (100, 2), (), None, False),
    "ana-open-seen-lately": ("ana", 100, (100,), (1,), None, False),
    "ana-ended-lately": ("ana", 100, (100,), (), 1, False),
    "ana-new": ("ana", 2, (2, 2), (2,), 2, True),
    "ben-old": ("ben", 50, (50, 50), (50, 50), 50, True),
    "ben-29-days": ("ben", 29, (29,), (), 29, False),
    "cara-old": ("cara", 31, (31,), (), 31, False),
}
PURGED = {"ana-old", "ana-old-open", "ben-old", "cara-old"}
# What PURGED holds: 2 + 1 + 2 + 1 turns, 1 + 2 face readings, 2 safety events, and 9 memories
# (the 6 turns and the summaries of the 3 ended sessions).
COUNTS = {"sessions": 4, "turns": 6, "emotion_samples": 3, "safety_events": 2, "memories": 9}
TABLES = ("clients", "devices", "therapists", "sessions", "turns", "emotion_samples", "safety_events")
NOT_PURGED = "the vector memory could not be reached, so memories were not purged"
SESSION_COLUMN = {"sessions": "id", "turns": "session_id", "emotion_samples": "session_id"}


@dataclass
class Seeded:
    records: Records
    memory: Memory
    ids: dict[str, str]

    def purged_ids(self) -> set[str]:
        return {self.ids[name] for name in PURGED}


def _seed(data_dir: Path, embedder: MiniLMEmbedder) -> Seeded:
    """Sessions written through the real Records and Memory, then moved back in time with plain SQL."""
    records = Records(data_dir / "tadbot.sqlite3")
    memory = Memory(data_dir / "memory", embedder)
    access = Access(records)
    device = access.caller("device", access.add("device", "pi", actor="test"))
    access.add("therapist", "dr-who", actor="test")
    now = time.time()
    ids: dict[str, str] = {}
    for name, (client, started, turns, frames, ended, safety) in SESSIONS.items():
        sid = records.start_session(client, device.id)
        ids[name] = sid
        with records.transaction() as db:
            db.execute("UPDATE sessions SET started_at = ? WHERE id = ?", (now - started * DAY, sid))
        for i, ago in enumerate(turns):
            role = ("user", "assistant")[i % 2]
            text = f"{name}: turn {i} about breathing slowly through the worry"
            turn_id = records.add_turn(sid, role, text)
            memory.add(client=client, session_id=sid, role=role, text=text, ts=now - ago * DAY)
            if safety and i == 0:
                records.add_safety_event(sid, turn_id, "crisis", "trigger words", "the helpline")
            with records.transaction() as db:
                db.execute("UPDATE turns SET created_at = ? WHERE id = ?", (now - ago * DAY, turn_id))
                db.execute("UPDATE safety_events SET t = ? WHERE turn_id = ?", (now - ago * DAY, turn_id))
        for ago in frames:
            records.add_emotion_sample(sid, "frame", 1, [{"label": "fear", "score": 0.7}])
            with records.transaction() as db:
                db.execute(
                    "UPDATE emotion_samples SET t = ? WHERE id = (SELECT MAX(id) FROM emotion_samples)",
                    (now - ago * DAY,),
                )
        if ended is not None:
            summary = f"{name}: talked about breathing."
            records.end_session(sid, summary)
            memory.add(
                client=client,
                session_id=sid,
                role="summary",
                text=summary,
                kind="summary",
                ts=now - ended * DAY,
            )
            with records.transaction() as db:
                db.execute("UPDATE sessions SET ended_at = ? WHERE id = ?", (now - ended * DAY, sid))
    return Seeded(records, memory, ids)


@pytest.fixture
def seeded(tmp_path: Path, embedder: MiniLMEmbedder) -> Seeded:
    return _seed(tmp_path / "data", embedder)


def _rows(records: Records) -> dict[str, list[dict[str, Any]]]:
    with records.transaction() as db:
        return {t: [dict(r) for r in db.execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in TABLES}


def _audit(records: Records) -> list[dict[str, Any]]:
    with records.transaction() as db:
        return [dict(r) for r in db.execute("SELECT actor, action, target FROM audit_log ORDER BY id")]


def _remembered(memory: Memory) -> list[tuple[str, str, str]]:
    """Every stored memory as (session id, kind, text), read from the collection itself."""
    got = memory._collection.get(include=["metadatas", "documents"])
    return sorted(
        (str(meta["session_id"]), str(meta["kind"]), text)
        for meta, text in zip(got["metadatas"] or [], got["documents"] or [], strict=True)
    )


def _without(rows: dict[str, list[dict[str, Any]]], gone: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The rows once the sessions in `gone` are purged; clients, devices and therapists all stay."""
    return {
        table: [r for r in kept if r.get(SESSION_COLUMN.get(table, "session_id")) not in gone]
        for table, kept in rows.items()
    }


def _expected_line(dry_run: bool = False) -> str:
    verb = "would purge" if dry_run else "purged"
    return (
        f"{verb} 4 sessions (6 turns, 3 emotion samples, 2 safety events, 9 memories) older than "
        f"{date.today() - timedelta(days=30):%Y-%m-%d}"
    )


def test_the_seed_is_what_the_tests_expect(seeded: Seeded) -> None:
    rows = _rows(seeded.records)
    assert {t: len(r) for t, r in rows.items()} == {
        "clients": 3,
        "devices": 1,
        "therapists": 1,
        "sessions": 9,
        "turns": 13,
        "emotion_samples": 5,
        "safety_events": 3,
    }
    assert len(_remembered(seeded.memory)) == 19


def test_purge_deletes_exactly_the_old_sessions_and_their_memories(seeded: Seeded) -> None:
    before, memories, audit = _rows(seeded.records), _remembered(seeded.memory), _audit(seeded.records)
    cutoff = cutoff_for(30)
    report = purge(seeded.records, lambda: seeded.memory, cutoff)
    assert report == PurgeReport(before=cutoff, dry_run=False, **COUNTS)
    assert report.line() == _expected_line()
    gone = seeded.purged_ids()
    after = _rows(seeded.records)
    assert after == _without(before, gone)
    assert {r["id"] for r in after["sessions"]} == {seeded.ids[n] for n in SESSIONS.keys() - PURGED}
    # cara has no session left and keeps her pseudonym; devices and therapists are untouched.
    assert [r["pseudonym"] for r in after["clients"]] == ["ana", "ben", "cara"]
    assert _remembered(seeded.memory) == [m for m in memories if m[0] not in gone]
    assert len(_remembered(seeded.memory)) == 10
    assert seeded.memory.recall(client="cara", query="breathing", k=5) == []
    assert _audit(seeded.records) == [
        *audit,
        {
            "actor": "admin",
            "action": "purge",
            "target": "4 sessions, 6 turns, 3 emotion samples, 2 safety events; last active before "
            f"{cutoff.isoformat(timespec='minutes')}",
        },
    ]
    again = purge(seeded.records, lambda: seeded.memory, cutoff)
    assert (again.sessions, again.turns, again.memories) == (0, 0, 0)


def test_dry_run_counts_and_deletes_nothing(seeded: Seeded) -> None:
    before, memories, audit = _rows(seeded.records), _remembered(seeded.memory), _audit(seeded.records)
    cutoff = cutoff_for(30)
    report = purge(seeded.records, lambda: seeded.memory, cutoff, dry_run=True)
    assert report == PurgeReport(before=cutoff, dry_run=True, **COUNTS)
    assert report.line() == _expected_line(dry_run=True)
    assert _rows(seeded.records) == before
    assert _remembered(seeded.memory) == memories
    assert _audit(seeded.records) == audit


def test_unreachable_memory_still_purges_the_records_and_a_rerun_finishes(
    seeded: Seeded, tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    before, memories = _rows(seeded.records), _remembered(seeded.memory)
    broken = tmp_path / "not-a-store"
    broken.write_text("a file where the store should be", encoding="utf-8")
    cutoff = cutoff_for(30)
    report = purge(seeded.records, lambda: Memory(broken, embedder), cutoff)
    assert (report.sessions, report.turns, report.memories) == (4, 6, 0)
    assert report.memory_error.startswith(NOT_PURGED)
    assert "re-run" in report.memory_error
    assert report.line().endswith(
        f"(6 turns, 3 emotion samples, 2 safety events, memories not purged) older than {cutoff:%Y-%m-%d}"
    )
    assert _rows(seeded.records) == _without(before, seeded.purged_ids())
    assert _remembered(seeded.memory) == memories
    # The re-run finds the memories whose sessions are gone from the records, and only those.
    rerun = purge(seeded.records, lambda: seeded.memory, cutoff)
    assert (rerun.sessions, rerun.memories, rerun.memory_error) == (0, 9, "")
    assert _remembered(seeded.memory) == [m for m in memories if m[0] not in seeded.purged_ids()]


def test_cutoff_is_local_midnight_days_ago() -> None:
    cutoff = cutoff_for(30, today=date(2024, 3, 31))
    assert cutoff.isoformat() == "2024-03-01T00:00:00"


def test_retention_is_configured_shown_and_documented(tmp_path: Path) -> None:
    path = tmp_path / "tadbot.toml"
    path.write_text("[retention]\ndays = 90\n", encoding="utf-8")
    assert load_settings(path, env={}).retention.days == 90
    assert load_settings(path, env={"TADBOT_RETENTION__DAYS": "7"}).retention.days == 7
    assert load_settings(env={"TADBOT_CONFIG": str(path)}).retention.days == 90
    shown = describe(load_settings(path, env={}))
    assert "\n[retention]\ndays = 90  # Sessions last active before local midnight" in shown
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL) if "[retention]" in b)
    assert tomllib.loads(block)["retention"] == dataclasses.asdict(RetentionSection())
    assert "tadbot-retention.timer" in readme and "retention.days" in readme


# The command line ------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, embedder: MiniLMEmbedder) -> tuple[Seeded, dict[str, str]]:
    seeded = _seed(tmp_path / "data", embedder)
    config = tmp_path / "tadbot.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    env = {**os.environ, "TADBOT_CONFIG": str(config), "TADBOT_MODELS_DIR": str(tmp_path / "models")}
    return seeded, env


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_cli_dry_run_then_purge_print_the_counts(cli: tuple[Seeded, dict[str, str]]) -> None:
    seeded, env = cli
    before, memories = _rows(seeded.records), _remembered(seeded.memory)
    dry = tadbot("admin", "purge", "--older-than", "30", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [_expected_line(dry_run=True)]
    assert _rows(seeded.records) == before
    assert _remembered(seeded.memory) == memories
    done = tadbot("admin", "purge", "--older-than", "30", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [_expected_line()]
    assert _rows(seeded.records) == _without(before, seeded.purged_ids())
    assert _remembered(seeded.memory) == [m for m in memories if m[0] not in seeded.purged_ids()]


def test_cli_older_than_config_is_off_at_zero_and_follows_the_config(
    cli: tuple[Seeded, dict[str, str]],
) -> None:
    seeded, env = cli
    before, memories = _rows(seeded.records), _remembered(seeded.memory)
    off = tadbot("admin", "purge", "--older-than-config", env=env)
    assert off.returncode == 0, off.stderr
    assert off.stdout.splitlines() == ["retention is off (retention.days = 0); nothing purged"]
    assert _rows(seeded.records) == before
    assert _remembered(seeded.memory) == memories
    done = tadbot("admin", "purge", "--older-than-config", env={**env, "TADBOT_RETENTION__DAYS": "30"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [_expected_line()]
    assert _rows(seeded.records) == _without(before, seeded.purged_ids())


@pytest.mark.parametrize("days", ["0", "-5", "1.5", "ten", "", "36501"])
def test_cli_bad_days_are_one_line_and_exit_2(cli: tuple[Seeded, dict[str, str]], days: str) -> None:
    seeded, env = cli
    before = _rows(seeded.records)
    done = tadbot("admin", "purge", f"--older-than={days}", env=env)
    assert done.returncode == 2
    assert _one_line_error(done.stderr) == (
        f"tadbot: error: --older-than {days!r}: give a whole number of days from 1 to 36500"
    )
    assert done.stdout == ""
    assert _rows(seeded.records) == before


def test_cli_bad_configured_days_are_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "tadbot.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n[retention]\ndays = -1\n', "utf-8")
    done = tadbot("admin", "purge", "--older-than-config", env={**os.environ, "TADBOT_CONFIG": str(config)})
    assert done.returncode == 2
    assert "retention.days = -1: must be between 0 and 36500" in _one_line_error(done.stderr)


def test_cli_unreachable_memory_purges_records_and_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    records = Records(data / "tadbot.sqlite3")
    sid = records.start_session("ana", None)
    records.add_turn(sid, "user", "an old worry")
    with records.transaction() as db:
        db.execute("UPDATE sessions SET started_at = started_at - 40 * 86400")
        db.execute("UPDATE turns SET created_at = created_at - 40 * 86400")
    (data / "memory").write_text("a file where the store should be", encoding="utf-8")
    config = tmp_path / "tadbot.toml"
    config.write_text(f'[server]\ndata_dir = "{data}"\n', encoding="utf-8")
    env = {**os.environ, "TADBOT_CONFIG": str(config), "TADBOT_MODELS_DIR": str(tmp_path / "models")}
    done = tadbot("admin", "purge", "--older-than", "30", env=env)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "purged 1 sessions (1 turns, 0 emotion samples, 0 safety events, memories not purged) older than "
        f"{date.today() - timedelta(days=30):%Y-%m-%d}"
    ]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"tadbot: error: {NOT_PURGED}")
    assert "re-run the purge" in error and "Traceback" not in done.stderr
    assert {t: len(r) for t, r in _rows(records).items()} == {**dict.fromkeys(TABLES, 0), "clients": 1}
