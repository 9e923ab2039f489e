"""The conversation loop: greet, then for each utterance send one turn and speak the reply as it streams in.

The loop is half-duplex on purpose: the next utterance is only listened for after the reply has been
spoken, so the microphone never hears the device's own voice. It outlives what it can: a failed turn gets
a spoken line that fits its error code, a broken camera means a turn without a frame, a broken speaker a
logged line. It stops only when going on would be pointless or harmful: the server refuses this device.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO

from device.backoff import Backoff
from device.camera import FrameSource
from device.client import ServerClient
from device.errors import CameraError, DeviceConfigError, DeviceError, ServerError, SpeakerError
from device.lines import Lines
from device.speaker import Speaker

_LOGGER = logging.getLogger(__name__)

_REFUSED = frozenset({401, 403})
"""The server does not accept this device: retrying cannot help, and would only hammer it."""
_SESSION_GONE = frozenset({404, 409})
MAX_PAUSE_MS = 20_000
"""Longest silence a sentence may ask for: an exercise's longest phase, with room to spare."""
"""The server lost the session (404) or it has ended (409): a new one fixes that."""


class EventType(StrEnum):
    """The turn-stream events of the HTTP contract, in the order the server sends them."""

    TRANSCRIPT = "transcript"
    EMOTIONS = "emotions"
    SAFETY = "safety"
    SENTENCE = "sentence"
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True)
class Utterance:
    """What the person said: a 16 kHz mono PCM16 WAV, or typed text (for tests and `--text`)."""

    audio: bytes | None = None
    text: str | None = None


def describe_faces(event: dict[str, Any]) -> str:
    """`fear 0.61, neutral 0.20, sad 0.10`, or why there is nothing to show."""
    faces = int(event.get("faces", 0) or 0)
    if faces == 0:
        return "no face seen"
    top3 = ", ".join(
        f"{item.get('label', '?')} {float(item.get('score', 0.0)):.2f}" for item in event.get("top3", [])
    )
    return top3 if faces == 1 else f"{top3} ({faces} faces)"


class Conversation:
    """One session with the server, spoken through `speaker` and printed to `out` as a readable transcript.

    With a `backoff` (the daemon), a server that cannot be reached when the session opens is waited for;
    without one (a one-shot turn), that is an error at once.
    """

    def __init__(
        self,
        client: ServerClient,
        speaker: Speaker,
        frames: FrameSource | None = None,
        *,
        lines: Lines,
        backoff: Backoff | None = None,
        out: TextIO | None = None,
    ) -> None:
        self._client = client
        self._speaker = speaker
        self._frames = frames
        self._lines = lines
        self._backoff = backoff
        self._out = out or sys.stdout
        self._client_name = ""
        self._session_id = ""  # none open
        self._speaker_failing = False

    def _print(self, line: str) -> None:
        print(line, file=self._out, flush=True)

    def _say(self, text: str) -> None:
        """Speak, or log why not: a broken speaker must not end the conversation (the transcript goes on)."""
        try:
            self._speaker.say(text)
        except SpeakerError as exc:
            if not self._speaker_failing:
                _LOGGER.warning("cannot speak (%s: %s); going on without the voice", exc.code, exc.message)
            self._speaker_failing = True
        else:
            self._speaker_failing = False

    def run(self, client_name: str, utterances: Iterable[Utterance]) -> int:
        """Run the whole session; returns how many turns failed. The session is ended even on Ctrl-C.

        Shutdown goes in order: stop listening (a generator, the microphone, is closed here rather than
        whenever it is collected), then end the session, then the caller closes speaker and camera.
        """
        self._client_name = client_name
        heard = iter(utterances)
        failed = 0
        try:
            self._session_id = self._open(greet=True)
            for utterance in heard:
                if not self._turn(utterance):
                    failed += 1
        finally:
            if isinstance(heard, Generator):
                heard.close()
            self._end()
        return failed

    def _open(self, *, greet: bool) -> str:
        """Open a session; in daemon mode, wait for a server that is down, saying so once."""
        waiting = False
        while True:
            try:
                session_id, greeting = self._client.start_session(self._client_name)
                break
            except ServerError as exc:
                if exc.status in _REFUSED:
                    raise self._refused(exc) from exc
                if self._backoff is None or not exc.transient:
                    raise
                delay = self._backoff.failed()
                if not waiting:
                    self._print(f"bot: {self._lines.waiting_for_server}")
                    self._say(self._lines.waiting_for_server)
                    waiting = True
                if self._backoff.worth_logging:
                    _LOGGER.warning(
                        "waiting for the server: %s; retrying in %g s (failure %d in a row)",
                        exc.message,
                        delay,
                        self._backoff.failures,
                    )
                if not self._backoff.wait(delay):
                    raise
        if self._backoff is not None:
            if waiting:
                _LOGGER.warning("the server answers again, after %d failed tries", self._backoff.failures)
            self._backoff.reset()
        _LOGGER.info("session %s opened for client %s", session_id, self._client_name)
        if greet and greeting:
            self._print(f"bot: {greeting}")
            self._say(greeting)
        return session_id

    def _refused(self, exc: ServerError) -> DeviceConfigError:
        """The server refuses this device's token: say so once, and stop rather than retry for ever."""
        self._session_id = ""  # ending it would be refused too
        self._say(self._lines.refused)
        return DeviceConfigError(
            f"the server refused this device ({exc.status} {exc.code}: {exc.message}); check the device "
            "token ([device] token or TADBOT_DEVICE__TOKEN), made with `tadbot admin add-device NAME`"
        )

    def _end(self) -> None:
        if not self._session_id:
            return
        try:
            summary = self._client.end_session(self._session_id)
            _LOGGER.info("session %s ended after %s turn(s)", self._session_id, summary.get("turns", "?"))
        except ServerError as exc:
            _LOGGER.warning("could not end session %s: %s", self._session_id, exc.message)

    def _turn(self, utterance: Utterance) -> bool:
        """Send one turn and speak its reply as it arrives; True when the stream ended with `done`.

        A session the server no longer knows (404) or has ended (409) is replaced by a new one, once, and
        the utterance sent again, so the person's words are not lost.
        """
        try:
            return self._send(utterance)
        except ServerError as exc:
            if exc.status not in _SESSION_GONE:
                return self._failed(exc)
            _LOGGER.warning("session %s is gone (%s); starting a new one", self._session_id, exc.code)
        self._session_id = self._open(greet=False)
        try:
            return self._send(utterance)
        except ServerError as exc:
            if exc.status in _SESSION_GONE:
                raise DeviceError(
                    exc.code,
                    f"a new session was refused at once too ({exc.message}); is [device] server_url "
                    "a TADBot server?",
                ) from exc
            return self._failed(exc)

    def _send(self, utterance: Utterance) -> bool:
        frame = self._frame()
        events = self._client.turn(
            self._session_id, audio=utterance.audio, text=utterance.text, frames=[frame] if frame else []
        )
        with contextlib.closing(events):
            for event in events:
                if self._handle(event):
                    return True
        return False

    def _frame(self) -> bytes | None:
        """The latest frame, or None: a camera failure means a turn without a picture, not a lost turn."""
        if self._frames is None:
            return None
        try:
            return self._frames.latest()
        except CameraError as exc:
            _LOGGER.warning("no frame for this turn (%s: %s)", exc.code, exc.message)
            return None

    def _failed(self, exc: ServerError) -> bool:
        if exc.status in _REFUSED:
            raise self._refused(exc) from exc
        self._fail(exc.code, exc.message)
        return False

    def _handle(self, event: dict[str, Any]) -> bool:
        """Show and speak one event; True when it is `done`."""
        kind = event.get("type")
        if kind == EventType.TRANSCRIPT:
            self._print(f"you: {event.get('text', '')}")
        elif kind == EventType.EMOTIONS:
            self._print(f"face: {describe_faces(event)}")
        elif kind == EventType.SAFETY:
            # Shown, not spoken: what to say (the helpline among it) follows as sentences, in a calm order.
            self._print(f"safety: {event.get('level', '?')}: {event.get('message', '')}")
        elif kind == EventType.SENTENCE:
            text = str(event.get("text", ""))
            self._print(f"bot: {text}")
            self._say(text)
            pause_ms = event.get("pause_ms", 0)
            if isinstance(pause_ms, int) and pause_ms > 0:
                self._speaker.pause(min(pause_ms, MAX_PAUSE_MS) / 1000)
        elif kind == EventType.DONE:
            _LOGGER.info("turn %s done; timings %s", event.get("turn_id"), event.get("timings", {}))
            return True
        elif kind == EventType.ERROR:
            self._fail(str(event.get("code", "error")), str(event.get("message", "")))
        else:
            _LOGGER.debug("ignoring unknown event type %r", kind)
        return False

    def _fail(self, code: str, message: str) -> None:
        """A failed turn: the cause in the log and transcript, and a spoken line that fits it."""
        _LOGGER.warning("turn failed: %s: %s", code, message)
        self._print(f"error: {code}: {message}")
        line = self._lines.for_error(code)
        self._print(f"bot: {line}")
        self._say(line)
