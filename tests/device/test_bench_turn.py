"""`tadbot bench turn` times a whole spoken turn, stage by stage, against a real server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from device.bench_turn import STAGES, ServerTurn, server_stages, stage_table
from tests.device import fake_aplay
from tests.device.test_speaker import needs_espeak


@needs_espeak
def test_bench_turn_reports_every_stage_against_a_loopback_server(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_aplay.install(tmp_path / "aplay", monkeypatch)  # no sound card here: the stand-in plays in real time
    config = tmp_path / "tadbot.toml"
    config.write_text("[llm]\nn_ctx = 2048\nn_threads = 2\nmax_tokens = 24\nseed = 7\n", encoding="utf-8")
    smallest = ["--repeats", "1", "--engine", "sphinx", "--voice", "espeak", "--model", str(tiny_gguf)]
    done = subprocess.run(
        [sys.executable, "-m", "server", "--config", str(config), "bench", "turn", *smallest],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["target"] == "turn" and report["server"] == "loopback"
    assert report["audio_open"]["espeak"].startswith("measured on aplay")
    [combination] = report["combinations"]
    assert (combination["stt"], combination["voice"]) == ("sphinx", "espeak")
    stages = combination["stages"]
    assert tuple(stages) == STAGES
    assert all(stage["ms"] >= 0 and 0 <= stage["share"] <= 1 for stage in stages.values())
    assert sum(stage["share"] for stage in stages.values()) == pytest.approx(1.0, abs=0.001)
    assert sum(stage["ms"] for stage in stages.values()) == pytest.approx(combination["total_ms"], abs=1)
    assert stages["endpointing"]["ms"] >= 1000 * report["end_silence_s"] - 60, "it waits out the silence"
    assert stages["stt"]["ms"] > 0 and stages["tts"]["ms"] > 0
    assert "sphinx + espeak:" in done.stdout, "a table for a person comes before the JSON"


def test_stage_arithmetic_from_the_servers_timings() -> None:
    turn = ServerTurn(
        transcript_ms=950.0,
        timings={"stt_ms": 800.0, "safety_ms": 5.0, "memory_ms": 20.0, "first_sentence_ms": 2300.0},
        first_sentence="Breathe with me.",
        heard="my heart is racing",
        source="llm",
    )
    assert server_stages(turn) == {"upload": 150.0, "stt": 800.0, "model_first_sentence": 1500.0}
    table = stage_table({"endpointing": 700.0, **server_stages(turn), "tts": 500.0, "audio_open": 350.0})
    assert tuple(table) == STAGES
    assert table["stt"] == {"ms": 800.0, "share": round(800 / 4000, 4)}
    assert sum(stage["share"] for stage in table.values()) == pytest.approx(1.0)


def test_a_typed_turn_has_no_stt_and_a_late_transcript_is_never_negative() -> None:
    turn = ServerTurn(10.0, {"stt_ms": 40.0, "first_sentence_ms": 30.0}, "Hello.", "hi", "llm")
    assert server_stages(turn) == {"upload": 0.0, "stt": 40.0, "model_first_sentence": 0.0}
