"""The running summary: older turns folded out of the prompt, so a long conversation never overflows.

A fold is planned from token counts; the language model writes the summary in the background while
nobody waits for a reply, and a deterministic one stands in whenever it cannot (a turn arrives, the
model fails, or there is no model). Neither ever reads a turn that raised a crisis or concern, nor the
reply to one: the summary ends up in the session's record that later sessions recall.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from server.conversation.prompt import Prompts
from server.records.rows import Turn

_LOGGER = logging.getLogger(__name__)

TURN_OVERHEAD_TOKENS = 5
"""`<start_of_turn>user\\n` ... `<end_of_turn>\\n` around each turn's words."""


@dataclass(frozen=True)
class Fold:
    folded: tuple[Turn, ...]
    kept: tuple[Turn, ...]

    @property
    def through(self) -> int:
        return self.folded[-1].id


def plan_fold(turns: Sequence[Turn], cost: Callable[[Turn], int], *, limit: int, target: int) -> Fold | None:
    """None while the turns take at most `limit` tokens; else fold the oldest until at most `target` remain.

    What is kept starts with a person's turn, so the prompt after the summary still opens with them.
    """
    costs = [cost(t) + TURN_OVERHEAD_TOKENS for t in turns]
    remaining = sum(costs)
    if remaining <= limit:
        return None
    cut = 0
    while cut < len(turns) and (remaining > target or turns[cut].role != "user"):
        remaining -= costs[cut]
        cut += 1
    return Fold(folded=tuple(turns[:cut]), kept=tuple(turns[cut:]))


def fallback_summary(
    prompts: Prompts, previous: str, folded: Sequence[Turn], count: Callable[[str], int], limit: int
) -> str:
    """The person's own words, newest kept, within `limit` tokens: always available, never invented."""
    said = "; ".join(f"'{_clip(t.text, 120)}'" for t in summarisable(folded) if t.role == "user")
    summary = " ".join(
        part for part in (previous, prompts.fold_fallback.format(said=said) if said else "") if part
    )
    while summary and count(summary) > limit:
        words = summary.split()
        summary = "... " + " ".join(words[max(1, len(words) // 5) :]) if len(words) > 1 else ""
    return summary


def summarise_prompt(prompts: Prompts, previous: str, folded: Sequence[Turn], name: str) -> str:
    lines = [f"{'They' if t.role == 'user' else name}: {t.text}" for t in summarisable(folded)]
    return prompts.summarise.format(summary=previous or "(none yet)", turns="\n".join(lines))


def summarisable(turns: Sequence[Turn]) -> list[Turn]:
    """The turns a summary may read: none that raised a crisis or concern, nor the replies to them."""
    return [t for t in turns if not t.raised]


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 3].rsplit(" ", 1)[0] + "..."


class Summariser:
    """One background thread for summaries, so that writing them never delays a reply.

    Jobs are session ids; one already waiting is not queued twice. `close()` stops the thread after the
    job in hand, which gives up early when it sees the stop flag.
    """

    def __init__(self, job: Callable[[str], None]) -> None:
        self._job = job
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tadbot-summariser", daemon=True)
        self._thread.start()

    def submit(self, session_id: str) -> None:
        with self._lock:
            if session_id in self._pending or self.stopping.is_set():
                return
            self._pending.add(session_id)
            self._idle.clear()
        self._queue.put(session_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no job is queued or running (benchmarks and tests wait for the background work)."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (session_id := self._queue.get()) is not None:
            with self._lock:
                self._pending.discard(session_id)
            try:
                self._job(session_id)
            except Exception:
                # The turn path folds deterministically when this has not, so nothing is lost.
                _LOGGER.exception("summary of session %s failed", session_id)
            with self._lock:
                if not self._pending:
                    self._idle.set()
