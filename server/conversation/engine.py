"""The companion the HTTP layer holds: one turn router and one session service over the same components.

A turn is routed to its reply (conversation/router.py): replayed or answered again under a repeated
idempotency key, the crisis script, a spoken command, a guided exercise (conversation/scripted.py), or the
language model and, without it, the talk-down (conversation/model_reply.py). A session's life, from its
start to its summary, its end when left idle and its client's erasure, is the session service's
(conversation/session.py). The turn's events and the small records the two hand each other are in
conversation/turns.py. The companion receives ready components and never builds its own; it builds the
state the two share (the model's queue, the history and its summariser, the crisis records' retry, the
turns in flight) and the idle sweep, and stops them in `close`.
"""

from __future__ import annotations

from typing import Any

from server.config import Settings
from server.conversation.components import Components
from server.conversation.crisis_record import CrisisRecorder
from server.conversation.history import History
from server.conversation.idle import IdleSweep
from server.conversation.in_flight import TurnsInFlight, TurnStream
from server.conversation.llm.queue import ModelQueue
from server.conversation.model_reply import ModelReplies
from server.conversation.prompt import Prompts
from server.conversation.router import TurnRouter
from server.conversation.scripted import ScriptedReplies
from server.conversation.session import SessionService
from server.conversation.summary import Summariser
from server.conversation.turns import TurnInput
from server.records.rows import SessionRow
from server.safety.care import Care
from server.safety.commands import Commands


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
        self.history = History(lambda: self.components, settings, prompts, self.queue)
        self.crisis_records = CrisisRecorder(lambda: self.components.records)
        self.in_flight = TurnsInFlight()
        self.sessions = SessionService(
            lambda: self.components, settings, prompts, self.care, self.commands, self.history, self.in_flight
        )
        self.faces = self.sessions.faces
        scripted = ScriptedReplies(self.care, self.sessions, self.crisis_records)
        model = ModelReplies(
            lambda: self.components,
            settings,
            prompts,
            self.care,
            self.queue,
            self.history,
            self.sessions,
            scripted,
        )
        self.router = TurnRouter(
            lambda: self.components, self.care, self.commands, self.in_flight, self.sessions, scripted, model
        )
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
        return self.sessions.start(client, device_id)

    def read_frame(self, session: SessionRow, image: Any) -> dict[str, Any]:
        """A frame between turns: one raw emotion-timeline sample, and a step of the session's estimate."""
        return self.sessions.read_frame(session, image)

    def turn(self, session: SessionRow, given: TurnInput, key: str | None = None) -> TurnStream:
        """The turn's events, streamed; see TurnRouter.turn."""
        return self.router.turn(session, given, key)

    def end_session(self, session: SessionRow) -> dict[str, Any]:
        return self.sessions.end(session)

    def expire_idle(self, before: float) -> list[str]:
        """End, as /end would, every open session left idle since `before`; returns their ids."""
        return self.sessions.expire_idle(before)

    def held_sessions(self) -> set[str]:
        """Sessions with state in memory (the safety state, the face estimate): ending one frees it."""
        return self.sessions.held()

    def forget_client(self, client: str, actor: str) -> dict[str, int]:
        """Vector memory first: if it cannot be erased, nothing is, and the caller is told."""
        return self.sessions.forget_client(client, actor)
