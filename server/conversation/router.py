"""Where a reply is decided: one spoken turn from words (and a face) to streamed sentences.

A reply comes from one of five places, decided in this order: the crisis script (the model is never asked),
a spoken command (start over, goodbye, be quiet: tagged for the device and answered from a data file), a
guided exercise the person asked for or accepted, the language model, or, when the model is missing,
busy or failing, a steady talk-down and an exercise. The router receives ready components and never builds
its own. Every turn stream ends with `done` or `error`; the turn is committed to the record before `done`
is sent (a crisis turn is the exception: conversation/scripted.py). A data dir that will not take a write
at all costs the person nothing: `done` then carries no turn id, so the device knows the turn is not in
the record.

A turn sent again under the same idempotency key (a device whose stream broke) is not heard twice: a reply
committed whole is replayed from the record, with no speech recognition, crisis check or model, and a turn
whose answer broke is answered again from its recorded words, which are not written again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from server.conversation.components import Components
from server.conversation.in_flight import TurnsInFlight, TurnStream
from server.conversation.model_reply import ModelReplies
from server.conversation.scripted import ScriptedReplies
from server.conversation.session import SessionService
from server.conversation.turns import (
    EventType,
    HeardCrisis,
    Said,
    Source,
    TurnInput,
    event,
    ms_since,
)
from server.errors import TadbotError
from server.records.rows import EmotionSample, KeptTurn, SessionRow
from server.safety.care import Care
from server.safety.commands import Command, Commands
from server.safety.crisis import Assessment, Level
from server.speech.stt import Transcript

_LOGGER = logging.getLogger(__name__)


class TurnRouter:
    def __init__(
        self,
        components: Callable[[], Components],
        care: Care,
        commands: Commands,
        in_flight: TurnsInFlight,
        sessions: SessionService,
        scripted: ScriptedReplies,
        model: ModelReplies,
    ) -> None:
        """`components` is read at each use: the engine's components may be replaced while it runs."""
        self._components = components
        self.care = care
        self.commands = commands
        self.in_flight = in_flight
        self.sessions = sessions
        self.scripted = scripted
        self.model = model

    def turn(self, session: SessionRow, given: TurnInput, key: str | None = None) -> TurnStream:
        """The turn's events, streamed. `key` is the device's Idempotency-Key: a turn already answered
        under it is replayed from the record, and one whose answer broke is answered again. Raises
        TurnInProgress (409) while a turn under the same key is still streaming."""
        self.in_flight.begin(session.id, key)
        return TurnStream(self._turn(session, given, key), lambda: self.in_flight.end(session.id, key))

    def _turn(self, session: SessionRow, given: TurnInput, key: str | None) -> Generator[dict[str, Any]]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            kept = self.sessions.records.kept_turn(session.id, key) if key is not None else None
            if kept is not None and kept.reply is not None:
                yield from self._replay(session, kept)
                return
            if kept is not None:
                yield from self._again(session, kept, key, started, timings)
                return
            heard = Transcript(text=given.text or "", engine="typed")
            if given.audio is not None:
                t0 = time.perf_counter()
                heard = self._components().transcriber.transcribe(given.audio)
                timings["stt_ms"] = ms_since(t0)
            text = heard.text
            yield event(EventType.TRANSCRIPT, text=text)

            top3: list[dict[str, Any]] = []
            # Written once the crisis check has spoken: a crisis writes them with its record, after the
            # helpline.
            samples: list[EmotionSample] = []
            if given.frames and self._components().fer is not None:
                t0 = time.perf_counter()
                read = self.sessions.read_faces(session, given.frames, samples)
                timings["fer_ms"] = ms_since(t0)
                if read is not None:
                    faces, top3 = read
                    yield event(EventType.EMOTIONS, faces=faces, top3=top3)

            if not text.strip():
                self.sessions.kept_samples(session, samples)
                yield event(
                    EventType.ERROR,
                    code="no_speech",
                    message="No speech was recognised; ask the person to say it again.",
                )
                return

            t0 = time.perf_counter()
            command = self.commands.match(text)
            assessment, source, read_as = self.care.assess_heard(
                heard.hypotheses, spoken=given.audio is not None, second_opinion=command is None
            )
            assessment = self.care.across_turns(session.id, assessment)
            timings["safety_ms"] = ms_since(t0)
            said = Said(text, heard.confidence() if given.audio is not None else None, key)
            if assessment.level == Level.CRISIS:
                crisis = HeardCrisis(said, source, read_as, assessment, tuple(samples))
                yield from self.scripted.crisis(session, crisis, started, timings)
                return
            self.sessions.kept_samples(session, samples)
            yield from self._reply_to(session, said, command, assessment, top3, started, timings)
        except TadbotError as exc:
            _LOGGER.warning("turn failed in session %s: %s (%s)", session.id, exc.code, exc.message)
            yield event(EventType.ERROR, code=exc.code, message=exc.message)
        except Exception:
            _LOGGER.exception("turn failed in session %s", session.id)
            yield event(
                EventType.ERROR,
                code="internal_error",
                message="The server failed while answering; the error is in its log.",
            )

    def _reply_to(
        self,
        session: SessionRow,
        said: Said,
        command: Command | None,
        assessment: Assessment,
        top3: list[dict[str, Any]],
        started: float,
        timings: dict[str, float],
    ) -> Iterator[dict[str, Any]]:
        """Any reply but the crisis script: a command, an exercise, or the model (or the talk-down)."""
        # Only words the safety check found nothing in can be a command: a concern goes to the model.
        if command is not None and assessment.level == Level.NONE:
            yield from self.scripted.command(session, said, command, started, timings)
            return
        exercise = self.care.exercise_for(session.id, said.text, again=said.again is not None)
        if exercise is not None:
            turn_id = self.sessions.person(session, said)
            self.sessions.first_time(session, said, turn_id, assessment, "answered with a guided exercise")
            lines = self.care.exercise_lines(exercise)
            yield from self.scripted.scripted(session, lines, Source.EXERCISE, started, timings)
            return
        yield from self.model.answer(session, said, assessment, top3, started, timings)

    def _replay(self, session: SessionRow, kept: KeptTurn) -> Iterator[dict[str, Any]]:
        """A turn already answered whole, from the record: no speech recognition, crisis check or model."""
        assert kept.reply is not None
        reply = kept.reply
        yield event(EventType.TRANSCRIPT, text=kept.text)
        if kept.crisis is not None:
            yield event(EventType.SAFETY, level=str(Level.CRISIS), message=kept.crisis)
        command = self.commands.match(kept.text) if reply.source == Source.COMMAND else None
        if command is not None:
            yield event(EventType.COMMAND, name=str(command.name))
        for sentence in reply.sentences:
            yield event(EventType.SENTENCE, **sentence)
        _LOGGER.info("reply %d in session %s replayed from the record", reply.turn_id, session.id)
        yield event(
            EventType.DONE, turn_id=reply.turn_id, timings=reply.timings, source=reply.source, replayed=True
        )

    def _again(
        self, session: SessionRow, kept: KeptTurn, key: str | None, started: float, timings: dict[str, float]
    ) -> Iterator[dict[str, Any]]:
        """A turn whose first answer broke, answered again from its recorded words.

        Their words, any crisis or concern, and their face readings are already recorded, and the crisis
        alert sent: none of it is done twice, and the session's safety state is not counted again. A crisis
        is given the crisis script again; any other turn the same choice of reply as the first time."""
        _LOGGER.info("session %s: turn %d answered again; its first answer broke", session.id, kept.id)
        yield event(EventType.TRANSCRIPT, text=kept.text)
        if kept.crisis is not None:
            yield event(EventType.SAFETY, level=str(Level.CRISIS), message=kept.crisis)
            lines = self.care.crisis_lines()
            yield from self.scripted.scripted(session, lines, Source.CRISIS, started, timings, remember=False)
            return
        t0 = time.perf_counter()
        command = self.commands.match(kept.text)
        assessment, source, read_as = self.care.assess_heard((kept.text,), second_opinion=command is None)
        timings["safety_ms"] = ms_since(t0)
        said = Said(kept.text, kept.confidence, key, again=kept.id)
        if assessment.level == Level.CRISIS:
            # Not a crisis the first time (a second opinion that failed then): recorded as one now.
            crisis = HeardCrisis(said, source, read_as, assessment, ())
            yield from self.scripted.crisis(session, crisis, started, timings)
            return
        yield from self._reply_to(session, said, command, assessment, [], started, timings)
