"""A session's life: opened, its face readings and the person's words kept, remembered for later sessions,
summarised and ended, ended by the server when left idle, and erased with its client.

Crisis and concern turns go to the therapist's record whole, but never to the vector memory or a session
summary: a later session's prompt must not quote them back under a note to use past details. A data dir
that will not take a write at all (a full disk, a card remounted read-only) costs the person nothing: each
such write is logged and skipped, and the reply still comes. Sessions left idle for
`server.session_idle_s` are ended here, as /end would, by a background sweep (conversation/idle.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from server.config import Settings
from server.conversation.components import Components
from server.conversation.history import History
from server.conversation.in_flight import TurnsInFlight
from server.conversation.prompt import Prompts
from server.conversation.turns import Said, top3_json
from server.errors import MemoryStoreError, TadbotError
from server.face.smoothing import EmotionSmoother
from server.records.rows import Conversation, EmotionSample, SessionRow
from server.records.storage import StorageError
from server.records.store import Records
from server.safety.care import Care
from server.safety.commands import Commands
from server.safety.crisis import Assessment, Level

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


class SessionService:
    def __init__(
        self,
        components: Callable[[], Components],
        settings: Settings,
        prompts: Prompts,
        care: Care,
        commands: Commands,
        history: History,
        in_flight: TurnsInFlight,
    ) -> None:
        """`components` is read at each use: the engine's components may be replaced while it runs."""
        self._components = components
        self.settings = settings
        self.prompts = prompts
        self.care = care
        self.commands = commands
        self.history = history
        self.in_flight = in_flight
        self.faces = EmotionSmoother(settings.fer.smoothing)

    @property
    def records(self) -> Records:
        return self._components().records

    def start(self, client: str, device_id: int | None) -> dict[str, str]:
        session_id = self.records.start_session(client, device_id)
        _LOGGER.info("session %s started", session_id)
        return {"session_id": session_id, "greeting": self.prompts.greeting}

    def read_frame(self, session: SessionRow, image: Any) -> dict[str, Any]:
        """A frame between turns: one raw emotion-timeline sample, and a step of the session's estimate."""
        reading = self._components().fer.read(image)
        if reading.faces:
            self.faces.update(session.id, reading.probs)
        top3 = top3_json(reading.top3)
        self.kept(
            session,
            "a frame's reading",
            lambda: self.records.add_emotion_sample(session.id, "frame", reading.faces, top3),
        )
        return {"faces": reading.faces, "top3": top3}

    def read_faces(
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
                reading = self._components().fer.read(image)
            except Exception:
                _LOGGER.exception("FER failed in session %s; answering without the face", session.id)
                return None
            samples.append(EmotionSample(time.time(), "turn", reading.faces, top3_json(reading.top3)))
            faces = max(faces, reading.faces)
            if reading.faces:
                smoothed = self.faces.update(session.id, reading.probs)
        return faces, top3_json(rank_top3(smoothed))

    def kept(self, session: SessionRow, what: str, write: Callable[[], T]) -> T | None:
        """A write the reply must not fail for: on a full or read-only disk the person still hears their
        reply, and this part of the turn goes unrecorded (logged by what it was, never by its words)."""
        try:
            return write()
        except StorageError as exc:
            _LOGGER.error("session %s: %s not recorded: %s", session.id, what, exc.cause)
            return None

    def kept_samples(self, session: SessionRow, samples: list[EmotionSample]) -> None:
        self.kept(
            session, "the turn's face readings", lambda: self.records.add_emotion_samples(session.id, samples)
        )

    def person(self, session: SessionRow, said: Said, prompt: str | None = None) -> int | None:
        """The person's turn in the record, written once under its key however often it is answered."""
        return self.kept(
            session,
            "the person's turn",
            lambda: self.records.add_turn(
                session.id, "user", said.text, {}, prompt=prompt, confidence=said.confidence, key=said.key
            ),
        )

    def first_time(
        self, session: SessionRow, said: Said, turn_id: int | None, assessment: Assessment, answered: str
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
            self.kept(
                session,
                "a concern",
                lambda: self.records.add_safety_event(session.id, turn_id, Level.CONCERN, trigger, answered),
            )

    def recall(self, session: SessionRow, text: str, conversation: Conversation) -> list[str]:
        """What they said in earlier sessions that bears on this turn, new to this prompt, within budget."""
        memory = self._components().memory
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
            self.remember(session, "user", text)

    def remember(self, session: SessionRow, role: str, text: str, kind: str = "turn") -> None:
        """Not while the data dir refuses writes or runs low: chromadb has been seen, after a write failed
        on a full disk, to hang every later add with the interpreter's lock held, the whole server with it."""
        memory = self._components().memory
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

    def end(self, session: SessionRow) -> dict[str, Any]:
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
            self.remember(session, "summary", summary, kind="summary")
        _LOGGER.info("session %s ended after %d exchanges", session.id, turns)
        return {"session_id": session.id, "turns": turns, "summary": summary}

    def expire_idle(self, before: float) -> list[str]:
        """End, as /end would, every open session with no turn or frame since `before` and no turn
        streaming; returns their ids. One that cannot be ended is logged and tried at the next sweep.
        The state of sessions no longer open (ended or erased some other way) is freed too."""
        held = self.held()
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
                self.end(session)
            except StorageError as exc:
                _LOGGER.warning("session %s: not ended after going idle: %s", session_id, exc.cause)
                continue
            except Exception:
                _LOGGER.exception("session %s: could not end it after it went idle", session_id)
                continue
            ended.append(session_id)
        return ended

    def held(self) -> set[str]:
        """Sessions with state in memory (the safety state, the face estimate): ending one frees it."""
        return self.care.held() | self.faces.held()

    def forget_client(self, client: str, actor: str) -> dict[str, int]:
        """Vector memory first: if it cannot be erased, nothing is, and the caller is told."""
        memory = self._components().memory
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
