"""The real server for a benchmark: `tadbot serve` in a subprocess on a loopback port, and a client that
times each turn's stream as a device would hear it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import TadbotError

BENCH_CLIENT = "bench"
Say = Callable[[str], None]
"""Where a bench reports its progress, a line at a time."""
_BOUNDARY = "tadbotbench"
_GONE_S = 10.0
"""How long a killed server's processes get to vanish before it is started again on the same port."""


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


class TurnRefused(Exception):
    """The server answered a turn with an HTTP error instead of a stream."""

    def __init__(self, status: int, code: str, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status} {code}")
        self.status = status
        self.code = code
        self.retry_after = retry_after
        """The Retry-After header, if the answer had one."""


class OpenTurn:
    """A turn's request, sent on a connection of its own; its answer is read event by event, or never (a
    benchmark may kill the server before reading it)."""

    def __init__(self, url: str, path: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
        host, port = url.removeprefix("http://").split(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self._connection.request("POST", path, body=body, headers=headers)

    def events(self) -> Iterator[dict[str, Any]]:
        """The stream's events, in order; raises TurnRefused for an HTTP error, OSError or
        http.client.HTTPException when the connection breaks, TimeoutError when a read waits too long."""
        response = self._connection.getresponse()
        if response.status != 200:
            try:
                code = str(json.loads(response.read())["error"]["code"])
            except (ValueError, KeyError, TypeError):
                code = ""
            raise TurnRefused(response.status, code, response.getheader("Retry-After"))
        for line in response:
            if line.strip():
                yield json.loads(line)

    def close(self) -> None:
        self._connection.close()


class LiveServer:
    """`tadbot serve` in a subprocess on a loopback port, with its own data dir and a device token.

    `settings` adds to or replaces keys of the config written for it, by section. `own_group` starts it
    in a process group of its own, so that `kill` can take down gunicorn's master and worker at once."""

    def __init__(
        self,
        root: Path,
        *,
        model: Path,
        n_ctx: int,
        n_threads: int,
        max_tokens: int,
        speaking_wpm: int = 0,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        own_group: bool = False,
    ) -> None:
        from server.access.policy import Access
        from server.records.store import Records

        self._speaking_wpm = speaking_wpm
        self._own_group = own_group
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = root / "data"
        self.tmp_dir = root / "tmp"
        """The server's TMPDIR: a bench can show that nothing was spooled there."""
        self.config = root / "tadbot.toml"
        self.log_path = root / "server.log"
        config: dict[str, dict[str, Any]] = {
            "server": {"port": port, "data_dir": str(self.data_dir), "log_level": "WARNING"},
            "llm": {
                "model_path": str(model),
                "n_ctx": n_ctx,
                "n_threads": n_threads,
                "max_tokens": max_tokens,
                "seed": 1,
            },
            "fer": {"model_path": str(root / "no-fer.onnx")},
        }
        for section, values in (settings or {}).items():
            config.setdefault(section, {}).update(values)
        self.config.write_text(_toml(config), encoding="utf-8")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        access = Access(Records(self.data_dir / "tadbot.sqlite3"))
        self._token = access.add("device", "bench", actor="bench")
        access.enroll("bench", [BENCH_CLIENT], actor="bench")
        self._process = self._launch()

    def _launch(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "TADBOT_CONFIG": str(self.config),
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(self.tmp_dir),
        }
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self._own_group,
            )

    def __enter__(self) -> LiveServer:
        try:
            self._wait_until_up()
        except TadbotError:
            self.__exit__()
            raise
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                health = self.health()
            except OSError:
                time.sleep(0.5)
                continue
            if health["components"]["llm"]["status"] == "ok":
                return
            break
        log = self.log_path.read_text(errors="replace")[-2000:]
        raise TadbotError("bench_failed", f"the server did not come up with the model loaded:\n{log}")

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL to the whole process group, as a power cut or the OOM killer would end it, and a wait
        until its processes are gone."""
        if not self._own_group:
            raise TadbotError("bench_failed", "only a server started in its own process group is killed")
        members = self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=_GONE_S)
        deadline = time.monotonic() + _GONE_S
        while any(_alive(pid) for pid in members) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        """Start the server again on the same config and data dir, and wait until its model is loaded."""
        self._process = self._launch()
        self._wait_until_up()

    def pids(self) -> list[int]:
        """gunicorn's master and its children (the worker, which holds the model)."""
        pids = [self._process.pid]
        for task in Path(f"/proc/{self._process.pid}/task").glob("*/children"):
            try:
                pids += [int(pid) for pid in task.read_text().split()]
            except OSError:
                continue
        return pids

    def worker_pid(self) -> int | None:
        workers = self.pids()[1:]
        return workers[0] if workers else None

    def peak_rss_by_process(self) -> dict[str, float]:
        """VmHWM in MB of the master and of its worker; Linux only."""
        peaks = {}
        for name, pid in zip(("master", "worker"), self.pids(), strict=False):
            value = _status_kb(pid, "VmHWM")
            if value is not None:
                peaks[name] = round(value / 1024, 1)
        return peaks

    def peak_rss_mb(self) -> float | None:
        """The largest VmHWM among gunicorn's processes (the worker holds the model); Linux only."""
        peaks = self.peak_rss_by_process().values()
        return max(peaks) if peaks else None

    def session(self, lines: list[str], progress: bool = False) -> list[TurnMeasure]:
        from tqdm import tqdm

        session_id = self.new_session()
        measured = []
        for index, text in enumerate(tqdm(lines, desc="turns", disable=not progress, file=sys.stderr)):
            measured.append(self.turn(session_id, text))
            if self._speaking_wpm and index + 1 < len(lines):
                # The device says the reply; then the person says the next line.
                words = measured[-1].words + len(lines[index + 1].split())
                time.sleep(words * 60 / self._speaking_wpm)
        self.post_json(f"/api/v1/sessions/{session_id}/end", {})
        return measured

    def new_session(self) -> str:
        return str(self.post_json("/api/v1/sessions", {"client": BENCH_CLIENT})["session_id"])

    def open_turn(
        self,
        session_id: str,
        text: str = "",
        *,
        audio: bytes = b"",
        key: str | None = None,
        timeout: float = 900,
    ) -> OpenTurn:
        """Send one turn, typed or (with `audio`, a WAV) spoken, under the device's Idempotency-Key `key`;
        `timeout` bounds each wait for the server."""
        if audio:
            part = (
                f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="audio"; filename="turn.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode() + audio
        else:
            part = f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}'.encode()
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": f"multipart/form-data; boundary={_BOUNDARY}",
        }
        if key is not None:
            headers["Idempotency-Key"] = key
        body = part + f"\r\n--{_BOUNDARY}--\r\n".encode()
        return OpenTurn(self.url, f"/api/v1/sessions/{session_id}/turns", body, headers, timeout)

    def turn(
        self, session_id: str, text: str = "", *, audio: bytes = b"", crisis_only: bool = False
    ) -> TurnMeasure:
        """One turn, typed or (with `audio`, a WAV) spoken, timed from the request to each event.

        `crisis_only` hangs up as soon as the turn shows it is not a crisis, as a device would, so that the
        model is not kept writing a reply nobody waits for."""
        started = time.monotonic()
        call = self.open_turn(session_id, text, audio=audio)
        first: float | None = None
        sentences = words = 0
        safety = heard = ""
        try:
            for item in call.events():
                if crisis_only and heard and item["type"] not in ("emotions", "safety") and not safety:
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
        except TurnRefused as exc:
            raise TadbotError("bench_failed", f"a turn was refused: {exc}") from exc
        finally:
            call.close()
        raise TadbotError("bench_failed", "a turn's stream ended without `done`")

    def health(self) -> dict[str, Any]:
        """With the device token: health shows its components (the model's state) only to a known caller."""
        request = urllib.request.Request(
            self.url + "/api/v1/health", headers={"Authorization": f"Bearer {self._token}"}
        )
        with self._opener().open(request, timeout=5) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers=headers, method="POST"
        )
        with self._opener().open(request, timeout=900) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    @staticmethod
    def _opener() -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def process_sample(pid: int) -> tuple[float, list[str]] | None:
    """A process's resident memory in MB and what each of its open file descriptors points to (a path, or
    a kind and inode such as socket:[123]), or None once it is gone."""
    rss = _status_kb(pid, "VmRSS")
    links = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # closed while being listed
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except OSError:
        return None
    return (round(rss / 1024, 1), sorted(links)) if rss is not None else None


def _status_kb(pid: int, field: str) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = [int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:")]
    return found[0] if found else None


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    """A config of strings, numbers and booleans as TOML (a JSON scalar is a TOML one)."""
    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
        for section, values in config.items()
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
