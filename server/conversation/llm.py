"""The language-model seam: one small interface, an in-process llama.cpp backend and an HTTP one.

The conversation engine only sees `ChatModel.stream_chat`, so the same code runs a GGUF inside the
server process on a Pi or talks to a llama.cpp server, vLLM or Ollama on a bigger box.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Protocol, cast

from server.errors import ConfigError, LlmError, ModelError

_LOGGER = logging.getLogger(__name__)

# Gemma ends a reply with <end_of_turn>; <eos> only appears if a fine-tune forgot it.
_STOP = ("<end_of_turn>", "<eos>")
_GGUF_MAGIC = b"GGUF"
# Tokens a reply may run past max_tokens to finish a character (UTF-8 takes up to four bytes).
_UTF8_SLACK = 4


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


def token_budget(limit: int, end_token: int) -> Any:
    """A logits processor that forces `end_token` after `limit` sampled tokens.

    llama-cpp-python does not count max_tokens while the text so far ends in an incomplete UTF-8
    character, so a model that emits stray byte tokens would otherwise run until the context is full,
    then fail. This counts every sampled token, bytes included.
    """
    import numpy as np

    sampled = 0

    def processor(input_ids: Any, logits: Any) -> Any:
        nonlocal sampled
        sampled += 1
        if sampled > limit:
            logits[:] = -np.inf
            logits[end_token] = 0.0
        return logits

    return processor


class LlamaCppChat:
    """A GGUF model run in-process by llama-cpp-python, one generation at a time.

    The prompt comes from the GGUF's own `tokenizer.chat_template`: with `chat_format=None`,
    llama-cpp-python renders that Jinja template unless it is byte-identical to one of the few it
    knows (ChatML, Mistral, Llama-3), so a fine-tune's template is honoured exactly.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int = 4,
        n_batch: int = 256,
        seed: int = -1,
        busy_timeout_s: float = 300.0,
    ) -> None:
        path = Path(model_path)
        _check_gguf_file(path)
        try:
            import llama_cpp
        except ImportError as exc:
            raise LlmError(
                "llm_unavailable",
                "llama-cpp-python is not installed: install the server extra (pip install 'tadbot[server]') "
                'or set llm.backend = "openai" with llm.base_url',
            ) from exc
        started = time.monotonic()
        # Negative means "random". llama-cpp-python also reads 0 as random (`seed or DEFAULT_SEED`).
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_batch=n_batch,
                seed=llama_cpp.LLAMA_DEFAULT_SEED if seed < 0 else seed,
                # Gemma-2's sliding-window cache otherwise forgets early positions, and then llama.cpp cannot
                # cut the cache back to a shared prefix: every turn would re-read the whole prompt.
                swa_full=True,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError("model_invalid", _model_hint(path, f"cannot be loaded ({exc})")) from exc
        if "tokenizer.chat_template" not in self._llm.metadata:
            # Without it llama-cpp-python would fall back to Llama-2's [INST] format.
            _LOGGER.warning("%s has no tokenizer.chat_template; using the built-in gemma format", path)
            self._llm.chat_format = "gemma"
        self.name = f"llama_cpp:{path.name}"
        self._lock = threading.Lock()
        self._busy_timeout_s = busy_timeout_s
        _LOGGER.info(
            "Loaded %s (chat format %s, n_ctx %d) in %.0f ms",
            path,
            self._llm.chat_format,
            n_ctx,
            (time.monotonic() - started) * 1000,
        )

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF's key-value header (the chat template, the model's name, ...)."""
        return dict(self._llm.metadata)

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

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
        """Stream one reply; the lock is held until the generator finishes or is closed.

        One Llama instance serves every turn, so llama-cpp-python can keep the previous prompt's tokens in
        its cache and evaluate only what is new; llama.cpp's own counters say how many it evaluated.
        """
        import llama_cpp

        turns = fold_system(messages)
        if not self._lock.acquire(timeout=self._busy_timeout_s):
            raise LlmError(
                "llm_busy",
                f"the model was busy with another reply for {self._busy_timeout_s:.0f} s; try again",
            )
        stats = stats if stats is not None else GenerationStats()
        started = time.monotonic()
        first = 0.0
        pieces = 0
        try:
            llama_cpp.llama_perf_context_reset(self._llm.ctx)
            chunks = self._llm.create_chat_completion(
                messages=turns,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                repeat_penalty=repeat_penalty,
                stop=list(_STOP),
                stream=True,
                logits_processor=llama_cpp.LogitsProcessorList(
                    [token_budget(max_tokens + _UTF8_SLACK, self._llm.token_eos())]
                ),
            )
            # With stream=True this is always an iterator of chunk dicts.
            for chunk in cast(Iterator[dict[str, Any]], chunks):
                content = chunk["choices"][0]["delta"].get("content")
                if content:
                    if not pieces:
                        first = time.monotonic()
                        stats.first_token_ms = (first - started) * 1000
                    pieces += 1
                    yield content
        except Exception as exc:
            raise LlmError("llm_failed", f"{self.name} failed while generating: {exc}") from exc
        finally:
            if pieces:
                stats.decode_ms = (time.monotonic() - first) * 1000
            self._count(stats)
            self._lock.release()
            _LOGGER.info(
                "Generated %d tokens with %s: prompt %d, evaluated %d, first after %.0f ms, total %.0f ms",
                stats.generated_tokens,
                self.name,
                stats.prompt_tokens,
                stats.evaluated_tokens,
                stats.first_token_ms,
                (time.monotonic() - started) * 1000,
            )

    def _count(self, stats: GenerationStats) -> None:
        """Read llama.cpp's counters for the generation just run (the lock is still held)."""
        import llama_cpp

        perf = llama_cpp.llama_perf_context(self._llm.ctx)
        # Every sampled token but the last is fed back and evaluated; the cache then holds prompt + those.
        stats.evaluated_tokens = int(perf.n_p_eval)
        stats.generated_tokens = int(perf.n_eval) + 1 if perf.n_eval or perf.n_p_eval else 0
        stats.prompt_tokens = max(0, int(self._llm.n_tokens) - int(perf.n_eval))


def _model_hint(path: Path, problem: str) -> str:
    return (
        f"LLM model file {path} {problem}; set llm.model_path to a Gemma-2 GGUF "
        "or run `tadbot models pull` to fetch the default one"
    )


def _check_gguf_file(path: Path) -> None:
    """Fail with a helpful ModelError before llama.cpp gets a chance to abort on a bad file."""
    if not path.is_file():
        raise ModelError("model_missing", _model_hint(path, "does not exist"))
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(_GGUF_MAGIC))
    except OSError as exc:
        raise ModelError("model_invalid", _model_hint(path, f"cannot be read ({exc})")) from exc
    if magic != _GGUF_MAGIC:
        raise ModelError(
            "model_invalid", _model_hint(path, "is not a GGUF file (corrupt or incomplete download)")
        )


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
            "stop": list(_STOP),
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


_BACKENDS: dict[str, Any] = {"llama_cpp": LlamaCppChat, "openai": OpenAICompatChat}


def get_chat_model(backend: str, **kwargs: Any) -> ChatModel:
    """Build the backend named by `llm.backend`; kwargs are that backend's constructor arguments."""
    try:
        cls = _BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown llm.backend {backend!r}; choose one of {', '.join(_BACKENDS)}") from None
    model: ChatModel = cls(**kwargs)
    return model
