"""A small real HTTP server on a loopback port that speaks the device side of the v1 contract.

It stands in for the TADBot server so the device's tests need none of the server's models. Each test sets
the turn `script`: the events to stream, with optional pauses, one optional gate that holds the stream
until the test has seen the events before it (proof that events arrive as they are written, not at the end),
and an optional break, where the server hangs up mid-stream.
"""

from __future__ import annotations

import copy
import email.parser
import json
import re
import ssl
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "device-token-123"
GREETING = "Hello, I'm here with you."
GATE = "gate"
"""A script item: wait until the test opens `Loopback.gate` before writing further events."""
BREAK = "break"
"""A script item: hang up here, as a crashed server does; a chunked body never gets its last chunk."""
HEALTHY: dict[str, Any] = {
    "status": "ok",
    "components": {name: {"status": "ok"} for name in ("db", "stt", "fer", "llm", "memory", "safety")},
    "version": "0.1.0+loopback",
}
"""What GET /api/v1/health answers unless a test sets `Loopback.health`."""


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Loopback:
    """The server's state, as a test sets and reads it.

    Sessions are named s1, s2, ... in the order they are opened. `turn_status` makes the turns of a
    session fail with that HTTP status (404: the server lost it, 409: it ended, 401: the token was revoked).
    """

    url: str
    script: list[Any] = field(default_factory=list)
    scripts: list[list[Any]] = field(default_factory=list)
    """Scripts for the next turns, one each, first first; `script` once they are used up."""
    chunked: bool = False
    gate: threading.Event = field(default_factory=threading.Event)
    gate_timed_out: bool = False
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    turn_status: dict[str, int] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(HEALTHY))

    def turn_parts(self) -> list[Part]:
        """The multipart parts of the last turn request."""
        _, _, headers, body = next(r for r in reversed(self.requests) if r[1].endswith("/turns"))
        return parse_multipart(headers["Content-Type"], body)

    def paths(self) -> list[str]:
        """The path of every request so far, in order."""
        return [path for _, path, _, _ in self.requests]


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


_CODES = {401: "bad_token", 403: "forbidden", 404: "unknown_session", 409: "session_ended", 503: "overloaded"}
"""The error code the real server sends with each status."""


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

    def do_GET(self) -> None:
        """Not recorded in `requests`, which the tests read as the device's POSTs only."""
        state = self.server.state
        if self.path == "/api/v1/health":  # anyone may ask; as on the server, only a valid token sees more
            known = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            body = state.health if known else {"status": state.health["status"]}
            self._send(200, json.dumps(body).encode())
        else:
            self._send(404, _error("not_found", f"no GET route {self.path}"))

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        state.requests.append(("POST", self.path, dict(self.headers), body))
        match = re.fullmatch(r"/api/v1/sessions/([^/]+)/(turns|frames|end)", self.path)
        session, action = match.groups() if match else ("", "")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(
                401, _error(_CODES[401], "this device token is not known; create one with tadbot admin")
            )
        elif self.path == "/api/v1/sessions":
            state.opened.append(f"s{len(state.opened) + 1}")
            self._send(201, json.dumps({"session_id": state.opened[-1], "greeting": GREETING}).encode())
        elif session == "proxy":
            self._send(502, b"<html>Bad Gateway</html>", "text/html")
        elif session == "loop":  # a misconfigured reverse proxy that redirects to itself
            self.send_response(307)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif session not in {"s1", *state.opened}:  # s1 is known from the start, for the client's tests
            self._send(404, _error(_CODES[404], f"no session at {self.path}; start one first"))
        elif session in state.ended:
            self._send(409, _error(_CODES[409], "this session has ended; start a new one"))
        elif action == "turns" and session in state.turn_status:
            status = state.turn_status[session]
            self._send(status, _error(_CODES[status], f"turns of {session} are refused with {status}"))
        elif action == "turns":
            self._stream(state)
        elif action == "frames":
            self._send(200, json.dumps({"faces": 1, "top3": [{"label": "neutral", "score": 0.9}]}).encode())
        else:
            state.ended.append(session)
            self._send(200, json.dumps({"session_id": session, "turns": 1, "summary": "calmer"}).encode())

    def _stream(self, state: Loopback) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        if state.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")  # the body ends when the connection closes
            self.close_connection = True
        self.end_headers()
        try:
            for item in state.scripts.pop(0) if state.scripts else state.script:
                if item == BREAK:
                    self.close_connection = True
                    return
                if item == GATE:
                    state.gate_timed_out = not state.gate.wait(timeout=5)
                elif isinstance(item, float):
                    time.sleep(item)
                else:
                    self._write((json.dumps(item) + "\n").encode() if isinstance(item, dict) else item)
            if state.chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the device hung up mid-reply (stopped, or gave up on the turn)

    def _write(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.server.state.chunked else data)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: Loopback


def serve(
    chunked: bool = False, port: int = 0, tls: ssl.SSLContext | None = None
) -> Generator[Loopback, None, None]:
    """Run the server in a thread for one test; turn bodies are chunked, or end when the connection closes.
    With `tls`, it speaks https with that context's certificate."""
    server = _Server(("127.0.0.1", port), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    server.state = Loopback(url=f"{scheme}://127.0.0.1:{server.server_address[1]}", chunked=chunked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.state.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
