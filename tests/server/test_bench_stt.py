"""`tadbot bench stt` and `tadbot eval stt`: the real engines on real speech, side by side, with the
figures the README reports; and one clear line for what they cannot read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server.eval.stt import read_clips, words
from tests.conftest import SPEECH, tadbot

WHISPER = "faster_whisper whisper-tiny.en"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The shipped defaults, whatever config the machine has."""
    config = tmp_path / "tadbot.toml"
    config.write_text("", encoding="utf-8")
    return {**os.environ, "TADBOT_CONFIG": str(config), "TADBOT_MODELS_DIR": str(tmp_path / "models")}


def _report(done: object) -> dict[str, object]:
    assert getattr(done, "returncode", None) == 0, getattr(done, "stderr", "")
    report: dict[str, object] = json.loads(str(getattr(done, "stdout", "")).strip().splitlines()[-1])
    return report


def test_both_engines_hear_a_real_voice_side_by_side(env: dict[str, str]) -> None:
    report = _report(tadbot("bench", "stt", "--data", str(SPEECH), env=env, timeout=600))
    assert (report["clips"], report["audio_s"], report["repeats"]) == (1, 11.0, 1)
    engines = report["engines"]
    assert isinstance(engines, dict) and set(engines) == {WHISPER, "sphinx"}
    whisper, sphinx = engines[WHISPER], engines["sphinx"]
    assert whisper["words"] == sphinx["words"] == 22
    assert whisper["wer"] <= 0.10, whisper["misheard"]
    assert sphinx["wer"] > whisper["wer"], "PocketSphinx mishears this speech; Whisper should not"
    assert sphinx["misheard"][0]["said"].startswith("And so, my fellow Americans")
    for engine in (whisper, sphinx):
        assert engine["wer"] == round(engine["word_errors"] / 22, 4)
        assert 0 < engine["rtf"] < 5 and engine["load_s"] > 0
        latency = engine["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"]
        # One clip, one round: the latency is that clip's time, and RTF is it over the clip's 11 s.
        assert abs(latency["p50"] / 1000 / 11.0 - engine["rtf"]) < 0.01
        assert 50 < engine["peak_rss_mb"] < 4000, "each engine's own process, measured"


def test_the_spoken_set_is_heard_per_voice_and_whisper_models_can_be_named(
    env: dict[str, str], spoken_set: Path
) -> None:
    done = tadbot(
        *("bench", "stt", "--data", str(spoken_set), "--engine", "faster_whisper"),
        *("--model", "whisper-tiny.en", "--repeats", "2"),
        env=env,
        timeout=900,
    )
    report = _report(done)
    clips = read_clips(spoken_set)
    assert report["clips"] == len(clips) and report["repeats"] == 2
    engines = report["engines"]
    assert isinstance(engines, dict) and list(engines) == [WHISPER]
    whisper = engines[WHISPER]
    assert set(whisper["wer_by_voice"]) == {clip.voice for clip in clips}
    assert whisper["words"] == sum(len(words(clip.text)) for clip in clips)
    assert whisper["wer"] <= 0.10, whisper["misheard"]
    assert whisper["exact"] + len(whisper["misheard"]) == len(clips)


def test_eval_stt_scores_the_configured_engine(env: dict[str, str]) -> None:
    done = tadbot("eval", "stt", "--data", str(SPEECH), env=env, timeout=300)
    report = _report(done)
    assert report["engine"] == WHISPER and report["words"] == 22 and report["wer"] <= 0.10
    sphinx = _report(
        tadbot("eval", "stt", "--data", str(SPEECH), env={**env, "TADBOT_STT__ENGINE": "sphinx"}, timeout=300)
    )
    assert sphinx["engine"] == "sphinx" and sphinx["wer"] > report["wer"]


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (("bench", "stt"), 1, "tadbot: error: bench stt needs --data DIR"),
        (("bench", "stt", "--data", "/nonexistent"), 1, "tadbot: error: /nonexistent/index.csv: cannot read"),
        (("bench", "fer", "--model", "a", "--model", "b"), 2, "tadbot: error: bench fer takes one --model"),
        (("eval", "stt", "--data", "/nonexistent"), 1, "tadbot: error: /nonexistent/index.csv: cannot read"),
    ],
)
def test_what_the_speech_benches_cannot_use_is_one_line(
    env: dict[str, str], args: tuple[str, ...], code: int, line: str
) -> None:
    done = tadbot(*args, env=env)
    assert done.returncode == code and done.stdout == ""
    assert done.stderr.startswith(line) and len(done.stderr.splitlines()) == 1, done.stderr


def test_a_clip_the_server_would_refuse_is_named_before_any_engine_loads(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "bad.wav").write_bytes(b"RIFF0000WAVEnot really")
    (tmp_path / "set" / "index.csv").write_text("file,text\nbad.wav,hello\n", encoding="utf-8")
    done = tadbot("bench", "stt", "--data", str(tmp_path / "set"), env=env)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(
        f"tadbot: error: {tmp_path / 'set' / 'bad.wav'}: The WAV file is truncated or damaged"
    )
