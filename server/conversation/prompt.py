"""How a turn becomes chat messages: the persona, the running summary, the session's turns, the new turn.

The wording lives in data files (prompts/system.txt, summarise.txt, lines.toml); this module only arranges
it. The layout is append-only between turns: the system text and every earlier turn are replayed exactly as
the model saw them, and everything that changes per turn (memories, rapport stage, face) goes into the
newest turn. So each prompt starts with the previous one, and llama.cpp only evaluates what is new.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from server.datafiles import DataFile
from server.errors import ConfigError

STAGES = ("opening", "building", "established")
LINES_VERSION = 2
"""The layout of lines.toml this code reads; a file of another version is refused, not half-read."""
_LINES = ("greeting", "emotion_note", "memory_note", "summary_note", "summary", "fold_fallback")


@dataclass(frozen=True)
class Prompts:
    system: str
    summarise: str
    greeting: str
    emotion_note: str
    memory_note: str
    summary_note: str
    summary: str
    fold_fallback: str
    stages: dict[str, str]

    @classmethod
    def load(cls, name: str, prompt_file: str = "") -> Prompts:
        shipped = resources.files("server").joinpath("prompts")
        if prompt_file:
            try:
                system = Path(prompt_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    "config_invalid", f"persona.prompt_file = {prompt_file!r}: cannot read ({exc})"
                ) from exc
        else:
            system = shipped.joinpath("system.txt").read_text(encoding="utf-8")
        lines, stages = _LINES_FILE.load()
        return cls(
            system=system.strip().replace("{name}", name),
            summarise=shipped.joinpath("summarise.txt")
            .read_text(encoding="utf-8")
            .strip()
            .replace("{name}", name),
            greeting=lines["greeting"].replace("{name}", name),
            emotion_note=lines["emotion_note"],
            memory_note=lines["memory_note"],
            summary_note=lines["summary_note"],
            summary=lines["summary"],
            fold_fallback=lines["fold_fallback"],
            stages=stages,
        )


def _lines(document: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """lines.toml's sentences, and its note for each rapport stage."""
    return {key: document[key] for key in _LINES}, {stage: document["stages"][stage] for stage in STAGES}


_LINES_FILE = DataFile("server/prompts/lines.toml", LINES_VERSION, "prompts_invalid", _lines)


def emotions_text(top3: Sequence[dict[str, object]]) -> str:
    return ", ".join(f"{e['label']} {float(e['score']):.2f}" for e in top3)  # type: ignore[arg-type]


def stage_for(exchange: int, building: int, established: int) -> str:
    """The rapport stage of the `exchange`-th exchange of a session (1-based)."""
    if exchange >= established:
        return "established"
    if exchange >= building:
        return "building"
    return "opening"


def turn_content(
    prompts: Prompts,
    *,
    user_text: str,
    memories: Sequence[str] = (),
    stage: str = "",
    top3: Sequence[dict[str, object]] = (),
    safety_note: str = "",
) -> str:
    """The newest user turn as the model sees it; it is stored and replayed unchanged in later prompts."""
    parts = []
    if memories:
        parts.append(prompts.memory_note.format(memories="\n".join(f"- {m}" for m in memories)))
    if stage:
        parts.append(prompts.stages[stage])
    parts.append(user_text)
    if top3:
        parts.append(prompts.emotion_note.format(emotions=emotions_text(top3)))
    if safety_note:
        parts.append(safety_note)
    return "\n".join(parts)


def build_messages(
    prompts: Prompts, *, summary: str, history: Sequence[dict[str, str]], content: str
) -> list[dict[str, str]]:
    """System text (with the running summary), the turns since the summary as they were sent, the new turn.

    `history` holds `{"role", "content"}` pairs. Roles need not alternate: the model backend folds the
    system text and repeated roles into the shape its chat template accepts.
    """
    system = prompts.system
    if summary:
        system += "\n\n" + prompts.summary_note.format(summary=summary)
    return [
        {"role": "system", "content": system},
        *({"role": h["role"], "content": h["content"]} for h in history),
        {"role": "user", "content": content},
    ]
