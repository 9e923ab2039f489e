"""The language-model seam: one small interface, the stats a reply reports, the chat rewrite Gemma needs,
and the factory that picks a backend (llama.py in-process, openai.py over HTTP).

The conversation engine only sees `ChatModel.stream_chat`, so the same code runs a GGUF inside the
server process on a Pi or talks to a llama.cpp server, vLLM or Ollama on a bigger box.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

_LOGGER = logging.getLogger(__name__)

# Gemma ends a reply with <end_of_turn>; <eos> only appears if a fine-tune forgot it.
STOP = ("<end_of_turn>", "<eos>")


@dataclass
class GenerationStats:
    """What one reply cost, filled in by the backend as far as it can tell.

    `evaluated_tokens` below `prompt_tokens` means the start of the prompt was reused from the cache.
    """

    prompt_tokens: int = 0
    evaluated_tokens: int = 0
    generated_tokens: int = 0
    first_token_ms: float = 0.0
    decode_ms: float = 0.0
    """Wall time from the first piece to the end of the stream: the decoding, with whatever the reader did."""

    def timings(self) -> dict[str, float]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "evaluated_tokens": self.evaluated_tokens,
            "generated_tokens": self.generated_tokens,
            "first_token_ms": round(self.first_token_ms, 1),
            "decode_ms": round(self.decode_ms, 1),
        }


class ChatModel(Protocol):
    """Anything that turns a chat into streamed reply text."""

    name: str

    def stream_chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        repeat_penalty: float = 1.0,
        stats: GenerationStats | None = None,
    ) -> Generator[str]:
        """Yield the reply in pieces as they decode; raise `LlmError` if no reply can be made.

        A generator, so that closing it early (the device hung up) frees the model at once.
        """
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes in a prompt, for keeping within the context window."""
        ...


def fold_system(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Rewrite a chat so that Gemma's template accepts it.

    Gemma has no system role: its own Jinja template raises on one, and llama-cpp-python's built-in
    "gemma" format silently drops it. It also insists that turns alternate, starting with the user.
    So the system text (all of it, in order) goes in front of the first user turn, separated by a
    blank line; if the chat opens with the model's greeting, the system text becomes a user turn of
    its own before it. Consecutive turns of one role are merged. Leading model turns with no system
    text to anchor them are dropped, because Gemma cannot start with one.
    """
    system = [m["content"].strip() for m in messages if m["role"] == "system" and m["content"].strip()]
    turns: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": f"{turns[-1]['content']}\n\n{content}"}
        else:
            turns.append({"role": role, "content": content})
    if system:
        preamble = "\n\n".join(system)
        if turns and turns[0]["role"] == "user":
            turns[0] = {"role": "user", "content": f"{preamble}\n\n{turns[0]['content']}"}
        else:
            turns.insert(0, {"role": "user", "content": preamble})
    while turns and turns[0]["role"] != "user":
        _LOGGER.debug("Dropping a leading %s turn: Gemma chats must start with the user", turns[0]["role"])
        turns.pop(0)
    return turns


def get_chat_model(backend: str, **kwargs: Any) -> ChatModel:
    """Build the backend named by `llm.backend`; kwargs are that backend's constructor arguments."""
    # Imported here: each backend's module imports this one for the stats and fold_system.
    from server.conversation.llm.llama import LlamaCppChat
    from server.conversation.llm.openai import OpenAICompatChat

    backends: dict[str, Any] = {"llama_cpp": LlamaCppChat, "openai": OpenAICompatChat}
    try:
        cls = backends[backend]
    except KeyError:
        raise ValueError(f"unknown llm.backend {backend!r}; choose one of {', '.join(backends)}") from None
    model: ChatModel = cls(**kwargs)
    return model
