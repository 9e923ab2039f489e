"""`tadbot train export`: a merged Hugging Face folder → GGUF (llama.cpp's converter) → quantised (llama.cpp's
quantiser, through llama-cpp-python) → loaded by the server's own model class and asked one question, so a
file that would not serve is caught here and not on the Pi."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.for_training import (
    QUANT_TYPES,
    ConfigError,
    LlamaCppChat,
    Outcome,
    TadbotError,
    check_decode,
    llama_log,
    quantize,
)
from training.llm.converter import convert, find_converter

_LOGGER = logging.getLogger(__name__)
SMOKE_PROMPT = "I feel a bit anxious right now."


@dataclass(frozen=True)
class ExportRun:
    model: Path
    out: Path
    quant: str = "Q4_K_M"
    keep_unquantised: bool = False
    threads: int = 0
    command_line: str = ""


def run_export(run: ExportRun) -> dict[str, Any]:
    if not (run.model / "config.json").is_file():
        raise ConfigError(
            "no_model",
            f"{run.model} is not a Hugging Face model folder (no config.json): "
            "pass the folder `tadbot train merge` wrote",
        )
    if run.quant not in QUANT_TYPES:
        raise ConfigError("bad_quant", f"--quant {run.quant}; choose one of {', '.join(QUANT_TYPES)}")
    if run.out.suffix != ".gguf":
        raise ConfigError("bad_out", f"--out {run.out}: the file name must end in .gguf")
    if run.out.exists():
        raise ConfigError("out_exists", f"{run.out} exists: choose another --out or delete it")
    template = chat_template_of(run.model)
    script = find_converter()
    run.out.parent.mkdir(parents=True, exist_ok=True)
    unquantised = run.out.with_name(f"{run.out.stem}.unquantised.gguf")
    partial = run.out.with_name(f".{run.out.name}.partial")
    try:
        # The converter's "auto" keeps bf16 weights (Gemma's) in bf16, where f16 could overflow; else f16.
        convert(run.model, unquantised, script=script)
        quantize(unquantised, partial, run.quant, n_threads=run.threads)
        os.replace(partial, run.out)
    finally:
        partial.unlink(missing_ok=True)
        if not run.keep_unquantised:
            unquantised.unlink(missing_ok=True)
    check = smoke_test(run.out, template)
    return {
        "model": str(run.model),
        "gguf": str(run.out),
        "quant": run.quant,
        "bytes": run.out.stat().st_size,
        "unquantised": str(unquantised) if run.keep_unquantised else None,
        **check,
        "command": run.command_line,
    }


def chat_template_of(model: Path) -> str:
    """The chat template a Hugging Face folder carries, where llama.cpp's converter looks for it."""
    jinja = model / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        template = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8")).get(
            "chat_template"
        )
    except (OSError, json.JSONDecodeError):
        template = None
    if not isinstance(template, str) or not template:
        raise ConfigError(
            "no_chat_template",
            f"{model} has no chat template: the server could not format a conversation for it",
        )
    return template


def smoke_test(gguf: Path, template: str) -> dict[str, Any]:
    """Load the file as the server does and stream one short reply; its template must be the model's.

    A child process decodes it first, as the server's start-up does: a kernel that crashes on this CPU
    is then one line, not the export dying with a signal."""
    threads = os.cpu_count() or 1
    found = check_decode(gguf, n_ctx=512, n_threads=threads, n_batch=256, timeout_s=600)
    if found.outcome in (Outcome.CRASH, Outcome.TIMEOUT):
        raise TadbotError("model_crashes", found.detail)
    with llama_log():
        chat = LlamaCppChat(gguf, n_ctx=512, n_threads=threads, seed=1)
        embedded = chat.metadata.get("tokenizer.chat_template")
        if embedded != template:
            raise TadbotError(
                "chat_template_lost",
                f"{gguf} does not carry the model's chat template; the server would misformat turns",
            )
        reply = "".join(
            chat.stream_chat([{"role": "user", "content": SMOKE_PROMPT}], max_tokens=16, temperature=0.0)
        )
    _LOGGER.info("%s loads in the server and answers %r with %r", gguf, SMOKE_PROMPT, reply)
    return {"chat_template": "kept", "smoke_prompt": SMOKE_PROMPT, "smoke_reply": reply}
