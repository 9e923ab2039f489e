"""A full disk and a read-only data dir, for real: the server's data dir is a small tmpfs that the test
fills up, or covers with a read-only bind mount, while a session goes on. The person must still hear their
reply and the crisis reply; the failure is logged (by what, never by the words) and /health says degraded;
the record holds whole turns only and opens cleanly afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from server.bench.privacy import code_words, leaked_words
from tests.conftest import LiveServer, start_server, stop_server

CLIENT = "ana"
CALM = "I feel a bit tense about the school run today"
WORRIED = "My chest is tight and the pharmacy queue makes me worried"
CRISIS = "I want to kill myself"
AFTER = "The gardening club helped me settle down"
HELPLINE = "nine eight eight"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs as the data dir: filling it really fills the disk SQLite and chromadb write to."""
    data = tmp_path / "srv" / "data"
    data.mkdir(parents=True)
    try:
        _mount("-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(data))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs to mount a small filesystem (root, or CAP_SYS_ADMIN): {exc}")
    try:
        yield data
    finally:
        # Lazily, and every layer (a read-only bind mount the test left on top too): a mount left behind
        # would stop pytest from removing its old temporary folders in a later run.
        while os.path.ismount(data):
            subprocess.run(["umount", "-l", str(data)], check=True, capture_output=True)


@pytest.fixture
def server(small_disk: Path, tiny_gguf: Path, tiny_fer: Path) -> Iterator[LiveServer]:
    live = start_server(small_disk.parent, llm=tiny_gguf, fer=tiny_fer)
    try:
        yield live
    finally:
        if live.process.poll() is None:
            stop_server(live)


def _turn(live: LiveServer, session_id: str, text: str) -> list[dict[str, Any]]:
    answer = requests.post(
        f"{live.url}/api/v1/sessions/{session_id}/turns",
        headers=live.device_headers(),
        files={"text": (None, text)},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return [json.loads(line) for line in answer.text.splitlines() if line.strip()]


def _heard(events: list[dict[str, Any]]) -> str:
    return " ".join(e["text"] for e in events if e["type"] == "sentence")


def _health(live: LiveServer) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(
        f"{live.url}/api/v1/health", headers=live.device_headers(), timeout=30
    ).json()
    return body


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 2**20)
            out.flush()
    assert os.statvfs(disk).f_bavail == 0
    return filler


def _user_turns(data: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{data / 'tadbot.sqlite3'}?mode=ro", uri=True)) as db:
        return [text for (text,) in db.execute("SELECT text FROM turns WHERE role = 'user' ORDER BY id")]


def _check_the_answers_while_broken(live: LiveServer, session_id: str, fault: str) -> None:
    """The person hears both replies, neither is acknowledged as kept, and the failure shows."""
    worried = _turn(live, session_id, WORRIED)
    assert worried[0]["type"] == "transcript"
    assert _heard(worried), "no reply was streamed"
    assert worried[-1]["type"] == "done" and worried[-1]["turn_id"] is None
    assert worried[-1]["source"] == "llm"

    crisis = _turn(live, session_id, CRISIS)
    assert crisis[1] == {"type": "safety", "level": "crisis", "message": crisis[1]["message"]}
    assert HELPLINE in _heard(crisis)
    assert crisis[-1]["type"] == "done" and crisis[-1]["source"] == "crisis"

    health = _health(live)
    assert health["status"] == "degraded"
    assert health["components"]["db"]["status"] == "error"
    assert fault in health["components"]["db"]["detail"]
    assert requests.get(f"{live.url}/api/v1/health", timeout=30).json() == {"status": "degraded"}

    refused = requests.post(
        f"{live.url}/api/v1/sessions", headers=live.device_headers(), json={"client": CLIENT}, timeout=30
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "storage_unavailable"
    assert fault in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0


def _wait_for(data: Path, text: str, within_s: float = 60) -> list[str]:
    """The crisis record is retried in the background until the disk takes it."""
    deadline = time.monotonic() + within_s
    while text not in (said := _user_turns(data)):
        assert time.monotonic() < deadline, f"the crisis record never landed: {said}"
        time.sleep(0.5)
    return said


def _check_recovered(live: LiveServer, session_id: str) -> None:
    after = _turn(live, session_id, AFTER)
    assert isinstance(after[-1]["turn_id"], int)
    said = _wait_for(live.data_dir, CRISIS)
    # Whole turns only: the unkept reply left neither the person's words nor half a reply behind.
    assert sorted(said) == sorted([CALM, CRISIS, AFTER])
    assert _health(live)["status"] == "ok"


def _check_after_restart(live: LiveServer) -> None:
    stop_server(live)
    with contextlib.closing(sqlite3.connect(live.data_dir / "tadbot.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        replies = db.execute(
            "SELECT t.text FROM turns t WHERE t.role = 'assistant' AND t.timings LIKE '%interrupted%'"
        ).fetchall()
        assert replies == []
        crisis = db.execute("SELECT level FROM safety_events").fetchall()
        assert ("crisis",) in crisis
    from server.config import load_settings
    from server.conversation.components import open_memory

    memory = open_memory(load_settings(Path(live.env["TADBOT_CONFIG"])))
    assert memory.count(CLIENT) >= 2
    log = (live.data_dir.parent / "server.log").read_text()
    assert "not recorded" in log
    assert leaked_words(log, [CALM, WORRIED, CRISIS, AFTER], code_words()) == {}
    assert "Traceback" not in log


def test_a_full_disk_costs_the_person_nothing(server: LiveServer, small_disk: Path) -> None:
    session_id = server.start_session(CLIENT)["session_id"]
    assert isinstance(_turn(server, session_id, CALM)[-1]["turn_id"], int)

    filler = _fill(small_disk)
    _check_the_answers_while_broken(server, session_id, "full")

    filler.unlink()
    _check_recovered(server, session_id)
    _check_after_restart(server)


def test_a_read_only_data_dir_costs_the_person_nothing(server: LiveServer, small_disk: Path) -> None:
    """As when the kernel remounts a failing SD card read-only under a running server."""
    session_id = server.start_session(CLIENT)["session_id"]
    assert isinstance(_turn(server, session_id, CALM)[-1]["turn_id"], int)

    _mount("--bind", str(small_disk), str(small_disk))
    _mount("-o", "remount,ro,bind", str(small_disk))
    assert not os.access(small_disk, os.W_OK)
    _check_the_answers_while_broken(server, session_id, "readonly")

    _unmount(small_disk)
    _check_recovered(server, session_id)
    _check_after_restart(server)
