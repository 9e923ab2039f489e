"""Per-thread liveness: every thread of the daemon beats, and systemd's watchdog is fed only while all do.

Fed from a loop that keeps running, the watchdog cannot see a thread hung in a driver (a speaker that never
returns, a PortAudio or V4L2 read that blocks for ever): the box is deaf or mute and systemd thinks it
healthy. So each thread registers a `Beat` and beats from its own loop, saying by when its next beat is due
when it is about to wait longer than usual. One supervisor thread checks them all. A thread that misses its
deadline is restarted in place when it can be (the speaker, the microphone: a new thread on a new device
handle), up to `MAX_RESTARTS` times; otherwise, or after that, it is logged once and the watchdog is no
longer fed, so systemd restarts the service.

The supervisor also writes what it sees to a small JSON file, `threads.json` in the unit's runtime
directory, where `tadbot doctor` reads each thread's state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from device import notify

_LOGGER = logging.getLogger(__name__)

MAX_RESTARTS = 3
"""Restarts in place per thread before it is given up on: a device that hangs again and again needs more
than a new handle, and systemd's restart of the whole service is the next thing to try."""
TICK_S = 1.0
"""How often the supervisor looks; well under any deadline and any watchdog interval."""
STATUS_EVERY_S = 5.0
"""How often the status file is rewritten while nothing changes."""
STALE_AFTER_S = 30.0
"""A status file older than this was left by a daemon that is gone (or whose supervisor is stuck)."""
STATUS_FILE = "threads.json"
UNIT_RUNTIME_DIR = Path("/run/tadbot-device")
"""The device unit's RuntimeDirectory=, where the doctor finds a daemon that systemd runs."""


def status_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon writes its thread status, and the doctor reads it: systemd's $RUNTIME_DIRECTORY
    for the daemon it runs, else the unit's runtime directory when it exists (the doctor, run from a shell
    while the unit runs), else the data dir ($TADBOT_DATA_DIR, else ./data) of a daemon started by hand."""
    env = os.environ if env is None else env
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / STATUS_FILE
    if UNIT_RUNTIME_DIR.is_dir():
        return UNIT_RUNTIME_DIR / STATUS_FILE
    return Path(env.get("TADBOT_DATA_DIR") or "data") / STATUS_FILE


class Seen(NamedTuple):
    """A beat as the supervisor sees it, from one read of it."""

    age_s: float
    """Seconds since the last beat."""
    deadline_s: float
    """The deadline that beat set."""
    doing: str


class Beat:
    """One thread's heartbeat. Beating is one assignment, cheap enough for every frame of audio.

    Made alone (not by `Liveness.register`), it is watched by nobody: components built without a
    supervisor (a one-shot turn, the tests) beat into it all the same.
    """

    def __init__(
        self, name: str, deadline_s: float = math.inf, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.deadline_s = deadline_s
        """Seconds from one beat to the next when the thread does not say otherwise."""
        self._clock = clock
        self._last: tuple[float, float, str] = (clock(), deadline_s, "starting")
        self.ended = False

    def beat(self, doing: str = "running", deadline_s: float | None = None) -> None:
        """Alive now, `doing` this; the next beat is due within `deadline_s` (default: the registered one).
        Say more before a wait that is long on purpose (one sentence, a pause), so it is not a hang."""
        self._last = (self._clock(), self.deadline_s if deadline_s is None else deadline_s, doing)

    def done(self) -> None:
        """The thread ended on purpose (shutdown, the end of a file): it is no longer watched."""
        self.ended = True

    def rearm(self, doing: str) -> None:
        """A new thread takes over: it gets the registered deadline for its first beat."""
        self._last = (self._clock(), self.deadline_s, doing)

    def seen(self) -> Seen:
        at, deadline_s, doing = self._last  # one read: a beat from another thread replaces all three
        return Seen(self._clock() - at, deadline_s, doing)


@dataclass
class _Watched:
    beat: Beat
    restart: Callable[[], None] | None
    restarts: int = 0


class Liveness:
    """The registry of beats and the supervisor that feeds systemd's watchdog while all of them keep time.

    `check()` is one look; `start()` runs it every `tick_s` in a thread of its own, which never blocks on
    anything but the status file, so its pings stop only when a watched thread does.
    """

    def __init__(
        self,
        status: Path | None = None,
        *,
        max_restarts: int = MAX_RESTARTS,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._status = status
        self._max_restarts = max_restarts
        self._clock = clock
        self._wall = wall
        self._interval = notify.watchdog_interval()
        self._tick_s = min(tick_s, self._interval or tick_s)
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._last_ping = -math.inf
        self._last_status = -math.inf
        self._write_failed = False
        self.stalled = ""
        """The thread given up on, once one is: from then on the watchdog is not fed."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, name: str, deadline_s: float, *, restart: Callable[[], None] | None = None) -> Beat:
        """Watch the thread `name`, which beats at least every `deadline_s` unless it says otherwise.
        `restart`, when given, replaces a hung thread (closing its device) and must not block."""
        if not 0 < deadline_s < math.inf:
            raise ValueError(f"the deadline of thread {name!r} must be a positive number of seconds")
        beat = Beat(name, deadline_s, clock=self._clock)
        with self._lock:
            if name in self._watched:
                raise ValueError(f"a thread named {name!r} is already registered")
            self._watched[name] = _Watched(beat, restart)
        return beat

    def check(self) -> bool:
        """One look: restart or give up on each late thread, feed the watchdog while none is given up on,
        and write the status when due. True while the watchdog is fed."""
        with self._lock:
            watched = list(self._watched.values())
        changed = False
        for entry in watched:
            beat, seen = entry.beat, entry.beat.seen()
            if self.stalled or beat.ended or seen.age_s <= seen.deadline_s:
                continue
            changed = True
            late = f"the {beat.name} thread missed its deadline ({seen.age_s:.0f} s since it beat, "
            late += f"{seen.deadline_s:.0f} s allowed, last {seen.doing})"
            if entry.restart is None or entry.restarts >= self._max_restarts:
                self.stalled = beat.name
                why = "" if entry.restart is None else f" after {entry.restarts} restart(s)"
                _LOGGER.error("%s%s; no more watchdog pings, so systemd restarts the daemon", late, why)
                break
            entry.restarts += 1
            _LOGGER.warning("%s; restarting it (%d of %d)", late, entry.restarts, self._max_restarts)
            beat.rearm("restarted")
            try:
                entry.restart()
            except Exception:  # counted all the same: the next deadline tries again, or gives up
                _LOGGER.exception("restarting the %s thread failed", beat.name)
        now = self._clock()
        if not self.stalled and self._interval is not None and now - self._last_ping >= self._interval:
            notify.watchdog()
            self._last_ping = now
        if changed or now - self._last_status >= STATUS_EVERY_S:
            self._write()
            self._last_status = now
        return not self.stalled

    def snapshot(self) -> dict[str, Any]:
        """The status as written for the doctor: wall-clock time, as another process reads it."""
        with self._lock:
            watched = list(self._watched.values())
        threads = []
        for entry in watched:
            beat, seen = entry.beat, entry.beat.seen()
            if beat.ended:
                state = "ended"
            elif beat.name == self.stalled:
                state = "stalled"
            else:
                state = "late" if seen.age_s > seen.deadline_s else "alive"
            threads.append(
                {
                    "thread": beat.name,
                    "state": state,
                    "doing": seen.doing,
                    "last_beat_s": round(seen.age_s, 2),
                    "deadline_s": seen.deadline_s,
                    "restarts": entry.restarts,
                }
            )
        watchdog = "stopped" if self.stalled else "fed" if self._interval is not None else "off"
        return {"pid": os.getpid(), "written": self._wall(), "watchdog": watchdog, "threads": threads}

    def start(self) -> None:
        """Look at once, then every tick, in a thread of its own."""
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop looking (the daemon is shutting down, and its threads with it) and remove the status file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._status is not None:
            try:
                self._status.unlink(missing_ok=True)
            except OSError as exc:
                _LOGGER.debug("could not remove %s: %s", self._status, exc)

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # a bug here must show, not end the loop: unfed, systemd restarts the daemon
                _LOGGER.exception("the liveness check failed")
            if self._stop.wait(self._tick_s):
                return

    def _write(self) -> None:
        """Replace the status file in one step, readable by anyone: it holds no secrets, and the doctor may
        run as another user than the daemon."""
        if self._status is None:
            return
        temporary = self._status.with_name(self._status.name + ".tmp")
        try:
            self._status.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(self.snapshot()), encoding="utf-8")
            temporary.chmod(0o644)
            os.replace(temporary, self._status)
        except OSError as exc:
            if not self._write_failed:
                _LOGGER.warning("cannot write the thread status to %s: %s", self._status, exc)
            self._write_failed = True
            return
        self._write_failed = False


@dataclass(frozen=True)
class ThreadStatus:
    """One thread as the daemon last saw it."""

    thread: str
    state: str
    """alive, late (about to be restarted or given up on), stalled (given up on) or ended."""
    doing: str
    last_beat_s: float
    deadline_s: float
    restarts: int

    def describe(self) -> str:
        """`voice      alive, speaking, beat 0.4 s ago (due within 38 s), restarted 1 time(s)`"""
        line = f"{self.thread:<12} {self.state}, {self.doing}, beat {self.last_beat_s:.1f} s ago"
        line += f" (due within {self.deadline_s:.0f} s)"
        return line + (f", restarted {self.restarts} time(s)" if self.restarts else "")


@dataclass(frozen=True)
class DaemonStatus:
    """What `threads.json` says, and how old it is."""

    pid: int
    age_s: float
    watchdog: str
    """fed, off (not under a systemd watchdog) or stopped (a thread was given up on)."""
    threads: tuple[ThreadStatus, ...]


def read_status(path: Path, wall: Callable[[], float] = time.time) -> DaemonStatus:
    """The daemon's thread status; OSError when there is none to read, ValueError when it is malformed."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    try:
        threads = tuple(
            ThreadStatus(
                str(t["thread"]),
                str(t["state"]),
                str(t["doing"]),
                float(t["last_beat_s"]),
                float(t["deadline_s"]),
                int(t["restarts"]),
            )
            for t in raw["threads"]
        )
        return DaemonStatus(int(raw["pid"]), wall() - float(raw["written"]), str(raw["watchdog"]), threads)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a thread status: {exc}") from exc
