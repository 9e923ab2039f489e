"""How a turn becomes chat messages: the persona, memories, recent history and the face note.

The wording lives in data files (prompts/system.txt, prompts/lines.toml); this module only arranges it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from server.errors import ConfigError


@dataclass(frozen=True)
class Prompts:
    system: str
    greeting: str
    emotion_note: str
    memory_note: str
    summary: str

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
        lines = tomllib.loads(shipped.joinpath("lines.toml").read_text(encoding="utf-8"))
        return cls(
            system=system.strip().replace("{name}", name),
            greeting=lines["greeting"].replace("{name}", name),
            emotion_note=lines["emotion_note"],
            memory_note=lines["memory_note"],
            summary=lines["summary"],
        )


def emotions_text(top3: Sequence[dict[str, object]]) -> str:
    return ", ".join(f"{e['label']} {float(e['score']):.2f}" for e in top3)  # type: ignore[arg-type]


def build_messages(
    prompts: Prompts,
    *,
    history: Sequence[dict[str, str]],
    memories: Sequence[str],
    user_text: str,
    top3: Sequence[dict[str, object]] = (),
) -> list[dict[str, str]]:
    """System, this session's recent turns, then the new turn carrying the memories and the face note.

    Everything that changes per turn goes into the last message, so the prefix before it stays
    byte-identical and a cached prompt prefix can be reused.
    """
    messages = [{"role": "system", "content": prompts.system}]
    messages += [{"role": h["role"], "content": h["text"]} for h in _alternating(history)]
    content = user_text
    if memories:
        notes = prompts.memory_note.format(memories="\n".join(f"- {m}" for m in memories))
        content = f"{notes}\n\n{content}"
    if top3:
        content += "\n" + prompts.emotion_note.format(emotions=emotions_text(top3))
    messages.append({"role": "user", "content": content})
    return messages


def _alternating(history: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Chat templates insist on user/assistant alternation starting with the user; drop what breaks it."""
    kept: list[dict[str, str]] = []
    for turn in history:
        expected = "user" if not kept or kept[-1]["role"] == "assistant" else "assistant"
        if turn["role"] == expected:
            kept.append(turn)
        elif kept and turn["role"] == kept[-1]["role"]:
            kept[-1] = turn
    if kept and kept[-1]["role"] == "user":
        kept.pop()
    return kept
