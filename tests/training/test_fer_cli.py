"""`tadbot train fer` as a user meets it: a JSON last line, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import main as cli
from tests.conftest import ROOT, tadbot
from tests.training.conftest import TrainedRun, write_csv_dataset, write_labels
from training.__main__ import main as train_main


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_the_last_stdout_line_is_the_summary(trained: TrainedRun) -> None:
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert summary == trained.summary
    assert {"onnx", "manifest", "best_epoch", "val_macro_recall", "val_accuracy", "test_accuracy"} <= set(
        summary
    )
    assert Path(summary["onnx"]).is_file() and Path(summary["manifest"]).is_file()
    assert summary["unreadable"] == 1
    epoch_lines = [line for line in trained.stderr.splitlines() if "val_macro_recall=" in line]
    assert len(epoch_lines) == 6 and "epoch 6/6: train_loss=" in epoch_lines[-1]
    assert "1 of 201 images are missing or do not decode" in trained.stderr
    for name in ("report.json", "report.md", "confusion.png", "fer-mobilenet_v3_small.pt"):
        assert (trained.out / name).is_file()


def _fear_from_one_person(data: Path, rows: list[dict[str, str]]) -> None:
    (data / "images" / "fear.png").write_bytes((data / "images" / rows[0]["image"]).read_bytes())
    write_labels(data, [*rows, {"image": "fear.png", "emotion": "fear", "identity": "p0", "split": "train"}])


BAD_INPUT = {
    "missing": (lambda data, rows: None, "--data {tmp}/nowhere: no such folder"),
    "empty": (lambda data, rows: None, "--data {tmp}/empty: expected images/ + labels.csv"),
    "unknown_label": (
        lambda data, rows: write_labels(data, [{**rows[0], "emotion": "smug"}]),
        "{tmp}/faces/labels.csv line 2: unknown emotion label 'smug'",
    ),
    "too_few": (_fear_from_one_person, "emotion 'fear' has 1 training image from 1 identity: too few"),
    "no_images": (
        lambda data, rows: write_labels(data, [{**rows[0], "image": "gone.png"}]),
        "no labelled image could be read",
    ),
    "bad_option": (lambda data, rows: None, "--val-fraction 1.5: expected between 0 and 1"),
    "out_is_a_file": (
        lambda data, rows: (data.parent / "out").write_text("taken", "utf-8"),
        "--out {tmp}/out: cannot create it",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    data = tmp_path / "faces"
    rows = write_csv_dataset(data, people=3, per_class={"happy": 2, "sad": 2}, test_people=0)
    prepare, message = BAD_INPUT[case]
    prepare(data, rows)
    target = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty"}.get(case, data)
    if case == "empty":
        target.mkdir()
    extra = ["--val-fraction", "1.5"] if case == "bad_option" else []
    argv = ["fer", "--data", str(target), "--out", str(tmp_path / "out"), "--no-pretrained", *extra]
    assert train_main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("tadbot: error: ")
    assert message.format(tmp=tmp_path) in line
    assert not (tmp_path / "out").is_dir()


def test_tadbot_train_hands_over_and_passes_the_exit_code(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Like `tadbot device`, `tadbot train` runs in its own process (python -m training.fer); its exit code
    and its one-line error come back through the server's CLI."""
    assert (
        cli.main(["train", "fer", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    )
    captured = capfd.readouterr()
    assert _one_line_error(captured.err) == f"tadbot: error: --data {tmp_path / 'nowhere'}: no such folder"
    assert captured.out == ""


def test_tadbot_train_help_lists_the_flags() -> None:
    done = tadbot("train", "fer", "--help", env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    for flag in ("--data", "--out", "--arch", "--no-pretrained", "--label-smoothing", "--limit"):
        assert flag in done.stdout
    assert "train" in tadbot("--help", env=dict(os.environ)).stdout


def test_the_cli_starts_without_torch() -> None:
    """`tadbot` builds its parser, train command included, without importing torch or the training package."""
    code = (
        "import sys, server.cli.main as c; c.build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
