"""Hostile input, made by hand, against the real server under gunicorn: damaged WAVs and images,
decompression and allocation bombs, bodies too big, too slow or not what they claim, bad UTF-8 where text is
read, wrong content types. Each is refused with a 4xx JSON error whose message says what to send instead;
the worker is never restarted, nothing is spooled to its TMPDIR, its memory stays bounded, and a normal turn
still works afterwards."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from tests.conftest import FACE_PHOTOS, ROOT, LiveServer, start_server, stop_server
from tests.server.survival import assert_unharmed, error_of, worker_pid
from tests.speech import pcm16_wav

SPEC = json.loads((ROOT / "server" / "api" / "openapi.json").read_text(encoding="utf-8"))
TURNS, FRAMES, START = "{turns}", "{frames}", "/api/v1/sessions"
MEMORY_GROWTH_MB = 600
"""How much the worker's peak memory may grow over the whole batch (a 4 GB allocation bomb would show)."""


@dataclass
class Hostile:
    server: LiveServer
    session_id: str
    worker: int
    peak_kb: int
    """The worker's peak resident memory (VmHWM) before the batch."""


def _peak_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, tiny_fer: Path) -> Iterator[Hostile]:
    server = start_server(tmp_path_factory.mktemp("hostile"), llm=tiny_gguf, fer=tiny_fer)
    try:
        session_id = server.start_session("hostile")["session_id"]
        worker = worker_pid(server)
        yield Hostile(server, session_id, worker, _peak_kb(worker))
    finally:
        stop_server(server)


# Audio -----------------------------------------------------------------------------------------------


def _riff(
    *,
    fmt_tag: int = 1,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    data: bytes = bytes(16000),
    data_size: int | None = None,
    riff_size: int | None = None,
    fmt_first: bool = True,
) -> bytes:
    """A RIFF/WAVE file whose header says what the arguments say, true or not."""
    block = channels * bits // 8
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, fmt_tag, channels, rate, rate * block, block, bits)
    chunk = b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    body = b"WAVE" + (fmt + chunk if fmt_first else chunk + fmt)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def _wav(seconds: float) -> bytes:
    """Silence, a valid 16 kHz mono PCM16 WAV."""
    return pcm16_wav(bytes(int(16000 * seconds) * 2), 16000)


# Images ----------------------------------------------------------------------------------------------


def _encode(ext: str, width: int = 64, height: int = 48) -> bytes:
    ok, encoded = cv2.imencode(ext, np.full((height, width, 3), 90, dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG of a few hundred bytes whose header declares this size: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes(1 + 3 * min(width, 64)), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def _png_with_idat_length(length: int) -> bytes:
    """A small PNG whose first IDAT claims `length` bytes: OpenCV allocated that much before reading it."""
    png = bytearray(_encode(".png"))
    at = png.index(b"IDAT") - 4
    png[at : at + 4] = struct.pack(">I", length)
    return bytes(png)


def _jpeg_declaring(width: int, height: int) -> bytes:
    jpeg = bytearray(_encode(".jpg"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


FACE = (FACE_PHOTOS / "grace_hopper.jpg").read_bytes()
GARBAGE = bytes((i * 7) % 255 for i in range(4096))
"""Bytes with no 0xFF in them, so no JPEG marker by chance."""
PNG = _encode(".png")


# Requests --------------------------------------------------------------------------------------------


def _form(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """A multipart body of (name, file name or None for a plain field, content) parts, bytes as given."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--b0und\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + b"--b0und--\r\n", "multipart/form-data; boundary=b0und"


def _audio(wav: bytes) -> tuple[bytes, str]:
    return _form(("audio", "u.wav", wav))


def _frames(*frames: bytes) -> tuple[bytes, str]:
    return _form(("text", None, b"I feel shaky"), *(("frame", "f.img", frame) for frame in frames))


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    chunked: bool = False


def _send(hostile: Hostile, call: Call, timeout: float = 60) -> tuple[int, str, bytes]:
    """The request as given, bytes for bytes, with the device's token unless it brings an Authorization."""
    server = hostile.server
    path = call.path.format(
        turns=f"/api/v1/sessions/{hostile.session_id}/turns",
        frames=f"/api/v1/sessions/{hostile.session_id}/frames",
    )
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.putrequest(call.method, path, skip_accept_encoding=True)
        names = {name.lower() for name, _ in call.headers}
        if "authorization" not in names:
            connection.putheader("Authorization", f"Bearer {server.device_token}")
        for name, value in call.headers:
            connection.putheader(name, value)
        if call.content_type:
            connection.putheader("Content-Type", call.content_type)
        if call.chunked:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders(b"%x\r\n%s\r\n0\r\n\r\n" % (len(call.body), call.body))
        else:
            connection.putheader("Content-Length", str(len(call.body)))
            connection.endheaders(call.body)
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), answer.read()
    finally:
        connection.close()


def _turn(body_and_type: tuple[bytes, str], headers: tuple[tuple[str, bytes], ...] = ()) -> Call:
    return Call("POST", TURNS, *body_and_type, headers=headers)


def _json(body: bytes, chunked: bool = False) -> Call:
    return Call("POST", START, body, "application/json", chunked=chunked)


# (call, status, code, words the message must hold: what to do about it)
CASES = [
    # Audio
    pytest.param(
        _turn(_audio(_riff()[:30])), 400, "bad_audio", "16-bit PCM mono WAV", id="wav-cut-in-header"
    ),
    pytest.param(_turn(_audio(b"RIFF\x04\x00\x00\x00WAVE")), 400, "bad_audio", "WAV", id="wav-no-chunks"),
    pytest.param(
        _turn(_audio(_riff(riff_size=4))), 400, "bad_audio", "16-bit PCM mono", id="wav-riff-size-4"
    ),
    pytest.param(
        _turn(_audio(_riff(data=bytes(100), data_size=32000))),
        400,
        "bad_audio",
        "whole recording",
        id="wav-cut-data",
    ),
    pytest.param(
        _turn(_audio(_riff(fmt_first=False))), 400, "bad_audio", "16-bit PCM mono", id="wav-data-before-fmt"
    ),
    pytest.param(_turn(_audio(_riff(channels=0))), 400, "bad_audio", "16-bit PCM mono", id="wav-0-channels"),
    pytest.param(_turn(_audio(_riff(bits=0))), 400, "bad_audio", "16-bit PCM mono", id="wav-0-bits"),
    pytest.param(
        _turn(_audio(_riff(fmt_tag=3, bits=32))),
        415,
        "unsupported_audio",
        "16-bit PCM mono",
        id="wav-float32",
    ),
    pytest.param(_turn(_audio(_riff(bits=8))), 415, "unsupported_audio", "16-bit PCM mono", id="wav-8-bit"),
    pytest.param(_turn(_audio(_riff(bits=24))), 415, "unsupported_audio", "16-bit PCM mono", id="wav-24-bit"),
    pytest.param(_turn(_audio(_riff(fmt_tag=6, bits=8))), 415, "unsupported_audio", "PCM", id="wav-a-law"),
    pytest.param(_turn(_audio(_riff(rate=96000))), 415, "unsupported_audio", "48000 Hz", id="wav-96-khz"),
    pytest.param(_turn(_audio(_riff(rate=0))), 415, "unsupported_audio", "8000 to 48000 Hz", id="wav-0-hz"),
    pytest.param(_turn(_audio(_riff(channels=2))), 415, "unsupported_audio", "mono", id="wav-stereo"),
    pytest.param(_turn(_audio(_wav(61))), 413, "audio_too_long", "shorter turns", id="wav-61-s"),
    pytest.param(_turn(_audio(b"ID3\x04\x00" + GARBAGE)), 400, "bad_audio", "16-bit PCM mono WAV", id="mp3"),
    pytest.param(_turn(_audio(b"")), 400, "bad_audio", "16-bit PCM mono WAV", id="empty-audio"),
    # Images
    pytest.param(_turn(_frames(FACE[: len(FACE) // 2])), 415, "bad_image", "complete", id="jpeg-cut"),
    pytest.param(
        _turn(_frames(FACE[:620] + GARBAGE)), 415, "bad_image", "complete", id="jpeg-garbage-after-header"
    ),
    pytest.param(
        _turn(_frames(b"\xff\xd8\x00" + FACE[3:])), 415, "bad_image", "JPEG or PNG", id="jpeg-bad-magic"
    ),
    pytest.param(_turn(_frames(PNG[: len(PNG) // 2])), 415, "bad_image", "complete", id="png-cut"),
    pytest.param(
        _turn(_frames(PNG[:33] + GARBAGE)), 415, "bad_image", "complete", id="png-garbage-after-header"
    ),
    pytest.param(_turn(_frames(b"\x89PNX" + PNG[4:])), 415, "bad_image", "JPEG or PNG", id="png-bad-magic"),
    pytest.param(_turn(_frames(_encode(".webp"))), 415, "bad_image", "JPEG or PNG", id="webp"),
    pytest.param(_turn(_frames(b"GIF89a" + GARBAGE)), 415, "bad_image", "JPEG or PNG", id="gif"),
    pytest.param(_turn(_frames(b"")), 415, "bad_image", "JPEG or PNG", id="empty-frame"),
    pytest.param(
        _turn(_frames(_png_declaring(30000, 30000))), 413, "image_too_large", "smaller", id="png-bomb-30000px"
    ),
    pytest.param(
        _turn(_frames(_jpeg_declaring(60000, 60000))), 413, "image_too_large", "smaller", id="jpeg-60000px"
    ),
    pytest.param(
        _turn(_frames(_png_with_idat_length(0xFFFFFFFF))), 415, "bad_image", "complete", id="png-4-gb-chunk"
    ),
    pytest.param(_turn(_frames(*[PNG] * 9)), 400, "too_many_frames", "at most 8", id="9-frames"),
    pytest.param(
        _turn(_form(("text", None, b"hi"), ("frame", None, PNG))),
        400,
        "bad_frame",
        "file part",
        id="frame-as-field",
    ),
    pytest.param(
        Call("POST", FRAMES, *_form(("frame", "f.png", _png_with_idat_length(0x7FFFFFFF)))),
        415,
        "bad_image",
        "complete",
        id="frames-png-2-gb-chunk",
    ),
    # Text
    pytest.param(
        _turn(_form(("text", None, b"I feel " * 14286))),
        413,
        "text_too_long",
        "at most 2000",
        id="100000-chars",
    ),
    pytest.param(
        _turn(_form(("text", None, b"I feel \xff\xfe sad"))), 400, "bad_text", "UTF-8", id="text-bad-utf8"
    ),
    pytest.param(_turn(_form(("text", None, b" \t "))), 400, "bad_turn", "send the words", id="text-blank"),
    pytest.param(
        _turn(_form(("text", "t.txt", b"hello"))),
        400,
        "bad_turn",
        "'text' as a form field",
        id="text-as-file",
    ),
    pytest.param(
        _turn(_form(("text", None, b"hi"), ("audio", "u.wav", _wav(0.5)))),
        400,
        "bad_turn",
        "exactly one of",
        id="text-and-audio",
    ),
    # Bodies that are not what they say
    pytest.param(
        _turn((b'{"text": "hi"}', "application/json")), 400, "bad_turn", "multipart/form-data", id="json"
    ),
    pytest.param(_turn((b"hi", "text/plain")), 400, "bad_turn", "multipart/form-data", id="text-plain"),
    pytest.param(
        _turn((_form(("text", None, b"hi"))[0], "multipart/form-data")),
        400,
        "bad_turn",
        "multipart/form-data",
        id="no-boundary",
    ),
    pytest.param(
        _turn((_form(("text", None, b"hi"))[0], "multipart/form-data; boundary=other")),
        400,
        "bad_turn",
        "multipart/form-data",
        id="wrong-boundary",
    ),
    pytest.param(
        _turn(
            (
                b'--b0und\r\nContent-Disposition: form-data; name="text"\r\n\r\nhel',
                "multipart/form-data; boundary=b0und",
            )
        ),
        400,
        "bad_turn",
        "multipart/form-data",
        id="unterminated",
    ),
    pytest.param(
        _turn(_form(*[(f"x{i}", None, b"v") for i in range(1001)], ("text", None, b"hi"))),
        413,
        "request_entity_too_large",
        "max_upload_mb",
        id="1001-parts",
    ),
    pytest.param(
        _json(b'{"client": "\xff\xfe"}'), 400, "bad_client", '{"client": "<pseudonym>"}', id="json-bad-utf8"
    ),
    pytest.param(
        _json(b"[" * 50000 + b"]" * 50000), 400, "bad_client", '{"client": "<pseudonym>"}', id="json-deep"
    ),
    pytest.param(_json(b'["hostile"]'), 400, "bad_client", '{"client": "<pseudonym>"}', id="json-array"),
    pytest.param(
        _json(b'{"client": null}'), 400, "bad_client", "or {} for this device", id="json-null-client"
    ),
    pytest.param(
        _json(b'{"client": "hostile\\n"}'), 400, "bad_client", "letters, digits", id="json-name-newline"
    ),
    pytest.param(
        _json(b'{"client": "not-mine"}', chunked=True),
        403,
        "client_not_enrolled",
        "tadbot admin enroll",
        id="chunked",
    ),
    # Headers
    pytest.param(
        Call("GET", START, headers=(("Authorization", b"Bearer \xff\xfe\x80"),)),
        401,
        "bad_token",
        "not a valid therapist token",
        id="token-bad-utf8",
    ),
    pytest.param(
        _turn(_form(("text", None, b"hi")), headers=(("Idempotency-Key", b"\xff\xfe"),)),
        400,
        "bad_idempotency_key",
        "visible ASCII",
        id="key-bad-utf8",
    ),
    pytest.param(
        _turn(_form(("text", None, b"hi")), headers=(("Idempotency-Key", b"k" * 101),)),
        400,
        "bad_idempotency_key",
        "1-100",
        id="key-101-chars",
    ),
    # Paths and methods
    pytest.param(Call("PUT", START), 405, "method_not_allowed", "openapi.json", id="put"),
    pytest.param(
        Call("POST", "/api/v1/sessions/..%2F..%2Fetc%2Fpasswd/turns"),
        404,
        "not_found",
        "openapi.json",
        id="dots",
    ),
    pytest.param(
        Call("POST", "/api/v1/sessions/%00/end"), 404, "unknown_session", "POST /api/v1/sessions", id="nul"
    ),
]


@pytest.mark.parametrize(("call", "status", "code", "hint"), CASES)
def test_hostile_input_is_a_clear_4xx_and_harms_nothing(
    hostile: Hostile, call: Call, status: int, code: str, hint: str
) -> None:
    answered, content_type, body = _send(hostile, call)
    error = error_of(answered, content_type, body)
    assert (answered, error["code"]) == (status, code), body[:300]
    assert hint in error["message"], error
    assert_unharmed(hostile.server, hostile.worker)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
        b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n",
    ],
    ids=["negative-length", "nul-in-header", "space-in-header-name"],
)
def test_malformed_http_is_refused_by_gunicorn_and_harms_nothing(hostile: Hostile, head: bytes) -> None:
    """gunicorn refuses these before the app sees them, with its own HTML 400, not the JSON error: the
    app cannot word that answer. It must still be a 400, and the worker must live on."""
    host, port = hostile.server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head)
        answer = http.client.HTTPResponse(connection)
        answer.begin()
        assert answer.status == 400
    assert_unharmed(hostile.server, hostile.worker)


def test_an_upload_over_max_upload_mb_is_413(hostile: Hostile) -> None:
    huge = b"\0" * (21 * 1024 * 1024)  # the live server's max_upload_mb is 20
    answer = requests.post(
        f"{hostile.server.url}/api/v1/sessions/{hostile.session_id}/turns",
        headers=hostile.server.device_headers(),
        files={"audio": ("u.wav", huge, "audio/wav")},
        timeout=60,
    )
    error = error_of(answer.status_code, answer.headers["Content-Type"], answer.content)
    assert (answer.status_code, error["code"]) == (413, "request_entity_too_large")
    assert "max_upload_mb" in error["message"]
    assert_unharmed(hostile.server, hostile.worker)


def test_a_slow_body_is_cut_off_while_the_server_keeps_serving(hostile: Hostile) -> None:
    """Headers, then the body a byte at a time: a thread holds the request only until the deadline (10 s
    and 1 s per 64 kB), and everyone else is served meanwhile."""
    server = hostile.server
    host, port = server.url.removeprefix("http://").split(":")
    answer = bytearray()
    with socket.create_connection((host, int(port)), timeout=30) as slow:
        slow.sendall(
            f"POST /api/v1/sessions/{hostile.session_id}/turns HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {server.device_token}\r\nContent-Length: 2000\r\n"
            "Content-Type: multipart/form-data; boundary=b0und\r\n\r\n--b0und\r\n".encode()
        )

        def dribble() -> None:
            slow.settimeout(0.5)
            while not answer:
                try:
                    slow.sendall(b"x")
                    answer.extend(slow.recv(4096))
                except TimeoutError:
                    continue
                except OSError:
                    return

        started = time.monotonic()
        dribbler = threading.Thread(target=dribble)
        dribbler.start()
        health = []
        while dribbler.is_alive() and time.monotonic() - started < 30:
            health.append(requests.get(f"{server.url}/api/v1/health", timeout=5).status_code)
            time.sleep(1)
        dribbler.join(timeout=5)
        took = time.monotonic() - started
        slow.settimeout(10)
        while chunk := slow.recv(4096):  # the rest of the answer, until the server closes
            answer.extend(chunk)
    assert 9 < took < 16, took
    assert len(health) >= 8 and set(health) == {200}, health
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head
    error = error_of(408, "application/json", body)
    assert error["code"] == "upload_too_slow" and "faster link" in error["message"]
    documented = SPEC["paths"]["/api/v1/sessions/{session_id}/turns"]["post"]["responses"]["408"]["$ref"]
    assert "upload_too_slow" in SPEC["components"]["responses"][documented.rsplit("/", 1)[1]]["description"]
    assert_unharmed(server, hostile.worker)


def test_streaming_and_loose_headers_are_read_for_the_audio_they_carry(hostile: Hostile) -> None:
    """Not hostile but odd: a writer that cannot seek back leaves the sizes at 0xFFFFFFFF, RIFF sizes are
    often too big, and a recording can be empty. Such WAVs are listened to, not refused: silence here, which
    the turn answers as no speech."""
    for wav in (_riff(data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF), _riff(riff_size=1 << 30), _riff(data=b"")):
        status, content_type, body = _send(hostile, _turn(_audio(wav)))
        assert (status, content_type) == (200, "application/x-ndjson"), body[:300]
        events = [json.loads(line) for line in body.splitlines()]
        assert [(e["type"], e.get("text", e.get("code"))) for e in events] == [
            ("transcript", ""),
            ("error", "no_speech"),
        ]
    assert_unharmed(hostile.server, hostile.worker)


def test_after_the_batch_a_normal_turn_works_and_memory_stayed_bounded(hostile: Hostile) -> None:
    server = hostile.server
    answer = requests.post(
        f"{server.url}/api/v1/sessions/{hostile.session_id}/turns",
        headers=server.device_headers(),
        files=[("text", (None, "I feel calmer now")), ("frame", ("f.jpg", FACE, "image/jpeg"))],
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    events = [json.loads(line) for line in answer.text.splitlines()]
    assert [e["type"] for e in events][:2] == ["transcript", "emotions"] and events[-1]["type"] == "done"
    assert_unharmed(server, hostile.worker)
    grown_mb = (_peak_kb(hostile.worker) - hostile.peak_kb) / 1024
    assert grown_mb < MEMORY_GROWTH_MB, f"the worker's peak memory grew by {grown_mb:.0f} MB"
