"""The listener thread: real speech, the real endpointer, and sources that keep a microphone's pace.

`ClockedPcm` is a live source that hands out one frame per 30 ms and lets the speaking side act at a
given frame, so "what was heard while the device spoke" is known to the frame whatever the scheduling.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from device.audio import SAMPLE_RATE
from device.listen import END, Failed, Gate, Heard, Item, Listener, MicPcm, WavPcm
from device.vad import Endpointer
from tests.device import fake_pyaudio
from tests.device.test_vad import FRAME_BYTES, FRAME_S, frames, pcm, silence, speech
from tests.speech import pcm16_wav

FRAME_SAMPLES = FRAME_BYTES // 2


class ClockedPcm:
    """A live `PcmSource`: the frames of `stream` at a microphone's pace, then None.

    `at[i]` is called as frame i is read, before it is handed out.
    """

    live = True

    def __init__(self, stream: bytes, at: dict[int, Callable[[], None]] | None = None) -> None:
        self._frames = frames(stream)
        self._at = at or {}
        self._closed = threading.Event()
        self._started = 0.0
        self.position = 0
        """Frames read so far."""

    def read(self) -> bytes | None:
        if self.position == 0:
            self._started = time.monotonic()
        if self.position >= len(self._frames):
            return None
        due = self._started + self.position * FRAME_S
        if self._closed.wait(max(0.0, due - time.monotonic())):
            return None
        if self.position in self._at:
            self._at[self.position]()
        self.position += 1
        return self._frames[self.position - 1]

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


def frame_aligned(samples: np.ndarray) -> np.ndarray:
    return np.concatenate([samples, np.zeros(-len(samples) % FRAME_SAMPLES)])


def drain(out: queue.Queue[Item], timeout: float = 10.0) -> list[Item]:
    """Everything the listener puts, up to and including its last item (END or Failed)."""
    items: list[Item] = []
    while not items or not (items[-1] is END or isinstance(items[-1], Failed)):
        items.append(out.get(timeout=timeout))
    return items


def pcm_of(heard: Item) -> bytes:
    assert isinstance(heard, Heard)
    with wave.open(io.BytesIO(heard.wav)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, SAMPLE_RATE)
        return reader.readframes(reader.getnframes())


def test_nothing_heard_while_muted_or_in_the_tail_is_in_any_utterance() -> None:
    """The person speaks, the device answers (muted), then the person speaks again at once."""
    parts = [
        silence(0.5),  # 0.3 s of it calibrates
        speech("Hello there."),
        silence(0.9),
        speech("Breathe with me."),  # the device's own voice, as the microphone hears it
        speech("Can you help me breathe?"),
        silence(0.3),  # flushed at the end of the stream
    ]
    parts = [frame_aligned(p) for p in parts]
    bounds = np.cumsum([0] + [len(p) // FRAME_SAMPLES for p in parts])
    person_a, (mute_at, unmute_at), person_b = range(bounds[1], bounds[2]), bounds[3:5], bounds[4:6]
    stream = pcm(*parts)
    gate, out = Gate(), queue.Queue[Item]()
    source = ClockedPcm(stream, at={mute_at: gate.mute, unmute_at: lambda: gate.unmute(tail_s=0.3)})
    listener = Listener(source, Endpointer(), gate, out, calibrate_s=0.3)
    listener.start()
    items = drain(out)
    listener.join(timeout=1)

    assert len(items) == 3 and items[-1] is END
    first, second = pcm_of(items[0]), pcm_of(items[1])
    every = frames(stream)
    assert all(every[i] in first for i in person_a)
    gated = range(mute_at, unmute_at + 8)  # the device's voice, then 0.24 s of the 0.3 s tail
    assert not any(every[i] in first + second for i in gated)
    assert all(every[i] in second for i in range(unmute_at + 12, person_b[1]))
    heard = items[1]
    assert isinstance(heard, Heard)
    assert heard.ended - heard.started == pytest.approx(len(second) / 2 / SAMPLE_RATE)
    assert heard.speech_s == pytest.approx(1.5 - 0.3, abs=0.3)

    # The test can fail: unmuted, the device's voice is taken for the person's.
    endpointer = Endpointer()
    endpointer.calibrate(every[:10])
    unmuted = b"".join(u for f in every[10:] if (u := endpointer.feed(f)) is not None)
    unmuted += endpointer.flush() or b""
    assert all(every[i] in unmuted for i in range(mute_at, unmute_at))


@pytest.mark.parametrize("barge_in", [True, False], ids=["barge-in", "half-duplex"])
def test_barge_in_hears_the_person_over_the_device(barge_in: bool) -> None:
    onset = 20
    stream = pcm(silence(onset * FRAME_S), speech("Can you help me breathe?"), silence(0.3))
    gate, out = Gate(barge_in=barge_in), queue.Queue[Item]()
    source = ClockedPcm(stream, at={12: gate.mute})  # the device starts talking after calibrating
    called_at: list[int] = []

    def stop_speaking() -> None:  # what the speaker does: stop, and open the gate
        called_at.append(source.position)
        gate.unmute(tail_s=0)

    listener = Listener(source, Endpointer(), gate, out, on_speech_start=stop_speaking, calibrate_s=0.3)
    listener.start()
    items = drain(out)
    listener.join(timeout=1)

    if not barge_in:
        assert called_at == [] and items == [END], "muted throughout: nothing heard"
        return
    assert len(called_at) == 1 and onset + 4 <= called_at[0] <= onset + 8, "within start_s of the onset"
    assert len(items) == 2 and items[-1] is END
    assert all(f in pcm_of(items[0]) for f in frames(stream)[onset : onset + 40])


def test_the_start_and_the_end_of_speech_are_told_in_order() -> None:
    """What the state machine's "hearing" follows: a start at the onset, an end when it is over, once each
    for a kept utterance and for a cough too short to send."""
    stream = pcm(silence(0.6), speech("Can you help me breathe?"), silence(1.0))
    calls: list[str] = []
    out = queue.Queue[Item]()
    listener = Listener(
        ClockedPcm(stream),
        Endpointer(),
        Gate(),
        out,
        on_speech_start=lambda: calls.append("start"),
        on_speech_end=lambda: calls.append(f"end after {out.qsize()} put"),
        calibrate_s=0.3,
    )
    listener.start()
    items = drain(out)
    listener.join(timeout=1)
    assert len(items) == 2 and isinstance(items[0], Heard)
    assert calls == ["start", "end after 0 put"], "the end is told before the utterance is put"


class _MutesAt:
    """A file source that mutes the gate as frame `at` is read, and counts reads while muted."""

    def __init__(self, source: WavPcm, gate: Gate, at: int) -> None:
        self._source, self._gate, self._at = source, gate, at
        self.live = source.live
        self.reads = 0
        self.muted_reads = 0
        self.muted = threading.Event()

    def read(self) -> bytes | None:
        self.reads += 1
        if self._gate.muted:
            self.muted_reads += 1
        if self.reads == self._at:
            self._gate.mute()
            self.muted.set()
        return self._source.read()

    def close(self) -> None:
        self._source.close()


def test_a_file_pauses_while_muted_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "talk.wav"
    stream = pcm(
        silence(0.5), speech("Hello there."), silence(1.2), speech("Can you help me breathe?"), silence(0.5)
    )
    path.write_bytes(pcm16_wav(stream, SAMPLE_RATE))
    endpointer = Endpointer()
    expected = [u for f in frames(stream) if (u := endpointer.feed(f)) is not None]
    last = endpointer.flush()  # the file ends 0.5 s after the second utterance
    assert len(expected) == 1 and last is not None
    expected.append(last)

    gate, out = Gate(), queue.Queue[Item]()
    source = _MutesAt(WavPcm(path), gate, at=round(3.0 / FRAME_S))  # in the middle of the second
    listener = Listener(source, Endpointer(), gate, out)
    listener.start()
    assert source.muted.wait(timeout=5)
    reads = source.reads
    time.sleep(0.3)
    assert source.reads == reads, "paused while the device speaks"
    gate.unmute(tail_s=0.1)
    items = drain(out)
    listener.join(timeout=1)

    assert [pcm_of(item) for item in items[:-1]] == expected
    assert items[-1] is END
    assert source.muted_reads == 0


@pytest.mark.usefixtures("fake_mic")
def test_stop_releases_the_microphone_and_joins_within_a_second() -> None:
    out: queue.Queue[Item] = queue.Queue()
    listener = Listener(MicPcm(), Endpointer(), Gate(), out, calibrate_s=0)
    listener.start()
    deadline = time.monotonic() + 5
    while "open" not in fake_pyaudio.log and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    asked = time.monotonic()
    listener.stop()
    listener.join(timeout=1)
    assert not listener.is_alive() and time.monotonic() - asked < 1.0
    assert drain(out)[-1] is END
    assert fake_pyaudio.log == ["open", "close"]


def test_stop_ends_a_file_paused_by_the_gate(tmp_path: Path) -> None:
    path = tmp_path / "talk.wav"
    path.write_bytes(pcm16_wav(pcm(speech("Hello there.")), SAMPLE_RATE))
    gate, out = Gate(), queue.Queue[Item]()
    gate.mute()
    listener = Listener(WavPcm(path), Endpointer(), gate, out)
    listener.start()
    time.sleep(0.2)
    asked = time.monotonic()
    listener.stop()
    listener.join(timeout=1)
    assert not listener.is_alive() and time.monotonic() - asked < 1.0
    assert drain(out) == [END], "stopped: the utterance in progress is not sent"


@pytest.mark.usefixtures("fake_mic")
def test_a_missing_microphone_is_waited_for_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    fake_pyaudio.plugged = False
    out: queue.Queue[Item] = queue.Queue()
    listener = Listener(MicPcm(delays=(0.05,)), Endpointer(), Gate(), out, calibrate_s=0)
    with caplog.at_level(logging.WARNING):
        listener.start()
        time.sleep(0.4)
        assert listener.is_alive() and out.empty()
        fake_pyaudio.plugged = True
        heard = out.get(timeout=5)
        listener.stop()
        listener.join(timeout=1)
    assert isinstance(heard, Heard)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[0] == (
        "no microphone found (default): No Default Input Device Available; list devices with "
        "`arecord -l`; retrying in 0.05 s (failure 1 in a row)"
    )
    assert 2 <= len(warnings) <= 5, "failures 1, 2, 4, 8: a line now and then, not one per try"
    assert all(r.exc_info is None for r in caplog.records), "no traceback for a missing microphone"


def test_an_unexpected_failure_is_put_on_the_queue(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(ClockedPcm):
        def read(self) -> bytes | None:
            if self.position == 3:
                raise RuntimeError("driver bug")
            return super().read()

    source = Broken(pcm(silence(1.0)))
    out: queue.Queue[Item] = queue.Queue()
    listener = Listener(source, Endpointer(), Gate(), out, calibrate_s=0)
    with caplog.at_level(logging.ERROR, logger="device.listen"):
        listener.start()
        (failed,) = drain(out)
        listener.join(timeout=1)
    assert isinstance(failed, Failed) and str(failed.exc) == "driver bug"
    assert not listener.is_alive()
    (record,) = caplog.records
    assert record.exc_info is not None, "logged with its traceback"
    assert source.closed


def test_the_gate_tail_runs_out() -> None:
    gate = Gate()
    assert not gate.muted and gate.wait_open(0)
    gate.mute()
    assert gate.muted and not gate.wait_open(0.05)
    gate.unmute(tail_s=0.2)
    assert gate.muted, "still shut during the tail"
    opened = time.monotonic()
    assert gate.wait_open(2)
    assert 0.1 < time.monotonic() - opened < 0.5
    assert not gate.muted
