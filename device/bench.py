"""`tadbot bench tts`: Piper against espeak-ng, on the words a frightened person would hear first.

The reply is the first three sentences of the offline talk-down (device/exercises.toml), spoken through
the same synthesisers the device uses. Time to first audio is what the person waits before the voice
starts, as the device speaks a reply sentence by sentence: the first sentence's synthesis. RTF is the
whole reply's synthesis time over its length. Both voices run side by side in one process, alternating,
so a busy machine slows them alike; medians over the repeats. Progress goes to stderr and the report, one
JSON object, to the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from device.errors import DeviceError
from device.exercises import load_exercises
from device.settings import DeviceSettings, load_settings
from device.synth import EspeakSynth, PiperSynth, Synthesiser, find_piper_voice

_SENTENCES = 3


def _open(engine: str, settings: DeviceSettings) -> Synthesiser:
    if engine == "piper":
        voice = find_piper_voice(settings.piper_voice, settings.voices_dir)
        return PiperSynth(voice, settings.tts_rate, settings.tts_volume)
    return EspeakSynth(settings.tts_voice, settings.tts_rate, settings.tts_volume, settings.language)


def run_tts_bench(settings: DeviceSettings, repeats: int, say: Callable[[str], None]) -> dict[str, object]:
    reply = [step.text for step in load_exercises().talk_down[:_SENTENCES]]
    engines = ("piper", "espeak")
    synths: dict[str, Synthesiser] = {}
    report: dict[str, dict[str, object]] = {}
    for engine in engines:
        started = time.perf_counter()
        synths[engine] = _open(engine, settings)
        report[engine] = {
            "voice": synths[engine].description,
            "load_s": round(time.perf_counter() - started, 2),
        }
    first: dict[str, list[float]] = {e: [] for e in engines}
    rtf: dict[str, list[float]] = {e: [] for e in engines}
    audio: dict[str, float] = {}
    try:
        for _ in range(repeats + 1):  # the first round warms both up and is not counted
            for engine, synth in synths.items():
                started = time.perf_counter()
                speech = [synth.synthesize(reply[0])]
                first_s = time.perf_counter() - started
                speech += [synth.synthesize(text) for text in reply[1:]]
                total_s = time.perf_counter() - started
                audio[engine] = sum(s.seconds for s in speech)
                first[engine].append(first_s)
                rtf[engine].append(total_s / audio[engine])
            say(f"round {len(first['piper'])} of {repeats + 1}")
    finally:
        for synth in synths.values():
            synth.close()
    first_ms = {e: 1000 * statistics.median(first[e][1:]) for e in engines}
    median_rtf = {e: statistics.median(rtf[e][1:]) for e in engines}
    for engine in engines:
        report[engine] |= {
            "first_audio_ms": round(first_ms[engine], 1),
            "rtf": round(median_rtf[engine], 4),
            "reply_audio_s": round(audio[engine], 2),
        }
    return {
        "target": "tts",
        "reply": " ".join(reply),
        "repeats": repeats,
        "warmup": True,
        "engines": report,
        "first_audio_ratio_piper_over_espeak": round(first_ms["piper"] / first_ms["espeak"], 2),
        "rtf_ratio_piper_over_espeak": round(median_rtf["piper"] / median_rtf["espeak"], 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tadbot bench tts", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("tts",))
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--config", help="the TOML file whose [device] section picks the voices")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        print("tadbot bench tts: --repeats must be at least 1", file=sys.stderr)
        return 2
    try:
        report = run_tts_bench(
            load_settings(args.config), args.repeats, lambda line: print(f"bench: {line}", file=sys.stderr)
        )
    except DeviceError as exc:
        print(f"tadbot bench tts: {exc.message}", file=sys.stderr)
        return 2 if exc.code == "bad_config" else 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
