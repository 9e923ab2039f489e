from __future__ import annotations

import ast
from pathlib import Path

import pytest

from device.errors import DeviceError
from device.lines import load_lines

DEVICE = Path(__file__).resolve().parents[2] / "device"

SERVER_CODES = (
    "no_speech",
    "llm_unavailable",
    "llm_failed",
    "empty_reply",
    "internal_error",
    "stt_unavailable",
    "stt_failed",
    "bad_audio",
    "unsupported_audio",
    "audio_too_long",
    "text_too_long",
)
"""The codes the server ends a turn with (an error event, or a 4xx/5xx answer to the turn request)."""


def _device_codes() -> set[str]:
    """Every code the device's client gives its own ServerErrors, read from its source."""
    tree = ast.parse((DEVICE / "client.py").read_text(encoding="utf-8"))
    return {
        str(node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "ServerError"
        and isinstance(node.args[0], ast.Constant)
    }


def test_the_packaged_lines_load() -> None:
    lines = load_lines()
    assert lines.for_error("no_speech") == "I didn't catch that — take your time and say it again."
    assert lines.for_error("a_code_from_a_newer_server") == lines.errors["default"]
    assert "waiting" not in lines.refused and lines.waiting_for_server


@pytest.mark.parametrize("code", [*SERVER_CODES, "server_unreachable", "server_timeout"])
def test_each_failure_gets_its_own_words(code: str) -> None:
    lines = load_lines()
    assert code in lines.errors, f"no line for {code} in device/lines.toml"
    if code != "internal_error":
        assert lines.for_error(code) != lines.errors["default"]


def test_every_code_the_device_raises_has_a_line_or_is_a_start_up_error() -> None:
    start_up_only = {"bad_url", "bad_response", "request_failed"}  # the daemon stops or says `default`
    codes = _device_codes()
    assert {"server_unreachable", "server_timeout", "stream_broken", "stream_truncated"} <= codes
    assert codes - start_up_only <= set(load_lines().errors)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("version = 2\n", "version 2; expected 1"),
        ("version = 1\n[errors]\ndefault = 'x'\n", "no [status] table"),
        (
            "version = 1\n[status]\nrefused = 'x'\n[errors]\ndefault = 'x'\n",
            "lacks [status] waiting_for_server",
        ),
        (
            "version = 1\n[status]\nrefused = 'x'\nwaiting_for_server = 'y'\n[errors]\nno_speech = 'x'\n",
            "lacks [errors] default",
        ),
        (
            "version = 1\n[status]\nrefused = ''\nwaiting_for_server = 'y'\n[errors]\ndefault = 'x'\n",
            "[status] refused must be one line of text",
        ),
        ("version = 1\n[status]\nrefusd = 'x'\n[errors]\ndefault = 'x'\n", "unknown [status] key 'refusd'"),
        ("version = [\n", "cannot read"),
    ],
)
def test_a_bad_lines_file_is_one_line_naming_the_problem(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "lines.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(DeviceError) as caught:
        load_lines(path)
    assert caught.value.code == "bad_lines"
    assert str(path) in caught.value.message and words in caught.value.message
    assert "\n" not in caught.value.message
