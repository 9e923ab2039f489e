from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.client import ServerClient
from device.errors import ServerError
from tests.device.loopback import GATE, GREETING, TOKEN, Loopback, serve

EVENTS = [
    {"type": "transcript", "text": "I feel tight in my chest"},
    {"type": "emotions", "faces": 1, "top3": [{"label": "fear", "score": 0.61}]},
    {"type": "sentence", "text": "That sounds hard."},
    {"type": "sentence", "text": "Let's breathe together."},
    {"type": "done", "turn_id": 7, "timings": {"total_ms": 1200}},
]


def _client(server: Loopback, token: str = TOKEN, timeout: float = 10) -> ServerClient:
    return ServerClient(server.url + "/", token, timeout)


def test_session_round_trip_sends_the_bearer_token(loopback: Loopback) -> None:
    client = _client(loopback)
    assert client.start_session("anon-7") == ("s1", GREETING)
    assert client.post_frame("s1", b"\xff\xd8\xff fake jpeg") == {
        "faces": 1,
        "top3": [{"label": "neutral", "score": 0.9}],
    }
    assert client.end_session("s1")["summary"] == "calmer"
    method, path, headers, body = loopback.requests[0]
    assert (method, path, body) == ("POST", "/api/v1/sessions", b'{"client": "anon-7"}')
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert loopback.ended == ["s1"]


def test_turn_events_arrive_in_order_as_they_are_written(any_loopback: Loopback) -> None:
    # The gate holds the stream after the first event until the test has received it: a client that
    # buffered the body would only see that event after the gate's 5 s timeout.
    any_loopback.script = [EVENTS[0], GATE, 0.05, EVENTS[1], 0.05, EVENTS[2], 0.2, EVENTS[3], EVENTS[4]]
    received = []
    started = time.monotonic()
    for event in _client(any_loopback).turn("s1", text="hello", frames=[]):
        received.append((event, time.monotonic() - started))
        any_loopback.gate.set()
    assert [event for event, _ in received] == EVENTS
    assert not any_loopback.gate_timed_out
    assert received[3][1] - received[2][1] >= 0.15, "the second sentence came with the first, not after it"


def test_turn_sends_multipart_audio_and_frames(loopback: Loopback) -> None:
    loopback.script = [EVENTS[-1]]
    audio, frames = b"RIFF....WAVEfmt fake", [b"\xff\xd8\xff one", b"\xff\xd8\xff two"]
    list(_client(loopback).turn("s1", audio=audio, frames=frames))
    parts = loopback.turn_parts()
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("audio", "utterance.wav", "audio/wav"),
        ("frame", "frame0.jpg", "image/jpeg"),
        ("frame", "frame1.jpg", "image/jpeg"),
    ]
    assert [p.data for p in parts] == [audio, *frames]


def test_turn_sends_text_as_a_multipart_field(loopback: Loopback) -> None:
    loopback.script = [EVENTS[-1]]
    list(_client(loopback).turn("s1", text="I can't sleep – again", frames=[]))
    (part,) = loopback.turn_parts()
    assert (part.name, part.filename, part.data.decode("utf-8")) == ("text", None, "I can't sleep – again")


def test_a_turn_takes_audio_or_text_not_both() -> None:
    client = ServerClient("http://127.0.0.1:9", TOKEN)
    with pytest.raises(ValueError, match="exactly one"):
        next(client.turn("s1", audio=b"x", text="y"))


def test_error_event_ends_the_stream(loopback: Loopback) -> None:
    error = {"type": "error", "code": "llm_failed", "message": "the model stopped; try again"}
    loopback.script = [EVENTS[0], error, EVENTS[2]]
    assert list(_client(loopback).turn("s1", text="hi")) == [EVENTS[0], error]


def test_stream_cut_short_is_an_error_not_a_finished_turn(loopback: Loopback) -> None:
    loopback.script = [EVENTS[0], EVENTS[2]]
    with pytest.raises(ServerError) as caught:
        list(_client(loopback).turn("s1", text="hi"))
    assert caught.value.code == "stream_truncated"


def test_garbage_line_is_a_bad_response(loopback: Loopback) -> None:
    loopback.script = [EVENTS[0], b"<html>oops</html>\n"]
    with pytest.raises(ServerError, match="non-JSON line") as caught:
        list(_client(loopback).turn("s1", text="hi"))
    assert caught.value.code == "bad_response"


def test_error_json_becomes_server_error_with_the_servers_message(loopback: Loopback) -> None:
    with pytest.raises(ServerError) as caught:
        list(_client(loopback).turn("gone", text="hi"))
    assert (caught.value.code, caught.value.status) == ("unknown_session", 404)
    assert caught.value.message == "no session at /api/v1/sessions/gone/turns; start one first"
    with pytest.raises(ServerError) as caught:
        _client(loopback, token="wrong").start_session("anon")
    assert (caught.value.code, caught.value.status) == ("bad_token", 401)
    assert "create one with tadbot admin" in caught.value.message


def test_error_without_json_body_still_says_what_happened(loopback: Loopback) -> None:
    with pytest.raises(ServerError) as caught:
        list(_client(loopback).turn("proxy", text="hi"))
    assert (caught.value.code, caught.value.status) == ("http_502", 502)
    assert "502 Bad Gateway" in caught.value.message


def test_unreachable_server(unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    with pytest.raises(ServerError) as caught:
        ServerClient(url, TOKEN, timeout=5).start_session("anon")
    assert caught.value.code == "server_unreachable" and caught.value.status is None
    assert caught.value.message == f"cannot reach the server at {url}: Connection refused"


@pytest.fixture
def proxy() -> Iterator[Loopback]:
    """A second server that records whatever reaches it: the proxy that audio must never go through."""
    yield from serve()


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_proxy_variables_never_route_audio_elsewhere(
    loopback: Loopback, proxy: Loopback, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, proxy.url)
    loopback.script = [EVENTS[-1]]
    client = _client(loopback)
    session, _ = client.start_session("anon")
    assert list(client.turn(session, audio=b"RIFF private audio", frames=[b"\xff\xd8\xff face"])) == [
        EVENTS[-1]
    ]
    assert proxy.requests == [], "the proxy saw the request, the token and the audio"
    assert loopback.paths() == ["/api/v1/sessions", "/api/v1/sessions/s1/turns"]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999", "http://:8710", "http://[::1", "http://exa_mple..com:8710", "ftp://pi.local"],
)
def test_a_bad_url_is_one_line_not_a_traceback(url: str) -> None:
    with pytest.raises(ServerError) as caught:
        ServerClient(url, TOKEN, timeout=5).start_session("anon")
    assert caught.value.code == "bad_url" and caught.value.status is None
    assert caught.value.message.startswith(f"the server URL {url} is not valid (")
    assert caught.value.message.endswith("); fix [device] server_url") and "\n" not in caught.value.message


def test_any_other_requests_failure_is_one_line(loopback: Loopback) -> None:
    # A reverse proxy that redirects to itself: requests gives up with TooManyRedirects.
    with pytest.raises(ServerError) as caught:
        _client(loopback).end_session("loop")
    assert (caught.value.code, caught.value.status) == ("request_failed", None)
    assert caught.value.message == (
        f"POST /api/v1/sessions/loop/end to {loopback.url} failed: Exceeded 30 redirects."
    )
    assert not caught.value.transient


def test_an_https_server_with_its_own_certificate_is_trusted_only_through_ca_file(tmp_path: Path) -> None:
    """A clinic's self-signed server: refused with the public authorities, trusted once named in ca_file."""
    import contextlib
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "tadbot.crt", tmp_path / "tadbot.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with contextlib.contextmanager(serve)(tls=context) as server:
        with pytest.raises(ServerError):
            ServerClient(server.url, TOKEN, 10).start_session("anon-7")
        assert ServerClient(server.url, TOKEN, 10, ca_file=str(cert)).start_session("anon-7") == (
            "s1",
            GREETING,
        )
