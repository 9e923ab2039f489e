"""The in-process backend: a GGUF run by llama-cpp-python inside the server, as on a Pi.

llama_cpp (and NumPy) are imported only when a model is loaded or run, so importing this module stays light.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, cast

from server.conversation.llm.chat import STOP, GenerationStats, fold_system
from server.errors import LlmError, ModelError

_LOGGER = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"
# Tokens a reply may run past max_tokens to finish a character (UTF-8 takes up to four bytes).
_UTF8_SLACK = 4


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
                stop=list(STOP),
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
