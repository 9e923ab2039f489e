"""Per-thread liveness against a real AF_UNIX datagram socket standing in for systemd's: the watchdog is fed
only while every thread beats, a hung voice is restarted in place, and too many restarts stop the pings."""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.__main__ import _Beating, _Listening
from device.listen import Gate, Item, Listener
from device.liveness import Beat, Liveness, read_status, status_path
from device.vad import EndpointConfig, Endpointer
from device.voice import IDLE_DEADLINE_S, Voice, speaking_deadline_s
from tests.device import test_notify
from tests.device.test_session import RecordingSpeaker

systemd = test_notify.systemd
"""The same bound socket named by $NOTIFY_SOCKET that the notify tests use."""


class Clock:
    """Monotonic time that moves only when the test says, so deadlines pass without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HangingSpeaker(RecordingSpeaker):
    """A speaker whose play never returns for the texts in `hangs_on`, and whose stop does not help, as a
    sound card stuck in the driver; the test lets the stuck threads go at its end."""

    def __init__(self, hangs_on: set[str]) -> None:
        super().__init__()
        self.hangs_on = hangs_on
        self.entered: queue.Queue[str] = queue.Queue()
        self.release = threading.Event()
        self.stops = 0

    def say(self, text: str) -> None:
        self.entered.put(text)
        if text in self.hangs_on:
            self.release.wait(30)
            return
        super().say(text)

    def stop(self) -> None:
        self.stops += 1


@pytest.fixture
def watchdog_every_s(monkeypatch: pytest.MonkeyPatch) -> float:
    """WatchdogSec=2 for this process: a ping is due every second."""
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return 1.0


def _pings(sock: socket.socket) -> list[str]:
    """Everything sent so far, without waiting."""
    sock.setblocking(False)
    got = []
    try:
        while True:
            got.append(sock.recv(4096).decode())
    except BlockingIOError:
        return got
    finally:
        sock.settimeout(5)


@pytest.fixture
def hanging() -> Iterator[HangingSpeaker]:
    speaker = HangingSpeaker({"I am stuck.", "Stuck again.", "And again."})
    yield speaker
    speaker.release.set()


def _voice(live: Liveness, speaker: HangingSpeaker) -> Voice:
    voice: Voice = Voice(
        speaker, beat=live.register("voice", IDLE_DEADLINE_S, restart=lambda: voice.restart())
    )
    return voice


def test_a_thread_that_stops_beating_stops_the_watchdog_pings(
    systemd: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In real time, with the supervisor's own thread: pings while the worker beats, none once it stops."""
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    live = Liveness(tmp_path / "threads.json", tick_s=0.05)
    beat = live.register("worker", 1.0)
    stop = threading.Event()

    def work() -> None:
        while not stop.wait(0.05):
            beat.beat("working")

    worker = threading.Thread(target=work)
    worker.start()
    with caplog.at_level(logging.WARNING, logger="device.liveness"):
        live.start()
        try:
            assert [systemd.recv(4096).decode() for _ in range(3)] == ["WATCHDOG=1"] * 3
            stop.set()
            worker.join(5)
            deadline = time.monotonic() + 10
            while not live.stalled and time.monotonic() < deadline:
                time.sleep(0.05)
            assert live.stalled == "worker"
            _pings(systemd)  # those sent before the deadline passed
            systemd.settimeout(1.0)
            with pytest.raises(TimeoutError):
                systemd.recv(4096)
            assert read_status(tmp_path / "threads.json").watchdog == "stopped"
        finally:
            live.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "logged once, not once a tick"
    assert errors[0].startswith("the worker thread missed its deadline (")
    assert errors[0].endswith(
        "1 s allowed, last working); no more watchdog pings, so systemd restarts the daemon"
    )
    assert not (tmp_path / "threads.json").exists(), "a daemon that stops leaves no status behind"


@pytest.mark.usefixtures("watchdog_every_s")
def test_a_hung_voice_is_restarted_and_the_watchdog_is_still_fed(
    systemd: socket.socket, hanging: HangingSpeaker, tmp_path: Path
) -> None:
    clock = Clock()
    live = Liveness(tmp_path / "threads.json", clock=clock)
    voice = _voice(live, hanging)
    try:
        assert live.check()
        assert systemd.recv(4096).decode() == "WATCHDOG=1"
        voice.say("I am stuck.")
        voice.say("Queued behind it.")
        assert hanging.entered.get(timeout=5) == "I am stuck."
        clock.now += speaking_deadline_s("I am stuck.") - 1
        assert live.check(), "still within the deadline sized to the sentence"
        assert _pings(systemd) == ["WATCHDOG=1"]
        clock.now += 2
        assert live.check(), "restarted, not given up on"
        assert _pings(systemd) == ["WATCHDOG=1"], "fed in the same look that restarted the voice"
        assert hanging.stops == 1, "the stuck play was told to stop"
        assert voice.wait_idle(5), "the stuck sentence no longer counts as pending"
        voice.say("Back again.")
        assert voice.wait_idle(5)
        assert hanging.said == ["Back again."], "the queued sentence was dropped with the stuck one"
        for _ in range(3):
            clock.now += 1
            assert live.check()
        assert _pings(systemd) == ["WATCHDOG=1"] * 3, "fed after the restart"
        (voice_status,) = read_status(tmp_path / "threads.json").threads
        assert (voice_status.thread, voice_status.state, voice_status.restarts) == ("voice", "alive", 1)
    finally:
        hanging.release.set()
        voice.close()


@pytest.mark.usefixtures("watchdog_every_s")
def test_too_many_restarts_stop_the_watchdog(
    systemd: socket.socket, hanging: HangingSpeaker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    live = Liveness(tmp_path / "threads.json", max_restarts=2, clock=clock)
    voice = _voice(live, hanging)
    try:
        with caplog.at_level(logging.WARNING, logger="device.liveness"):
            for text, fed in (("I am stuck.", True), ("Stuck again.", True), ("And again.", False)):
                voice.say(text)
                assert hanging.entered.get(timeout=5) == text
                clock.now += speaking_deadline_s(text) + 1
                assert live.check() is fed, text
            assert _pings(systemd) == ["WATCHDOG=1"] * 2, "fed after each of the two restarts only"
            for _ in range(3):
                clock.now += 5
                assert live.check() is False
            assert _pings(systemd) == []
        assert live.stalled == "voice"
        messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "device.liveness"]
        assert [level for level, _ in messages] == ["WARNING", "WARNING", "ERROR"]
        assert messages[0][1].endswith("last speaking); restarting it (1 of 2)")
        assert messages[2][1].endswith(
            "last speaking) after 2 restart(s); no more watchdog pings, so systemd restarts the daemon"
        )
        (seen,) = read_status(tmp_path / "threads.json").threads
        assert (seen.state, seen.doing, seen.restarts) == ("stalled", "speaking", 2)
    finally:
        hanging.release.set()
        voice.close()


class StuckPcm:
    """A microphone whose read is stuck in the driver; closing it does not free the read, as closing a
    MicPcm would not (it waits for the read in progress)."""

    live = True

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.release = threading.Event()
        self.closed = threading.Event()

    def read(self) -> bytes | None:
        self.reading.set()
        self.release.wait(30)
        return None

    def close(self) -> None:
        self.closed.set()


class QuietPcm:
    """A live microphone in a quiet room: a frame of silence every 30 ms."""

    live = True

    def __init__(self) -> None:
        self.frames = 0
        self._closed = threading.Event()

    def read(self) -> bytes | None:
        if self._closed.wait(0.03):
            return None
        self.frames += 1
        return bytes(960)

    def close(self) -> None:
        self._closed.set()


def test_a_hung_microphone_gets_a_new_listener_and_the_old_one_s_end_is_ignored() -> None:
    clock = Clock()
    live = Liveness(clock=clock)
    stuck, quiet = StuckPcm(), QuietPcm()
    sources = iter([stuck, quiet])
    heard = live.register("listener", 60.0, restart=lambda: listening.restart())

    def make(out: queue.Queue[Item]) -> Listener:
        return Listener(
            _Beating(next(sources), heard), Endpointer(EndpointConfig()), Gate(), out, calibrate_s=0
        )

    listening = _Listening(make, heard)
    ticks: queue.Queue[object] = queue.Queue()

    def converse() -> None:
        """The conversation's side: an idle tick a second, until the utterances end."""
        ticks.put_nowait(None)  # before its first get: the old listener's queue is the one waited on
        for utterance in listening.utterances():
            ticks.put(utterance)
        ticks.put("ended")

    conversation = threading.Thread(target=converse)
    conversation.start()
    try:
        assert stuck.reading.wait(5)
        assert ticks.get(timeout=5) is None
        clock.now += 61
        assert live.check(), "restarted, and the watchdog still fed"
        assert stuck.closed.wait(5), "the stuck microphone was closed"
        deadline = time.monotonic() + 5
        while quiet.frames < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert quiet.frames >= 5, "the new listener reads the new microphone"
        assert heard.seen().doing == "listening"
        stuck.release.set()  # the stuck read returns at last: the old listener puts END on its own queue
        assert [ticks.get(timeout=5) for _ in range(2)] == [None, None], "still listening"
    finally:
        stuck.release.set()
        listening.stop()
        conversation.join(10)
    assert not conversation.is_alive()
    rest = [ticks.get_nowait() for _ in range(ticks.qsize())]
    assert rest[-1] == "ended" and set(rest[:-1]) <= {None}, "ended by the stop, not before"
    assert heard.ended, "no longer watched once stopped on purpose"


def test_the_status_file_lists_each_thread(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "run" / "threads.json"
    live = Liveness(path, clock=clock, wall=lambda: 1_700_000_000.0)
    listener = live.register("listener", 60.0, restart=lambda: None)
    voice = live.register("voice", 30.0)
    conversation = live.register("conversation", 510.0)
    listener.beat("listening")
    clock.now += 2.5
    voice.beat("speaking", 42.0)
    clock.now += 0.5
    assert live.check()
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["written"] == 1_700_000_000.0 and raw["watchdog"] == "off"
    assert raw["threads"] == [
        {
            "thread": "listener",
            "state": "alive",
            "doing": "listening",
            "last_beat_s": 3.0,
            "deadline_s": 60.0,
            "restarts": 0,
        },
        {
            "thread": "voice",
            "state": "alive",
            "doing": "speaking",
            "last_beat_s": 0.5,
            "deadline_s": 42.0,
            "restarts": 0,
        },
        {
            "thread": "conversation",
            "state": "alive",
            "doing": "starting",
            "last_beat_s": 3.0,
            "deadline_s": 510.0,
            "restarts": 0,
        },
    ]
    assert path.stat().st_mode & 0o777 == 0o644, "the doctor may run as another user"
    voice.beat("speaking", 120.0)
    clock.now += 61
    assert live.check()
    listener_seen = read_status(path, wall=lambda: 1_700_000_001.0).threads[0]
    assert (listener_seen.state, listener_seen.doing, listener_seen.restarts) == ("alive", "restarted", 1)
    listener.done()
    conversation.beat("listening", 1000.0)
    clock.now += 600
    live.check()
    states = {t.thread: t.state for t in read_status(path).threads}
    assert states == {"listener": "ended", "voice": "stalled", "conversation": "alive"}


def _doing(beat: Beat, expected: str) -> str:
    """What the beat says once it says `expected`, or after 5 s."""
    deadline = time.monotonic() + 5
    while beat.seen().doing != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return beat.seen().doing


def test_a_failing_speaker_shows_in_the_voice_s_beat() -> None:
    """A speaker that fails (rather than hangs) is logged once; the doctor shows it in the voice's line."""
    beat = Beat("voice")
    voice = Voice(RecordingSpeaker(fails_on={"Hello."}), beat=beat)
    try:
        voice.say("Hello.")
        assert voice.wait_idle(5)
        assert _doing(beat, "idle, the speaker failing") == "idle, the speaker failing"
        voice.say("It works again.")
        assert voice.wait_idle(5)
        assert _doing(beat, "idle") == "idle"
    finally:
        voice.close()


def test_a_beat_made_alone_is_watched_by_nobody() -> None:
    beat = Beat("camera")
    beat.beat("grabbing")
    assert beat.seen()[1:] == (float("inf"), "grabbing")


@pytest.mark.parametrize("deadline_s", [0.0, -1.0, float("inf")])
def test_a_deadline_must_be_a_positive_number_of_seconds(deadline_s: float) -> None:
    with pytest.raises(ValueError, match="'voice' must be a positive number of seconds"):
        Liveness().register("voice", deadline_s)


def test_a_name_is_registered_once() -> None:
    live = Liveness()
    live.register("voice", 30.0)
    with pytest.raises(ValueError, match="'voice' is already registered"):
        live.register("voice", 30.0)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RUNTIME_DIRECTORY": "/run/tadbot-device:/run/other"}, "/run/tadbot-device/threads.json"),
        ({"TADBOT_DATA_DIR": "/srv/tadbot"}, "/srv/tadbot/threads.json"),
        ({}, "data/threads.json"),
    ],
)
def test_the_status_path(env: dict[str, str], expected: str) -> None:
    if "RUNTIME_DIRECTORY" not in env and Path("/run/tadbot-device").is_dir():
        pytest.skip("this machine runs the device unit, whose runtime directory comes first")
    assert status_path(env) == Path(expected)
