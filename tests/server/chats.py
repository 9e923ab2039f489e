"""Chat models for engine tests: the real tiny model, watched or led to a chosen point."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from server.conversation.llm.llama import LlamaCppChat


class RecordingChat:
    """The real tiny model, with the messages of each call kept so a test can read the prompt it got."""

    name = "recording"

    def __init__(self, inner: LlamaCppChat) -> None:
        self.inner = inner
        self.calls: list[list[dict[str, str]]] = []

    def stream_chat(self, messages: list[dict[str, str]], **sampling: Any) -> Generator[str]:
        self.calls.append(messages)
        return self.inner.stream_chat(messages, **sampling)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


class ScriptedChat:
    """Known sentences, then the real model or a failure: the only way to stop a reply at a chosen point."""

    name = "scripted"

    def __init__(self, sentences: list[str], then: Any) -> None:
        self.sentences = sentences
        self.then = then
        self.closed = False

    def stream_chat(self, messages: list[dict[str, str]], **sampling: Any) -> Generator[str]:
        try:
            yield from self.sentences
            if isinstance(self.then, Exception):
                raise self.then
            yield from self.then.stream_chat(messages, **sampling)
        finally:
            self.closed = True

    def count_tokens(self, text: str) -> int:
        return len(text.split())
