"""Where a reply is decided: one spoken turn from words (and a face) to streamed sentences.

A reply comes from one of five places, decided in this order: the crisis script (the model is never asked),
a spoken command (start over, goodbye, be quiet: tagged for the device and answered from a data file), a
guided exercise the person asked for or accepted, the language model, or, when the model is missing,
busy or failing, a steady talk-down and an exercise. The engine receives ready components and never builds
its own. Every turn stream ends with `done` or `error`; the turn is committed to the record before `done`
is sent. A crisis turn is the exception: nothing is written before its helpline is spoken, and a database
too locked to take its record within a second gets it from a background retry (conversation/crisis_record.py),
with `done` carrying no turn id. A data dir that will not take a write at all (a full disk, a card remounted
read-only) costs the person nothing either: each such write is logged and skipped, the reply still comes,
and `done` carries no turn id, so the device knows the turn is not in the record.

Crisis and concern turns go to the therapist's record whole, but never to the vector memory or a session
summary: a later session's prompt must not quote them back under a note to use past details.

A turn sent again under the same idempotency key (a device whose stream broke) is not heard twice: a reply
committed whole is replayed from the record, with no speech recognition, crisis check or model, and a turn
whose answer broke is answered again from its recorded words, which are not written again. Sessions left
idle for `server.session_idle_s` are ended here, as /end would, by a background sweep.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.config import Settings
from server.conversation.components import Components
from server.conversation.crisis_record import CrisisRecorder
from server.conversation.history import History
from server.conversation.idle import IdleSweep
from server.conversation.in_flight import TurnsInFlight, TurnStream
from server.conversation.llm import GenerationStats
from server.conversation.model_queue import ModelQueue
from server.conversation.prompt import Prompts, build_messages, stage_for, turn_content
from server.conversation.summary import Summariser
from server.errors import LlmError, MemoryStoreError, TadbotError
from server.face.smoothing import EmotionSmoother
from server.records.storage import StorageError
from server.records.store import Conversation, CrisisTurn, EmotionSample, KeptTurn, SessionRow
from server.safety.care import Care, Line
from server.safety.commands import Command, Commands
from server.safety.crisis import Assessment, Level
from server.speech.stt import Transcript

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


class EventType(enum.StrEnum):
    TRANSCRIPT = "transcript"
    EMOTIONS = "emotions"
    SAFETY = "safety"
    COMMAND = "command"
    SENTENCE = "sentence"
    DONE = "done"
    ERROR = "error"


def event(kind: EventType, **fields: Any) -> dict[str, Any]:
    return {"type": str(kind), **fields}


@dataclass(frozen=True)
class TurnInput:
    """A validated turn: decoded audio (or typed text) and decoded frames, all in memory."""

    audio: Any = None
    text: str | None = None
    frames: Sequence[Any] = field(default_factory=tuple)


class Source(enum.StrEnum):
    """Where a reply came from; the `done` event says which."""

    LLM = "llm"
    CRISIS = "crisis"
    EXERCISE = "exercise"
    OFFLINE = "offline"
    COMMAND = "command"


class Companion:
    def __init__(
        self,
        components: Components,
        settings: Settings,
        prompts: Prompts,
        care: Care | None = None,
        commands: Commands | None = None,
    ) -> None:
        self.components = components
        self.settings = settings
        self.prompts = prompts
        # The safety rules, exercises and commands are data shipped with the package: cheap and certain to
        # load, and a bad file stops start-up here rather than a turn later.
        self.care = care or Care.load(settings.safety)
        self.commands = commands or Commands.load()
        self.queue = ModelQueue(settings.llm.queue_max)
        self.faces = EmotionSmoother(settings.fer.smoothing)
        self.history = History(lambda: self.components, settings, prompts, self.queue)
        self.crisis_records = CrisisRecorder(lambda: self.components.records)
        self.in_flight = TurnsInFlight()
        # Last: the sweep's thread may run at once, and it uses everything above.
        self.idle = IdleSweep(settings.server.session_idle_s, self.expire_idle)

    def close(self) -> None:
        self.idle.close()
        self.history.close()
        self.crisis_records.close()

    def admit(self) -> None:
        self.queue.admit()

    def release(self) -> None:
        self.queue.release()

    @property
    def summariser(self) -> Summariser:
        return self.history.summariser

    @property
    def records(self) -> Any:
        return self.components.records

    def start_session(self, client: str, device_id: int | None) -> dict[str, str]:
        session_id = self.records.start_session(client, device_id)
        _LOGGER.info("session %s started", session_id)
        return {"session_id": session_id, "greeting": self.prompts.greeting}

    def read_frame(self, session: SessionRow, image: Any) -> dict[str, Any]:
        """A frame between turns: one raw emotion-timeline sample, and a step of the session's estimate."""
        reading = self.components.fer.read(image)
        if reading.faces:
            self.faces.update(session.id, reading.probs)
        top3 = _top3_json(reading.top3)
        self._kept(
            session,
            "a frame's reading",
            lambda: self.records.add_emotion_sample(session.id, "frame", reading.faces, top3),
        )
        return {"faces": reading.faces, "top3": top3}

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
            kept = self.records.kept_turn(session.id, key) if key is not None else None
            if kept is not None and kept.reply is not None:
                yield from self._replay(session, kept)
                return
            if kept is not None:
                yield from self._again(session, kept, key, started, timings)
                return
            heard = Transcript(text=given.text or "", engine="typed")
            if given.audio is not None:
                t0 = time.perf_counter()
                heard = self.components.transcriber.transcribe(given.audio)
                timings["stt_ms"] = _ms(t0)
            text = heard.text
            yield event(EventType.TRANSCRIPT, text=text)

            top3: list[dict[str, Any]] = []
            # Written once the crisis check has spoken: a crisis writes them with its record, after the
            # helpline.
            samples: list[EmotionSample] = []
            if given.frames and self.components.fer is not None:
                t0 = time.perf_counter()
                read = self._read_faces(session, given.frames, samples)
                timings["fer_ms"] = _ms(t0)
                if read is not None:
                    faces, top3 = read
                    yield event(EventType.EMOTIONS, faces=faces, top3=top3)

            if not text.strip():
                self._kept_samples(session, samples)
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
            timings["safety_ms"] = _ms(t0)
            said = _Said(text, heard.confidence() if given.audio is not None else None, key)
            if assessment.level == Level.CRISIS:
                crisis = _Crisis(said, source, read_as, assessment, tuple(samples))
                yield from self._crisis(session, crisis, started, timings)
                return
            self._kept_samples(session, samples)
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
        said: _Said,
        command: Command | None,
        assessment: Assessment,
        top3: list[dict[str, Any]],
        started: float,
        timings: dict[str, float],
    ) -> Iterator[dict[str, Any]]:
        """Any reply but the crisis script: a command, an exercise, or the model (or the talk-down)."""
        # Only words the safety check found nothing in can be a command: a concern goes to the model.
        if command is not None and assessment.level == Level.NONE:
            yield from self._command(session, said, command, started, timings)
            return
        exercise = self.care.exercise_for(session.id, said.text, again=said.again is not None)
        if exercise is not None:
            turn_id = self._person(session, said)
            self._first_time(session, said, turn_id, assessment, "answered with a guided exercise")
            lines = self.care.exercise_lines(exercise)
            yield from self._scripted(session, lines, Source.EXERCISE, started, timings)
            return
        yield from self._answer(session, said, assessment, top3, started, timings)

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
            yield from self._scripted(session, lines, Source.CRISIS, started, timings, remember=False)
            return
        t0 = time.perf_counter()
        command = self.commands.match(kept.text)
        assessment, source, read_as = self.care.assess_heard((kept.text,), second_opinion=command is None)
        timings["safety_ms"] = _ms(t0)
        said = _Said(kept.text, kept.confidence, key, again=kept.id)
        if assessment.level == Level.CRISIS:
            # Not a crisis the first time (a second opinion that failed then): recorded as one now.
            yield from self._crisis(session, _Crisis(said, source, read_as, assessment, ()), started, timings)
            return
        yield from self._reply_to(session, said, command, assessment, [], started, timings)

    def _crisis(
        self, session: SessionRow, crisis: _Crisis, started: float, timings: dict[str, float]
    ) -> Iterator[dict[str, Any]]:
        """The scripted crisis reply: spoken at once, then alerted, recorded and flagged for the therapist.

        Nothing is written before the helpline is said: a locked or full database must not delay it or
        turn it into an error. The record follows, also when the device hangs up mid-reply, and is retried
        in the background when the database will not take it (`done` then carries no turn id). Neither
        the words nor the reply go to the vector memory."""
        helpline = self.care.crisis.helpline
        lines = self.care.crisis_lines()
        heard_at = time.time()
        rule = crisis.assessment.rule
        _LOGGER.warning("session %s: crisis (%s); answering from the crisis script", session.id, rule)
        said: list[str] = []
        try:
            yield event(EventType.SAFETY, level=str(Level.CRISIS), message=helpline)
            yield from self._lines(lines, said, started, timings)
        finally:
            self.care.alerts.send(client=session.client, session_id=session.id, level=Level.CRISIS, rule=rule)
            timings["total_ms"] = _ms(started)
            whole = len(said) == len(lines)
            turn_id = self.crisis_records.keep(
                CrisisTurn(
                    session_id=session.id,
                    text=crisis.said.text,
                    heard_at=heard_at,
                    trigger=f"{rule}: {crisis.assessment.trigger}",
                    message=helpline,
                    reply=" ".join(said),
                    replied_at=time.time(),
                    timings=dict(timings) if whole else {"interrupted": True},
                    confidence=crisis.said.confidence,
                    hypothesis=crisis.source + 1,
                    heard_as=crisis.read_as,
                    samples=crisis.samples,
                    key=crisis.said.key,
                    source=str(Source.CRISIS) if whole else None,
                    sentences=tuple(_sentence(line) for line in lines[: len(said)]),
                )
            )
        _LOGGER.info("reply %s in session %s from crisis: %d sentences", turn_id, session.id, len(said))
        yield event(EventType.DONE, turn_id=turn_id, timings=timings, source=str(Source.CRISIS))

    def _command(
        self,
        session: SessionRow,
        said: _Said,
        command: Command,
        started: float,
        timings: dict[str, float],
    ) -> Iterator[dict[str, Any]]:
        """Tag the turn for the device and answer from the commands file; the model is never asked.

        The engine ends nothing itself: for end_session and new_session the device calls /end, so a
        session still has one way to end. Neither the command nor its reply goes to the vector memory:
        they say nothing about the person, and recalled later they would crowd out what does. A silent
        reply (pause) records no companion turn, so `done` carries the person's turn.
        """
        turn_id = self._person(session, said)
        _LOGGER.info("session %s: command %s", session.id, command.name)
        yield event(EventType.COMMAND, name=str(command.name))
        if command.reply:
            lines = [Line(sentence) for sentence in command.reply]
            yield from self._scripted(session, lines, Source.COMMAND, started, timings, remember=False)
            return
        timings["total_ms"] = _ms(started)
        if turn_id is not None:
            recorded = turn_id
            self._kept(
                session,
                "a command's timings",
                lambda: self.records.set_timings(recorded, timings, source=str(Source.COMMAND)),
            )
        yield event(EventType.DONE, turn_id=turn_id, timings=timings, source=str(Source.COMMAND))

    def _answer(
        self,
        session: SessionRow,
        said: _Said,
        assessment: Assessment,
        top3: list[dict[str, Any]],
        started: float,
        timings: dict[str, float],
    ) -> Iterator[dict[str, Any]]:
        """A reply from the language model, or without it when it is missing or too busy to wait for."""
        text, again = said.text, said.again is not None
        t0 = time.perf_counter()
        conversation = self.history.fit(session.id, before=said.again)
        memories = self._recall(session, text, conversation)
        timings["memory_ms"] = _ms(t0)
        # A turn answered again is already in the record.
        exchange = len(self.records.user_turns(session.id)) + (0 if again else 1)
        persona = self.settings.persona
        stage = stage_for(exchange, persona.stage_building, persona.stage_established)
        note = ""
        if assessment.level == Level.CONCERN:
            note = self.care.crisis.concern_note
            _LOGGER.info(
                "session %s: concern (%s); a safety note goes to the model", session.id, assessment.rule
            )

        def content_with(notes: Sequence[str]) -> str:
            return turn_content(
                self.prompts, user_text=text, memories=notes, stage=stage, top3=top3, safety_note=note
            )

        conversation, content = self.history.within_context(
            session.id, conversation, content_with, memories, before=said.again
        )
        turn_id = self._person(session, said, prompt=content)
        self._first_time(session, said, turn_id, assessment, "the model was asked to answer with care")

        if self.components.chat is None:
            status = self.components.status.get("llm")
            why = f"no language model ({status.detail if status else 'not loaded'})"
            yield from self._offline(session, why, started, timings)
            return
        try:
            self.admit()
        except LlmError as exc:
            yield from self._offline(session, exc.message, started, timings)
            return
        # Only a reply from the model carries an offer: the talk-down already leads into an exercise.
        offer = self.care.offer(session.id, exchange, assessment, top3, again=again)
        try:
            messages = build_messages(
                self.prompts,
                summary=conversation.summary,
                history=[{"role": t.role, "content": t.prompt} for t in conversation.turns],
                content=content,
            )
            yield from self._speak(session, messages, started, timings, offer)
        finally:
            self.release()
        if self.history.needs_fold(conversation, content, early=True):
            self.summariser.submit(session.id)

    def _offline(
        self, session: SessionRow, why: str, started: float, timings: dict[str, float]
    ) -> Iterator[dict[str, Any]]:
        """The talk-down and an exercise, in place of a model that is missing, busy, failed or silent."""
        _LOGGER.warning("session %s: %s; talking down without the model", session.id, why)
        yield from self._scripted(session, self.care.without_model(), Source.OFFLINE, started, timings)

    def _person(self, session: SessionRow, said: _Said, prompt: str | None = None) -> int | None:
        """The person's turn in the record, written once under its key however often it is answered."""
        return self._kept(
            session,
            "the person's turn",
            lambda: self.records.add_turn(
                session.id, "user", said.text, {}, prompt=prompt, confidence=said.confidence, key=said.key
            ),
        )

    def _kept(self, session: SessionRow, what: str, write: Callable[[], T]) -> T | None:
        """A write the reply must not fail for: on a full or read-only disk the person still hears their
        reply, and this part of the turn goes unrecorded (logged by what it was, never by its words)."""
        try:
            return write()
        except StorageError as exc:
            _LOGGER.error("session %s: %s not recorded: %s", session.id, what, exc.cause)
            return None

    def _kept_samples(self, session: SessionRow, samples: list[EmotionSample]) -> None:
        self._kept(
            session, "the turn's face readings", lambda: self.records.add_emotion_samples(session.id, samples)
        )

    def _first_time(
        self, session: SessionRow, said: _Said, turn_id: int | None, assessment: Assessment, answered: str
    ) -> None:
        """What a turn records and remembers of the person's words, once: not again when it is answered
        again after its first answer broke."""
        if said.again is None:
            self._record_concern(session, turn_id, assessment, answered)
            self._remember_said(session, said.text, assessment)

    def _record_concern(
        self, session: SessionRow, turn_id: int | None, assessment: Assessment, answered: str
    ) -> None:
        """A concern goes into the therapist's record whatever answered it (the model, or an exercise)."""
        if assessment.level == Level.CONCERN:
            trigger = f"{assessment.rule}: {assessment.trigger}"
            self._kept(
                session,
                "a concern",
                lambda: self.records.add_safety_event(session.id, turn_id, Level.CONCERN, trigger, answered),
            )

    def _scripted(
        self,
        session: SessionRow,
        lines: Sequence[Line],
        source: Source,
        started: float,
        timings: dict[str, float],
        *,
        remember: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Stream fixed lines as sentences (with their pauses) and record them as the companion's turn."""
        sent: list[str] = []
        committed = False
        try:
            yield from self._lines(lines, sent, started, timings)
            reply = " ".join(sent)
            timings["total_ms"] = _ms(started)
            turn_id = self._kept(
                session,
                "the reply",
                lambda: self.records.add_turn(
                    session.id,
                    "assistant",
                    reply,
                    timings,
                    source=str(source),
                    sentences=[_sentence(line) for line in lines],
                ),
            )
            committed = True
            if remember:
                self._remember(session, "assistant", reply)
            _LOGGER.info(
                "reply %s in session %s from %s: %d sentences", turn_id, session.id, source, len(sent)
            )
            yield event(EventType.DONE, turn_id=turn_id, timings=timings, source=str(source))
        finally:
            if sent and not committed:
                self._record_interrupted(session, sent)

    @staticmethod
    def _lines(
        lines: Sequence[Line], sent: list[str], started: float, timings: dict[str, float]
    ) -> Iterator[dict[str, Any]]:
        """Fixed lines as sentence events, with their pauses; `sent` collects what was said."""
        for line in lines:
            if not sent:
                timings["first_sentence_ms"] = _ms(started)
            sent.append(line.text)
            yield event(EventType.SENTENCE, **_sentence(line))

    def _speak(
        self,
        session: SessionRow,
        messages: list[dict[str, str]],
        started: float,
        timings: dict[str, float],
        offer: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Stream the reply sentence by sentence, each through the output guard (alone and with the reply so
        far, so harm split across sentences is caught), and commit it before `done`.

        A blocked sentence is replaced by its category's safe line, recorded as a safety event, and ends the
        reply: what follows it usually carries the same idea. A model that fails or says nothing before its
        first sentence is replaced by the talk-down. If the device hangs up or the model fails mid-reply,
        what was already sent is still recorded, marked interrupted: the therapist reads what the person
        actually heard.
        """
        sentences: list[str] = []
        raw: list[str] = []
        stats = GenerationStats()
        committed = False
        blocked = False
        try:
            try:
                with contextlib.closing(self._reply(messages, raw, stats)) as replies:
                    for sentence in replies:
                        verdict = self.care.guard.check(sentence, sentences)
                        if verdict.blocked:
                            self._blocked(session, sentence, verdict.category or "", verdict.replacement)
                            sentence, blocked = verdict.replacement, True
                        if not sentences:
                            timings["first_sentence_ms"] = _ms(started)
                        sentences.append(sentence)
                        yield event(EventType.SENTENCE, text=sentence)
                        if blocked:
                            break
            except LlmError as exc:
                if sentences:
                    raise
                yield from self._offline(session, exc.message, started, timings)
                return
            if not sentences:
                yield from self._offline(session, "the model said nothing", started, timings)
                return
            if offer:
                sentences.append(offer)
                yield event(EventType.SENTENCE, text=offer)
            reply = " ".join(sentences)
            # Later prompts replay the model's own text, so the cache is reused; a blocked reply is
            # replayed as it was said instead, so the model never reads its blocked words back.
            spoken = reply if blocked else "".join(raw) + (f" {offer}" if offer else "")
            timings.update(stats.timings())
            timings["total_ms"] = _ms(started)
            turn_id = self._kept(
                session,
                "the reply",
                lambda: self.records.add_turn(
                    session.id,
                    "assistant",
                    reply,
                    timings,
                    prompt=spoken,
                    source=str(Source.LLM),
                    sentences=[{"text": sentence} for sentence in sentences],
                ),
            )
            committed = True
            self._remember(session, "assistant", reply)
            _LOGGER.info(
                "reply %s in session %s: %s",
                turn_id,
                session.id,
                " ".join(f"{k}={v:.0f}" for k, v in timings.items()),
            )
            yield event(EventType.DONE, turn_id=turn_id, timings=timings, source=str(Source.LLM))
        finally:
            if sentences and not committed:
                self._record_interrupted(session, sentences)

    def _blocked(self, session: SessionRow, sentence: str, category: str, replacement: str) -> None:
        _LOGGER.warning("session %s: the output guard blocked a sentence (%s)", session.id, category)
        self._kept(
            session,
            "a blocked sentence",
            lambda: self.records.add_safety_event(
                session.id, None, "blocked", f"{category}: {sentence}", f"said instead: {replacement}"
            ),
        )

    def _record_interrupted(self, session: SessionRow, sentences: list[str]) -> None:
        _LOGGER.warning("reply in session %s cut off after %d sentences", session.id, len(sentences))
        try:
            self._kept(
                session,
                "the cut-off reply",
                lambda: self.records.add_turn(
                    session.id, "assistant", " ".join(sentences), {"interrupted": True}
                ),
            )
        except Exception:
            # Runs while the turn is already unwinding (a hang-up, or the client being erased).
            _LOGGER.exception("could not record the cut-off reply in session %s", session.id)

    def _reply(
        self, messages: list[dict[str, str]], raw: list[str], stats: GenerationStats
    ) -> Generator[str]:
        """Spoken sentences; `raw` collects the model's own text, which later prompts replay exactly."""
        from server.conversation.sentences import SentenceSplitter, clean_for_speech

        splitter = SentenceSplitter()
        llm = self.settings.llm
        pieces = self.components.chat.stream_chat(
            messages,
            max_tokens=llm.max_tokens,
            temperature=llm.temperature,
            top_p=llm.top_p,
            top_k=llm.top_k,
            repeat_penalty=llm.repeat_penalty,
            stats=stats,
        )
        # Closing the model's stream at once frees the model lock when the device hangs up mid-reply.
        with contextlib.closing(pieces):
            for piece in pieces:
                raw.append(piece)
                for sentence in splitter.feed(piece):
                    spoken = clean_for_speech(sentence)
                    if spoken:
                        yield spoken
        rest = splitter.flush()
        spoken = clean_for_speech(rest) if rest else ""
        if spoken:
            yield spoken

    def _read_faces(
        self, session: SessionRow, frames: Sequence[Any], samples: list[EmotionSample]
    ) -> tuple[int, list[dict[str, Any]]] | None:
        """Every frame goes to `samples`, for the timeline, as it was; the turn's reading is the session's
        smoothed estimate after the frames that showed a face.

        A face that cannot be read must not cost the person their reply: the turn goes on without emotions.
        """
        from server.face.fer import rank_top3

        faces = 0
        smoothed: dict[str, float] = {}
        for image in frames:
            try:
                reading = self.components.fer.read(image)
            except Exception:
                _LOGGER.exception("FER failed in session %s; answering without the face", session.id)
                return None
            samples.append(EmotionSample(time.time(), "turn", reading.faces, _top3_json(reading.top3)))
            faces = max(faces, reading.faces)
            if reading.faces:
                smoothed = self.faces.update(session.id, reading.probs)
        return faces, _top3_json(rank_top3(smoothed))

    def _recall(self, session: SessionRow, text: str, conversation: Conversation) -> list[str]:
        """What they said in earlier sessions that bears on this turn, new to this prompt, within budget."""
        memory = self.components.memory
        settings = self.settings.memory
        if memory is None or settings.recall_k == 0:
            return []
        try:
            found = memory.recall(
                client=session.client,
                query=text,
                k=settings.recall_k,
                exclude_session=session.id,
                max_distance=settings.max_distance,
                roles=("user", "summary"),
            )
        except TadbotError as exc:
            _LOGGER.warning("memory recall failed: %s", exc.message)
            return []
        shown = conversation.summary + "\n".join(t.prompt for t in conversation.turns)
        kept: list[str] = []
        spent = 0
        for item in found:
            if item.text in shown:
                continue  # already in the prompt, from an earlier turn of this session
            cost = self.history.count(item.text)
            if spent + cost > settings.recall_tokens:
                break
            kept.append(item.text)
            spent += cost
        return kept

    def _remember_said(self, session: SessionRow, text: str, assessment: Assessment) -> None:
        """What the person said, for recall in later sessions, unless it raised a concern (a crisis never
        gets here): recalled later, it would be quoted back under a note to use past details."""
        if assessment.level == Level.NONE:
            self._remember(session, "user", text)

    def _remember(self, session: SessionRow, role: str, text: str, kind: str = "turn") -> None:
        """Not while the data dir refuses writes or runs low: chromadb has been seen, after a write failed
        on a full disk, to hang every later add with the interpreter's lock held, the whole server with it."""
        memory = self.components.memory
        if memory is None:
            return
        if (problem := self.records.writes.problem()) is not None:
            _LOGGER.warning("session %s: not remembered: %s", session.id, problem)
            return
        try:
            memory.add(
                client=session.client, session_id=session.id, role=role, text=text, kind=kind, ts=time.time()
            )
        except TadbotError as exc:
            _LOGGER.warning("memory write failed: %s", exc.message)

    def end_session(self, session: SessionRow) -> dict[str, Any]:
        # "Goodbye" and "start over" say nothing about the person: a summary that quoted them would be
        # remembered, and recalled into the next session's prompts. Crisis and concern turns must never be
        # quoted back there; the therapist reads them in the session's record.
        said = [
            text
            for text in self.records.user_turns(session.id, unraised=True)
            if self.commands.match(text) is None
        ]
        quoted = "; ".join(f"'{s[:120]}'" for s in said[:5]) or "nothing"
        summary = self.prompts.summary.format(turns=len(said), said=quoted)
        rolling = self.records.conversation(session.id).summary
        if rolling:
            summary = f"{rolling} {summary}"
        turns = self.records.end_session(session.id, summary)
        self.faces.forget(session.id)
        self.care.forget(session.id)
        if said and session.ended_at is None:
            self._remember(session, "summary", summary, kind="summary")
        _LOGGER.info("session %s ended after %d exchanges", session.id, turns)
        return {"session_id": session.id, "turns": turns, "summary": summary}

    def expire_idle(self, before: float) -> list[str]:
        """End, as /end would, every open session with no turn or frame since `before` and no turn
        streaming; returns their ids. One that cannot be ended is logged and tried at the next sweep.
        The state of sessions no longer open (ended or erased some other way) is freed too."""
        held = self.held_sessions()
        for session_id in held - self.records.open_sessions(held):
            self.faces.forget(session_id)
            self.care.forget(session_id)
        ended: list[str] = []
        for session_id in self.records.idle_sessions(before):
            if self.in_flight.busy(session_id):
                continue
            try:
                session = self.records.session(session_id)
                _LOGGER.info(
                    "session %s: no turn or frame for %g s; the server ends it",
                    session_id,
                    self.settings.server.session_idle_s,
                )
                self.end_session(session)
            except StorageError as exc:
                _LOGGER.warning("session %s: not ended after going idle: %s", session_id, exc.cause)
                continue
            except Exception:
                _LOGGER.exception("session %s: could not end it after it went idle", session_id)
                continue
            ended.append(session_id)
        return ended

    def held_sessions(self) -> set[str]:
        """Sessions with state in memory (the safety state, the face estimate): ending one frees it."""
        return self.care.held() | self.faces.held()

    def forget_client(self, client: str, actor: str) -> dict[str, int]:
        """Vector memory first: if it cannot be erased, nothing is, and the caller is told."""
        memory = self.components.memory
        if memory is None and (self.settings.data_path / "memory").exists():
            raise MemoryStoreError(
                "memory_unavailable",
                "the vector memory is not loaded, so it cannot be erased; fix memory (see /api/v1/health) "
                "and try again",
            )
        self.records.require_client(client)
        memories = memory.forget_client(client) if memory is not None else 0
        deleted = self.records.delete_client(client, actor)
        if memory is not None:
            # A turn that was mid-reply during the first sweep may have written once more; with the records
            # gone it cannot write again, so a second sweep leaves nothing behind.
            memories += memory.forget_client(client)
        return {**deleted, "memories": memories}


@dataclass(frozen=True)
class _Said:
    """The person's words for this turn, as their turn is recorded."""

    text: str
    confidence: dict[str, Any] | None
    key: str | None = None
    """The device's Idempotency-Key."""
    again: int | None = None
    """The recorded turn's id when it is answered again after its first answer broke."""


@dataclass(frozen=True)
class _Crisis:
    """A turn read as a crisis, as the crisis reply records it."""

    said: _Said
    source: int
    """The speech hypothesis that read as a crisis (0: the transcript itself)."""
    read_as: str
    """The words that did, when not the transcript (another hypothesis, or one with a misheard crisis word
    put back): the safety event keeps them, since the transcript alone would not show why."""
    assessment: Assessment
    samples: tuple[EmotionSample, ...]


def _sentence(line: Line) -> dict[str, Any]:
    """A `sentence` event's fields, as streamed and as a repeated key replays them."""
    if line.pause_ms:
        return {"text": line.text, "pause_ms": line.pause_ms}
    return {"text": line.text}


def _top3_json(top3: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"label": e.label, "score": e.score} for e in top3]


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
