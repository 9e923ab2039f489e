"""`tadbot bench llm` on the tiny GGUF: the interface tools rely on, and figures that make sense."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import tadbot

KEYS = {
    "decode_ratio",
    "prefix_eval_ratio",
    "naive_prefix_eval_ratio",
    "first_sentence_ratio",
    "peak_rss_mb",
    "model",
}


def test_bench_llm_prints_one_json_report_on_its_last_line(tiny_gguf: Path, tmp_path: Path) -> None:

    env = {**os.environ, "TADBOT_MODELS_DIR": str(tmp_path / "models")}
    done = tadbot(
        "bench",
        "llm",
        "--model",
        str(tiny_gguf),
        "--turns",
        "4",
        "--threads",
        "1",
        "--n-ctx",
        "4096",
        "--max-tokens",
        "16",
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) >= KEYS, report
    assert report["model"] == str(tiny_gguf) and report["turns"] == 4
    assert report["speaking_wpm"] == 165, "turns are spaced as a person listening to the reply would"
    assert report["decode_ratio"] > 0  # the tiny model's speeds are noise; full-size runs give the figure
    assert report["raw_decode_tokens_per_s"] > 0 and report["server_decode_tokens_per_s"] > 0
    # The server reads only what each turn added; the naive layout reads the notes and everything after.
    assert report["prefix_eval_ratio_median"] is not None and report["prefix_eval_ratio_median"] <= 1.3
    assert report["naive_prefix_eval_ratio"] is not None
    assert report["naive_prefix_eval_ratio"] > report["prefix_eval_ratio_median"]
    assert report["peak_rss_mb"] > 50, "the worker that holds the model was not measured"
    assert not (tmp_path / "models").exists(), "--model must not build the full-size model"


def test_bench_llm_names_a_missing_model(tmp_path: Path) -> None:

    done = tadbot("bench", "llm", "--model", str(tmp_path / "nope.gguf"), env=dict(os.environ))
    assert done.returncode == 1
    assert done.stderr.strip() == f"tadbot: error: --model {tmp_path / 'nope.gguf'}: no such file"
