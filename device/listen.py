"""The daemon's ears: a thread that turns a stream of PCM frames into utterances on a queue.

The state machine (device.states) drives a `Gate`: while the device talks, the microphone's frames are
thrown away, so the device never answers its own voice. A file standing in for the microphone is paused
instead, because a person would wait for the reply before going on. Each item on the queue is a `Heard`
utterance; the last one is `END`, or `Failed` when something unexpected broke the thread and the daemon
should start another. With a wake word (device.wakeword), the listener also gives every frame to a
`WakeGate`, which decides which utterances are sent.

The two sources, `MicPcm` (device.mic) and `WavPcm` (device.wavfile), live beside the rest of their
hardware or file handling and are offered here too, so the daemon finds the whole input side in one place.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias

import numpy as np

from device.audio import SAMPLE_RATE, encode_wav
from device.mic import MicPcm
from device.vad import Endpointer
from device.wavfile import WavPcm

if TYPE_CHECKING:
    from device.wakeword import WakeGate

__all__ = ["END", "Failed", "Gate", "Heard", "Item", "Listener", "MicPcm", "PcmSource", "WavPcm"]

_LOGGER = logging.getLogger(__name__)

_PAUSE_POLL_S = 0.1
"""How often a paused listener checks whether it was stopped."""


class PcmSource(Protocol):
    """Raw audio in frames the endpointer takes: exactly one frame of 16 kHz mono PCM16 per read."""

    live: bool
    """True for a microphone, whose frames keep coming in real time; False for a file."""

    def read(self) -> bytes | None:
        """The next frame, blocking as long as a real device would; None at the end of the stream."""
        ...

    def close(self) -> None:
        """Release the device; safe from another thread, and more than once. Later reads return None."""
        ...


@dataclass(frozen=True)
class Heard:
    """One utterance, ready to send."""

    wav: bytes
    """A complete 16 kHz mono PCM16 WAV, pre-roll included."""
    started: float
    """`time.monotonic()` when its first sample was heard: `ended` less the audio's length."""
    ended: float
    """`time.monotonic()` when the endpointer decided it was over."""
    speech_s: float
    """Seconds of it that were speech, without pauses, pre-roll and trailing silence."""


@dataclass(frozen=True)
class Failed:
    """The listener died of something unexpected; it was logged with its traceback."""

    exc: Exception


class _End(enum.Enum):
    END = "end"


END: Final = _End.END
"""The last item a listener puts on its queue when the stream ended or it was stopped."""

Item: TypeAlias = Heard | Failed | Literal[_End.END]
"""What a listener puts on its queue."""


class Gate:
    """Half-duplex: the state machine (device.states) mutes the listener from a turn's sending to the end
    of its reply.

    `unmute(tail_s)` keeps the gate shut a little longer, for the room's echo of the last word. With
    `barge_in`, a live listener keeps listening while muted and calls its `on_speech_start`, so the speaker
    can stop when the person talks over it; that needs echo cancellation, or the device barges in on itself.
    """

    def __init__(self, *, barge_in: bool = False) -> None:
        self.barge_in = barge_in
        self._changed = threading.Condition()
        self._muted = False
        self._opens_at = 0.0

    def mute(self) -> None:
        with self._changed:
            self._muted = True

    def unmute(self, tail_s: float = 0.3) -> None:
        with self._changed:
            self._muted = False
            self._opens_at = time.monotonic() + tail_s
            self._changed.notify_all()

    @property
    def muted(self) -> bool:
        """True while muted and during the tail after unmuting."""
        with self._changed:
            return self._muted or time.monotonic() < self._opens_at

    def wait_open(self, timeout: float) -> bool:
        """Block until the gate is open, tail included; False when `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = time.monotonic()
                if not self._muted and now >= self._opens_at:
                    return True
                if now >= deadline:
                    return False
                self._changed.wait((deadline if self._muted else min(deadline, self._opens_at)) - now)


class Listener(threading.Thread):
    """Reads `source`, feeds `endpointer` and puts each utterance on `out`; the last item is END or Failed.

    A live source's first `calibrate_s` (heard while the gate is open) teach the endpointer the room.
    `on_speech_start` is called from this thread whenever an utterance starts, muted or not, and
    `on_speech_end` when the endpointer finds it over, whether it was kept or was too short.
    With `wake`, only the utterances it admits are put on `out`; without, every one is.
    """

    def __init__(
        self,
        source: PcmSource,
        endpointer: Endpointer,
        gate: Gate,
        out: queue.Queue[Item],
        *,
        on_speech_start: Callable[[], None] | None = None,
        on_speech_end: Callable[[], None] | None = None,
        calibrate_s: float = 1.0,
        wake: WakeGate | None = None,
    ) -> None:
        super().__init__(name="listener", daemon=True)
        self._source = source
        self._endpointer = endpointer
        self._gate = gate
        self._out = out
        self._on_speech_start = on_speech_start
        self._on_speech_end = on_speech_end
        self._wake = wake
        self._calibration_frames = endpointer.config.frames(calibrate_s) if source.live else 0
        self._stopping = threading.Event()

    def stop(self) -> None:
        """End the thread promptly: the source is closed, the utterance in progress dropped, END put."""
        self._stopping.set()
        self._source.close()

    def run(self) -> None:
        try:
            ended = self._listen()
            if ended:
                self._put(self._endpointer.flush())
            self._out.put(END)
        except Exception as exc:
            _LOGGER.exception("the listener failed; no more utterances until it is restarted")
            self._out.put(Failed(exc))
        finally:
            self._source.close()

    def _listen(self) -> bool:
        """Listen until stopped (False) or the end of the stream (True)."""
        calibration: list[bytes] = []
        while not self._stopping.is_set():
            if not self._source.live and not self._gate.wait_open(_PAUSE_POLL_S):
                continue  # a file waits for the device to finish speaking
            frame = self._source.read()
            if frame is None:
                return not self._stopping.is_set()
            calibrating = len(calibration) < self._calibration_frames
            if self._source.live and self._gate.muted and (calibrating or not self._gate.barge_in):
                self._endpointer.reset()  # the device is speaking: never learn from or answer itself
                continue
            if calibrating:
                calibration.append(frame)
                if len(calibration) == self._calibration_frames:
                    self._endpointer.calibrate(calibration)
                    _LOGGER.info("noise floor %.0f dBFS after calibration", self._endpointer.noise_floor_db)
                continue
            if self._wake is not None:
                self._wake.hear(frame)
            was_in_speech = self._endpointer.in_speech
            pcm = self._endpointer.feed(frame)
            if not was_in_speech and self._endpointer.in_speech and self._on_speech_start is not None:
                self._on_speech_start()
            if was_in_speech and not self._endpointer.in_speech and self._on_speech_end is not None:
                self._on_speech_end()
            self._put(pcm)
        return False

    def _put(self, pcm: bytes | None) -> None:
        if pcm is None:
            return
        ended, seconds = time.monotonic(), len(pcm) / 2 / SAMPLE_RATE
        if self._wake is not None and not self._wake.admit(seconds):
            return
        speech_s = self._endpointer.last_speech_s
        _LOGGER.info("heard %.1f s, %.1f s of it speech", seconds, speech_s)
        wav = encode_wav(np.frombuffer(pcm, dtype="<i2") / 32768.0)  # bit for bit
        self._out.put(Heard(wav, ended - seconds, ended, speech_s))
