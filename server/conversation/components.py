"""Builds the process-wide engines once; a component that cannot load leaves the server up and degraded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.config import Settings
from server.errors import ConfigError, TadbotError
from server.records.store import Records
from server.sections import SttSection

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

LLM_VERDICTS = "llm-checks.json"
"""In the data dir: whether each model file decoded on this CPU (server.conversation.llm.check)."""


@dataclass(frozen=True)
class ComponentStatus:
    status: str
    detail: str = ""
    key: str = ""

    def as_json(self) -> dict[str, str]:
        out = {"status": self.status}
        if self.detail:
            out["detail"] = self.detail
        if self.key:
            out["key"] = self.key
        return out


@dataclass
class Components:
    """Ready instances handed to the engine; `None` means that component is unavailable."""

    records: Records
    transcriber: Any = None
    fer: Any = None
    chat: Any = None
    memory: Any = None
    embedder: Any = None
    """The text embedder, held apart from memory: the crisis check's second opinion needs it even when
    chromadb is down."""
    status: dict[str, ComponentStatus] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return any(s.status != "ok" for s in self.status.values())


def build_components(settings: Settings) -> Components:
    components = Components(records=Records(settings.data_path / "tadbot.sqlite3"))
    components.status["db"] = ComponentStatus("ok")
    stt_key = "stt.model" if settings.stt.engine == "faster_whisper" else "stt.engine"
    components.transcriber = _try(components, "stt", stt_key, lambda: build_transcriber(settings.stt))
    components.fer = _try(components, "fer", "fer.model_path", lambda: _build_fer(settings))
    components.chat = _try(components, "llm", _llm_key(settings), lambda: _build_llm(settings))
    failure: Exception | None = None
    try:
        components.embedder = build_embedder(settings)
    except Exception as exc:  # memory's status below names it; the rules read every turn without it
        failure = exc

    def memory() -> Any:
        if failure is not None:
            raise failure
        return open_memory(settings, components.embedder)

    components.memory = _try(components, "memory", "memory.embedder_path", memory)
    for name, status in components.status.items():
        _LOGGER.info("component %s: %s %s", name, status.status, status.detail)
    return components


def _try(components: Components, name: str, key: str, build: Callable[[], T]) -> T | None:
    try:
        instance = build()
    except ConfigError:
        raise
    except TadbotError as exc:
        components.status[name] = ComponentStatus(
            "missing" if "missing" in exc.code else "error", exc.message, key
        )
        return None
    except Exception as exc:  # a broken model must not take the whole server down
        _LOGGER.exception("component %s failed to load", name)
        components.status[name] = ComponentStatus("error", f"{type(exc).__name__}: {exc}", key)
        return None
    components.status[name] = ComponentStatus("ok")
    return instance


def _llm_key(settings: Settings) -> str:
    return "llm.base_url" if settings.llm.backend == "openai" else "llm.model_path"


def build_transcriber(stt: SttSection) -> Any:
    """The engine `stt` names, with its model; the benches build theirs the same way."""
    from server.speech.stt import get_transcriber

    if stt.engine != "faster_whisper":
        return get_transcriber(stt.engine, language=stt.language)
    from server.speech.whisper import find_model

    whisper = {
        "model_dir": find_model(stt.model),
        "compute_type": stt.compute_type,
        "threads": stt.threads,
        "beam_size": stt.beam_size,
    }
    return get_transcriber(stt.engine, language=stt.language, whisper=whisper)


def _build_fer(settings: Settings) -> Any:
    from server.face.fer import build_pipeline
    from server.models.catalogue import resolve_model_path

    return build_pipeline(resolve_model_path(settings.fer.model_path), **fer_options(settings))


def fer_options(settings: Settings) -> dict[str, Any]:
    """How the configured face pipeline is built, less the model: `eval fer` and `bench fer` swap that."""
    from server.models.catalogue import resolve_model_path

    return {
        "detector": settings.fer.detector,
        "detector_path": resolve_model_path(settings.fer.detector_path),
        "policy": settings.fer.face_policy,
        "threads": settings.fer.threads,
    }


def _build_llm(settings: Settings) -> Any:
    from server.conversation.llm.chat import get_chat_model
    from server.conversation.llm.check import ensure_decodes
    from server.models.catalogue import resolve_model_path

    llm = settings.llm
    if llm.backend == "openai":
        return get_chat_model("openai", base_url=llm.base_url, model=llm.model, timeout_s=llm.timeout_s)
    path = resolve_model_path(llm.model_path)
    sizes = {"n_ctx": llm.n_ctx, "n_threads": llm.n_threads, "n_batch": llm.n_batch}
    ensure_decodes(path, **sizes, timeout_s=llm.check_timeout_s, verdicts=settings.data_path / LLM_VERDICTS)
    return get_chat_model("llama_cpp", model_path=path, **sizes, seed=llm.seed)


def build_embedder(settings: Settings) -> Any:
    """all-MiniLM-L6-v2 from memory.embedder_path, the models dir or its PyPI package."""
    from server.errors import ModelError
    from server.memory.embedding import MiniLMEmbedder, find_embedder_dir
    from server.models.catalogue import models_dir

    found = find_embedder_dir(settings.memory.embedder_path, models_dir())
    if found is None:
        raise ModelError(
            "model_missing",
            "no text embedder found: run `tadbot models pull` or set memory.embedder_path",
        )
    return MiniLMEmbedder(found)


def open_memory(settings: Settings, embedder: Any = None) -> Any:
    """The chromadb memory under the data dir, with `embedder` (built here when not given)."""
    from server.memory.store import Memory

    return Memory(settings.data_path / "memory", build_embedder(settings) if embedder is None else embedder)
