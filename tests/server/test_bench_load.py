"""`tadbot bench load` on the tiny GGUF: every turn counted and answered, latencies that make sense, the
worker measured, nothing private on disk or in the log; and a turn that broke or hung is counted so."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from server.bench.live import LiveServer, OpenTurn
from server.bench.load import turn
from server.bench.utterances import Utterance
from tests.conftest import tadbot


def test_bench_load_answers_every_turn_and_keeps_nothing_private(tiny_gguf: Path, tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    config = tmp_path / "tadbot.toml"
    config.write_text("", encoding="utf-8")
    env = {**os.environ, "TADBOT_CONFIG": str(config), "TADBOT_MODELS_DIR": str(tmp_path / "models")}
    args = ("--model", str(tiny_gguf), "--max-tokens", "24", "--threads", "1")
    done = tadbot(
        "bench", "load", "--devices", "2", "--turns", "4", "--soak", "40", *args, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["passed"] is True and report["lost"] == 0 and report["hung"] == 0, report
    load, soak = report["load"], report["soak"]
    assert load["sent"] == 2 * 4 and soak["sent"] == 40
    for phase in (load, soak):
        counted = phase["answered"] + phase["refused_503"] + sum(phase["error_events"].values())
        counted += sum(phase["http_errors"].values()) + phase["lost"] + phase["hung"]
        assert counted == phase["sent"], phase
        assert phase["spoken"] > 0 and phase["typed"] > 0
        for measure in ("done", "first_sentence"):
            latency = phase["latency_s"][measure]
            assert 0 < latency["p50"] <= latency["p95"] <= latency["max"], latency
    assert load["refused_503_without_retry_after"] == 0
    assert report["queue_max"] == 0, "with two devices, one may hold the model and the other is talked down"
    assert report["peak_rss_mb"]["worker"] > 50 and report["peak_rss_mb"]["master"] > 0
    assert len(soak["samples"]) >= 2 and soak["flat"] is not None
    privacy = report["privacy"]
    assert privacy["media_files"] == [] and privacy["leaked_words"] == {}
    assert privacy["words_looked_for"] > 0, "the log was searched for none of the person's words"


class _Planted(http.server.BaseHTTPRequestHandler):
    """Answers a turn as the path says: whole, cut short, refused, failed, or never."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path in ("/busy", "/boom"):
            body = json.dumps({"error": {"code": "llm_busy" if self.path == "/busy" else "internal_error"}})
            self.send_response(503 if self.path == "/busy" else 500)
            self.end_headers()
            self.wfile.write(body.encode())
            return
        self.send_response(200)
        self.end_headers()
        events: list[dict[str, Any]] = [{"type": "transcript", "text": "hello"}]
        if self.path == "/whole":
            events += [{"type": "sentence", "text": "Breathe."}, {"type": "done", "source": "llm"}]
        self.wfile.write("".join(json.dumps(e) + "\n" for e in events).encode())
        self.wfile.flush()
        if self.path == "/never":
            time.sleep(2)

    def log_message(self, *args: Any) -> None:
        pass


class _Device:
    """Sends each turn to the planted server, at the path its session id names."""

    def __init__(self, url: str) -> None:
        self.url = url

    def open_turn(self, session_id: str, text: str = "", *, audio: bytes = b"", timeout: float) -> OpenTurn:
        return OpenTurn(self.url, f"/{session_id}", text.encode(), {}, timeout)


@pytest.fixture
def planted() -> Iterator[LiveServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Planted)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield cast(LiveServer, _Device(f"http://127.0.0.1:{server.server_address[1]}"))
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "ending", "detail"),
    [
        ("whole", "done", "llm"),
        ("cut", "lost", "the stream ended without `done` or an error"),
        ("busy", "refused", "llm_busy"),
        ("boom", "http_error", "500 internal_error"),
        ("never", "hung", "nothing for 0.5 s"),
    ],
)
def test_each_turn_is_counted_by_how_it_ended(
    planted: LiveServer, path: str, ending: str, detail: str
) -> None:
    outcome = turn(planted, path, Utterance("hello"), timeout=0.5)
    assert (outcome.ending, outcome.detail) == (ending, detail)
    assert outcome.retry_after is False, "the planted 503 says nothing of when to try again"
    assert (outcome.done_s is not None) == (ending == "done")
