"""sd_notify against real AF_UNIX datagram sockets standing in for systemd's, on a path and in the abstract
namespace."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device import notify


def _receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket named by $NOTIFY_SOCKET, as systemd sets it for a Type=notify unit."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_each_helper_sends_its_message(systemd: socket.socket) -> None:
    assert notify.ready()
    assert _receive(systemd) == "READY=1"
    assert notify.watchdog()
    assert _receive(systemd) == "WATCHDOG=1"
    assert notify.status("waiting for\nthe server")
    assert _receive(systemd) == "STATUS=waiting for the server", "a newline would start a new key"
    assert notify.stopping()
    assert _receive(systemd) == "STOPPING=1"
    assert notify.notify("EXTEND_TIMEOUT_USEC=5000000")
    assert _receive(systemd) == "EXTEND_TIMEOUT_USEC=5000000"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"tadbot-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert _receive(sock) == "READY=1"


def test_not_under_systemd_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.status("idle") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify.watchdog() is False


@pytest.mark.parametrize("where", ["missing", "vsock"])
def test_a_socket_that_cannot_be_used_returns_false(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = str(tmp_path / "gone.sock") if where == "missing" else "vsock:2:1234"
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify.ready() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("0", None, None),
        (None, None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_sec(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            own = os.getpid()
            monkeypatch.setenv(name, {"self": str(own), "other": str(own + 1)}.get(value, value))
    assert notify.watchdog_interval() == expected
