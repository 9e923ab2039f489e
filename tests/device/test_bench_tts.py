"""`tadbot bench tts` measures both real voices on the talk-down's first three sentences."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import wave
from pathlib import Path

from device.bench import spoken_lines
from device.exercises import load_exercises
from tests.device.test_speaker import needs_espeak


@needs_espeak
def test_bench_tts_reports_both_voices_side_by_side() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "bench", "tts", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["reply"] == " ".join(step.text for step in load_exercises().talk_down[:3])
    piper, espeak = report["engines"]["piper"], report["engines"]["espeak"]
    assert piper["voice"] == "Piper voice en_US-joe-medium"
    assert espeak["voice"].startswith("espeak-ng voice ")
    for engine in (piper, espeak):
        assert 5 < engine["reply_audio_s"] < 20, "three sentences take several seconds to say"
        assert engine["first_audio_ms"] > 0 and 0 < engine["rtf"] < 2
    ratio = piper["first_audio_ms"] / espeak["first_audio_ms"]
    assert abs(report["first_audio_ratio_piper_over_espeak"] - ratio) < 0.01 * ratio + 0.01


def test_bench_tts_refuses_zero_repeats_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "device.bench", "tts", "--repeats", "0"], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "tadbot bench tts: --repeats must be at least 1\n"


def test_bench_spoken_says_every_line_in_both_voices(spoken_set: Path) -> None:
    with (spoken_set / "index.csv").open(encoding="utf-8", newline="") as index:
        clips = list(csv.DictReader(index))
    lines = spoken_lines()
    assert len(lines) >= 20 and {label for label, _ in lines} == {"crisis", "safe"}
    piper, espeak = voices = list(dict.fromkeys(clip["voice"] for clip in clips))
    assert piper == "Piper voice en_US-joe-medium" and espeak.startswith("espeak-ng voice ")
    for voice in voices:
        assert [(c["label"], c["text"]) for c in clips if c["voice"] == voice] == lines
    for clip in clips:
        with wave.open(str(spoken_set / clip["file"])) as speech:
            assert (speech.getnchannels(), speech.getsampwidth()) == (1, 2)
            assert 0.8 < speech.getnframes() / speech.getframerate() < 10, clip


def test_bench_spoken_needs_a_folder_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "bench", "spoken"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "tadbot bench spoken: --out DIR is required\n"


def test_bench_spoken_writes_the_same_speech_on_every_run(spoken_set: Path, tmp_path: Path) -> None:
    """Piper varies its voice at random; the set does not, so benchmark figures compare across runs."""
    config = tmp_path / "tadbot.toml"
    config.write_text("", encoding="utf-8")
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "device.bench",
            "spoken",
            "--out",
            str(tmp_path / "set"),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    names = sorted(p.name for p in spoken_set.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "set").iterdir()) and "piper-001.wav" in names
    for name in names:
        assert (spoken_set / name).read_bytes() == (tmp_path / "set" / name).read_bytes(), name
