"""`tadbot bench tts`: Piper against espeak-ng, on the words a frightened person would hear first; and
`tadbot bench spoken`: a labelled set of real speech in both voices, for the server's speech benchmarks.

For `tts`, the reply is the first three sentences of the offline talk-down (device/exercises.toml), spoken
through the same synthesisers the device uses. Time to first audio is what the person waits before the voice
starts, as the device speaks a reply sentence by sentence: the first sentence's synthesis. RTF is the
whole reply's synthesis time over its length. Both voices run side by side in one process, alternating,
so a busy machine slows them alike; medians over the repeats. Progress goes to stderr and the report, one
JSON object, to the last line of stdout.

`spoken` says each line of device/spoken_set.toml in each voice and writes the WAVs with an index.csv
(file, text, voice, label) that `tadbot bench stt --data` and `tadbot bench safety --data` read. Piper
speaks without its random variation there, so every run writes the same speech.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
import wave
from collections.abc import Callable, Sequence
from pathlib import Path

from device.datafiles import read_versioned
from device.errors import DeviceError
from device.exercises import load_exercises
from device.settings import DeviceSettings, load_settings
from device.synth import EspeakSynth, PiperSynth, Synthesiser, find_piper_voice

_SENTENCES = 3
_ENGINES = ("piper", "espeak")
INDEX_COLUMNS = ("file", "text", "voice", "label")


def _open(engine: str, settings: DeviceSettings, *, steady: bool = False) -> Synthesiser:
    if engine == "piper":
        voice = find_piper_voice(settings.piper_voice, settings.voices_dir)
        return PiperSynth(voice, settings.tts_rate, settings.tts_volume, steady=steady)
    return EspeakSynth(settings.tts_voice, settings.tts_rate, settings.tts_volume, settings.language)


def run_tts_bench(settings: DeviceSettings, repeats: int, say: Callable[[str], None]) -> dict[str, object]:
    reply = [step.text for step in load_exercises().talk_down[:_SENTENCES]]
    synths: dict[str, Synthesiser] = {}
    report: dict[str, dict[str, object]] = {}
    for engine in _ENGINES:
        started = time.perf_counter()
        synths[engine] = _open(engine, settings)
        report[engine] = {
            "voice": synths[engine].description,
            "load_s": round(time.perf_counter() - started, 2),
        }
    first: dict[str, list[float]] = {e: [] for e in _ENGINES}
    rtf: dict[str, list[float]] = {e: [] for e in _ENGINES}
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
    first_ms = {e: 1000 * statistics.median(first[e][1:]) for e in _ENGINES}
    median_rtf = {e: statistics.median(rtf[e][1:]) for e in _ENGINES}
    for engine in _ENGINES:
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


def spoken_lines(path: Path | None = None) -> list[tuple[str, str]]:
    """(label, text) for each line of device/spoken_set.toml, crisis lines first."""
    document, where = read_versioned("spoken_set.toml", path, "bad_spoken_set", 1)
    lines = [(label, text) for label in ("crisis", "safe") for text in document.get(label, [])]
    if not lines or not all(isinstance(text, str) and text.strip() for _, text in lines):
        raise DeviceError("bad_spoken_set", f"{where}: crisis and safe must be lists of sentences")
    return lines


def write_spoken_set(settings: DeviceSettings, out: Path, say: Callable[[str], None]) -> dict[str, object]:
    """Every line in every voice as a WAV under `out`, listed in `out`/index.csv."""
    lines = spoken_lines()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeviceError("bad_output", f"cannot make {out}: {exc.strerror}") from exc
    rows: list[tuple[str, str, str, str]] = []
    seconds = 0.0
    for engine in _ENGINES:
        synth = _open(engine, settings, steady=True)  # the same WAVs on every run, so figures compare
        say(f"{len(lines)} lines in the {synth.description}")
        try:
            for number, (label, text) in enumerate(lines, start=1):
                speech = synth.synthesize(text)
                name = f"{engine}-{number:03d}.wav"
                with wave.open(str(out / name), "wb") as wav:
                    wav.setnchannels(1)
                    wav.setsampwidth(2)
                    wav.setframerate(speech.rate)
                    wav.writeframes(speech.pcm)
                seconds += speech.seconds
                rows.append((name, text, synth.description, label))
        finally:
            synth.close()
    with (out / "index.csv").open("w", encoding="utf-8", newline="") as index:
        writer = csv.writer(index)
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
    return {"target": "spoken", "out": str(out), "files": len(rows), "audio_s": round(seconds, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tadbot bench", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("tts", "spoken"))
    parser.add_argument("--repeats", type=int, default=5, help="tts: measured rounds (default 5)")
    parser.add_argument("--out", help="spoken: the folder to write the WAVs and index.csv into")
    parser.add_argument("--config", help="the TOML file whose [device] section picks the voices")
    args = parser.parse_args(argv)
    prog = f"tadbot bench {args.target}"
    if args.target == "tts" and args.repeats < 1:
        print(f"{prog}: --repeats must be at least 1", file=sys.stderr)
        return 2
    if args.target == "spoken" and not args.out:
        print(f"{prog}: --out DIR is required", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    try:
        settings = load_settings(args.config)
        if args.target == "tts":
            report = run_tts_bench(settings, args.repeats, say)
        else:
            report = write_spoken_set(settings, Path(args.out), say)
    except DeviceError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 2 if exc.code in ("bad_config", "bad_output") else 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
