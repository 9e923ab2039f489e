"""The HTTP backend: an engine on a bigger box (llama.cpp server, vLLM, Ollama) over OpenAI's streaming
chat API, with the standard library only.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Generator
from http.client import HTTPException
from typing import Any

from server.conversation.llm.chat import STOP, GenerationStats, fold_system
from server.errors import ConfigError, LlmError

_LOGGER = logging.getLogger(__name__)


class OpenAICompatChat:
    """Any engine that speaks OpenAI's streaming chat API: llama.cpp server, vLLM, Ollama.

    Uses only the standard library and ignores proxy environment variables: the engine is the
    owner's own machine, and conversations must never be routed anywhere else.
    """

    def __init__(self, base_url: str, *, model: str = "", timeout_s: float = 120.0) -> None:
        if not base_url:
            raise ConfigError("config_invalid", 'llm.base_url must be set when llm.backend = "openai"')
        root = base_url.rstrip("/")
        root = root.removesuffix("/v1")
        self._url = f"{root}/v1/chat/completions"
        self._model = model
        self._timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.name = f"openai:{model or root}"

    def count_tokens(self, text: str) -> int:
        """An over-estimate (a token is rarely under 3 bytes of English): the engine's tokenizer is remote."""
        return len(text.encode("utf-8")) // 3 + 1

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
        """Stream one reply from the engine, parsing its server-sent events as they arrive.

        `top_k` and `repeat_penalty` are not OpenAI parameters; llama.cpp's server and Ollama honour them
        under these names, and other engines ignore them.
        """
        body: dict[str, Any] = {
            "messages": fold_system(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "repeat_penalty": repeat_penalty,
            "stream": True,
            "stop": list(STOP),
        }
        if self._model:
            body["model"] = self._model
        request = urllib.request.Request(
            self._url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            method="POST",
        )
        started = time.monotonic()
        try:
            response = self._opener.open(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read(300).decode("utf-8", "replace").strip()
            raise LlmError(
                "llm_failed",
                f"the LLM engine at {self._url} answered HTTP {exc.code} ({detail}); "
                "check llm.base_url and llm.model",
            ) from exc
        except (urllib.error.URLError, HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LlmError(
                "llm_unavailable",
                f"cannot reach the LLM engine at {self._url} ({reason}); is it running? check llm.base_url",
            ) from exc
        pieces = 0
        with response:
            try:
                for raw in response:
                    content = _sse_content(raw.decode("utf-8", "replace"))
                    if content is None:
                        break
                    if content:
                        if not pieces and stats is not None:
                            stats.first_token_ms = (time.monotonic() - started) * 1000
                        pieces += 1
                        yield content
            except (HTTPException, OSError) as exc:
                raise LlmError(
                    "llm_failed", f"the LLM engine at {self._url} broke off the reply ({exc})"
                ) from exc
        if stats is not None:
            # One streamed piece is one token in the engines this talks to; the prompt's size stays unknown.
            stats.generated_tokens = pieces
        _LOGGER.info(
            "Streamed %d pieces from %s in %.0f ms", pieces, self._url, (time.monotonic() - started) * 1000
        )


def _sse_content(line: str) -> str | None:
    """The text in one server-sent-event line: "" for nothing to say, None at the end of the stream."""
    line = line.strip()
    if not line.startswith("data:"):
        return ""
    payload = line[len("data:") :].strip()
    if payload == "[DONE]":
        return None
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        _LOGGER.warning("Ignoring a malformed event from the LLM engine: %.200s", payload)
        return ""
    if "error" in event:
        error = event["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise LlmError("llm_failed", f"the LLM engine reported an error: {message}")
    choices = event.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""
