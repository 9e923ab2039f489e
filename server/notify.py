"""Telling systemd how the server is: READY once it answers, then WATCHDOG while it keeps answering.

gunicorn's master process is the one systemd watches, but the app runs in its worker. So a thread in the
master asks the worker's own health endpoint over loopback: READY=1 is sent when the first answer comes (the
models are loaded and turns can be served), and WATCHDOG=1 only while answers keep coming. A worker that
hangs stops the pings, and systemd restarts the unit. Outside systemd ($NOTIFY_SOCKET unset) nothing is
sent and no thread starts.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import urllib.error
import urllib.request

_LOGGER = logging.getLogger(__name__)

_HEALTH_TIMEOUT_S = 5.0
_FIRST_POLL_S = 1.0


def notify(message: str, address: str | None = None) -> bool:
    """Send one sd_notify datagram to `address` (default $NOTIFY_SOCKET); False when not under systemd
    or when it cannot be sent."""
    if address is None:
        address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        _LOGGER.debug("sd_notify %r failed: %s", message, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between pings (half of what the unit's WatchdogSec allows), or None without a watchdog."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


def _local_url(host: str, port: int, scheme: str = "http") -> str:
    """The health URL as seen from this machine: a wildcard bind is asked on loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/api/v1/health"


def own_server_context() -> ssl.SSLContext:
    """TLS for asking this machine's own server, the one it just started, how it is: no certificate check.
    The certificate names the server as the LAN sees it and may be self-signed, so checking it on a
    loopback address would only fail a healthy server; nothing leaves the machine and no secret is sent."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class HealthWatchdog:
    """The master's thread: READY after the first health answer, then WATCHDOG while answers come."""

    def __init__(self, host: str, port: int, scheme: str = "http") -> None:
        """Takes $NOTIFY_SOCKET out of the environment: gunicorn would otherwise say READY itself as soon
        as its master boots, before the app has loaded, and its workers must not speak for the unit.
        `scheme` is https when the server has a certificate (ServerSection.scheme)."""
        self.url = _local_url(host, port, scheme)
        self._context = own_server_context() if scheme == "https" else None
        self._interval = watchdog_interval()
        self._address = os.environ.pop("NOTIFY_SOCKET", "")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = False

    def start(self) -> None:
        if not self._address:
            return
        self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._address:
            notify("STOPPING=1", self._address)
        if self._thread is not None:
            self._thread.join(_HEALTH_TIMEOUT_S + 1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=_HEALTH_TIMEOUT_S, context=self._context) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError) as exc:
            _LOGGER.debug("health check failed: %s", exc)
            return False

    def _run(self) -> None:
        while not self._stop.wait(_FIRST_POLL_S if not self.ready else self._interval or 0):
            if not self._healthy():
                continue
            if not self.ready:
                self.ready = True
                notify("READY=1\nSTATUS=serving", self._address)
                _LOGGER.info("told systemd the server is ready")
                if self._interval is None:
                    return  # nothing more to tell: no watchdog was asked for
            else:
                notify("WATCHDOG=1", self._address)
