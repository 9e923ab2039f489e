"""`tadbot bench safety` on the tiny GGUF: the report that tools rely on, typed and spoken."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from server.bench.safety import crisis_lines, spoken_clips
from server.errors import TadbotError
from server.eval.stt import read_clips
from tests.conftest import tadbot


def test_bench_safety_times_crisis_replies_typed_and_spoken(
    tiny_gguf: Path, tmp_path: Path, spoken_set: Path
) -> None:
    env = {**os.environ, "TADBOT_MODELS_DIR": str(tmp_path / "models")}
    done = tadbot(
        *("bench", "safety", "--model", str(tiny_gguf), "--threads", "1", "--data", str(spoken_set)),
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["model"] == str(tiny_gguf) and report["goal_ms"] == 1000.0
    for key in ("crisis_first_sentence_ms_idle", "crisis_first_sentence_ms_busy"):
        assert report[key]["n"] == 5 and 0 < report[key]["median"] <= report[key]["max"]
    assert isinstance(report["model_was_busy"], bool) and isinstance(report["meets_goal"], bool)
    clips = read_clips(spoken_set)
    assert [(row["said"], row["voice"]) for row in report["spoken"]] == [(c.text, c.voice) for c in clips]
    crisis = [c for c in clips if c.label == "crisis"]
    rates = report["spoken_rates"]
    assert (rates["crisis_lines"], rates["safe_lines"]) == (len(crisis), len(clips) - len(crisis))
    flagged = [row["crisis"] for row in report["spoken"]]
    caught = sum(f for f, c in zip(flagged, clips, strict=True) if c.label == "crisis")
    alarms = sum(f for f, c in zip(flagged, clips, strict=True) if c.label == "safe")
    # Every crisis line, in both voices, even those heard with "bills" or "love" (safety/soundalikes.py).
    assert rates["crisis_recall"] == round(caught / len(crisis), 3) == 1.0, report["spoken"]
    assert rates["false_alarms"] == round(alarms / rates["safe_lines"], 3)
    assert set(report["spoken_rates_by_voice"]) == {c.voice for c in clips}
    assert not (tmp_path / "models").exists(), "--model must not build the full-size model"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_without_a_set_espeak_ng_says_the_crisis_lines() -> None:
    lines, _ = crisis_lines()
    spoken = spoken_clips(None, lines)
    assert [(s.text, s.voice, s.label) for s in spoken] == [(line, "espeak-ng", "crisis") for line in lines]
    assert all(s.wav.startswith(b"RIFF") and len(s.wav) > 10_000 for s in spoken)


def test_a_set_without_crisis_or_safe_labels_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "index.csv").write_text("file,text,label\na.wav,hello,maybe\n", encoding="utf-8")
    with pytest.raises(TadbotError, match=r"a\.wav: label 'maybe'; bench safety needs crisis or safe"):
        spoken_clips(tmp_path, [])
