"""The decode check in a child process: a model that crashes llama.cpp is one line, never a dead server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from server.conversation.llm.check import (
    KEPT_VERDICTS,
    Outcome,
    check_decode,
    cpu_identity,
    ensure_decodes,
    remember,
)
from server.errors import ModelError
from tests.conftest import LiveServer, start_server, stop_server, tadbot
from tests.tiny_gguf import build_untokenizable_gguf

SIZES = {"n_ctx": 512, "n_threads": 2, "n_batch": 64}


@pytest.fixture(scope="module")
def crashing_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_untokenizable_gguf(tmp_path_factory.mktemp("crash") / "llm.gguf")


def test_a_model_that_decodes_passes(tiny_gguf: Path) -> None:
    found = check_decode(tiny_gguf, **SIZES, timeout_s=120)
    assert found.outcome is Outcome.OK and found.ok, found.detail
    assert found.detail.startswith("decoded ") and f"tokens of {tiny_gguf} in " in found.detail


def test_a_native_crash_is_one_line_that_names_the_file_the_cpu_and_the_signal(crashing_gguf: Path) -> None:
    found = check_decode(crashing_gguf, **SIZES, timeout_s=120)
    assert found.outcome is Outcome.CRASH and not found.ok
    assert "\n" not in found.detail
    assert found.detail.startswith(
        f"llama.cpp crashed decoding {crashing_gguf} on this CPU: SIGABRT (Aborted)"
    )
    assert "unordered_map::at" in found.detail, "the C++ runtime's last words are kept"
    assert "the server will not load it" in found.detail and "llama-build.sh" in found.detail


def test_a_hang_is_cut_off_at_the_time_limit(tiny_gguf: Path) -> None:
    started = time.monotonic()
    found = check_decode(tiny_gguf, **SIZES, timeout_s=0.05)
    assert found.outcome is Outcome.TIMEOUT and time.monotonic() - started < 30
    assert "did not finish decoding" in found.detail and "llm.check_timeout_s" in found.detail


def test_an_ordinary_error_is_left_to_the_load_which_names_it(tmp_path: Path) -> None:
    junk = tmp_path / "llm.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    found = check_decode(junk, **SIZES, timeout_s=120)
    assert found.outcome is Outcome.ERROR and "is not a GGUF file" in found.detail
    verdicts = tmp_path / "verdicts.json"
    ensure_decodes(junk, **SIZES, timeout_s=120, verdicts=verdicts)
    assert not verdicts.exists(), "only a pass or a crash is remembered"
    ensure_decodes(tmp_path / "absent.gguf", **SIZES, timeout_s=120, verdicts=verdicts)
    assert not verdicts.exists()


def test_a_crash_is_remembered_per_model_file_and_cpu(crashing_gguf: Path, tmp_path: Path) -> None:
    verdicts = tmp_path / "llm-checks.json"
    with pytest.raises(ModelError) as first:
        ensure_decodes(crashing_gguf, **SIZES, timeout_s=120, verdicts=verdicts)
    assert first.value.code == "model_crashes" and "crashed decoding" in first.value.message
    kept = json.loads(verdicts.read_text("utf-8"))
    assert [v["ok"] for v in kept.values()] == [False]
    # The next start trusts the verdict: no child is run, and the line says when it was found.
    with pytest.raises(ModelError) as again:
        ensure_decodes(crashing_gguf, **SIZES, timeout_s=0.001, verdicts=verdicts)
    assert "(found at " in again.value.message and "tadbot doctor --role server" in again.value.message
    # Other settings are another question.
    with pytest.raises(ModelError) as other:
        ensure_decodes(crashing_gguf, **{**SIZES, "n_batch": 32}, timeout_s=120, verdicts=verdicts)
    assert "(found at " not in other.value.message
    assert len(json.loads(verdicts.read_text("utf-8"))) == 2


def test_a_pass_is_remembered_until_the_file_changes(tiny_gguf: Path, tmp_path: Path) -> None:
    model = tmp_path / "llm.gguf"
    model.write_bytes(tiny_gguf.read_bytes())
    verdicts = tmp_path / "llm-checks.json"
    ensure_decodes(model, **SIZES, timeout_s=120, verdicts=verdicts)
    assert [v["ok"] for v in json.loads(verdicts.read_text("utf-8")).values()] == [True]
    ensure_decodes(model, **SIZES, timeout_s=0.001, verdicts=verdicts)  # remembered: no child, no timeout
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ModelError, match="did not finish decoding"):
        ensure_decodes(model, **SIZES, timeout_s=0.001, verdicts=verdicts)
    assert len(json.loads(verdicts.read_text("utf-8"))) == 1, "a timeout is not remembered"


def test_the_verdict_file_stays_small(tiny_gguf: Path, tmp_path: Path) -> None:
    found = check_decode(tiny_gguf, **SIZES, timeout_s=120)
    verdicts = tmp_path / "llm-checks.json"
    for n_batch in range(8, 8 + KEPT_VERDICTS + 5):
        remember(verdicts, tiny_gguf, found, **{**SIZES, "n_batch": n_batch})
    assert len(json.loads(verdicts.read_text("utf-8"))) == KEPT_VERDICTS


def test_the_cpu_identity_names_the_instruction_sets_and_not_the_clock() -> None:
    identity = cpu_identity()
    assert identity == cpu_identity()
    assert "flags=" in identity or "Features=" in identity, identity
    assert "MHz" not in identity and "bogomips" not in identity.lower()


@pytest.fixture(scope="module")
def crashing_server(
    tmp_path_factory: pytest.TempPathFactory, crashing_gguf: Path, tiny_fer: Path
) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("crashing"), llm=crashing_gguf, fer=tiny_fer)
    yield server
    stop_server(server)


def test_the_server_refuses_the_model_and_stays_up_talking_people_down(
    crashing_server: LiveServer, crashing_gguf: Path
) -> None:
    health = requests.get(
        f"{crashing_server.url}/api/v1/health", headers=crashing_server.device_headers(), timeout=30
    ).json()
    assert health["status"] == "degraded"
    llm = health["components"]["llm"]
    assert llm["status"] == "error" and llm["key"] == "llm.model_path"
    assert llm["detail"].startswith(f"llama.cpp crashed decoding {crashing_gguf} on this CPU: SIGABRT")
    session = crashing_server.start_session("crash-check")
    answer = requests.post(
        f"{crashing_server.url}/api/v1/sessions/{session['session_id']}/turns",
        headers=crashing_server.device_headers(),
        data={"text": "I feel my heart racing"},
        timeout=60,
    )
    events = [json.loads(line) for line in answer.text.splitlines() if line]
    assert answer.status_code == 200 and events[-1]["type"] == "done", events
    assert [e for e in events if e["type"] == "sentence"], "the person still hears a calm reply"
    assert crashing_server.process.poll() is None, "the server is still running"
    verdicts = json.loads((crashing_server.data_dir / "llm-checks.json").read_text("utf-8"))
    assert [v["ok"] for v in verdicts.values()] == [False]


def test_doctor_names_the_crash_in_one_line_and_exits_non_zero(
    crashing_server: LiveServer, crashing_gguf: Path
) -> None:
    done = tadbot(
        "doctor", "--role", "server", "--server", crashing_server.url, "--no-sound", env=crashing_server.env
    )
    assert done.returncode == 1, done.stdout + done.stderr
    crash = [line for line in done.stdout.splitlines() if line.startswith("✗ llm ")]
    assert len(crash) == 1, done.stdout
    assert f"llama.cpp crashed decoding {crashing_gguf} on this CPU: SIGABRT (Aborted)" in crash[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert "required check(s) failed: llm" in done.stdout


def test_doctor_decodes_a_working_model(live_server: LiveServer, tiny_gguf: Path) -> None:
    done = tadbot(
        "doctor", "--role", "server", "--server", live_server.url, "--no-sound", env=live_server.env
    )
    line = [row for row in done.stdout.splitlines() if " llm " in f"{row} "]
    assert line and line[0].startswith("✓ llm ") and f"tokens of {tiny_gguf} in " in line[0], done.stdout
