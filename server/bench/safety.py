"""`tadbot bench safety`: how soon a person in crisis hears the crisis reply, whatever the model is doing.

The crisis reply never waits for the language model, so it must start just as fast while the model is busy
with another turn's reply as when it is idle. Both are measured through the real server, in one run. Where
espeak-ng is installed to say the words, spoken turns are timed too (speech recognition, then the check),
with the model idle, through the server's default speech engine: a line the recogniser mishears is no
crisis to the server, and it then waits for the model like any other turn. `--data` gives a labelled set of
speech instead (`tadbot bench spoken` writes one in each of the device's voices): then the report has the
spoken crisis recall and the false alarms on the safe lines, per voice.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.bench.live import BENCH_CLIENT, LiveServer, Say, TurnMeasure
from server.bench.llm import CONVERSATION, CONVERSATION_VERSION
from server.datafiles import DataFile
from server.errors import TadbotError
from server.eval.stt import read_clips

GOAL_MS = 1000.0
"""The crisis reply must start within a second of the request."""
_BUSY_TOKENS = 512
"""Long enough that the model is still writing the other reply while every crisis turn is timed."""


@dataclass(frozen=True)
class SafetyBenchOptions:
    model: Path
    n_threads: int
    n_ctx: int
    spoken: Path | None = None
    """A folder of labelled speech (index.csv: file,text,voice,label); None: espeak-ng says the lines."""


@dataclass(frozen=True)
class SpokenClip:
    text: str
    voice: str
    label: str
    wav: bytes


def crisis_lines() -> tuple[list[str], str]:
    """The crisis utterances to time, and a line that keeps the model busy meanwhile."""
    return DataFile(CONVERSATION, CONVERSATION_VERSION, "bench_invalid", _crisis_lines).load()


def _crisis_lines(data: dict[str, Any]) -> tuple[list[str], str]:
    return list(data["crisis"]), str(data["turns"][0])


def run_safety_bench(options: SafetyBenchOptions, say: Say) -> dict[str, Any]:
    lines, busy_line = crisis_lines()
    spoken = spoken_clips(options.spoken, lines)
    with tempfile.TemporaryDirectory(prefix="tadbot-bench-") as tmp:
        server = LiveServer(
            Path(tmp),
            model=options.model,
            n_ctx=options.n_ctx,
            n_threads=options.n_threads,
            max_tokens=_BUSY_TOKENS,
        )
        with server:
            # Each utterance in a session of its own: after a crisis turn a concern is answered as a crisis
            # too (server/safety/care.py, across_turns), which would hide a line the check reads as less.
            say(f"{len(lines)} crisis turns with the model idle")
            idle = [_crisis_turn(server, _session(server), text=line) for line in lines]
            if spoken:
                say(f"{len(spoken)} spoken, through speech recognition, with the model idle")
            heard = [server.turn(_session(server), audio=clip.wav, crisis_only=True) for clip in spoken]
            say("the typed ones again while the model writes another reply")
            busy, overlapped = _while_busy(server, busy_line, lambda: _typed_turns(server, lines))
    caught = [m for m, clip in zip(heard, spoken, strict=True) if m.safety == clip.label == "crisis"]
    return {
        "model": str(options.model),
        "goal_ms": GOAL_MS,
        "crisis_first_sentence_ms_idle": _summary(idle),
        "crisis_first_sentence_ms_busy": _summary(busy),
        "model_was_busy": overlapped,
        "meets_goal": max((m.first_sentence_s or 0.0) for m in [*idle, *busy]) * 1000 < GOAL_MS,
        # Spoken, speech recognition comes first: its time, what it heard, and whether that read as a crisis.
        "spoken_crisis_first_sentence_ms": _summary(caught) if caught else None,
        **_spoken_rates(spoken, heard),
        "spoken": [
            {"said": clip.text, "voice": clip.voice, "heard": m.heard, "crisis": m.safety == "crisis"}
            for clip, m in zip(spoken, heard, strict=True)
        ],
    }


def _session(server: LiveServer) -> str:
    return str(server.post_json("/api/v1/sessions", {"client": BENCH_CLIENT})["session_id"])


def _crisis_turn(server: LiveServer, session_id: str, *, text: str) -> TurnMeasure:
    measured = server.turn(session_id, text)
    if measured.safety != "crisis" or measured.source != "crisis" or measured.first_sentence_s is None:
        raise TadbotError(
            "bench_failed", f"{text!r} was not answered from the crisis script ({measured.source})"
        )
    return measured


def _typed_turns(server: LiveServer, lines: list[str]) -> list[TurnMeasure]:
    return [_crisis_turn(server, _session(server), text=line) for line in lines]


def _while_busy(
    server: LiveServer, line: str, measure: Callable[[], list[TurnMeasure]]
) -> tuple[list[TurnMeasure], bool]:
    """Run `measure` while another session's reply is being written; also whether it truly overlapped."""
    other = _session(server)
    finished = threading.Event()

    def keep_busy() -> None:
        try:
            server.turn(other, line)
        finally:
            finished.set()

    thread = threading.Thread(target=keep_busy, name="busy-turn", daemon=True)
    thread.start()
    time.sleep(0.5)  # the other reply is under way
    measured = measure()
    overlapped = not finished.is_set()
    thread.join(timeout=900)
    return measured, overlapped


def _summary(measured: list[TurnMeasure]) -> dict[str, float]:
    times = [(m.first_sentence_s or 0.0) * 1000 for m in measured]
    return {"median": round(statistics.median(times), 1), "max": round(max(times), 1), "n": len(times)}


def spoken_clips(folder: Path | None, lines: list[str]) -> list[SpokenClip]:
    """The labelled speech of `folder`, else the crisis lines in espeak-ng's voice (none without it)."""
    if folder is None:
        if not shutil.which("espeak-ng"):
            return []
        return [SpokenClip(line, "espeak-ng", "crisis", _speak(line)) for line in lines]
    clips = read_clips(folder)
    for clip in clips:
        if clip.label not in ("crisis", "safe"):
            raise TadbotError(
                "bad_data", f"{clip.path.name}: label {clip.label!r}; bench safety needs crisis or safe"
            )
    return [SpokenClip(c.text, c.voice, c.label, c.path.read_bytes()) for c in clips]


def _spoken_rates(spoken: list[SpokenClip], heard: list[TurnMeasure]) -> dict[str, Any]:
    """Spoken crisis recall and false alarms, overall and per voice."""
    counts: dict[str, dict[str, list[int]]] = {}
    for clip, measured in zip(spoken, heard, strict=True):
        for voice in ("all", clip.voice):
            tally = counts.setdefault(voice, {"crisis": [0, 0], "safe": [0, 0]})[clip.label]
            tally[0] += measured.safety == "crisis"
            tally[1] += 1

    def rates(tallies: dict[str, list[int]]) -> dict[str, Any]:
        (caught, crises), (alarms, safe) = tallies["crisis"], tallies["safe"]
        return {
            "crisis_recall": round(caught / crises, 3) if crises else None,
            "crisis_lines": crises,
            "false_alarms": round(alarms / safe, 3) if safe else None,
            "safe_lines": safe,
        }

    if not counts:
        return {}
    by_voice = {voice: rates(tallies) for voice, tallies in counts.items() if voice != "all"}
    return {"spoken_rates": rates(counts["all"]), "spoken_rates_by_voice": by_voice}


def _speak(text: str) -> bytes:
    """The words as espeak-ng says them, a WAV in memory: what the device would send."""
    done = subprocess.run(
        ["espeak-ng", "--stdout", "-s", "150", text], capture_output=True, timeout=60, check=True
    )
    return done.stdout
