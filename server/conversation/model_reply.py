"""A reply from the language model: the prompt within the context window, a place in the model's queue,
and the model's text streamed sentence by sentence through the output guard and into the record.

When the model is missing, too busy to wait for, failing or silent, the talk-down answers instead
(conversation/scripted.py). Later prompts replay the model's own text, so its cache is reused.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from server.config import Settings
from server.conversation.components import Components
from server.conversation.history import History
from server.conversation.llm.chat import GenerationStats
from server.conversation.llm.queue import ModelQueue
from server.conversation.prompt import Prompts, build_messages, stage_for, turn_content
from server.conversation.scripted import ScriptedReplies
from server.conversation.session import SessionService
from server.conversation.turns import EventType, Said, Source, event, ms_since
from server.errors import LlmError
from server.records.rows import SessionRow
from server.safety.care import Care
from server.safety.crisis import Assessment, Level

_LOGGER = logging.getLogger(__name__)


class ModelReplies:
    def __init__(
        self,
        components: Callable[[], Components],
        settings: Settings,
        prompts: Prompts,
        care: Care,
        queue: ModelQueue,
        history: History,
        sessions: SessionService,
        scripted: ScriptedReplies,
    ) -> None:
        """`components` is read at each use: the engine's components may be replaced while it runs."""
        self._components = components
        self.settings = settings
        self.prompts = prompts
        self.care = care
        self.queue = queue
        self.history = history
        self.sessions = sessions
        self.scripted = scripted

    def answer(
        self,
        session: SessionRow,
        said: Said,
        assessment: Assessment,
        top3: list[dict[str, Any]],
        started: float,
        timings: dict[str, float],
    ) -> Iterator[dict[str, Any]]:
        """A reply from the language model, or without it when it is missing or too busy to wait for."""
        text, again = said.text, said.again is not None
        t0 = time.perf_counter()
        conversation = self.history.fit(session.id, before=said.again)
        memories = self.sessions.recall(session, text, conversation)
        timings["memory_ms"] = ms_since(t0)
        # A turn answered again is already in the record.
        exchange = len(self.sessions.records.user_turns(session.id)) + (0 if again else 1)
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
        turn_id = self.sessions.person(session, said, prompt=content)
        answered = "the model was asked to answer with care"
        self.sessions.first_time(session, said, turn_id, assessment, answered)

        components = self._components()
        if components.chat is None:
            status = components.status.get("llm")
            why = f"no language model ({status.detail if status else 'not loaded'})"
            yield from self.scripted.offline(session, why, started, timings)
            return
        try:
            self.queue.admit()
        except LlmError as exc:
            yield from self.scripted.offline(session, exc.message, started, timings)
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
            self.queue.release()
        if self.history.needs_fold(conversation, content, early=True):
            self.history.summariser.submit(session.id)

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
                            timings["first_sentence_ms"] = ms_since(started)
                        sentences.append(sentence)
                        yield event(EventType.SENTENCE, text=sentence)
                        if blocked:
                            break
            except LlmError as exc:
                if sentences:
                    raise
                yield from self.scripted.offline(session, exc.message, started, timings)
                return
            if not sentences:
                yield from self.scripted.offline(session, "the model said nothing", started, timings)
                return
            if offer:
                sentences.append(offer)
                yield event(EventType.SENTENCE, text=offer)
            reply = " ".join(sentences)
            # Later prompts replay the model's own text, so the cache is reused; a blocked reply is
            # replayed as it was said instead, so the model never reads its blocked words back.
            spoken = reply if blocked else "".join(raw) + (f" {offer}" if offer else "")
            timings.update(stats.timings())
            timings["total_ms"] = ms_since(started)
            turn_id = self.sessions.kept(
                session,
                "the reply",
                lambda: self.sessions.records.add_turn(
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
            self.sessions.remember(session, "assistant", reply)
            _LOGGER.info(
                "reply %s in session %s: %s",
                turn_id,
                session.id,
                " ".join(f"{k}={v:.0f}" for k, v in timings.items()),
            )
            yield event(EventType.DONE, turn_id=turn_id, timings=timings, source=str(Source.LLM))
        finally:
            if sentences and not committed:
                self.scripted.record_interrupted(session, sentences)

    def _blocked(self, session: SessionRow, sentence: str, category: str, replacement: str) -> None:
        _LOGGER.warning("session %s: the output guard blocked a sentence (%s)", session.id, category)
        self.sessions.kept(
            session,
            "a blocked sentence",
            lambda: self.sessions.records.add_safety_event(
                session.id, None, "blocked", f"{category}: {sentence}", f"said instead: {replacement}"
            ),
        )

    def _reply(
        self, messages: list[dict[str, str]], raw: list[str], stats: GenerationStats
    ) -> Generator[str]:
        """Spoken sentences; `raw` collects the model's own text, which later prompts replay exactly."""
        from server.conversation.sentences import SentenceSplitter, clean_for_speech

        splitter = SentenceSplitter()
        llm = self.settings.llm
        pieces = self._components().chat.stream_chat(
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
