"""A session's history within its token budget: old turns folded into a running summary.

The model writes the summary in the background, after a reply and while nobody waits, and gives up the
moment a turn needs the model; then the person's own words, quoted, stand in. Right after a fold, the new
start of the prompt is read into the model's cache, also in the background. Before each reply the
prompt and the reply are made to fit the context window, so a long conversation never overflows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

from server.config import Settings
from server.conversation.components import Components
from server.conversation.llm.queue import ModelQueue
from server.conversation.prompt import Prompts, build_messages
from server.conversation.summary import (
    TURN_OVERHEAD_TOKENS,
    Summariser,
    fallback_summary,
    plan_fold,
    summarisable,
    summarise_prompt,
)
from server.errors import LlmError
from server.records.rows import Conversation, Turn

_LOGGER = logging.getLogger(__name__)


class History:
    def __init__(
        self,
        components: Callable[[], Components],
        settings: Settings,
        prompts: Prompts,
        queue: ModelQueue,
    ) -> None:
        """`components` is read at each use: the engine's components may be replaced while it runs."""
        self._components = components
        self.settings = settings
        self.prompts = prompts
        self._queue = queue
        self.summariser = Summariser(self._fold_with_model)

    def close(self) -> None:
        """Stop the background summaries; a fold left undone is made deterministically at the next turn."""
        self.summariser.close()

    def count(self, text: str) -> int:
        chat = self._components().chat
        # Without a model nothing is generated; a rough count still keeps the record's folds sensible.
        return chat.count_tokens(text) if chat is not None else len(text) // 3 + 1

    def _cost(self, turn: Turn) -> int:
        return self.count(turn.prompt)

    def needs_fold(self, conversation: Conversation, content: str, *, early: bool) -> bool:
        """`early`: worth folding in the background, before the budget is actually reached."""
        budget = self.settings.memory.history_tokens
        limit = budget * 3 // 4 if early else budget
        spent = sum(self._cost(t) for t in conversation.turns) + self.count(content)
        return spent > limit

    def _prompt_tokens(self, conversation: Conversation, content: str) -> int:
        system = self.prompts.system + self.prompts.summary_note.format(summary=conversation.summary)
        turns = sum(self._cost(t) + TURN_OVERHEAD_TOKENS for t in conversation.turns)
        # The new turn's markers, <bos> and the model's opening marker.
        return self.count(system) + turns + self.count(content) + 2 * TURN_OVERHEAD_TOKENS

    def within_context(
        self,
        session_id: str,
        conversation: Conversation,
        content_with: Callable[[Sequence[str]], str],
        memories: Sequence[str],
        before: int | None = None,
    ) -> tuple[Conversation, str]:
        """Make the prompt and the reply fit the context window: never an overflow in the middle of a turn.

        The budgets in config normally see to it; a long system prompt or a small window may not. Then the
        whole conversation is folded into the summary, and then the memories are left out.
        """
        room = self.settings.llm.n_ctx - self.settings.llm.max_tokens
        content = content_with(memories)
        if self._prompt_tokens(conversation, content) <= room:
            return conversation, content
        conversation = self.fit(session_id, limit=0, before=before)
        if self._prompt_tokens(conversation, content) <= room:
            return conversation, content
        content = content_with(())
        needed = self._prompt_tokens(conversation, content)
        if needed <= room:
            return conversation, content
        raise LlmError(
            "context_too_small",
            f"the system prompt and this turn need {needed} tokens, but llm.n_ctx = "
            f"{self.settings.llm.n_ctx} leaves {room} after llm.max_tokens; raise llm.n_ctx or shorten the "
            "system prompt",
            503,
        )

    def fit(self, session_id: str, limit: int | None = None, before: int | None = None) -> Conversation:
        """The conversation within its token budget (or `limit`), folding deterministically now if it must.

        `before`: only the turns before this one; a turn answered again after its first answer broke must
        not read its own words, and the reply cut off, as history."""
        conversation = _before(self._components().records.conversation(session_id), before)
        budget = self.settings.memory.history_tokens
        limit = budget if limit is None else limit
        plan = plan_fold(conversation.turns, self._cost, limit=limit, target=min(limit, budget // 2))
        if plan is None:
            return conversation
        summary = fallback_summary(
            self.prompts, conversation.summary, plan.folded, self.count, self.settings.memory.summary_tokens
        )
        if self._components().records.fold(
            session_id, summary=summary, through=plan.through, expected_through=conversation.folded_through
        ):
            _LOGGER.info("session %s: folded %d turns without the model", session_id, len(plan.folded))
        return _before(self._components().records.conversation(session_id), before)

    def _fold_with_model(self, session_id: str) -> None:
        """The background job: let the model write the running summary, then read the new prompt start in."""
        self._queue.wait_until_idle()
        chat = self._components().chat
        conversation = self._components().records.conversation(session_id)
        budget = self.settings.memory.history_tokens
        plan = plan_fold(conversation.turns, self._cost, limit=budget * 3 // 4, target=budget // 2)
        if plan is None or chat is None:
            return
        # Nothing the model may read (only crisis or concern turns): the summary stays as it was.
        summary = (
            self._model_summary(conversation.summary, plan.folded) if summarisable(plan.folded) else None
        )
        if summary is None:
            summary = fallback_summary(
                self.prompts,
                conversation.summary,
                plan.folded,
                self.count,
                self.settings.memory.summary_tokens,
            )
        if not self._components().records.fold(
            session_id, summary=summary, through=plan.through, expected_through=conversation.folded_through
        ):
            return
        _LOGGER.info("session %s: folded %d turns into the running summary", session_id, len(plan.folded))
        # The next prompt starts with this; reading it in now, while nobody waits, saves that time then.
        messages = build_messages(
            self.prompts,
            summary=summary,
            history=[{"role": t.role, "content": t.prompt} for t in plan.kept],
            content="",
        )[:-1]
        if not self._queue.busy and not self.summariser.stopping.is_set():
            for _ in chat.stream_chat(messages, max_tokens=1, temperature=0.0):
                pass

    def _model_summary(self, previous: str, folded: Sequence[Turn]) -> str | None:
        """The model's summary, or None when it fails or a person starts talking meanwhile."""
        limit = self.settings.memory.summary_tokens
        prompt = summarise_prompt(self.prompts, previous, folded, self.settings.persona.name)
        pieces: list[str] = []
        stream = self._components().chat.stream_chat(
            [{"role": "user", "content": prompt}], max_tokens=limit, temperature=0.3
        )
        try:
            with contextlib.closing(stream):
                for piece in stream:
                    if self._queue.busy or self.summariser.stopping.is_set():
                        _LOGGER.info("summary given up: a turn is waiting for the model")
                        return None
                    pieces.append(piece)
        except LlmError as exc:
            _LOGGER.warning("the model could not summarise: %s", exc.message)
            return None
        from server.conversation.sentences import clean_for_speech

        summary = clean_for_speech("".join(pieces))
        return summary if summary and self.count(summary) <= limit else None


def _before(conversation: Conversation, turn_id: int | None) -> Conversation:
    if turn_id is None:
        return conversation
    return dataclasses.replace(conversation, turns=tuple(t for t in conversation.turns if t.id < turn_id))
