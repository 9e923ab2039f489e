"""The device's API: sessions, turns (an NDJSON stream), frames between turns, and the end."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from server.access import NAME_PATTERN, NAME_RULE, Forbidden
from server.api.auth import require
from server.app import access, companion
from server.engine import TurnInput
from server.errors import BadRequest, TadbotError
from server.records import SessionRow

bp = Blueprint("device", __name__, url_prefix="/api/v1/sessions")

MAX_FRAMES_PER_TURN = 8
# About three minutes of speech: longer typed text would crowd the history out of the model's context.
MAX_TEXT_CHARS = 2000
# A random string from the device (a UUID, say): visible ASCII, no spaces.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,100}")


@bp.before_request
def _authenticate() -> None:
    require("device")


@bp.post("")
def start_session() -> tuple[Response, int]:
    """The server picks whose session it is: the client asked for, if this device is enrolled for them, or
    the one client it is enrolled for when it names none."""
    body = request.get_json(silent=True) if request.content_length else {}
    asked = body.get("client") if isinstance(body, dict) else ""
    if asked is not None and (not isinstance(asked, str) or not NAME_PATTERN.match(asked)):
        raise BadRequest(
            "bad_client",
            f'send JSON {{"client": "<pseudonym>"}} ({NAME_RULE}), or {{}} for this device\'s client',
        )
    client = access().session_client(g.caller, asked)
    return jsonify({**companion().start_session(client, g.caller.id), "client": client}), 201


@bp.post("/<session_id>/turns")
def turn(session_id: str) -> Response:
    session = _open_session(session_id)
    key = _idempotency_key()
    engine = companion()
    audio_file = request.files.get("audio")
    text = request.form.get("text")
    if (audio_file is None) == (text is None):
        raise BadRequest(
            "bad_turn", "send exactly one of: an 'audio' part (WAV, PCM16 mono) or a 'text' field"
        )
    audio = None
    if audio_file is not None:
        if engine.components.transcriber is None:
            raise TadbotError("stt_unavailable", _unavailable("stt"), 503)
        from server.stt import read_wav

        audio = read_wav(audio_file.read(), max_seconds=engine.settings.server.max_audio_s)
    elif text is not None and not text.strip():
        raise BadRequest("bad_turn", "the 'text' field is empty")
    elif text is not None and len(text) > MAX_TEXT_CHARS:
        raise TadbotError(
            "text_too_long",
            f"the 'text' field has {len(text)} characters; send at most {MAX_TEXT_CHARS}",
            413,
        )
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
    if len(parts) > MAX_FRAMES_PER_TURN:
        raise BadRequest("too_many_frames", f"send at most {MAX_FRAMES_PER_TURN} frames per turn")
    if not decode:
        return []
    from server.images import decode_image, shrink

    return [shrink(decode_image(part.read())) for part in parts]


def _unavailable(component: str) -> str:
    status = companion().components.status.get(component)
    detail = status.detail if status else ""
    return f"{component} is not available on this server: {detail} (see GET /api/v1/health)"


def _ndjson(events: Iterator[dict[str, Any]]) -> Iterator[str]:
    for item in events:
        yield json.dumps(item, ensure_ascii=False) + "\n"
