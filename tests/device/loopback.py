"""A small real HTTP server on a loopback port that speaks the device side of the v1 contract.

It stands in for the TADBot server so the device's tests need none of the server's models. Each test sets
the turn `script`: the events to stream, with optional pauses and one optional gate that holds the stream
until the test has seen the events before it (proof that events arrive as they are written, not at the end).
"""

from __future__ import annotations

import email.parser
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "device-token-123"
GREETING = "Hello, I'm here with you."
GATE = "gate"
"""A script item: wait until the test opens `Loopback.gate` before writing further events."""


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Loopback:
    url: str
    script: list[Any] = field(default_factory=list)
    chunked: bool = False
    gate: threading.Event = field(default_factory=threading.Event)
    gate_timed_out: bool = False
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)

    def turn_parts(self) -> list[Part]:
        """The multipart parts of the last turn request."""
        _, _, headers, body = next(r for r in reversed(self.requests) if r[1].endswith("/turns"))
        return parse_multipart(headers["Content-Type"], body)


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    return [
        Part(
            name=str(part.get_param("name", header="content-disposition")),
            filename=part.get_filename(),
            content_type=part.get_content_type(),
            data=bytes(part.get_payload(decode=True)),
        )
        for part in message.walk()
        if not part.is_multipart()
    ]


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is the device's."""

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        state.requests.append(("POST", self.path, dict(self.headers), body))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(
                401, _error("bad_token", "this device token is not known; create one with tadbot admin")
            )
        elif self.path == "/api/v1/sessions":
            self._send(201, json.dumps({"session_id": "s1", "greeting": GREETING}).encode())
        elif self.path == "/api/v1/sessions/s1/turns":
            self._stream(state)
        elif self.path == "/api/v1/sessions/s1/frames":
            self._send(200, json.dumps({"faces": 1, "top3": [{"label": "neutral", "score": 0.9}]}).encode())
        elif self.path == "/api/v1/sessions/s1/end":
            state.ended.append("s1")
            self._send(200, json.dumps({"session_id": "s1", "turns": 1, "summary": "calmer"}).encode())
        elif self.path == "/api/v1/sessions/proxy/turns":
            self._send(502, b"<html>Bad Gateway</html>", "text/html")
        else:
            self._send(404, _error("session_not_found", f"no session at {self.path}; start one first"))

    def _stream(self, state: Loopback) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        if state.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")  # the body ends when the connection closes
            self.close_connection = True
        self.end_headers()
        for item in state.script:
            if item == GATE:
                state.gate_timed_out = not state.gate.wait(timeout=5)
            elif isinstance(item, float):
                time.sleep(item)
            else:
                self._write((json.dumps(item) + "\n").encode() if isinstance(item, dict) else item)
        if state.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.server.state.chunked else data)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: Loopback


def serve(chunked: bool = False) -> Iterator[Loopback]:
    """Run the server in a thread for one test; turn bodies are chunked, or end when the connection closes."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = Loopback(url=f"http://127.0.0.1:{server.server_address[1]}", chunked=chunked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.state.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
