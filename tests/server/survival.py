"""What a live server must still be after abuse (a fuzz run, hostile uploads): the same gunicorn master and
its one worker, never restarted, nothing spooled to its TMPDIR, and every refusal the JSON error the README
promises. Shared by the tests that abuse tests/conftest.py's LiveServer."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import LiveServer

_BOOTED = re.compile(rb"Booting worker with pid: (\d+)")
WORKER_DEATHS = (b"Worker exiting", b"WORKER TIMEOUT", b"Worker failed", b"was sent SIGKILL")


def server_log(server: LiveServer) -> bytes:
    server.log.flush()
    return Path(server.log.name).read_bytes()


def worker_pid(server: LiveServer) -> int:
    """The pid of the one worker the master booted; fails if it booted another since (a crash or timeout)."""
    booted = _BOOTED.findall(server_log(server))
    assert len(booted) == 1, f"the master booted {len(booted)} workers: {booted}"
    return int(booted[0])


def assert_unharmed(server: LiveServer, worker: int) -> None:
    """The master and the worker seen at the start are the ones serving now, and the log shows no worker
    dying; nothing was written to the server's TMPDIR (uploads stay in memory)."""
    assert server.process.poll() is None, "the gunicorn master exited"
    assert worker_pid(server) == worker
    stat = Path(f"/proc/{worker}/stat").read_text(encoding="utf-8")
    assert int(stat.rsplit(")", 1)[1].split()[1]) == server.process.pid, "the worker is not the master's"
    log = server_log(server)
    for death in WORKER_DEATHS:
        assert death not in log, death
    assert sorted(server.tmp_dir.iterdir()) == []


def error_of(status: int, content_type: str, body: bytes) -> dict[str, str]:
    """The {"error": {"code", "message"}} of a 4xx, checked: JSON, a machine code, a message of some
    length that is not Werkzeug's generic text."""
    assert 400 <= status < 500, (status, body[:300])
    assert content_type.split(";")[0].strip() == "application/json", (content_type, body[:300])
    payload = json.loads(body)
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"code", "message"}, error
    assert re.fullmatch(r"[a-z][a-z0-9_]*", error["code"]), error
    assert isinstance(error["message"], str) and len(error["message"]) >= 20, error
    assert "browser (or proxy)" not in error["message"], error
    return {"code": error["code"], "message": error["message"]}
