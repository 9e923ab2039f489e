"""systemd's notify protocol (sd_notify), spoken directly: one datagram to $NOTIFY_SOCKET, no library.

A `Type=notify` unit is "started" only once the daemon says READY=1, and a unit with `WatchdogSec=` is
restarted when the pings stop: a hung daemon gets restarted instead of sitting silent. Outside systemd
(a terminal, the tests) $NOTIFY_SOCKET is unset and every call here is a cheap no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket

_LOGGER = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 1.0
"""systemd reads its socket at once; a stuck manager must not stall the daemon's loop for longer."""


def _address(value: str) -> str | None:
    """The socket address to send to: a path, or "@name" for Linux's abstract namespace (a leading NUL)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # "vsock:..." and other transports are for VMs, not a Pi


def notify(message: str) -> bool:
    """Send one notify `message` ("READY=1", "STATUS=...") to systemd; True if it was sent.

    Never raises: being supervised is a bonus, so a missing or broken socket is logged at debug only.
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = _address(value)
    if address is None:
        _LOGGER.debug("NOTIFY_SOCKET=%s is not a Unix socket address; not notifying", value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT_S)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        _LOGGER.debug("could not notify systemd at %s: %s", value, exc)
        return False
    return True


def ready() -> bool:
    """Start-up is done: systemd marks the unit started and starts the units ordered after it."""
    return notify("READY=1")


def watchdog() -> bool:
    """Still alive: call at least every `watchdog_interval()` seconds, from the loop that must not hang."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """A one-line state shown by `systemctl status` ("listening", "waiting for the server")."""
    return notify("STATUS=" + " ".join(text.split()))  # a newline would start a new KEY=VALUE


def stopping() -> bool:
    """Shutting down: systemd will not mistake the exit that follows for a crash in progress."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings, half systemd's `WatchdogSec=`; None when no watchdog is set for us.

    $WATCHDOG_PID, when set, names the process the watchdog is for: a child that inherited the environment
    must not ping on its parent's behalf.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    try:
        if pid and int(pid) != os.getpid():
            return None
        interval = int(usec) if usec else 0
    except ValueError:
        _LOGGER.debug("ignoring WATCHDOG_USEC=%r / WATCHDOG_PID=%r: not integers", usec, pid)
        return None
    return interval / 2 / 1_000_000 if interval > 0 else None
