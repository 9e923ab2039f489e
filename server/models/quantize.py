"""Quantisation with llama.cpp's own quantiser, and its log turned into progress and debug lines."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from server.errors import ModelError

_LOGGER = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""Told `(step, done, total)` as a long step advances: "write" counts bytes, "quantize" tensors."""

_QUANTIZE_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")  # "[  12/ 288] blk.0.ffn_up.weight - ..."


QUANT_TYPES = ("Q4_K_M", "Q8_0")
"""The quantisations offered: Q4_K_M is what a Pi runs; Q8_0 is near-lossless, for a machine with memory."""


def quantize_q4_k_m(
    source: Path, dest: Path, *, n_threads: int = 0, progress: Progress | None = None
) -> Path:
    """Quantise with llama.cpp itself, so `dest` has the tensor types a real Q4_K_M download has
    (Q6_K for the tied embeddings and some FFN-down/V tensors, Q4_K elsewhere); 0 threads means all cores."""
    return quantize(source, dest, "Q4_K_M", n_threads=n_threads, progress=progress)


def quantize(
    source: Path, dest: Path, kind: str, *, n_threads: int = 0, progress: Progress | None = None
) -> Path:
    """Quantise `source` (an f16/bf16/f32 GGUF) to `kind`, one of QUANT_TYPES, with llama.cpp's quantiser."""
    import llama_cpp

    if kind not in QUANT_TYPES:
        raise ModelError(
            "quantize_failed", f"unknown quantisation {kind!r}; choose one of {', '.join(QUANT_TYPES)}"
        )

    n_tensors = 0

    def on_line(line: str) -> None:
        nonlocal n_tensors
        tensor = _QUANTIZE_LINE.match(line)
        if tensor and progress:
            n_tensors = int(tensor[2])
            progress("quantize", int(tensor[1]) - 1, n_tensors)

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = n_threads
    with llama_log(on_line) as recent:
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(dest).encode(), ctypes.byref(params)
        )
    if status != 0:
        why = " / ".join(line for line in recent if line)
        raise ModelError("quantize_failed", f"llama.cpp could not quantise {source}: {why or status}")
    if progress:
        progress("quantize", n_tensors, n_tensors)
    return dest


@contextlib.contextmanager
def llama_log(on_line: Callable[[str], None] | None = None) -> Iterator[deque[str]]:
    """Send llama.cpp's log to debug lines here (and to `on_line`) instead of hundreds of lines on stderr;
    the block gets the last few lines, to explain a failure.

    Levels are not mapped: ggml renumbered them between versions. An exception in the callback (Ctrl-C
    lands there) would be printed and lost inside C, so it is kept and raised once llama.cpp returns.
    """
    import llama_cpp
    import llama_cpp._logger

    recent: deque[str] = deque(maxlen=3)
    raised: list[BaseException] = []

    @llama_cpp.llama_log_callback
    def log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        try:
            line = text.decode("utf-8", "replace").rstrip()
            _LOGGER.debug("llama.cpp: %s", line)
            recent.append(line)
            if on_line:
                on_line(line)
        except BaseException as exc:
            raised.append(exc)

    llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
    try:
        yield recent
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
    if raised:
        raise raised[0]
