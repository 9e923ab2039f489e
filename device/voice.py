"""The voice thread: sentences are queued as they stream in and spoken one after another.

Speaking runs in its own thread so that the first sentence is heard while the server still writes the
second. While it speaks, the microphone is muted (the gate), so the device never answers itself; the gate
opens again a short tail after the last sentence, once the room has stopped ringing.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Protocol

from device.errors import SpeakerError
from device.speaker import Speaker

_LOGGER = logging.getLogger(__name__)

MAX_PAUSE_MS = 20_000
_KEEP_SPOKEN = 200
"""Longest silence a sentence may ask for: an exercise's longest phase, with room to spare."""


class Muting(Protocol):
    """The microphone's half-duplex gate, as the voice drives it."""

    def mute(self) -> None: ...

    def unmute(self, tail_s: float = ...) -> None: ...


@dataclass(frozen=True)
class _Sentence:
    text: str
    pause_ms: int
    generation: int


@dataclass(frozen=True)
class _EndReply:
    name: str


_CLOSE = object()


class Voice:
    """Speaks queued sentences in order, in one thread; `interrupt` drops what is queued and cuts the
    current sentence short. A failing speaker is logged once and the conversation goes on without it."""

    def __init__(self, speaker: Speaker, gate: Muting | None = None, *, tail_s: float = 0.3) -> None:
        self._speaker = speaker
        self._gate = gate
        self._tail_s = tail_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._generation = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._failing = False
        self.spoken: collections.deque[str] = collections.deque(maxlen=_KEEP_SPOKEN)
        """The last sentences actually handed to the speaker, in order; bounded, as the daemon runs for
        months."""
        self._thread = threading.Thread(target=self._run, name="voice", daemon=True)
        self._thread.start()

    def say(self, text: str, pause_ms: int = 0) -> None:
        """Queue one sentence, and the silence after it; returns at once."""
        if not text.strip():
            return
        with self._lock:
            self._pending += 1
            item = _Sentence(text.strip(), max(0, min(pause_ms, MAX_PAUSE_MS)), self._generation)
        self._queue.put(item)

    def end_reply(self, name: str = "") -> None:
        """Mark the end of one reply, after its sentences: a speaker that writes files closes one here."""
        with self._lock:
            self._pending += 1
        self._queue.put(_EndReply(name))

    @property
    def busy(self) -> bool:
        """Something is queued or being said."""
        with self._lock:
            return self._pending > 0

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until everything queued has been said; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def interrupt(self) -> None:
        """Stop talking now: what is queued is dropped, and the sentence being said is cut short."""
        with self._lock:
            self._generation += 1
        self._speaker.stop()
        _LOGGER.info("speech interrupted")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after what is queued; the caller closes the speaker afterwards."""
        self._queue.put(_CLOSE)
        self._thread.join(timeout)
        if self._thread.is_alive():
            _LOGGER.warning("the voice thread did not stop within %g s", timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _CLOSE:
            try:
                self._speak(item)
            except Exception:  # the voice must outlive one bad sentence; the reason goes to the log
                _LOGGER.exception("speaking failed")
            finally:
                with self._idle:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()
                        if self._gate is not None:
                            self._gate.unmute(self._tail_s)

    def _speak(self, item: object) -> None:
        with self._lock:
            current = self._generation
        if isinstance(item, _EndReply):
            self._speaker.end_reply(item.name)
            return
        assert isinstance(item, _Sentence)
        if item.generation != current:
            return
        if self._gate is not None:
            self._gate.mute()
        try:
            self._speaker.say(item.text)
        except SpeakerError as exc:
            if not self._failing:
                _LOGGER.warning("cannot speak (%s: %s); going on without the voice", exc.code, exc.message)
            self._failing = True
            return
        self._failing = False
        self.spoken.append(item.text)
        if item.pause_ms > 0:
            self._speaker.pause(item.pause_ms / 1000)
