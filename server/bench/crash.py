"""`tadbot bench crash`: the server killed mid-turn, again and again; no acknowledged turn may be lost.

A real server (`tadbot serve` under gunicorn, llama.cpp, Whisper, chromadb with the MiniLM embedder) runs in
a process group of its own on a loopback port. A simulated device streams turns, typed and spoken, each
under its own Idempotency-Key, and at a seeded random point of one turn's stream (before its first event,
after some events, right after `done`, or after a short delay, which may fall in the quiet after the
reply) the whole group gets SIGKILL: nothing is flushed, closed or logged, as in a power cut or an OOM kill.

The server promises that a turn is committed to its record before `done` is sent. So after each kill the
bench checks, with the server down, that chromadb still opens (in a fresh process, as the server would)
and, once the server is back on the same data dir: that it says its database, memory, model and speech
engine are ok, that SQLite's integrity check passes, that every turn ever acknowledged (its `done`
arrived) is in the record with the words said and the reply heard, and that the broken turn, sent again
under its key, is answered: replayed from the record when its `done` had arrived, else answered again,
with the person's words recorded once.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.bench.live import LiveServer, OpenTurn, Say, TurnRefused
from server.bench.utterances import Utterance, spoken_lines, typed_lines
from server.errors import TadbotError

KILL_AFTER_EVENTS = 8
"""A kill by events falls after 0 (before the first) to this many; past a stream's end, right after `done`."""
KILL_DELAY_S = 2.0
"""A kill by time falls this long at most after the turn is sent."""
TURN_TIMEOUT_S = 120.0
"""The longest the device waits for any part of an answer."""
NEEDED = ("db", "llm", "memory", "stt")
"""The components a restarted server must report ok (face reading is not configured)."""
CRISIS_LINE = "I want to end my life tonight."
"""One crisis turn in the mix: its record is written after the helpline is said, by its own path."""
_LOG_TROUBLE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


@dataclass(frozen=True)
class CrashOptions:
    model: Path
    kills: int
    seed: int
    n_threads: int
    n_ctx: int
    max_tokens: int
    stt_model: str
    """The Whisper model the server hears with (stt.model)."""


@dataclass(frozen=True)
class Acknowledged:
    """A turn whose `done` arrived: what the device said, heard back and was told was kept."""

    session_id: str
    key: str
    said: str
    """The transcript the server sent: the words it records."""
    turn_id: int | None
    source: str
    sentences: tuple[str, ...]


@dataclass
class Attempt:
    """What the device got from one try at a turn."""

    events: int = 0
    said: str | None = None
    sentences: list[str] = field(default_factory=list)
    done: dict[str, Any] | None = None
    error: str = ""
    """An error event's code, an HTTP refusal, or how the connection broke."""

    def acknowledged(self, session_id: str, key: str) -> Acknowledged | None:
        if self.done is None:
            return None
        turn_id = self.done.get("turn_id")
        return Acknowledged(
            session_id,
            key,
            self.said or "",
            None if turn_id is None else int(turn_id),
            str(self.done.get("source", "")),
            tuple(self.sentences),
        )


@dataclass
class Tally:
    """The run's counts and every failure found, with what showed it."""

    acknowledged: dict[tuple[str, str], Acknowledged] = field(default_factory=dict)
    kill_points: Counter[str] = field(default_factory=Counter)
    """Where in the broken turn the kill fell: before its first event, mid-stream, or after `done`."""
    kills_by: Counter[str] = field(default_factory=Counter)
    """What chose the moment: a count of events, or a delay."""
    failures: dict[str, list[str]] = field(default_factory=dict)
    spoken: int = 0
    typed: int = 0
    memory_items: list[int] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    """How long each restart took, to the model loaded."""
    lost: set[tuple[str, str]] = field(default_factory=set)

    def fail(self, check: str, detail: str) -> None:
        self.failures.setdefault(check, []).append(detail)

    def keep(self, ack: Acknowledged | None) -> None:
        if ack is not None:
            self.acknowledged[(ack.session_id, ack.key)] = ack


def run_crash_bench(options: CrashOptions, say: Say) -> dict[str, Any]:
    rng = random.Random(options.seed)
    lines = [*typed_lines(rng, 6), Utterance(CRISIS_LINE)]
    spoken = spoken_lines(rng, 3) if shutil.which("espeak-ng") else []
    tally = Tally()
    started = time.monotonic()
    kills = 0
    with tempfile.TemporaryDirectory(prefix="tadbot-bench-") as tmp:
        server = LiveServer(
            Path(tmp),
            model=options.model,
            n_ctx=options.n_ctx,
            n_threads=options.n_threads,
            max_tokens=options.max_tokens,
            settings={"server": {"log_level": "INFO"}, "stt": {"model": options.stt_model}},
            own_group=True,
        )
        say(f"starting the server on {options.model.name}")
        with server:
            session_id = server.new_session()
            for kill in range(1, options.kills + 1):
                if kill > 1 and rng.random() < 0.25:
                    session_id = server.new_session()
                for index in range(rng.randint(0, 2)):
                    key = f"crash-{options.seed}-{kill}-{index}"
                    attempt = _attempt(server, session_id, _pick(rng, lines, spoken, tally), key)
                    tally.keep(attempt.acknowledged(session_id, key))
                    if attempt.done is None:
                        tally.fail("turn_errors", f"kill {kill}, turn {key}: {attempt.error}")
                key = f"crash-{options.seed}-{kill}-broken"
                utterance = _pick(rng, lines, spoken, tally)
                broken = _killed(server, session_id, utterance, key, rng, tally)
                kills += 1
                tally.keep(broken.acknowledged(session_id, key))
                _probe_memory(server, kill, tally)
                try:
                    restarted = time.monotonic()
                    server.restart()
                    tally.restart_s.append(time.monotonic() - restarted)
                except TadbotError as exc:
                    tally.fail("restart_failures", f"kill {kill}: {exc.message}")
                    break
                _check_health(server, kill, tally)
                _check_integrity(server.data_dir / "tadbot.sqlite3", kill, tally)
                _resend(server, session_id, utterance, key, broken, kill, tally)
                _check_record(server.data_dir / "tadbot.sqlite3", kill, tally)
                say(
                    f"kill {kill}/{options.kills}, {_point(broken)} ({broken.events} events in); "
                    f"{len(tally.acknowledged)} turns acknowledged, {len(tally.lost)} lost"
                )
        log = server.log_path.read_text(encoding="utf-8", errors="replace")
    trouble = [line for line in log.splitlines() if _LOG_TROUBLE.search(line)]
    counts = {check: len(found) for check, found in tally.failures.items()}
    return {
        "model": str(options.model),
        "seed": options.seed,
        "kills": kills,
        "kill_points": dict(tally.kill_points),
        "kills_by": dict(tally.kills_by),
        "turns_spoken": tally.spoken,
        "turns_typed": tally.typed,
        "turns_acknowledged": len(tally.acknowledged),
        "acknowledged_lost": len(tally.lost),
        "integrity_failures": counts.get("integrity_failures", 0),
        "chromadb_open_failures": counts.get("chromadb_open_failures", 0),
        "memory_items_dropped": counts.get("memory_items_dropped", 0),
        "health_failures": counts.get("health_failures", 0),
        "restart_failures": counts.get("restart_failures", 0),
        "resend_failures": counts.get("resend_failures", 0),
        "turn_errors": counts.get("turn_errors", 0),
        "memory_items": tally.memory_items[-1] if tally.memory_items else None,
        "restart_s": {
            "median": round(statistics.median(tally.restart_s), 1) if tally.restart_s else None,
            "max": round(max(tally.restart_s), 1) if tally.restart_s else None,
        },
        "failures": tally.failures,
        "server_log_errors": trouble[:20],
        "seconds": round(time.monotonic() - started, 1),
        "passed": kills == options.kills and not tally.failures,
    }


def _pick(rng: random.Random, lines: list[Utterance], spoken: list[Utterance], tally: Tally) -> Utterance:
    """A spoken line one time in three where speech can be made, else a typed one."""
    if spoken and rng.random() < 1 / 3:
        tally.spoken += 1
        return rng.choice(spoken)
    tally.typed += 1
    return rng.choice(lines)


def _attempt(server: LiveServer, session_id: str, utterance: Utterance, key: str) -> Attempt:
    """One try at a turn, read to its end."""
    attempt = Attempt()
    try:
        call = server.open_turn(
            session_id, utterance.text, audio=utterance.wav, key=key, timeout=TURN_TIMEOUT_S
        )
    except OSError as exc:
        attempt.error = f"not sent: {type(exc).__name__}: {exc}"
        return attempt
    try:
        _read(call, attempt, None)
    finally:
        call.close()
    return attempt


def _killed(
    server: LiveServer, session_id: str, utterance: Utterance, key: str, rng: random.Random, tally: Tally
) -> Attempt:
    """A turn during which the server is killed: after a number of its events, or after a delay."""
    attempt = Attempt()
    by_events = rng.random() < 0.5
    after_events = rng.randint(0, KILL_AFTER_EVENTS)
    timer = threading.Timer(rng.uniform(0, KILL_DELAY_S), server.kill)
    if not by_events:
        timer.start()
    try:
        call: OpenTurn | None = server.open_turn(
            session_id, utterance.text, audio=utterance.wav, key=key, timeout=TURN_TIMEOUT_S
        )
    except OSError as exc:  # the delay ran out before the request was sent
        attempt.error, call = f"not sent: {type(exc).__name__}", None
    try:
        if call is not None:
            _read(call, attempt, after_events if by_events else None)
        if by_events:
            server.kill()
    finally:
        if call is not None:
            call.close()
        if not by_events:
            timer.join()
    tally.kill_points[_point(attempt)] += 1
    tally.kills_by["events" if by_events else "delay"] += 1
    return attempt


def _point(attempt: Attempt) -> str:
    return "after_done" if attempt.done else "mid_stream" if attempt.events else "before_first_event"


def _read(call: OpenTurn, attempt: Attempt, stop_after: int | None) -> None:
    """Read the turn's events into `attempt`, stopping after `stop_after` of them (None: to the end)."""
    if stop_after == 0:
        return
    try:
        for item in call.events():
            attempt.events += 1
            kind = item.get("type")
            if kind == "transcript":
                attempt.said = str(item["text"])
            elif kind == "sentence":
                attempt.sentences.append(str(item["text"]))
            elif kind == "done":
                attempt.done = item
            elif kind == "error":
                attempt.error = f"error event {item.get('code')}: {item.get('message')}"
            if stop_after is not None and attempt.events >= stop_after:
                return
    except TurnRefused as exc:
        attempt.error = f"refused: {exc}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        attempt.error = f"broken: {type(exc).__name__}"


def _probe_memory(server: LiveServer, kill: int, tally: Tally) -> None:
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
    "import json, sys; from server.bench.crash import memory_count; "
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


def _check_health(server: LiveServer, kill: int, tally: Tally) -> None:
    try:
        components = server.health()["components"]
    except (OSError, ValueError, KeyError) as exc:
        tally.fail("health_failures", f"kill {kill}: /api/v1/health did not answer: {exc}")
        return
    for name in NEEDED:
        status = components.get(name, {})
        if status.get("status") != "ok":
            tally.fail("health_failures", f"kill {kill}: {name} is {status}")


def _check_integrity(database: Path, kill: int, tally: Tally) -> None:
    try:
        with _read_only(database) as db:
            found = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        found = [f"{type(exc).__name__}: {exc}"]
    if found != ["ok"]:
        tally.fail("integrity_failures", f"kill {kill}: {'; '.join(found[:5])}")


def _resend(
    server: LiveServer,
    session_id: str,
    utterance: Utterance,
    key: str,
    broken: Attempt,
    kill: int,
    tally: Tally,
) -> None:
    """The broken turn again under its key, as the device sends it after a broken stream."""
    again = _attempt(server, session_id, utterance, key)
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


def _check_record(database: Path, kill: int, tally: Tally) -> None:
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
