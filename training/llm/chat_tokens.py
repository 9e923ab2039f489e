"""Chat JSONL into token ids with labels on the assistant's turns only, through the model's own chat
template. Training and the perplexity eval both use this, so the loss they report is over the same tokens.

Masks come from the template's text, not from trl's `{% generation %}` markers: Gemma's template has none,
and the reply's own `<end_of_turn>` must be learnt, or the fine-tune never stops talking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.for_training import ConfigError, TadbotError

IGNORE = -100
"""The label PyTorch's cross-entropy skips: prompt tokens carry it."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def read_chats(path: Path) -> Iterator[list[dict[str, str]]]:
    """The `messages` of each line of a JSONL file written by `tadbot train prepare`; a bad line is an error
    naming the line."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("bad_data", f"{path}: cannot read ({exc})") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(
                    "bad_data", f"{path} line {number}: not a {{'messages': [...]}} object ({exc})"
                ) from exc
            if not isinstance(messages, list) or not all(
                isinstance(m, dict)
                and m.get("role") in ("user", "assistant")
                and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise ConfigError(
                    "bad_data", f"{path} line {number}: messages must be user/assistant turns with text"
                )
            yield messages


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> Encoded:
    """Token ids of the whole rendered chat; a token is labelled when its characters lie inside an assistant
    turn (the reply and its end-of-turn marker), found by rendering the chat up to that turn."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(prompt)):
            raise TadbotError(
                "bad_template", "the chat template renders a conversation differently from its beginning"
            )
        start, end = len(prompt), len(upto)
        spans.append((start, end))
    # The template writes <bos> itself, so the tokenizer must not add another.
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token if any(start <= first and last <= end for start, end in spans) else IGNORE
        for token, (first, last) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return Encoded(ids, labels)
