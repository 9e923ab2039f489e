"""`tadbot bench load`: several devices talking to one server at once, then a long soak.

One real server (`tadbot serve` under gunicorn on a loopback port, llama.cpp, Whisper, chromadb) and N
simulated devices, each in a thread with a session of its own, sending turns as fast as their answers come
(mostly spoken, some typed). The model's queue is kept short (`llm.queue_max`: half the devices may hold or
wait for the model), so some turns meet a full queue and the report shows how they were answered: the
talk-down (`done` with source "offline"), or a 503 that must carry Retry-After. Every turn must end in
`done` or a clean error event: one whose stream broke or ended without either is lost, one with no answer
within the device's timeout hung.

Then the soak: many more turns, one at a time (typed, with a spoken one in ten), in sessions of realistic
length, while the worker's resident memory and open file descriptors are sampled at quiet moments. After
a warm-up, both must stay flat. Last, the privacy check (server/bench/privacy.py): no audio or image under
the data dir or in the server's temporary folder, and none of the person's words in the server's log,
which runs at the product's default level.
"""

from __future__ import annotations

import http.client
import math
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.bench.live import LiveServer, Say, TurnRefused, process_sample
from server.bench.utterances import Utterance, spoken_lines, typed_lines

TURN_TIMEOUT_S = 120.0
"""The device's wait for any answer: a turn with no `done` or error by then hung."""
SPOKEN_SHARE = 0.75
"""Turns of the load phase that are spoken."""
PAUSE_S = 0.5
"""The most a device waits between one answer and its next turn (at random, to desynchronise devices)."""
SOAK_SPOKEN_EVERY = 10
SESSION_TURNS = 25
"""The soak's sessions are this long, then ended (summary, memory) and a new one begun."""
SAMPLES = 20
"""Resident memory and descriptors are sampled this many times over the soak."""
WARM_UP_SHARE = 0.1
"""The first tenth of the soak is warm-up: caches fill and sessions reach their length."""
RSS_GROWTH_MAX_PCT = 10.0
FD_GROWTH_MAX = 2
FLAT = f"after warm-up, worker RSS grows < {RSS_GROWTH_MAX_PCT:g}% and open FDs by <= {FD_GROWTH_MAX}"


@dataclass(frozen=True)
class LoadOptions:
    model: Path
    devices: int
    turns: int
    """Turns per device in the load phase."""
    soak: int
    n_threads: int
    n_ctx: int
    max_tokens: int
    stt_model: str
    data: Path | None = None
    """Labelled speech (WAVs and index.csv) to send; None: lines said by espeak-ng."""
    seed: int = 1


@dataclass(frozen=True)
class Outcome:
    """How one turn ended for the device."""

    spoken: bool
    ending: str
    """done, refused (503), error (a clean error event), http_error (another status), lost or hung."""
    detail: str = ""
    """done: the reply's source; refused, error, http_error: the code; lost, hung: what happened."""
    done_s: float | None = None
    first_sentence_s: float | None = None
    retry_after: bool = False
    """A 503 that said when to try again."""


def queue_max(devices: int) -> int:
    """Half the devices may hold or wait for the model; the rest meet a full queue."""
    return max(0, devices // 2 - 1)


@dataclass
class Tally:
    """What the devices met: one outcome per turn sent, and each session the server would not open or end."""

    outcomes: list[Outcome] = field(default_factory=list)
    session_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def session_error(self, what: str, exc: Exception) -> None:
        with self.lock:
            self.session_errors.append(f"{what}: {type(exc).__name__}: {exc}")


def run_load_bench(options: LoadOptions, say: Say) -> dict[str, Any]:
    from server.bench.privacy import WORD, code_words, leaked_words, media_files, said_in

    rng = random.Random(options.seed)
    say("making the devices' lines" + (" (espeak-ng says them)" if options.data is None else ""))
    spoken = spoken_lines(rng, 6, options.data)
    typed = typed_lines(rng, 12)
    started = time.monotonic()
    load, soak = Tally(), Tally()
    with tempfile.TemporaryDirectory(prefix="tadbot-bench-") as tmp:
        server = LiveServer(
            Path(tmp),
            model=options.model,
            n_ctx=options.n_ctx,
            n_threads=options.n_threads,
            max_tokens=options.max_tokens,
            settings={
                "server": {"log_level": "INFO"},
                "llm": {"queue_max": queue_max(options.devices)},
                "stt": {"engine": "faster_whisper", "model": options.stt_model},
            },
        )
        with server:
            say(f"{options.devices} devices, {options.turns} turns each, at once")
            load_s = _timed(lambda: _load(server, options, spoken, typed, load))
            peak = server.peak_rss_by_process()
            say(f"soak: {options.soak} turns, one at a time")
            samples: list[Sample] = []
            soak_s = _timed(lambda: _soak(server, options, spoken, typed, soak, samples, say))
            peak_after_soak = server.peak_rss_by_process()
        log = server.log_path.read_text(encoding="utf-8", errors="replace")
        known = code_words()
        said = said_in(server.data_dir)
        media = media_files(server.data_dir) + media_files(server.tmp_dir)
        privacy = {
            "media_files": [[str(path.relative_to(tmp)), kind] for path, kind in media],
            "leaked_words": leaked_words(log, said, known),
            "words_looked_for": len({w.lower() for text in said for w in WORD.findall(text)} - known),
        }
    load_report = _counts(load, load_s)
    soak_report = {**_counts(soak, soak_s), **_growth(samples, options.soak)}
    lost, hung = (load_report[k] + soak_report[k] for k in ("lost", "hung"))
    failed = (
        lost
        or hung
        or load_report["server_errors"]
        or soak_report["server_errors"]
        or load.session_errors
        or soak.session_errors
        or privacy["media_files"]
        or privacy["leaked_words"]
    )
    return {
        "model": str(options.model),
        "stt_model": options.stt_model,
        "devices": options.devices,
        "turns_per_device": options.turns,
        "queue_max": queue_max(options.devices),
        "load": load_report,
        "peak_rss_mb": peak,
        "soak": soak_report,
        "peak_rss_mb_after_soak": peak_after_soak,
        "privacy": privacy,
        "lost": lost,
        "hung": hung,
        "seconds": round(time.monotonic() - started, 1),
        "passed": not failed,
    }


def _timed(work: Callable[[], None]) -> float:
    started = time.monotonic()
    work()
    return round(time.monotonic() - started, 1)


def _load(
    server: LiveServer,
    options: LoadOptions,
    spoken: Sequence[Utterance],
    typed: Sequence[Utterance],
    tally: Tally,
) -> None:
    """Every device's turns, the devices at once; each has its own session and draws its own lines."""

    def device(index: int) -> None:
        rng = random.Random(f"{options.seed}-{index}")
        try:
            session_id = server.new_session()
        except (OSError, ValueError, KeyError) as exc:
            tally.session_error(f"device {index}: start", exc)
            return
        for number in range(options.turns):
            if number:
                time.sleep(rng.uniform(0, PAUSE_S))
            pool = spoken if rng.random() < SPOKEN_SHARE else typed
            tally.add(turn(server, session_id, rng.choice(pool)))
        _end(server, session_id, tally, f"device {index}")

    threads = [
        threading.Thread(target=device, args=(index,), name=f"device-{index}")
        for index in range(options.devices)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _end(server: LiveServer, session_id: str, tally: Tally, who: str) -> None:
    try:
        server.post_json(f"/api/v1/sessions/{session_id}/end", {})
    except (OSError, ValueError) as exc:
        tally.session_error(f"{who}: end", exc)


def turn(
    server: LiveServer, session_id: str, utterance: Utterance, timeout: float = TURN_TIMEOUT_S
) -> Outcome:
    """One turn as the device meets it, timed from the request to the first sentence and to `done`."""
    spoken = utterance.spoken
    started = time.monotonic()
    first: float | None = None
    try:
        call = server.open_turn(session_id, utterance.text, audio=utterance.wav, timeout=timeout)
    except TimeoutError:
        return Outcome(spoken, "hung", "the request could not be sent in time")
    except OSError as exc:
        return Outcome(spoken, "lost", f"not sent: {type(exc).__name__}: {exc}")
    try:
        for item in call.events():
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                return Outcome(spoken, "hung", f"no `done` after {elapsed:.0f} s")
            kind = item.get("type")
            if kind == "sentence" and first is None:
                first = elapsed
            elif kind == "done":
                return Outcome(spoken, "done", str(item.get("source")), elapsed, first)
            elif kind == "error":
                return Outcome(spoken, "error", str(item.get("code")))
        return Outcome(spoken, "lost", "the stream ended without `done` or an error")
    except TurnRefused as exc:
        if exc.status == 503:
            return Outcome(spoken, "refused", exc.code, retry_after=exc.retry_after is not None)
        return Outcome(spoken, "http_error", f"{exc.status} {exc.code}")
    except TimeoutError:
        return Outcome(spoken, "hung", f"nothing for {timeout:g} s")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Outcome(spoken, "lost", f"the stream broke: {type(exc).__name__}: {exc}")
    finally:
        call.close()


@dataclass(frozen=True)
class Sample:
    turns: int
    """Soak turns answered when it was taken."""
    rss_mb: float
    fds: list[str]
    """What each open descriptor points to."""
    pid: int
    """The worker's: a new one means gunicorn replaced a worker that died or hung."""


def _soak(
    server: LiveServer,
    options: LoadOptions,
    spoken: Sequence[Utterance],
    typed: Sequence[Utterance],
    tally: Tally,
    samples: list[Sample],
    say: Say,
) -> None:
    """The soak's turns one at a time, in sessions of SESSION_TURNS, sampling the worker every so often.

    One at a time, so every sample is taken with no turn in flight and no other connection open."""
    rng = random.Random(f"{options.seed}-soak")
    every = max(1, options.soak // SAMPLES)
    session_id = ""
    for index in range(options.soak):
        if index % SESSION_TURNS == 0:
            if session_id:
                _end(server, session_id, tally, f"soak turn {index}")
            try:
                session_id = server.new_session()
            except (OSError, ValueError, KeyError) as exc:
                tally.session_error(f"soak turn {index}: start", exc)
                return
        pool = spoken if (index + 1) % SOAK_SPOKEN_EVERY == 0 else typed
        tally.add(turn(server, session_id, rng.choice(pool)))
        if (index + 1) % every == 0:
            _sample(server, index + 1, samples)
        if (index + 1) % (every * 5) == 0:
            say(f"soak: {index + 1}/{options.soak} turns")
    if session_id:
        _end(server, session_id, tally, "soak")


def _sample(server: LiveServer, turns: int, samples: list[Sample]) -> None:
    """The worker's RSS and open descriptors; the fewest descriptors of three looks, since the last turn's
    connection may still be closing on the server's side."""
    pid = server.worker_pid()
    if pid is None:
        return
    looks = []
    for _ in range(3):
        found = process_sample(pid)
        if found is not None:
            looks.append(found)
        time.sleep(0.05)
    if looks:
        samples.append(Sample(turns, looks[-1][0], min((fds for _, fds in looks), key=len), pid))


def _counts(tally: Tally, seconds: float) -> dict[str, Any]:
    """How the turns ended, counted so that every turn sent is in exactly one count, and their latency."""
    outcomes = tally.outcomes
    endings = Counter(o.ending for o in outcomes)
    answered = [o for o in outcomes if o.ending == "done"]
    http_errors = Counter(o.detail for o in outcomes if o.ending == "http_error")
    trouble = [f"{o.ending}: {o.detail}" for o in outcomes if o.ending in ("lost", "hung", "http_error")]
    return {
        "sent": len(outcomes),
        "spoken": sum(o.spoken for o in outcomes),
        "typed": sum(not o.spoken for o in outcomes),
        "answered": endings["done"],
        "by_source": dict(Counter(o.detail for o in answered)),
        "talked_down": sum(o.detail == "offline" for o in answered),
        "refused_503": endings["refused"],
        "refused_503_without_retry_after": sum(o.ending == "refused" and not o.retry_after for o in outcomes),
        "error_events": dict(Counter(o.detail for o in outcomes if o.ending == "error")),
        "http_errors": dict(http_errors),
        "server_errors": sum(n for status, n in http_errors.items() if status.startswith("5")),
        "lost": endings["lost"],
        "hung": endings["hung"],
        "session_errors": tally.session_errors,
        "trouble": trouble[:20],
        "latency_s": {
            "done": _percentiles([o.done_s for o in answered]),
            "first_sentence": _percentiles([o.first_sentence_s for o in answered]),
            "spoken_done": _percentiles([o.done_s for o in answered if o.spoken]),
            "typed_done": _percentiles([o.done_s for o in answered if not o.spoken]),
        },
        "seconds": seconds,
    }


def _percentiles(values: Sequence[float | None]) -> dict[str, float] | None:
    """p50 and p95 by nearest rank (so p95 >= p50 always), and the most."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return None

    def rank(p: float) -> float:
        return round(known[max(0, math.ceil(p / 100 * len(known)) - 1)], 3)

    return {"p50": rank(50), "p95": rank(95), "max": round(known[-1], 3), "n": len(known)}


def _growth(samples: Sequence[Sample], soak: int) -> dict[str, Any]:
    """The first sample after warm-up against the last, and whether both stayed flat."""
    warm = [s for s in samples if s.turns >= soak * WARM_UP_SHARE]
    if len(warm) < 2:
        return {"samples": [], "flat": None, "threshold": FLAT}
    first, last = warm[0], warm[-1]
    rss_growth = round((last.rss_mb - first.rss_mb) / first.rss_mb * 100, 1)
    fd_growth = len(last.fds) - len(first.fds)
    return {
        "samples": [[s.turns, s.rss_mb, len(s.fds)] for s in samples],
        "warm_up_turns": first.turns,
        "rss_mb": {"first": first.rss_mb, "last": last.rss_mb, "growth_pct": rss_growth},
        "fds": {
            "first": len(first.fds),
            "last": len(last.fds),
            "growth": fd_growth,
            "opened": sorted((Counter(last.fds) - Counter(first.fds)).elements()),
            "closed": sorted((Counter(first.fds) - Counter(last.fds)).elements()),
        },
        "worker_pids": len({s.pid for s in samples}),
        "flat": rss_growth < RSS_GROWTH_MAX_PCT and fd_growth <= FD_GROWTH_MAX,
        "threshold": FLAT,
    }
