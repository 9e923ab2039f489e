"""The server tells systemd it is ready, and keeps its watchdog fed, only while its health check answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import notify
from server.notify import HealthWatchdog
from tests.conftest import start_server, stop_server


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named by NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket, count: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(count)]


def test_notify_sends_to_the_socket_and_is_silent_without_one(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert notify.notify("READY=1")
    assert received(notify_socket, 1) == ["READY=1"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify.notify("READY=1") is False


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"tadbot-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.notify("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("", None, None),
        ("0", None, None),
        ("abc", None, None),
        ("4000000", "1", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, expected: float | None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert notify.watchdog_interval() == expected


def test_health_url_for_a_wildcard_bind_is_asked_on_loopback() -> None:
    assert HealthWatchdog("0.0.0.0", 8710).url == "http://127.0.0.1:8710/api/v1/health"
    assert HealthWatchdog("::", 8710).url == "http://[::1]:8710/api/v1/health"
    assert HealthWatchdog("192.168.1.5", 80).url == "http://192.168.1.5:80/api/v1/health"


def test_no_socket_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    watchdog = HealthWatchdog("127.0.0.1", 9)
    watchdog.start()
    assert watchdog._thread is None


def test_the_served_server_is_ready_then_fed_then_stopping(
    notify_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_gguf: Path,
    tiny_fer: Path,
) -> None:
    """`tadbot serve` under gunicorn, as systemd runs it: READY once health answers, WATCHDOG after."""
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every half second
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    server = start_server(tmp_path, llm=tiny_gguf, fer=tiny_fer)
    try:
        first, second, third = received(notify_socket, 3)
    finally:
        stop_server(server)
    assert first == "READY=1\nSTATUS=serving"
    assert second == third == "WATCHDOG=1"
    notify_socket.settimeout(5)
    messages = []
    try:
        while True:
            messages.append(notify_socket.recv(4096).decode())
    except TimeoutError:
        pass
    assert messages[-1] == "STOPPING=1", messages
