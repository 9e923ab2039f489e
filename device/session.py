"""The conversation loop: greet, then for each utterance send one turn and speak the reply as it streams in.

The loop is half-duplex on purpose: the next utterance is only listened for after the reply has been
spoken, so the microphone never hears the device's own voice.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO

from device.camera import FrameSource
from device.client import ServerClient
from device.errors import ServerError
from device.speaker import Speaker

_LOGGER = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on my side. I'm still here with you; let's try that again."
"""Spoken when a turn fails: the person should never be met with silence."""


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
    """One session with the server, spoken through `speaker` and printed to `out` as a readable transcript."""

    def __init__(
        self,
        client: ServerClient,
        speaker: Speaker,
        frames: FrameSource | None = None,
        *,
        out: TextIO | None = None,
    ) -> None:
        self._client = client
        self._speaker = speaker
        self._frames = frames
        self._out = out or sys.stdout

    def _print(self, line: str) -> None:
        print(line, file=self._out, flush=True)

    def run(self, client_name: str, utterances: Iterable[Utterance]) -> int:
        """Run the whole session; returns how many turns failed. The session is ended even on Ctrl-C."""
        session_id, greeting = self._client.start_session(client_name)
        _LOGGER.info("session %s opened for client %s", session_id, client_name)
        failed = 0
        try:
            if greeting:
                self._print(f"bot: {greeting}")
                self._speaker.say(greeting)
            for utterance in utterances:
                if not self.turn(session_id, utterance):
                    failed += 1
        finally:
            try:
                summary = self._client.end_session(session_id)
                _LOGGER.info("session %s ended after %s turn(s)", session_id, summary.get("turns", "?"))
            except ServerError as exc:
                _LOGGER.warning("could not end session %s: %s", session_id, exc.message)
        return failed

    def turn(self, session_id: str, utterance: Utterance) -> bool:
        """Send one turn and speak its reply as it arrives; True when the stream ended with `done`."""
        frame = self._frames.latest() if self._frames is not None else None
        try:
            events = self._client.turn(
                session_id, audio=utterance.audio, text=utterance.text, frames=[frame] if frame else []
            )
            for event in events:
                if self._handle(event):
                    return True
        except ServerError as exc:
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
            self._print(f"safety: {event.get('level', '?')}: {event.get('message', '')}")
        elif kind == EventType.SENTENCE:
            text = str(event.get("text", ""))
            self._print(f"bot: {text}")
            self._speaker.say(text)
        elif kind == EventType.DONE:
            _LOGGER.info("turn %s done; timings %s", event.get("turn_id"), event.get("timings", {}))
            return True
        elif kind == EventType.ERROR:
            self._fail(str(event.get("code", "error")), str(event.get("message", "")))
        else:
            _LOGGER.debug("ignoring unknown event type %r", kind)
        return False

    def _fail(self, code: str, message: str) -> None:
        _LOGGER.warning("turn failed: %s: %s", code, message)
        self._print(f"error: {code}: {message}")
        self._speaker.say(APOLOGY)
