"""llama-cpp-python's own OpenAI-compatible server on loopback: a real engine a clinic might run."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port


@contextlib.contextmanager
def llama_cpp_server(model: Path) -> Iterator[str]:
    """`python -m llama_cpp.server` serving `model`; yields its base URL (without /v1) once it answers."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"),
            *("--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--seed", "7"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(base_url + "/v1/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            process.kill()
            raise AssertionError(f"llama_cpp.server did not start: {process.communicate()[1][-2000:]!r}")
        yield base_url
    finally:
        process.terminate()
        process.communicate(timeout=30)
