"""The voice thread: sentences are queued as they stream in and spoken one after another.

Speaking runs in its own thread so that the first sentence is heard while the server still writes the
second. The microphone's gate is not the voice's to open or close: the conversation's state machine
(device.states) keeps it shut for the whole reply, gaps between streamed sentences included.

The thread beats (device.liveness) while it waits for work and before each sentence, with a deadline sized
to that sentence; a speaker that never returns gets the thread replaced by `restart`.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from dataclasses import dataclass

from device.earcons import Earcon, Earcons
from device.errors import SpeakerError
from device.liveness import Beat
from device.speaker import Speaker

_LOGGER = logging.getLogger(__name__)

MAX_PAUSE_MS = 20_000
_KEEP_SPOKEN = 200
"""Longest silence a sentence may ask for: an exercise's longest phase, with room to spare."""
IDLE_DEADLINE_S = 30.0
"""An idle voice beats every `_IDLE_POLL_S`; this much slack is for a machine too busy to run it."""
_IDLE_POLL_S = 1.0
_SLACK_S = 30.0
"""On top of a sentence's own length: making its speech, and a sound card slow to open."""
_CHARS_PER_S = 8.0
"""Half the pace of speech at 165 words a minute, so a slow voice or a busy CPU still fits."""
_END_REPLY_DEADLINE_S = 120.0
"""A speaker that writes files makes the whole reply's speech here."""


def speaking_deadline_s(text: str) -> float:
    """How long saying `text` may take before the voice counts as hung: longer than the speaker's own
    time-out (its speech and 15 s), so a speaker that cuts itself free is never taken for a hang."""
    return len(text) / _CHARS_PER_S + _SLACK_S


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

    def __init__(self, speaker: Speaker, *, beat: Beat | None = None, earcons: Earcons | None = None) -> None:
        self._speaker = speaker
        self._earcons = earcons
        self._beat = beat or Beat("voice")
        self._holding = False
        """The thread has taken an item and not yet finished it: `restart` writes it off."""
        self._queue: queue.Queue[object] = queue.Queue()
        self._generation = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._failing = False
        self.spoken: collections.deque[str] = collections.deque(maxlen=_KEEP_SPOKEN)
        """The last sentences actually handed to the speaker, in order; bounded, as the daemon runs for
        months."""
        self._thread = self._start_thread()

    def say(self, text: str, pause_ms: int = 0) -> None:
        """Queue one sentence, and the silence after it; returns at once."""
        if not text.strip():
            return
        with self._lock:
            self._pending += 1
            item = _Sentence(text.strip(), max(0, min(pause_ms, MAX_PAUSE_MS)), self._generation)
            self._queue.put(item)  # under the lock: `restart` swaps the queue

    def end_reply(self, name: str = "") -> None:
        """Mark the end of one reply, after its sentences: a speaker that writes files closes one here."""
        with self._lock:
            self._pending += 1
            self._queue.put(_EndReply(name))

    def earcon(self, earcon: Earcon) -> None:
        """Chime now, without waiting and outside the queue: after the sentence being played, if any, and
        before those still queued. Nothing when earcons are off or the speech goes to a file."""
        if self._earcons is not None:
            self._earcons.play(earcon)

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
        with self._lock:
            self._queue.put(_CLOSE)
            thread = self._thread
        thread.join(timeout)
        if thread.is_alive():
            _LOGGER.warning("the voice thread did not stop within %g s", timeout)

    def restart(self) -> None:
        """The thread is stuck in the speaker (a sound card that never returns): cut that sentence short,
        drop what is queued, and go on in a new thread with the queue. The stuck thread is abandoned;
        should it ever return, it finds itself replaced and ends."""
        self._speaker.stop()
        with self._idle:
            self._generation += 1
            if self._holding:
                self._holding = False
                self._pending -= 1
            stuck, self._queue = self._queue, queue.Queue()
            while True:
                try:
                    self._queue.put(stuck.get_nowait())  # stale sentences, skipped; ends of replies kept
                except queue.Empty:
                    break
            if self._pending == 0:
                self._idle.notify_all()
            self._thread = self._start_thread()
        _LOGGER.info("the voice thread was replaced; what it had queued is dropped")

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(self._queue,), name="voice", daemon=True)
        thread.start()
        return thread

    def _run(self, jobs: queue.Queue[object]) -> None:
        """Speak what comes on `jobs` until _CLOSE; a thread that `restart` replaced ends instead."""
        while jobs is self._queue:
            self._beat.beat("idle, the speaker failing" if self._failing else "idle", IDLE_DEADLINE_S)
            try:
                item = jobs.get(timeout=_IDLE_POLL_S)
            except queue.Empty:
                continue
            with self._lock:
                if jobs is not self._queue:  # replaced as it took this: the new thread has it
                    self._queue.put(item)
                    return
                if item is _CLOSE:
                    return
                self._holding = True
            try:
                self._speak(item)
            except Exception:  # the voice must outlive one bad sentence; the reason goes to the log
                _LOGGER.exception("speaking failed")
            finally:
                with self._idle:
                    if jobs is self._queue:  # else `restart` wrote the item off
                        self._holding = False
                        self._pending -= 1
                        if self._pending == 0:
                            self._idle.notify_all()

    def _speak(self, item: object) -> None:
        with self._lock:
            current = self._generation
        if isinstance(item, _EndReply):
            self._beat.beat("ending a reply", _END_REPLY_DEADLINE_S)
            self._speaker.end_reply(item.name)
            return
        assert isinstance(item, _Sentence)
        if item.generation != current:
            return
        self._beat.beat("speaking", speaking_deadline_s(item.text))
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
            self._beat.beat("pausing", item.pause_ms / 1000 + _SLACK_S)
            self._speaker.pause(item.pause_ms / 1000)
