"""The checks `tadbot bench crash` runs after each kill: chromadb opened afresh with the server down, then,
with it back up, its health, SQLite's integrity, the broken turn sent again, and every acknowledged turn
found in the record as the device heard it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from server.bench.crash_turns import Acknowledged, Attempt, Tally, send_turn
from server.bench.live import LiveServer
from server.bench.utterances import Utterance

NEEDED = ("db", "llm", "memory", "stt")
"""The components a restarted server must report ok (face reading is not configured)."""


def probe_memory(server: LiveServer, kill: int, tally: Tally) -> None:
    """With the server down, open chromadb in a fresh process as the server does, and count its items."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(server.config)], capture_output=True, text=True, timeout=600
    )
    try:
        count, problem = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        count, problem = None, f"the probe exited {done.returncode}: {done.stderr.strip()[-500:]}"
    if count is None:
        tally.fail("chromadb_open_failures", f"kill {kill}: {problem}")
        return
    if tally.memory_items and count < tally.memory_items[-1]:
        tally.fail("memory_items_dropped", f"kill {kill}: {tally.memory_items[-1]} items, then {count}")
    tally.memory_items.append(count)


_PROBE = (
    "import json, sys; from server.bench.crash_checks import memory_count; "
    "print(json.dumps(memory_count(sys.argv[1])))"
)
"""What the fresh process runs: `memory_count` on the config given, its answer as JSON on stdout."""


def memory_count(config: str) -> tuple[int | None, str]:
    """The items in the memory of the server configured by `config`, or why it would not open. Run in a
    process of its own: chromadb keeps an opened store for the life of the process."""
    from server.config import load_settings
    from server.conversation.components import open_memory

    try:
        return int(open_memory(load_settings(Path(config))).count()), ""
    except Exception as exc:
        cause = exc.__cause__
        because = f" (caused by {type(cause).__name__}: {cause})" if cause else ""
        return None, f"{type(exc).__name__}: {exc}{because}"


def check_health(server: LiveServer, kill: int, tally: Tally) -> None:
    """The restarted server says each component in NEEDED is ok."""
    try:
        components = server.health()["components"]
    except (OSError, ValueError, KeyError) as exc:
        tally.fail("health_failures", f"kill {kill}: /api/v1/health did not answer: {exc}")
        return
    for name in NEEDED:
        status = components.get(name, {})
        if status.get("status") != "ok":
            tally.fail("health_failures", f"kill {kill}: {name} is {status}")


def check_integrity(database: Path, kill: int, tally: Tally) -> None:
    """SQLite's own integrity check passes on the record the kill left."""
    try:
        with _read_only(database) as db:
            found = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        found = [f"{type(exc).__name__}: {exc}"]
    if found != ["ok"]:
        tally.fail("integrity_failures", f"kill {kill}: {'; '.join(found[:5])}")


def resend_broken(
    server: LiveServer,
    session_id: str,
    utterance: Utterance,
    key: str,
    broken: Attempt,
    kill: int,
    tally: Tally,
) -> None:
    """The broken turn again under its key, as the device sends it after a broken stream."""
    again = send_turn(server, session_id, utterance, key)
    if again.done is None:
        tally.fail("resend_failures", f"kill {kill}: the turn sent again got no `done`: {again.error}")
        return
    if broken.done is not None:
        same = (
            again.done.get("replayed") is True
            and again.done.get("turn_id") == broken.done.get("turn_id")
            and again.sentences == broken.sentences
        )
        if not same:
            tally.fail(
                "resend_failures",
                f"kill {kill}: turn {broken.done.get('turn_id')} was acknowledged, but sent again it was "
                f"not replayed from the record (turn {again.done.get('turn_id')}, "
                f"replayed={again.done.get('replayed')})",
            )
    elif broken.said is not None and again.said != broken.said:
        tally.fail("resend_failures", f"kill {kill}: heard {broken.said!r} first, {again.said!r} again")
    tally.keep(again.acknowledged(session_id, key))


def check_record(database: Path, kill: int, tally: Tally) -> None:
    """Every turn acknowledged so far, each loss reported once."""
    for problem in check_acknowledged(database, tally.acknowledged.values()):
        if problem.turn not in tally.lost:
            tally.fail("acknowledged_lost", f"kill {kill}: {problem.detail}")
            tally.lost.add(problem.turn)


@dataclass(frozen=True)
class Problem:
    turn: tuple[str, str]
    """The session and key of the acknowledged turn."""
    detail: str


def check_acknowledged(database: Path, acknowledged: Iterable[Acknowledged]) -> list[Problem]:
    """Each acknowledged turn that the record does not hold as the device heard it: the person's words once
    under the turn's key, and the reply `done` named, whole, from the source it named."""
    problems = []
    with _read_only(database) as db:
        for ack in acknowledged:
            turn = (ack.session_id, ack.key)
            said = db.execute(
                "SELECT id, text FROM turns WHERE session_id = ? AND idempotency_key = ? AND role = 'user'",
                turn,
            ).fetchall()
            if len(said) != 1 or said[0][1] != ack.said:
                found = [text for _, text in said]
                problems.append(Problem(turn, f"turn {ack.key}: said {ack.said!r}, recorded {found!r}"))
                continue
            if ack.turn_id is not None:
                reply = db.execute(
                    "SELECT session_id, text, source FROM turns WHERE id = ?", (ack.turn_id,)
                ).fetchone()
            else:  # a crisis reply whose record was retried in the background
                reply = db.execute(
                    "SELECT session_id, text, source FROM turns WHERE session_id = ? AND id > ? "
                    "AND source IS NOT NULL ORDER BY id LIMIT 1",
                    (ack.session_id, said[0][0]),
                ).fetchone()
            heard = (ack.session_id, " ".join(ack.sentences), ack.source)
            if reply is None or tuple(reply) != heard:
                problems.append(
                    Problem(
                        turn, f"turn {ack.key}: reply {ack.turn_id} heard as {heard!r}, recorded {reply!r}"
                    )
                )
    return problems


def _read_only(database: Path) -> contextlib.closing[sqlite3.Connection]:
    """The record as it is on disk, opened so that nothing the bench does can change it."""
    return contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True))
