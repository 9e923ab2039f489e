"""Replies from fixed lines, the model never asked: the crisis script, a spoken command's reply, a guided
exercise, and the talk-down in place of a model that is missing, busy, failing or silent.

Each is streamed as sentence events (with their pauses) and recorded as the companion's turn before `done`;
one cut off mid-reply is still recorded, marked interrupted, so the therapist reads what the person heard.
A crisis turn is the exception: nothing is written before its helpline is spoken, and a database too locked
to take its record within a second gets it from a background retry (conversation/crisis_record.py), with
`done` carrying no turn id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from server.conversation.crisis_record import CrisisRecorder
from server.conversation.session import SessionService
from server.conversation.turns import EventType, HeardCrisis, Said, Source, event, ms_since, sentence_fields
from server.records.rows import CrisisTurn, SessionRow
from server.safety.care import Care, Line
from server.safety.commands import Command
from server.safety.crisis import Level

_LOGGER = logging.getLogger(__name__)


class ScriptedReplies:
    def __init__(self, care: Care, sessions: SessionService, crisis_records: CrisisRecorder) -> None:
        self.care = care
        self.sessions = sessions
        self.crisis_records = crisis_records

    def crisis(
        self, session: SessionRow, crisis: HeardCrisis, started: float, timings: dict[str, float]
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
            yield from self.lines(lines, said, started, timings)
        finally:
            self.care.alerts.send(client=session.client, session_id=session.id, level=Level.CRISIS, rule=rule)
            timings["total_ms"] = ms_since(started)
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
                    sentences=tuple(sentence_fields(line) for line in lines[: len(said)]),
                )
            )
        _LOGGER.info("reply %s in session %s from crisis: %d sentences", turn_id, session.id, len(said))
        yield event(EventType.DONE, turn_id=turn_id, timings=timings, source=str(Source.CRISIS))

    def command(
        self,
        session: SessionRow,
        said: Said,
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
        turn_id = self.sessions.person(session, said)
        _LOGGER.info("session %s: command %s", session.id, command.name)
        yield event(EventType.COMMAND, name=str(command.name))
        if command.reply:
            lines = [Line(sentence) for sentence in command.reply]
            yield from self.scripted(session, lines, Source.COMMAND, started, timings, remember=False)
            return
        timings["total_ms"] = ms_since(started)
        if turn_id is not None:
            recorded = turn_id
            self.sessions.kept(
                session,
                "a command's timings",
                lambda: self.sessions.records.set_timings(recorded, timings, source=str(Source.COMMAND)),
            )
        yield event(EventType.DONE, turn_id=turn_id, timings=timings, source=str(Source.COMMAND))

    def offline(
        self, session: SessionRow, why: str, started: float, timings: dict[str, float]
    ) -> Iterator[dict[str, Any]]:
        """The talk-down and an exercise, in place of a model that is missing, busy, failed or silent."""
        _LOGGER.warning("session %s: %s; talking down without the model", session.id, why)
        yield from self.scripted(session, self.care.without_model(), Source.OFFLINE, started, timings)

    def scripted(
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
            yield from self.lines(lines, sent, started, timings)
            reply = " ".join(sent)
            timings["total_ms"] = ms_since(started)
            turn_id = self.sessions.kept(
                session,
                "the reply",
                lambda: self.sessions.records.add_turn(
                    session.id,
                    "assistant",
                    reply,
                    timings,
                    source=str(source),
                    sentences=[sentence_fields(line) for line in lines],
                ),
            )
            committed = True
            if remember:
                self.sessions.remember(session, "assistant", reply)
            _LOGGER.info(
                "reply %s in session %s from %s: %d sentences", turn_id, session.id, source, len(sent)
            )
            yield event(EventType.DONE, turn_id=turn_id, timings=timings, source=str(source))
        finally:
            if sent and not committed:
                self.record_interrupted(session, sent)

    @staticmethod
    def lines(
        lines: Sequence[Line], sent: list[str], started: float, timings: dict[str, float]
    ) -> Iterator[dict[str, Any]]:
        """Fixed lines as sentence events, with their pauses; `sent` collects what was said."""
        for line in lines:
            if not sent:
                timings["first_sentence_ms"] = ms_since(started)
            sent.append(line.text)
            yield event(EventType.SENTENCE, **sentence_fields(line))

    def record_interrupted(self, session: SessionRow, sentences: list[str]) -> None:
        _LOGGER.warning("reply in session %s cut off after %d sentences", session.id, len(sentences))
        try:
            self.sessions.kept(
                session,
                "the cut-off reply",
                lambda: self.sessions.records.add_turn(
                    session.id, "assistant", " ".join(sentences), {"interrupted": True}
                ),
            )
        except Exception:
            # Runs while the turn is already unwinding (a hang-up, or the client being erased).
            _LOGGER.exception("could not record the cut-off reply in session %s", session.id)
