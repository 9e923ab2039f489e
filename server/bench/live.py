"""The real server for a benchmark: `tadbot serve` in a subprocess on a loopback port, and a client that
times each turn's stream as a device would hear it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import TadbotError

BENCH_CLIENT = "bench"
Say = Callable[[str], None]
"""Where a bench reports its progress, a line at a time."""


@dataclass(frozen=True)
class TurnMeasure:
    timings: dict[str, float]
    sentences: int
    first_sentence_s: float | None
    done_s: float
    words: int
    safety: str = ""
    """The level of the turn's safety event, if it had one."""
    source: str = ""
    """Where the reply came from: llm, crisis, exercise or offline."""
    heard: str = ""
    """The transcript the server sent back."""


class LiveServer:
    """`tadbot serve` in a subprocess on a loopback port, with its own data dir and a device token."""

    def __init__(
        self,
        root: Path,
        *,
        model: Path,
        n_ctx: int,
        n_threads: int,
        max_tokens: int,
        speaking_wpm: int = 0,
    ) -> None:
        from server.access import Access
        from server.records import Records

        self._speaking_wpm = speaking_wpm
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        data = root / "data"
        config = root / "tadbot.toml"
        config.write_text(
            f'[server]\nport = {port}\ndata_dir = "{data}"\nlog_level = "WARNING"\n'
            f'[llm]\nmodel_path = "{model}"\nn_ctx = {n_ctx}\n'
            f"n_threads = {n_threads}\nmax_tokens = {max_tokens}\nseed = 1\n"
            f'[fer]\nmodel_path = "{root / "no-fer.onnx"}"\n',
            encoding="utf-8",
        )
        access = Access(Records(data / "tadbot.sqlite3"))
        self._token = access.add("device", "bench", actor="bench")
        access.enroll("bench", [BENCH_CLIENT], actor="bench")
        self._log = (root / "server.log").open("wb")
        env = {**os.environ, "TADBOT_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._root = root

    def __enter__(self) -> LiveServer:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                health = self._get("/api/v1/health")
            except OSError:
                time.sleep(0.5)
                continue
            if health["components"]["llm"]["status"] == "ok":
                return self
            break
        self.__exit__()
        log = (self._root / "server.log").read_text(errors="replace")[-2000:]
        raise TadbotError("bench_failed", f"the server did not come up with the model loaded:\n{log}")

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._log.close()

    def peak_rss_mb(self) -> float | None:
        """The largest VmHWM among gunicorn's processes (the worker holds the model); Linux only."""
        pids = [self._process.pid]
        for task in Path(f"/proc/{self._process.pid}/task").glob("*/children"):
            pids += [int(pid) for pid in task.read_text().split()]
        peaks = []
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            peaks += [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
        return round(max(peaks) / 1024, 1) if peaks else None

    def session(self, lines: list[str], progress: bool = False) -> list[TurnMeasure]:
        from tqdm import tqdm

        session_id = self.post_json("/api/v1/sessions", {"client": BENCH_CLIENT})["session_id"]
        measured = []
        for index, text in enumerate(tqdm(lines, desc="turns", disable=not progress, file=sys.stderr)):
            measured.append(self.turn(session_id, text))
            if self._speaking_wpm and index + 1 < len(lines):
                # The device says the reply; then the person says the next line.
                words = measured[-1].words + len(lines[index + 1].split())
                time.sleep(words * 60 / self._speaking_wpm)
        self.post_json(f"/api/v1/sessions/{session_id}/end", {})
        return measured

    def turn(
        self, session_id: str, text: str = "", *, audio: bytes = b"", crisis_only: bool = False
    ) -> TurnMeasure:
        """One turn, typed or (with `audio`, a WAV) spoken, timed from the request to each event.

        `crisis_only` hangs up as soon as the turn shows it is not a crisis, as a device would, so that the
        model is not kept writing a reply nobody waits for."""
        boundary = "tadbotbench"
        if audio:
            part = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="turn.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode() + audio
        else:
            part = f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}'.encode()
        body = part + f"\r\n--{boundary}--\r\n".encode()
        request = self._request(
            f"/api/v1/sessions/{session_id}/turns", body, f"multipart/form-data; boundary={boundary}"
        )
        started = time.monotonic()
        first: float | None = None
        sentences = words = 0
        safety = heard = ""
        events = self._events(request)
        for item in events:
            if crisis_only and heard and item["type"] not in ("emotions", "safety") and not safety:
                events.close()
                return TurnMeasure({}, sentences, first, time.monotonic() - started, words, heard=heard)
            if item["type"] == "transcript":
                heard = item["text"]
            elif item["type"] == "safety":
                safety = item["level"]
            elif item["type"] == "sentence":
                sentences += 1
                words += len(item["text"].split())
                if first is None:
                    first = time.monotonic() - started
            elif item["type"] == "done":
                done = time.monotonic() - started
                source = item.get("source", "")
                return TurnMeasure(item["timings"], sentences, first, done, words, safety, source, heard)
            elif item["type"] == "error":
                raise TadbotError("bench_failed", f"a turn failed: {item['code']}: {item['message']}")
        raise TadbotError("bench_failed", "a turn's stream ended without `done`")

    def _events(self, request: urllib.request.Request) -> Generator[dict[str, Any]]:
        with self._opener().open(request, timeout=900) as answer:
            for line in answer:
                if line.strip():
                    yield json.loads(line)

    def _get(self, path: str) -> dict[str, Any]:
        """With the device token: health shows its components (the model's state) only to a known caller."""
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self._token}"})
        with self._opener().open(request, timeout=5) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        request = self._request(path, json.dumps(payload).encode(), "application/json")
        with self._opener().open(request, timeout=900) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def _request(self, path: str, body: bytes, content_type: str) -> urllib.request.Request:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": content_type}
        return urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")

    @staticmethod
    def _opener() -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
