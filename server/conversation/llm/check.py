"""Does a GGUF decode on this CPU? Asked in a child process, and remembered per model file and CPU.

llama.cpp is native code. A kernel that does not suit the CPU (the AMX matmul on Q4_K_M, an instruction
the CPU lacks) kills the whole process with a signal, which no `except` can catch: loaded in the server
it would be a dead service, restarted by systemd into the same crash. So the server and `tadbot doctor`
first load the model in a child and decode a few tokens there; a crash becomes one line and a degraded
LLM (talk-down still works), not a restart loop. The verdict is kept in the data dir, so each start
pays for the check only when the model file, its settings, the CPU or the llama.cpp build changed.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import hashlib
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.errors import ModelError

_LOGGER = logging.getLogger(__name__)

PROMPT = "Hello. I feel a little anxious today and I would like to talk, slowly, about how my week went."
"""Long enough that the first decode evaluates a batch of tokens (matrix-matrix kernels), then a few
single-token steps (matrix-vector kernels): the two paths a reply takes."""
DECODE_TOKENS = 4
KEPT_VERDICTS = 32
"""Entries kept in the verdict file; older ones go (a box that tried many models)."""
_CPU_KEYS = (
    "vendor_id",
    "cpu family",
    "model",
    "model name",
    "stepping",
    "flags",
    "Features",
    "CPU implementer",
    "CPU architecture",
    "CPU variant",
    "CPU part",
)
_DYING_WORDS = re.compile(r"GGML_ASSERT|GGML_ABORT|terminate called|what\(\)|error|fail", re.IGNORECASE)
"""What llama.cpp and the C++ runtime print as a process dies; its other stderr lines are chatter."""
_REBUILD = (
    "rebuild llama-cpp-python without them: systemd/llama-build.sh (make test, make run and the Pi "
    "installer use it)"
)


class Outcome(enum.StrEnum):
    OK = "ok"
    CRASH = "crash"
    """Killed by a signal: the model must not be loaded in the server."""
    TIMEOUT = "timeout"
    """Still decoding at the time limit: a hang, or a far slower machine. Not remembered."""
    ERROR = "error"
    """An ordinary error (no such file, not a GGUF), which the in-process load names as well."""


@dataclass(frozen=True)
class DecodeCheck:
    outcome: Outcome
    detail: str
    """One line: what was decoded, or what went wrong and what to do."""
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def check_decode(
    model_path: Path, *, n_ctx: int, n_threads: int, n_batch: int, timeout_s: float
) -> DecodeCheck:
    """Load `model_path` and decode a few tokens in a child process, with the server's own settings."""
    command = [
        sys.executable,
        "-m",
        "server.conversation.llm.check",
        str(model_path),
        f"--n-ctx={n_ctx}",
        f"--n-threads={n_threads}",
        f"--n-batch={n_batch}",
    ]
    # No backtrace: ggml would attach gdb to print one, slowly, where ptrace is allowed at all.
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return DecodeCheck(
            Outcome.TIMEOUT,
            f"llama.cpp did not finish decoding {model_path} within {timeout_s:.0f} s on this CPU "
            "(a hang, or a machine far slower than expected: raise llm.check_timeout_s)",
            time.monotonic() - started,
        )
    seconds = time.monotonic() - started
    if done.returncode < 0:
        return DecodeCheck(Outcome.CRASH, _crash_line(model_path, -done.returncode, done.stderr), seconds)
    answer = _last_json(done.stdout)
    if done.returncode == 0 and answer.get("ok"):
        return DecodeCheck(
            Outcome.OK,
            f"decoded {answer.get('tokens', 0)} tokens of {model_path} in {seconds:.1f} s",
            seconds,
        )
    message = str(answer.get("message") or _last_line(done.stderr) or f"exit code {done.returncode}")
    return DecodeCheck(Outcome.ERROR, message, seconds)


def ensure_decodes(
    model_path: Path, *, n_ctx: int, n_threads: int, n_batch: int, timeout_s: float, verdicts: Path
) -> None:
    """Raise ModelError if the model crashed llama.cpp on this CPU, now or at an earlier start.

    Ordinary errors (no such file, not a GGUF) are left to the in-process load, which names them; only a
    crash or a clean pass is remembered in `verdicts`.
    """
    if not model_path.is_file():
        return
    sizes = {"n_ctx": n_ctx, "n_threads": n_threads, "n_batch": n_batch}
    known = _read_verdicts(verdicts).get(_verdict_key(model_path, **sizes))
    if known is None:
        found = check_decode(model_path, **sizes, timeout_s=timeout_s)
        _LOGGER.info("LLM decode check in a child process: %s", found.detail)
        remember(verdicts, model_path, found, **sizes)
        if found.outcome in (Outcome.OK, Outcome.ERROR):
            return
        detail = found.detail
    elif known["ok"]:
        return
    else:
        detail = (
            f"{known['detail']} (found at {known['checked_at']}; `tadbot doctor --role server` checks again)"
        )
    raise ModelError("model_crashes", detail)


def remember(
    verdicts: Path, model_path: Path, found: DecodeCheck, *, n_ctx: int, n_threads: int, n_batch: int
) -> None:
    """Keep a pass or a crash for the next start; a timeout or an ordinary error is asked again."""
    if found.outcome not in (Outcome.OK, Outcome.CRASH):
        return
    key = _verdict_key(model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch)
    _write_verdict(verdicts, key, ok=found.ok, detail=found.detail, model=model_path)


def llama_build() -> str:
    """llama-cpp-python's version and the instruction sets its llama.cpp was built with."""
    import llama_cpp

    return (
        f"{llama_cpp.__version__}: {llama_cpp.llama_print_system_info().decode('utf-8', 'replace').strip()}"
    )


def cpu_identity() -> str:
    """The CPU's make and instruction sets, without what changes from boot to boot (clock, core ids)."""
    lines: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                if lines:
                    break
                continue
            name, _, value = line.partition(":")
            if name.strip() in _CPU_KEYS:
                lines.append(f"{name.strip()}={value.strip()}")
    return (
        "; ".join([platform.machine(), *lines]) if lines else f"{platform.machine()} {platform.processor()}"
    )


def _crash_line(model_path: Path, signum: int, stderr: str) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    what = signal.strsignal(signum) or name
    said = " ".join(" ".join(line.split()) for line in stderr.splitlines() if _DYING_WORDS.search(line))[
        -300:
    ]
    hint = (
        f"This llama.cpp was built with Intel AMX kernels, which crash on Q4_K models: {_REBUILD}"
        if "AMX" in llama_build()
        else "Try another quantisation of the model, or rebuild llama-cpp-python with llama-build.sh "
        "(systemd/ in the source tree)"
    )
    return (
        f"llama.cpp crashed decoding {model_path} on this CPU: {name} ({what})"
        + (f", its last words: {said}" if said else "")
        + f"; the server will not load it. {hint}"
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _last_json(text: str) -> dict[str, object]:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            answer = json.loads(line)
            if isinstance(answer, dict):
                return answer
    return {}


def _verdict_key(model_path: Path, *, n_ctx: int, n_threads: int, n_batch: int) -> str:
    stat = model_path.stat()
    parts = (
        str(model_path.resolve()),
        str(stat.st_size),
        str(stat.st_mtime_ns),
        f"n_ctx={n_ctx} n_threads={n_threads} n_batch={n_batch}",
        cpu_identity(),
        llama_build(),
    )
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _read_verdicts(path: Path) -> dict[str, dict[str, object]]:
    try:
        verdicts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}


def _write_verdict(path: Path, key: str, *, ok: bool, detail: str, model: Path) -> None:
    """Replace the file in one rename, so a reader never sees half of it; a failure only costs a re-check."""
    verdicts = _read_verdicts(path)
    verdicts.pop(key, None)
    verdicts[key] = {
        "ok": ok,
        "detail": detail,
        "model": str(model),
        "checked_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    kept = dict(list(verdicts.items())[-KEPT_VERDICTS:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(kept, out, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        _LOGGER.warning("Cannot keep the LLM decode check's verdict in %s: %s", path, exc)


def main(argv: Sequence[str] | None = None) -> int:
    """The child: load, decode, print one JSON line. A crash here is what the parent is looking for."""
    parser = argparse.ArgumentParser(prog="python -m server.conversation.llm.check")
    parser.add_argument("model", type=Path)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-threads", type=int, required=True)
    parser.add_argument("--n-batch", type=int, required=True)
    args = parser.parse_args(argv)
    from server.conversation.llm.chat import GenerationStats
    from server.conversation.llm.llama import LlamaCppChat
    from server.errors import TadbotError

    stats = GenerationStats()
    try:
        chat = LlamaCppChat(
            args.model, n_ctx=args.n_ctx, n_threads=args.n_threads, n_batch=args.n_batch, seed=1
        )
        messages = [{"role": "user", "content": PROMPT}]
        for _ in chat.stream_chat(messages, max_tokens=DECODE_TOKENS, temperature=0.0, stats=stats):
            pass
    except TadbotError as exc:
        print(json.dumps({"ok": False, "code": exc.code, "message": exc.message}), flush=True)
        return 1
    print(json.dumps({"ok": True, "tokens": stats.prompt_tokens + stats.generated_tokens}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
