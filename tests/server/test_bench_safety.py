"""`tadbot bench safety` on the tiny GGUF: the report that tools rely on, typed and spoken."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.conftest import tadbot


def test_bench_safety_times_crisis_replies_typed_and_spoken(tiny_gguf: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TADBOT_MODELS_DIR": str(tmp_path / "models")}
    done = tadbot("bench", "safety", "--model", str(tiny_gguf), "--threads", "1", env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["model"] == str(tiny_gguf) and report["goal_ms"] == 1000.0
    for key in ("crisis_first_sentence_ms_idle", "crisis_first_sentence_ms_busy"):
        assert report[key]["n"] == 5 and 0 < report[key]["median"] <= report[key]["max"]
    assert isinstance(report["model_was_busy"], bool) and isinstance(report["meets_goal"], bool)
    if shutil.which("espeak-ng"):
        said = [row["said"] for row in report["spoken"]]
        assert len(said) == 5 and said[0] == "I want to end my life."
        assert all(
            isinstance(row["heard"], str) and isinstance(row["crisis"], bool) for row in report["spoken"]
        )
    assert not (tmp_path / "models").exists(), "--model must not build the full-size model"
