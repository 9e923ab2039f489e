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

import random
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.bench.crash_checks import (
    check_health,
    check_integrity,
    check_record,
    probe_memory,
    resend_broken,
)
from server.bench.crash_turns import Tally, kill_during_turn, kill_point, send_turn
from server.bench.live import LiveServer, Say
from server.bench.utterances import Utterance, spoken_lines, typed_lines
from server.errors import TadbotError

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
                    attempt = send_turn(server, session_id, _pick(rng, lines, spoken, tally), key)
                    tally.keep(attempt.acknowledged(session_id, key))
                    if attempt.done is None:
                        tally.fail("turn_errors", f"kill {kill}, turn {key}: {attempt.error}")
                key = f"crash-{options.seed}-{kill}-broken"
                utterance = _pick(rng, lines, spoken, tally)
                broken = kill_during_turn(server, session_id, utterance, key, rng, tally)
                kills += 1
                tally.keep(broken.acknowledged(session_id, key))
                probe_memory(server, kill, tally)
                try:
                    restarted = time.monotonic()
                    server.restart()
                    tally.restart_s.append(time.monotonic() - restarted)
                except TadbotError as exc:
                    tally.fail("restart_failures", f"kill {kill}: {exc.message}")
                    break
                check_health(server, kill, tally)
                check_integrity(server.data_dir / "tadbot.sqlite3", kill, tally)
                resend_broken(server, session_id, utterance, key, broken, kill, tally)
                check_record(server.data_dir / "tadbot.sqlite3", kill, tally)
                say(
                    f"kill {kill}/{options.kills}, {kill_point(broken)} ({broken.events} events in); "
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
