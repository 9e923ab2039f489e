"""The conversation loop: greet, then for each utterance send one turn and speak the reply as it streams in.

Sentences go to the voice thread as they arrive, so the first is heard while the server writes the next;
the microphone is muted while the device speaks (see device.voice and device.listen). The loop outlives
what it can: a failed turn gets a spoken line that fits its error code (or, when the person's words were a
crisis, the device's own copy of the crisis reply: device.crisis), and a server that cannot be reached
gets the device's own talk-down and exercise while it is retried; a broken camera means a turn without a
frame, a broken speaker a logged line. It stops only when going on would be pointless or harmful: the
server refuses this device. Every change of state is logged by device.states, whose state machine is also
the only thing that opens and closes the microphone's gate.

A conversation ends when the person says goodbye or has been silent for `idle_end_s`: the session is ended on
the server, nothing is said or posted, and the next words they say open a new one. A turn whose stream
breaks is sent once more under the same idempotency key (the server answers it from its record, so the
model does not run twice and no sentence is said twice); if that fails too, one short line, the session is
ended, and the device listens again.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TextIO

from device.backoff import Backoff
from device.camera import FrameSource
from device.client import ServerClient
from device.crisis import CrisisFallback
from device.earcons import Earcon
from device.errors import CameraError, DeviceConfigError, DeviceError, ServerError
from device.exercises import OfflineExercises, Step
from device.lines import Lines
from device.states import State, StateMachine
from device.voice import Voice

_LOGGER = logging.getLogger(__name__)

_REFUSED = frozenset({401, 403})
"""The server does not accept this device: retrying cannot help, and would only hammer it."""
_SESSION_GONE = frozenset({404, 409})
_IN_PROGRESS = "turn_in_progress"
"""The 409 a turn sent again gets while its first try is still being answered: not a lost session."""
_BROKEN = frozenset({"stream_broken", "stream_truncated"})
_AT_REST = frozenset({State.LISTENING, State.ENDED})
"""States the person's speech can interrupt: hearing them is shown from these, and goes back to them."""
"""A reply cut off on its way: worth one more try under the same idempotency key."""
"""The server lost the session (404) or it has ended (409): a new one fixes that."""


class EventType(StrEnum):
    """The turn-stream events of the HTTP contract, in the order the server sends them."""

    TRANSCRIPT = "transcript"
    EMOTIONS = "emotions"
    SAFETY = "safety"
    SENTENCE = "sentence"
    COMMAND = "command"
    DONE = "done"
    ERROR = "error"


class Command(StrEnum):
    """What the server found the person asking of the device itself ("start over", "goodbye", "be quiet")."""

    NEW_SESSION = "new_session"
    END_SESSION = "end_session"
    PAUSE = "pause"


@dataclass(frozen=True)
class Utterance:
    """What the person said: a 16 kHz mono PCM16 WAV, or typed text (for tests and `--text`)."""

    audio: bytes | None = None
    text: str | None = None
    heard_at: float | None = None
    """`time.monotonic()` when its speech began (the microphone's only): speech that began while a turn was
    being sent is stale by the time that turn is over, and is dropped."""


@dataclass
class _Heard:
    """What the current turn has brought so far, for the crisis fallback should its stream break: the
    person's words (typed, then the server's transcript), whether the server read a crisis, and the
    sentences already handed to the voice."""

    words: str = ""
    server_crisis: bool = False
    sent: list[str] = field(default_factory=list)
    replayed: int = 0
    """How many of `sent` the stream now arriving has matched: a retried turn's replay starts at 0."""


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
    """Sessions with the server, spoken through `voice` and printed to `out` as a readable transcript.

    `utterances` may yield None while nobody speaks (the daemon's microphone does, about once a second):
    those ticks keep the watchdog fed and retry a server that is down. With a `backoff` (the daemon), a
    server that cannot be reached is retried and the person hears the device's own exercises meanwhile;
    without one (a one-shot turn), that is an error at once.
    """

    def __init__(
        self,
        client: ServerClient,
        voice: Voice,
        frames: FrameSource | None = None,
        *,
        lines: Lines,
        exercises: OfflineExercises | None = None,
        crisis: CrisisFallback | None = None,
        backoff: Backoff | None = None,
        out: TextIO | None = None,
        states: StateMachine | None = None,
        think_ack_s: float = 0.0,
        idle_end_s: float = 0.0,
        heartbeat: Callable[[], None] | None = None,
        ready: Callable[[], object] | None = None,
    ) -> None:
        self._client = client
        self._voice = voice
        self._frames = frames
        self._lines = lines
        self._offline: Iterator[tuple[str, tuple[Step, ...]]] | None = None
        self._talk_down: tuple[Step, ...] = ()
        if exercises is not None:
            self._offline, self._talk_down = exercises.rotation(), exercises.talk_down
        self._crisis = crisis
        self._heard = _Heard()
        self._backoff = backoff
        self._out = out or sys.stdout
        self.states = states or StateMachine()
        self._think_ack_s = think_ack_s
        self._idle_end_s = idle_end_s
        self._last_active = time.monotonic()
        self._before_hearing = State.LISTENING
        self._sending: tuple[float, float] = (0.0, 0.0)
        """When the last turn was sent, and when its first sentence (or its end) came back."""
        self._heartbeat = heartbeat or (lambda: None)
        self._ready = ready
        self._client_name = ""
        self._session_id = ""  # none open
        self._next_try = 0.0
        self._waiting_said = False
        self._outage_chimed = False
        self._unanswered = 0
        """Turns in a row the server could not answer: the second is the person asking again."""
        self._last_ack = ""
        self._lock = threading.Lock()
        self.in_turn = False

    @property
    def session_id(self) -> str:
        """The open session, or "" (for the frame poster, which must not post into a turn's session gap)."""
        with self._lock:
            return self._session_id

    def _print(self, line: str) -> None:
        print(line, file=self._out, flush=True)

    def _say(self, text: str, pause_ms: int = 0) -> None:
        self._voice.say(text, pause_ms)

    def _settle(self) -> None:
        """Wait until everything queued has been said, feeding the watchdog meanwhile."""
        self._voice.end_reply()
        while not self._voice.wait_idle(1.0):
            self._heartbeat()

    def run(self, client_name: str, utterances: Iterable[Utterance | None]) -> int:
        """Run until the utterances end; returns how many turns failed. The session is ended even on Ctrl-C.

        Shutdown goes in order: stop listening (a generator, the microphone, is closed here rather than
        whenever it is collected), then end the session, then the caller closes voice, speaker and camera.
        """
        self._client_name = client_name
        heard = iter(utterances)
        failed = 0
        try:
            self._start()
            for utterance in heard:
                self._heartbeat()
                if utterance is None:
                    self._retry_if_due()
                    self._end_if_idle()
                    continue
                if self._stale(utterance):
                    continue
                if self._turn(utterance):
                    self._unanswered = 0
                else:
                    failed += 1
                self._settle()
                self._last_active = time.monotonic()
                self.states.go(self._at_rest())
        finally:
            if isinstance(heard, Generator):
                heard.close()
            self.states.go(State.STOPPING)
            self._end()
            self._settle()
        return failed

    def heard_start(self) -> None:
        """The listener heard speech begin (its thread): listening, or ended, becomes hearing."""
        self._before_hearing = self.states.go_from(_AT_REST, State.HEARING, "speech") or self._before_hearing

    def heard_end(self) -> None:
        """The listener found the speech over (kept or too short): back to what it was before."""
        self.states.go_from(frozenset({State.HEARING}), self._before_hearing)

    def _at_rest(self) -> State:
        if self._session_id:
            return State.LISTENING
        return State.ENDED if self._ended() else State.WAITING

    def _ended(self) -> bool:
        """The person ended the conversation (goodbye, or silence): no session is opened until they speak.
        The state machine holds it, like every other state of the device."""
        state = self.states.state
        return state == State.ENDED or (state == State.HEARING and self._before_hearing == State.ENDED)

    def _stale(self, utterance: Utterance) -> bool:
        """Speech that began while the last turn was on its way (heard past a barge-in gate): by now the
        reply has answered the moment it belonged to."""
        start, end = self._sending
        if utterance.heard_at is None or not start <= utterance.heard_at < end:
            return False
        _LOGGER.info("dropping speech heard while the last turn was being sent")
        return True

    def _end_if_idle(self) -> None:
        """Silence for `idle_end_s`: the session is ended on the server, and the camera's samples with it."""
        if self._idle_end_s <= 0 or not self.session_id or self.states.state != State.LISTENING:
            return
        if time.monotonic() - self._last_active < self._idle_end_s:
            return
        _LOGGER.info("no one has spoken for %g s; ending the session", self._idle_end_s)
        self._end()
        self.states.go(State.ENDED, "silence")

    # --- the session ----------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Open the first session. A one-shot turn needs the server now; the daemon waits for it."""
        if self._backoff is None:
            self._set_session(self._open_once(greet=True))
            self.states.go(State.LISTENING)
            return
        self._retry_if_due()

    def _retry_if_due(self) -> None:
        """Daemon only: try the server again once the back-off says so; greet when it answers."""
        if self._session_id or self._ended() or self._backoff is None or time.monotonic() < self._next_try:
            return
        try:
            if self._ready is not None:
                self._client.health()
                self._ready()  # the daemon is up: systemd may start what waits for it
                self._ready = None
            session_id = self._open_once(greet=True)
        except ServerError as exc:
            if not exc.transient:
                raise
            self._server_down(exc)
            return
        self._set_session(session_id)
        self._settle()
        self._last_active = time.monotonic()
        self.states.go(State.LISTENING)

    def _server_down(self, exc: ServerError) -> None:
        assert self._backoff is not None
        delay = self._backoff.failed()
        self._next_try = time.monotonic() + delay
        if not self._waiting_said:
            self.states.go(State.SPEAKING, "waiting for the server")
            self._chime_offline()
            self._print(f"bot: {self._lines.waiting_for_server}")
            self._say(self._lines.waiting_for_server)
            self._voice.end_reply("waiting")
            self._settle()
            self._waiting_said = True
        self.states.go(State.WAITING, exc.code)
        if self._backoff.worth_logging:
            _LOGGER.warning(
                "waiting for the server: %s; retrying in %g s (failure %d in a row)",
                exc.message,
                delay,
                self._backoff.failures,
            )

    def _set_session(self, session_id: str) -> None:
        with self._lock:
            self._session_id = session_id

    def _open_once(self, *, greet: bool) -> str:
        """Open a session or raise ServerError; a refused token stops the device."""
        try:
            session_id, greeting = self._client.start_session(self._client_name)
        except ServerError as exc:
            if exc.status in _REFUSED:
                raise self._refused(exc) from exc
            raise
        if self._backoff is not None:
            if self._backoff.failures:
                _LOGGER.warning("the server answers again, after %d failed tries", self._backoff.failures)
            self._backoff.reset()
        self._waiting_said = self._outage_chimed = False
        self._unanswered = 0
        _LOGGER.info("session %s opened for client %s", session_id, self._client_name or "(enrolled)")
        if greet and greeting:
            self.states.go(State.SPEAKING, "greeting")
            self._print(f"bot: {greeting}")
            self._say(greeting)
            self._voice.end_reply("greeting")
        return session_id

    def _refused(self, exc: ServerError) -> DeviceConfigError:
        """The server refuses this device's token: say so once, and stop rather than retry for ever."""
        self._set_session("")  # ending it would be refused too
        self._say(self._lines.refused)
        return DeviceConfigError(
            f"the server refused this device ({exc.status} {exc.code}: {exc.message}); check the device "
            "token ([device] token or TADBOT_DEVICE__TOKEN), made with `tadbot admin add-device NAME`"
        )

    def _end(self) -> None:
        session_id = self.session_id
        if not session_id:
            return
        self._set_session("")
        try:
            summary = self._client.end_session(session_id)
            _LOGGER.info("session %s ended after %s turn(s)", session_id, summary.get("turns", "?"))
        except ServerError as exc:
            _LOGGER.warning("could not end session %s: %s", session_id, exc.message)

    # --- one turn -------------------------------------------------------------------------------------------

    def _turn(self, utterance: Utterance) -> bool:
        """Send one turn and speak its reply as it arrives; True when the stream ended with `done`.

        A session the server no longer knows (404) or has ended (409) is replaced by a new one, once, and
        the utterance sent again, so the person's words are not lost. A reply cut off on its way is asked
        for once more under the same key; if that fails too, the session is ended and given up.
        """
        self._heard = _Heard(utterance.text or "")
        key = uuid.uuid4().hex
        if utterance.audio is not None:
            # "I heard you", whether or not the server answers; the gate is shut first against the chime.
            self.states.go(State.SENDING, "speech")
            self._voice.earcon(Earcon.HEARD)
        if not self._session_id:
            try:
                self._set_session(self._open_once(greet=False))
            except ServerError as exc:
                return self._failed(exc)
        try:
            return self._send_once_more_if_broken(utterance, key)
        except ServerError as exc:
            if exc.status not in _SESSION_GONE or exc.code == _IN_PROGRESS:
                return self._failed(exc)
            _LOGGER.warning("session %s is gone (%s); starting a new one", self._session_id, exc.code)
        try:
            self._set_session(self._open_once(greet=False))
        except ServerError as exc:
            return self._failed(exc)
        try:
            return self._send(utterance, uuid.uuid4().hex)
        except ServerError as exc:
            if exc.status in _SESSION_GONE and exc.code != _IN_PROGRESS:
                raise DeviceError(
                    exc.code,
                    f"a new session was refused at once too ({exc.message}); is [device] server_url "
                    "a TADBot server?",
                ) from exc
            return self._failed(exc)

    def _send_once_more_if_broken(self, utterance: Utterance, key: str) -> bool:
        try:
            return self._send(utterance, key)
        except ServerError as exc:
            if exc.code not in _BROKEN:
                raise
            _LOGGER.warning("the reply was cut off (%s); asking for it once more", exc.code)
        try:
            return self._send(utterance, key)
        except ServerError as exc:
            if exc.code not in _BROKEN:
                raise
            self._fail(exc.code, exc.message)
            self._end()  # the device gives up on this session; the server also ends it if this is lost
            return False

    def _send(self, utterance: Utterance, key: str) -> bool:
        frame = self._frame()
        self.states.go(State.SENDING, "text" if utterance.text is not None else "speech")
        self._sending = (time.monotonic(), float("inf"))
        self._heard.replayed = 0
        self.in_turn = True
        waiting = _ThinkingAck(self, self._think_ack_s) if self._think_ack_s > 0 else None
        command: Command | None = None
        try:
            events = self._client.turn(
                self._session_id,
                audio=utterance.audio,
                text=utterance.text,
                frames=[frame] if frame else [],
                key=key,
            )
            with contextlib.closing(events):
                for event in events:
                    self._heartbeat()
                    if event.get("type") == EventType.SENTENCE and waiting is not None:
                        waiting.cancel()
                    if event.get("type") == EventType.COMMAND:
                        command = _command(event)
                    if self._handle(event):
                        self._heard = _Heard()  # a whole reply: nothing is left for the fallback
                        if command is not None:
                            self._obey(command)
                        return True
        finally:
            self.in_turn = False
            self._sending = (self._sending[0], min(self._sending[1], time.monotonic()))
            if waiting is not None:
                waiting.cancel()
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
        crisis = self._fail(exc.code, exc.message)
        if exc.transient and self._backoff is not None:
            self._speak_offline(exc, exercise=not crisis)
        return False

    def _speak_offline(self, exc: ServerError, *, exercise: bool) -> None:
        """The server failed the turn (down, busy, timing out); it is tried again with a back-off meanwhile.

        The first such turn gets only its line, which offers to breathe together: a long exercise with the
        microphone shut is not what everyone wants. Speaking again while the server is still away is taken
        as asking (the device cannot understand words on its own), and gets the device's own talk-down and
        exercise. After the crisis reply there is no `exercise`: the talk-down tells a panic it is not
        dangerous, which must not follow words of crisis, and the reply already ends by breathing with
        them."""
        assert self._backoff is not None
        self._unanswered += 1
        self.states.go(State.OFFLINE, exc.code)
        if exc.status is None:  # away, not busy
            self._chime_offline()
        if self._session_id and exc.status is None:
            self._set_session("")  # a server that went away may come back without it; a new one is opened
        self._next_try = time.monotonic() + self._backoff.failed()
        if self._offline is None or not exercise or self._unanswered < 2:
            return
        name, steps = next(self._offline)
        _LOGGER.info("speaking the offline exercise %s while the server is away", name)
        for step in (*self._talk_down, *steps):
            self._print(f"bot: {step.text}")
            self._say(step.text, step.pause_ms)

    def _chime_offline(self) -> None:
        """The "offline" earcon, once an outage: the server going away is heard, not only read in logs."""
        if not self._outage_chimed:
            self._voice.earcon(Earcon.OFFLINE)
            self._outage_chimed = True

    def _obey(self, command: Command) -> None:
        """Act on a command turn once its reply (a goodbye, say) has been queued."""
        _LOGGER.info("voice command: %s", command)
        if command is Command.PAUSE:
            self._voice.interrupt()
        elif command is Command.END_SESSION:
            self._settle()
            self._end()
            self.states.go(State.ENDED, "goodbye")
        elif command is Command.NEW_SESSION:
            self._settle()
            self._end()
            try:
                self._set_session(self._open_once(greet=True))
            except ServerError as exc:
                self._failed(exc)

    def _handle(self, event: dict[str, Any]) -> bool:
        """Show and speak one event; True when it is `done`."""
        kind = event.get("type")
        if kind == EventType.TRANSCRIPT:
            self._heard.words = str(event.get("text", "")) or self._heard.words
            self._print(f"you: {event.get('text', '')}")
        elif kind == EventType.EMOTIONS:
            self._print(f"face: {describe_faces(event)}")
        elif kind == EventType.SAFETY:
            # Shown, not spoken: what to say (the helpline among it) follows as sentences, in a calm order.
            self._heard.server_crisis |= event.get("level") == "crisis"
            self._print(f"safety: {event.get('level', '?')}: {event.get('message', '')}")
        elif kind == EventType.SENTENCE:
            text = str(event.get("text", ""))
            self._sending = (self._sending[0], min(self._sending[1], time.monotonic()))
            heard = self._heard
            if heard.replayed < len(heard.sent):
                # The same turn asked for again: what was already said is not said twice.
                heard.replayed += 1
                if heard.sent[heard.replayed - 1] == text:
                    return False
            self.states.go(State.SPEAKING, "first sentence")
            self._print(f"bot: {text}")
            heard.sent.append(text)
            heard.replayed = len(heard.sent)
            pause_ms = event.get("pause_ms", 0)
            self._say(text, pause_ms if isinstance(pause_ms, int) else 0)
        elif kind == EventType.COMMAND:
            self._print(f"command: {event.get('name', '?')}")
        elif kind == EventType.DONE:
            _LOGGER.info("turn %s done; timings %s", event.get("turn_id"), event.get("timings", {}))
            return True
        elif kind == EventType.ERROR:
            self._fail(str(event.get("code", "error")), str(event.get("message", "")))
        else:
            _LOGGER.debug("ignoring unknown event type %r", kind)
        return False

    def _fail(self, code: str, message: str) -> bool:
        """A failed turn: the cause in the log and transcript, and a spoken line that fits it; True when
        that was the crisis reply, because the server or the device's rules read the words as a crisis."""
        _LOGGER.warning("turn failed: %s: %s", code, message)
        self._print(f"error: {code}: {message}")
        heard = self._heard
        crisis = (
            None
            if self._crisis is None
            else self._crisis.lines_for(heard.words, heard.server_crisis, heard.sent)
        )
        if crisis is not None:
            who, lines = crisis
            _LOGGER.warning(
                "%s read this turn as a crisis: saying %d line(s) of the crisis reply", who, len(lines)
            )
            for line in lines:
                self._print(f"bot: {line}")
                self._say(line)
            return True
        line = self._lines.for_error(code)
        self._print(f"bot: {line}")
        self._say(line)
        return False

    def acknowledge(self) -> None:
        """Say a short "one moment" while the server thinks; never the same one twice in a row."""
        choices = [line for line in self._lines.thinking if line != self._last_ack]
        self._last_ack = random.choice(choices)
        self._print(f"bot: {self._last_ack}")
        self._say(self._last_ack)


def _command(event: dict[str, Any]) -> Command | None:
    try:
        return Command(str(event.get("name")))
    except ValueError:
        _LOGGER.warning("ignoring unknown command %r", event.get("name"))
        return None


class _ThinkingAck:
    """A timer for one turn: after `delay_s` without a sentence, and every `delay_s * 3` after that, the
    device says it is still there, so a slow server is not mistaken for being ignored."""

    def __init__(self, conversation: Conversation, delay_s: float) -> None:
        self._conversation = conversation
        self._delay_s = delay_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thinking", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self._delay_s
        while not self._done.wait(delay):
            self._conversation.acknowledge()
            delay = self._delay_s * 3

    def cancel(self) -> None:
        self._done.set()
