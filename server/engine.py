"""Where a reply is decided: one spoken turn from words (and a face) to streamed sentences.

The engine receives ready components and never builds its own. Every turn stream ends with `done` or
`error`; the turn is committed to the record before `done` is sent.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.components import Components
from server.config import Settings
from server.errors import MemoryStoreError, TadbotError
from server.prompt import Prompts, build_messages
from server.records import SessionRow

_LOGGER = logging.getLogger(__name__)


class EventType(enum.StrEnum):
    TRANSCRIPT = "transcript"
    EMOTIONS = "emotions"
    SAFETY = "safety"
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


class Companion:
    def __init__(self, components: Components, settings: Settings, prompts: Prompts) -> None:
        self.components = components
        self.settings = settings
        self.prompts = prompts

    @property
    def records(self) -> Any:
        return self.components.records

    def start_session(self, client: str, device_id: int | None) -> dict[str, str]:
        session_id = self.records.start_session(client, device_id)
        _LOGGER.info("session %s started", session_id)
        return {"session_id": session_id, "greeting": self.prompts.greeting}

    def read_frame(self, session: SessionRow, image: Any) -> dict[str, Any]:
        """A frame between turns: one emotion-timeline sample."""
        reading = self.components.fer.read(image)
        top3 = _top3_json(reading.top3)
        self.records.add_emotion_sample(session.id, "frame", reading.faces, top3)
        return {"faces": reading.faces, "top3": top3}

    def turn(self, session: SessionRow, given: TurnInput) -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            text = given.text or ""
            if given.audio is not None:
                t0 = time.perf_counter()
                text = self.components.transcriber.transcribe(given.audio)
                timings["stt_ms"] = _ms(t0)
            yield event(EventType.TRANSCRIPT, text=text)

            top3: list[dict[str, Any]] = []
            if given.frames and self.components.fer is not None:
                t0 = time.perf_counter()
                read = self._read_faces(session, given.frames)
                timings["fer_ms"] = _ms(t0)
                if read is not None:
                    faces, top3 = read
                    yield event(EventType.EMOTIONS, faces=faces, top3=top3)

            if not text.strip():
                yield event(
                    EventType.ERROR,
                    code="no_speech",
                    message="No speech was recognised; ask the person to say it again.",
                )
                return

            t0 = time.perf_counter()
            history = self.records.recent_turns(session.id, self.settings.memory.history_turns)
            memories = self._recall(session, text)
            timings["memory_ms"] = _ms(t0)
            self.records.add_turn(session.id, "user", text, {})
            self._remember(session, "user", text)

            if self.components.chat is None:
                status = self.components.status.get("llm")
                yield event(
                    EventType.ERROR,
                    code="llm_unavailable",
                    message="The language model is not loaded: "
                    + (status.detail if status else "see /api/v1/health"),
                )
                return

            messages = build_messages(
                self.prompts, history=history, memories=memories, user_text=text, top3=top3
            )
            yield from self._speak(session, messages, started, timings)
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

    def _speak(
        self, session: SessionRow, messages: list[dict[str, str]], started: float, timings: dict[str, float]
    ) -> Iterator[dict[str, Any]]:
        """Stream the reply sentence by sentence and commit it before `done`.

        If the device hangs up or the model fails mid-reply, what was already sent is still recorded, marked
        interrupted: the therapist reads what the person actually heard.
        """
        sentences: list[str] = []
        committed = False
        try:
            with contextlib.closing(self._reply(messages)) as replies:
                for sentence in replies:
                    if not sentences:
                        timings["first_sentence_ms"] = _ms(started)
                    sentences.append(sentence)
                    yield event(EventType.SENTENCE, text=sentence)
            if not sentences:
                yield event(
                    EventType.ERROR,
                    code="empty_reply",
                    message="The language model produced nothing to say; the device should fall back.",
                )
                return
            reply = " ".join(sentences)
            timings["total_ms"] = _ms(started)
            turn_id = self.records.add_turn(session.id, "assistant", reply, timings)
            committed = True
            self._remember(session, "assistant", reply)
            _LOGGER.info(
                "reply %d in session %s: %s",
                turn_id,
                session.id,
                " ".join(f"{k}={v:.0f}" for k, v in timings.items()),
            )
            yield event(EventType.DONE, turn_id=turn_id, timings=timings)
        finally:
            if sentences and not committed:
                self._record_interrupted(session, sentences)

    def _record_interrupted(self, session: SessionRow, sentences: list[str]) -> None:
        _LOGGER.warning("reply in session %s cut off after %d sentences", session.id, len(sentences))
        try:
            self.records.add_turn(session.id, "assistant", " ".join(sentences), {"interrupted": True})
        except Exception:
            # Runs while the turn is already unwinding (a hang-up, or the client being erased).
            _LOGGER.exception("could not record the cut-off reply in session %s", session.id)

    def _reply(self, messages: list[dict[str, str]]) -> Generator[str]:
        from server.sentences import SentenceSplitter, clean_for_speech

        splitter = SentenceSplitter()
        llm = self.settings.llm
        pieces = self.components.chat.stream_chat(
            messages, max_tokens=llm.max_tokens, temperature=llm.temperature
        )
        # Closing the model's stream at once frees the model lock when the device hangs up mid-reply.
        with contextlib.closing(pieces):
            for piece in pieces:
                for sentence in splitter.feed(piece):
                    spoken = clean_for_speech(sentence)
                    if spoken:
                        yield spoken
        rest = splitter.flush()
        spoken = clean_for_speech(rest) if rest else ""
        if spoken:
            yield spoken

    def _read_faces(
        self, session: SessionRow, frames: Sequence[Any]
    ) -> tuple[int, list[dict[str, Any]]] | None:
        """Every frame goes to the timeline; the turn's reading averages the frames that showed a face.

        A face that cannot be read must not cost the person their reply: the turn goes on without emotions.
        """
        from server.fer import rank_top3

        faces = 0
        totals: dict[str, float] = {}
        seen = 0
        for image in frames:
            try:
                reading = self.components.fer.read(image)
            except Exception:
                _LOGGER.exception("FER failed in session %s; answering without the face", session.id)
                return None
            self.records.add_emotion_sample(session.id, "turn", reading.faces, _top3_json(reading.top3))
            faces = max(faces, reading.faces)
            if reading.faces:
                seen += 1
                for label, p in reading.probs.items():
                    totals[label] = totals.get(label, 0.0) + p
        averaged_probs = {label: total / seen for label, total in totals.items()}
        return faces, _top3_json(rank_top3(averaged_probs))

    def _recall(self, session: SessionRow, text: str) -> list[str]:
        memory = self.components.memory
        if memory is None or self.settings.memory.recall_k == 0:
            return []
        try:
            found = memory.recall(
                client=session.client, query=text, k=self.settings.memory.recall_k, exclude_session=session.id
            )
        except TadbotError as exc:
            _LOGGER.warning("memory recall failed: %s", exc.message)
            return []
        return [r.text for r in found]

    def _remember(self, session: SessionRow, role: str, text: str, kind: str = "turn") -> None:
        memory = self.components.memory
        if memory is None:
            return
        try:
            memory.add(
                client=session.client, session_id=session.id, role=role, text=text, kind=kind, ts=time.time()
            )
        except TadbotError as exc:
            _LOGGER.warning("memory write failed: %s", exc.message)

    def end_session(self, session: SessionRow) -> dict[str, Any]:
        said = [t["text"] for t in self.records.recent_turns(session.id, 1000) if t["role"] == "user"]
        quoted = "; ".join(f"'{s[:120]}'" for s in said[:5]) or "nothing"
        summary = self.prompts.summary.format(turns=len(said), said=quoted)
        turns = self.records.end_session(session.id, summary)
        if said and session.ended_at is None:
            self._remember(session, "summary", summary, kind="summary")
        _LOGGER.info("session %s ended after %d exchanges", session.id, turns)
        return {"session_id": session.id, "turns": turns, "summary": summary}

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


def _top3_json(top3: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"label": e.label, "score": e.score} for e in top3]


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
