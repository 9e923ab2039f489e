"""`tadbot bench stt`: each speech engine on the same labelled speech, side by side in one run.

Every engine runs in a child process of its own, loaded as the server loads it (`build_transcriber`), so
its peak resident memory is its own and a crash in one native library cannot end the run. The clips are
handed to the engines in turn, clip by clip, so a busy machine slows them alike. Each engine first hears
one clip that is not counted (the first call pays for lazy set-up). Reported per engine: word error rate
(server.eval.stt), real-time factor (transcribing time over audio time), p50 and p95 latency per clip,
load time and peak RSS.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from server.errors import TadbotError
from server.eval.stt import Clip, read_clip_audio, read_clips, score
from server.sections import SttSection
from server.speech.stt import read_wav

_TIMEOUT_S = 600.0
"""How long one engine may take to load, or to hear one clip, before the run gives up on it."""


@dataclass(frozen=True)
class SttBenchOptions:
    data: Path
    engines: tuple[SttSection, ...]
    """One `[stt]` section per engine to compare (engine and model set; the rest as configured)."""
    repeats: int = 1
    max_audio_s: float = 60.0
    """The server's limit on one turn's audio (server.max_audio_s): a longer clip is refused as there."""


def engine_label(stt: SttSection) -> str:
    return f"faster_whisper {stt.model}" if stt.engine == "faster_whisper" else stt.engine


def engines_to_compare(
    configured: SttSection, engines: list[str], models: list[str]
) -> tuple[SttSection, ...]:
    """`--engine` and `--model` as sections: by default every engine, Whisper with the configured model
    (and with each `--model` given)."""
    chosen = []
    for engine in engines or ["faster_whisper", "sphinx"]:
        if engine == "faster_whisper":
            chosen += [replace(configured, engine=engine, model=m) for m in models or [configured.model]]
        else:
            chosen.append(replace(configured, engine=engine))
    return tuple(chosen)


def run_stt_bench(options: SttBenchOptions, say: Callable[[str], None]) -> dict[str, Any]:
    clips = read_clips(options.data)
    audio = [clip.path.read_bytes() for clip in clips]
    seconds = _durations(clips, audio, options.max_audio_s)
    workers = [_Worker(stt, options.max_audio_s) for stt in options.engines]
    try:
        for worker in workers:
            say(f"{worker.label}: loaded in {worker.wait_ready():.1f} s")
        for worker in workers:
            worker.hear(audio[0])  # warm-up, not counted
        for round_number in range(1, options.repeats + 1):
            for index, data in enumerate(audio):
                for worker in workers:
                    worker.time(index, data)
            say(f"round {round_number} of {options.repeats}: {len(audio)} clips through each engine")
        reports = {worker.label: worker.report(clips, seconds) for worker in workers}
    finally:
        for worker in workers:
            worker.close()
    return {
        "target": "stt",
        "data": str(options.data),
        "clips": len(clips),
        "audio_s": round(sum(seconds), 1),
        "repeats": options.repeats,
        "engines": reports,
    }


def _durations(clips: list[Clip], audio: list[bytes], max_audio_s: float) -> list[float]:
    """Each clip's length; a clip the server would refuse is named here, before any engine loads."""
    return [read_clip_audio(c, data, max_audio_s).duration_s for c, data in zip(clips, audio, strict=True)]


class _Worker:
    """One engine in its own process, spoken to over a pipe."""

    def __init__(self, stt: SttSection, max_audio_s: float) -> None:
        self.label = engine_label(stt)
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(stt, max_audio_s, child), name=f"bench-{stt.engine}"
        )
        self._process.start()
        child.close()
        self._load_s = 0.0
        self._heard: dict[int, str] = {}
        self._times: list[float] = []

    def _receive(self) -> Any:
        if not self._pipe.poll(_TIMEOUT_S):
            raise TadbotError("bench_failed", f"{self.label} gave no answer in {_TIMEOUT_S:g} s")
        try:
            kind, value = self._pipe.recv()
        except EOFError as exc:
            code = self._process.exitcode
            raise TadbotError("bench_failed", f"{self.label} died (exit code {code})") from exc
        if kind == "error":
            raise TadbotError("bench_failed", f"{self.label}: {value}")
        return value

    def wait_ready(self) -> float:
        self._load_s = float(self._receive())
        return self._load_s

    def hear(self, data: bytes) -> tuple[str, float]:
        self._pipe.send(data)
        text, elapsed = self._receive()
        return str(text), float(elapsed)

    def time(self, index: int, data: bytes) -> None:
        text, elapsed = self.hear(data)
        self._heard.setdefault(index, text)
        self._times.append(elapsed)

    def report(self, clips: list[Clip], seconds: list[float]) -> dict[str, Any]:
        self._pipe.send(None)
        peak_mb = float(self._receive())
        heard = [self._heard[i] for i in range(len(clips))]
        rounds = len(self._times) // len(clips)
        milliseconds = sorted(1000 * t for t in self._times)
        return {
            "load_s": round(self._load_s, 2),
            **score(clips, heard),
            "rtf": round(sum(self._times) / (rounds * sum(seconds)), 4),
            "latency_ms": {
                "p50": round(statistics.median(milliseconds), 1),
                "p95": round(milliseconds[math.ceil(0.95 * len(milliseconds)) - 1], 1),
            },
            "peak_rss_mb": round(peak_mb, 1),
        }

    def close(self) -> None:
        self._pipe.close()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve(stt: SttSection, max_audio_s: float, pipe: Connection) -> None:
    """The child: load the engine, then hear each WAV sent until None; last, send the peak RSS in MB."""
    from server.conversation.components import build_transcriber

    started = time.perf_counter()
    try:
        transcriber = build_transcriber(stt)
    except Exception as exc:  # any failure to load is the report's line, not a child's traceback
        pipe.send(("error", getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"))
        return
    pipe.send(("ready", time.perf_counter() - started))
    while (data := pipe.recv()) is not None:
        audio = read_wav(data, max_seconds=max_audio_s)
        started = time.perf_counter()
        try:
            text = transcriber.transcribe(audio).text
        except TadbotError as exc:
            pipe.send(("error", exc.message))
            return
        pipe.send(("heard", (text, time.perf_counter() - started)))
    pipe.send(("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
