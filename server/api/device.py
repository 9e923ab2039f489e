"""The device's API: sessions, turns (an NDJSON stream), frames between turns, and the end."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from server.access.policy import NAME_PATTERN, NAME_RULE, Forbidden
from server.api.auth import require
from server.app import access, companion
from server.conversation.turns import TurnInput
from server.errors import BadRequest, TadbotError
from server.records.rows import SessionRow

bp = Blueprint("device", __name__, url_prefix="/api/v1/sessions")

MAX_FRAMES_PER_TURN = 8
# About three minutes of speech: longer typed text would crowd the history out of the model's context.
MAX_TEXT_CHARS = 2000
# A random string from the device (a UUID, say): visible ASCII, no spaces.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,100}")
# A body must arrive within 10 s and 1 s more per 64 kB (a 2 MB turn: 42 s; 20 MB: about 5 minutes).
UPLOAD_GRACE_S = 10.0
UPLOAD_MIN_BYTES_PER_S = 64 * 1024


@bp.before_request
def _authenticate() -> None:
    require("device")
    _read_body_in_time()


def _read_body_in_time() -> None:
    """Read the whole body now, against a deadline; the handlers parse it from memory. gunicorn's threads
    read a body with no deadline of their own, so a client sending a byte a second held one for ever, and
    eight such clients every thread, health checks included. At the deadline the socket's reading side is
    shut, which ends the read, and the answer is 408."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None or not (request.content_length or request.headers.get("Transfer-Encoding")):
        return
    size = request.content_length or current_app.config["MAX_CONTENT_LENGTH"]
    allowed = UPLOAD_GRACE_S + size / UPLOAD_MIN_BYTES_PER_S
    late = threading.Event()

    def give_up() -> None:
        late.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)

    timer = threading.Timer(allowed, give_up)
    timer.start()
    try:
        request.get_data(cache=True)
    except Exception:
        if not late.is_set():
            raise
    finally:
        timer.cancel()
    if late.is_set():  # what was read, if anything, is cut short
        raise TadbotError(
            "upload_too_slow",
            f"the request body did not arrive within {allowed:.0f} s; send it again on a faster link",
            408,
        )


@bp.post("")
def start_session() -> tuple[Response, int]:
    """The server picks whose session it is: the client asked for, if this device is enrolled for them, or
    the one client it is enrolled for when it names none."""
    # The body, not Content-Length, says whether a client is named: a chunked body has no length. Only a
    # missing "client" means this device's one client; null, or a name with a trailing newline, is refused.
    body = _json_body() if request.get_data(cache=True) else {}
    if not isinstance(body, dict) or (
        "client" in body and not (isinstance(body["client"], str) and NAME_PATTERN.fullmatch(body["client"]))
    ):
        raise BadRequest(
            "bad_client",
            f'send JSON {{"client": "<pseudonym>"}} ({NAME_RULE}), or {{}} for this device\'s client',
        )
    client = access().session_client(g.caller, body.get("client"))
    return jsonify({**companion().start_session(client, g.caller.id), "client": client}), 201


@bp.post("/<session_id>/turns")
def turn(session_id: str) -> Response:
    session = _open_session(session_id)
    key = _idempotency_key()
    engine = companion()
    audio_file = request.files.get("audio")
    text = request.form.get("text")
    if "audio" in request.form or "text" in request.files:
        # Read as the other kind, the part would be dropped and the turn answered without it.
        raise BadRequest(
            "bad_turn",
            "send 'audio' as a file part (with a filename) holding a WAV, and 'text' as a form field",
        )
    if (audio_file is None) == (text is None):
        raise BadRequest(
            "bad_turn",
            "send a multipart/form-data body with exactly one of: an 'audio' part (WAV, PCM16 mono) or a "
            "'text' field",
        )
    audio = None
    if audio_file is not None:
        if engine.components.transcriber is None:
            raise TadbotError("stt_unavailable", _unavailable("stt"), 503)
        from server.speech.stt import read_wav

        audio = read_wav(audio_file.read(), max_seconds=engine.settings.server.max_audio_s)
    elif text is not None and not text.strip():
        raise BadRequest("bad_turn", "the 'text' field is empty; send the words, or an 'audio' part instead")
    elif text is not None and len(text) > MAX_TEXT_CHARS:
        raise TadbotError(
            "text_too_long",
            f"the 'text' field has {len(text)} characters; send at most {MAX_TEXT_CHARS}",
            413,
        )
    elif text is not None and "\ufffd" in text:
        # Werkzeug decodes a form field as UTF-8 and puts U+FFFD where it cannot: the words are garbled,
        # and would reach the model and the therapist's record so. No one types that character.
        raise BadRequest("bad_text", "the 'text' field is not valid UTF-8; send the words encoded as UTF-8")
    given = TurnInput(audio=audio, text=text, frames=_frames(engine.components.fer is not None))
    # The engine takes its place in the model's queue only when the reply needs the model; past the
    # queue's bound it answers without it, so no turn is ever refused for being busy. A repeated key
    # whose first attempt still streams is refused here, before the stream starts (409).
    stream = engine.turn(session, given, key)
    response = Response(
        _ndjson(stream),
        mimetype="application/x-ndjson",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    # Also when the stream was never read: the turn must not stay in flight.
    response.call_on_close(stream.close)
    return response


@bp.post("/<session_id>/frames")
def frame(session_id: str) -> Response:
    session = _open_session(session_id)
    engine = companion()
    if engine.components.fer is None:
        raise TadbotError("fer_unavailable", _unavailable("fer"), 503)
    frames = _frames(True)
    if len(frames) != 1:
        raise BadRequest("bad_frame", "send exactly one 'frame' part (JPEG or PNG)")
    return jsonify(engine.read_frame(session, frames[0]))


@bp.post("/<session_id>/end")
def end(session_id: str) -> Response:
    session = _own_session(session_id)
    return jsonify(companion().end_session(session))


def _json_body() -> Any:
    """The JSON body, or None when it is not JSON. Werkzeug's silent mode catches ValueError only, and JSON
    nested deeper than the parser recurses (`[[[[...`, a few kB) raises RecursionError, a 500 without this."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def _own_session(session_id: str) -> SessionRow:
    session = companion().records.session(session_id)
    if session.device_id != g.caller.id:
        raise TadbotError("unknown_session", f"no session {session_id!r} for this device", 404)
    if not access().is_enrolled(g.caller.id, session.client):
        raise Forbidden("client_not_enrolled", "this device is no longer enrolled for this session's client")
    return session


def _open_session(session_id: str) -> SessionRow:
    session = _own_session(session_id)
    if session.ended_at is not None:
        raise TadbotError(
            "session_ended", "this session has ended; start a new one with POST /api/v1/sessions", 409
        )
    return session


def _idempotency_key() -> str | None:
    """The optional `Idempotency-Key` header: the same key again means the same turn, sent again."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest(
            "bad_idempotency_key",
            "the Idempotency-Key header must be 1-100 visible ASCII characters with no spaces (a random "
            "UUID, say), new for each utterance and the same only when that utterance is sent again",
        )
    return key


def _frames(decode: bool) -> list[Any]:
    """Frames are decoded in memory before the stream starts, so a bad one is a 4xx, not a broken stream."""
    parts = request.files.getlist("frame")
    if request.form.getlist("frame"):
        # A part without a filename arrives as text, its bytes already decoded: not a frame to read, and
        # dropping it would hide from the device that its frames were never seen.
        raise BadRequest(
            "bad_frame", "send each 'frame' as a file part (with a filename), holding one JPEG or PNG"
        )
    if len(parts) > MAX_FRAMES_PER_TURN:
        raise BadRequest("too_many_frames", f"send at most {MAX_FRAMES_PER_TURN} frames per turn")
    if not decode:
        return []
    from server.face.images import decode_image, shrink

    return [shrink(decode_image(part.read())) for part in parts]


def _unavailable(component: str) -> str:
    status = companion().components.status.get(component)
    detail = status.detail if status else ""
    return f"{component} is not available on this server: {detail} (see GET /api/v1/health)"


def _ndjson(events: Iterator[dict[str, Any]]) -> Iterator[str]:
    for item in events:
        yield json.dumps(item, ensure_ascii=False) + "\n"
