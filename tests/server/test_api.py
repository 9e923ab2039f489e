"""The HTTP contract against the real server under gunicorn: auth, bad input, and that it keeps serving."""

from __future__ import annotations

import io
import json
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from server.access.policy import Access
from tests.conftest import LiveServer, start_server, stop_server, tadbot
from tests.speech import pcm16_wav, speak


def _session(server: LiveServer, client: str = "api-client") -> str:
    return server.start_session(client)["session_id"]


def _error(answer: requests.Response, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert body["error"]["code"] == code, body
    assert len(body["error"]["message"]) > 10
    return str(body["error"]["message"])


def _png(width: int, height: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.zeros((height, width, 3), dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def _stereo_wav() -> bytes:
    return pcm16_wav(np.zeros(16000 * 2, dtype="<i2").tobytes(), 16000, channels=2)


def _eight_bit_wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(16000)
        w.writeframes(b"\x80" * 16000)
    return out.getvalue()


BAD_TURNS = [
    pytest.param(
        {"audio": ("u.wav", b"RIFF\x00\x00not a wav at all", "audio/wav")}, 400, "bad_audio", id="corrupt"
    ),
    pytest.param({"audio": ("u.wav", _stereo_wav(), "audio/wav")}, 415, "unsupported_audio", id="stereo"),
    pytest.param({"audio": ("u.wav", _eight_bit_wav(), "audio/wav")}, 415, "unsupported_audio", id="8-bit"),
    pytest.param(
        {"text": (None, "hi"), "frame": ("f.jpg", b"this is not an image", "image/jpeg")},
        415,
        "bad_image",
        id="non-image-frame",
    ),
    pytest.param(
        {"text": (None, "hi"), "frame": ("f.png", _png(5000, 8), "image/png")},
        413,
        "image_too_large",
        id="huge-frame",
    ),
    pytest.param({"frame": ("f.png", _png(8, 8), "image/png")}, 400, "bad_turn", id="no-audio-no-text"),
    pytest.param({"text": (None, "I feel " * 300)}, 413, "text_too_long", id="text-too-long"),
]


@pytest.mark.parametrize(("files", "status", "code"), BAD_TURNS)
def test_bad_turn_input_is_a_clear_4xx(
    live_server: LiveServer, files: dict[str, tuple[str | None, object, str]], status: int, code: str
) -> None:
    session_id = _session(live_server)
    answer = requests.post(
        f"{live_server.url}/api/v1/sessions/{session_id}/turns",
        headers=live_server.device_headers(),
        files=files,
        timeout=30,
    )
    _error(answer, status, code)
    assert requests.get(f"{live_server.url}/api/v1/health", timeout=10).status_code == 200


def test_a_50_mb_upload_is_refused_and_the_server_keeps_serving(live_server: LiveServer) -> None:
    session_id = _session(live_server)
    huge = b"\0" * (50 * 1024 * 1024)
    try:
        answer = requests.post(
            f"{live_server.url}/api/v1/sessions/{session_id}/turns",
            headers=live_server.device_headers(),
            files={"audio": ("u.wav", huge, "audio/wav")},
            timeout=60,
        )
    except requests.ConnectionError:
        pytest.fail("the server dropped the connection instead of answering 413")
    message = _error(answer, 413, "request_entity_too_large")
    assert "max_upload_mb" in message
    assert requests.get(f"{live_server.url}/api/v1/health", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/sessions"),
        ("post", "/api/v1/sessions/x/turns"),
        ("post", "/api/v1/sessions/x/frames"),
        ("post", "/api/v1/sessions/x/end"),
        ("get", "/api/v1/sessions"),
        ("get", "/api/v1/sessions/x"),
        ("get", "/api/v1/sessions/x/export"),
        ("delete", "/api/v1/clients/x"),
    ],
)
def test_protected_endpoints_need_the_right_token(live_server: LiveServer, method: str, path: str) -> None:
    url = live_server.url + path
    _error(requests.request(method, url, timeout=10), 401, "missing_token")
    _error(
        requests.request(method, url, headers={"Authorization": "Bearer tdb_wrong"}, timeout=10),
        401,
        "bad_token",
    )
    # A device token is not a therapist token, and the other way round.
    therapist_only = method != "post"
    other = live_server.device_headers() if therapist_only else live_server.therapist_headers()
    _error(requests.request(method, url, headers=other, timeout=10), 401, "bad_token")


def test_unknown_and_foreign_sessions_are_404(live_server: LiveServer) -> None:
    def turn(session_id: str, headers: dict[str, str]) -> requests.Response:
        url = f"{live_server.url}/api/v1/sessions/{session_id}/turns"
        return requests.post(url, headers=headers, data={"text": "hello"}, timeout=30)

    _error(turn("nope", live_server.device_headers()), 404, "unknown_session")
    therapist = live_server.therapist_headers()
    _error(
        requests.get(f"{live_server.url}/api/v1/sessions/nope", headers=therapist, timeout=10),
        404,
        "unknown_session",
    )
    # Another device may not speak into this device's session.
    other = tadbot("admin", "add-device", "other-pi", env=live_server.env)
    assert other.returncode == 0, other.stderr
    other_headers = {"Authorization": f"Bearer {other.stdout.splitlines()[-1]}"}
    _error(turn(_session(live_server, "owned"), other_headers), 404, "unknown_session")


def test_bad_client_name_and_ended_session(live_server: LiveServer) -> None:
    answer = requests.post(
        f"{live_server.url}/api/v1/sessions",
        headers=live_server.device_headers(),
        json={"client": "../etc/passwd"},
        timeout=10,
    )
    _error(answer, 400, "bad_client")
    session_id = _session(live_server, "ender")
    ended = requests.post(
        f"{live_server.url}/api/v1/sessions/{session_id}/end",
        headers=live_server.device_headers(),
        timeout=10,
    )
    assert ended.status_code == 200 and ended.json()["turns"] == 0
    answer = requests.post(
        f"{live_server.url}/api/v1/sessions/{session_id}/turns",
        headers=live_server.device_headers(),
        data={"text": "hello"},
        timeout=10,
    )
    _error(answer, 409, "session_ended")


def test_text_turn_and_silence(live_server: LiveServer) -> None:
    session_id = _session(live_server, "texter")
    answer = requests.post(
        f"{live_server.url}/api/v1/sessions/{session_id}/turns",
        headers=live_server.device_headers(),
        data={"text": "my heart is racing"},
        timeout=60,
    )
    events = [json.loads(line) for line in answer.text.splitlines()]
    assert events[0] == {"type": "transcript", "text": "my heart is racing"}
    assert events[-1]["type"] == "done" and "emotions" not in [e["type"] for e in events]
    silence = pcm16_wav(np.zeros(16000, dtype="<i2").tobytes(), 16000)
    answer = requests.post(
        f"{live_server.url}/api/v1/sessions/{session_id}/turns",
        headers=live_server.device_headers(),
        files={"audio": ("s.wav", silence, "audio/wav")},
        timeout=60,
    )
    events = [json.loads(line) for line in answer.text.splitlines()]
    assert [e["type"] for e in events] == ["transcript", "error"]
    assert events[1]["code"] == "no_speech"


def test_delete_client_erases_records_and_memory(live_server: LiveServer) -> None:
    session_id = _session(live_server, "leaver")
    requests.post(
        f"{live_server.url}/api/v1/sessions/{session_id}/turns",
        headers=live_server.device_headers(),
        # Not "I panic on trains": the second opinion reads that as a crisis, which is never remembered.
        data={"text": "I panic in supermarkets"},
        timeout=60,
    ).raise_for_status()
    answer = requests.delete(
        f"{live_server.url}/api/v1/clients/leaver", headers=live_server.therapist_headers(), timeout=30
    )
    assert answer.status_code == 200, answer.text
    erased = answer.json()["erased"]
    assert erased["sessions"] == 1
    health = requests.get(
        f"{live_server.url}/api/v1/health", headers=live_server.therapist_headers(), timeout=10
    ).json()
    if health["components"]["memory"]["status"] == "ok":
        assert erased["memories"] == 2
    _error(
        requests.get(
            f"{live_server.url}/api/v1/sessions/{session_id}",
            headers=live_server.therapist_headers(),
            timeout=10,
        ),
        404,
        "unknown_session",
    )
    _error(
        requests.delete(
            f"{live_server.url}/api/v1/clients/leaver", headers=live_server.therapist_headers(), timeout=10
        ),
        404,
        "unknown_client",
    )


def test_openapi_lists_exactly_the_served_routes(live_server: LiveServer, tmp_path: Path) -> None:
    from server.app import create_app
    from server.config import load_settings
    from server.conversation.components import Components
    from server.records.store import Records

    spec = requests.get(f"{live_server.url}/api/v1/openapi.json", timeout=10).json()
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    empty = tmp_path / "tadbot.toml"
    empty.write_text("", encoding="utf-8")
    settings = load_settings(empty, env={"TADBOT_DATA_DIR": str(tmp_path)})
    app = create_app(settings, Components(records=Records(tmp_path / "db.sqlite3")))
    served = {
        (rule.rule.replace("<", "{").replace(">", "}"), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")  # the dashboard's pages are HTML, not the API
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    assert documented == served


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}], ids=str
)
def test_health_without_a_valid_token_says_only_ok_or_degraded(
    live_server: LiveServer, headers: dict[str, str]
) -> None:
    """A probe sees ok/degraded, never the components whose details name model paths and errors."""
    answer = requests.get(f"{live_server.url}/api/v1/health", headers=headers, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body.keys() == {"status"} and body["status"] in ("ok", "degraded")
    assert "components" not in answer.text and "/" not in answer.text  # no component, no file path


@pytest.mark.parametrize("role", ["device", "therapist"])
def test_health_with_a_valid_token_names_the_components(live_server: LiveServer, role: str) -> None:
    headers = live_server.device_headers() if role == "device" else live_server.therapist_headers()
    body = requests.get(f"{live_server.url}/api/v1/health", headers=headers, timeout=10).json()
    assert {"db", "llm", "stt"} <= body["components"].keys()
    assert body["version"]


def test_missing_models_leave_the_server_up_and_degraded(tmp_path: Path) -> None:
    server = start_server(tmp_path, llm=tmp_path / "absent.gguf", fer=tmp_path / "absent.onnx")
    try:
        health = requests.get(
            f"{server.url}/api/v1/health", headers=server.device_headers(), timeout=10
        ).json()
        assert health["status"] == "degraded"
        assert health["components"]["llm"]["status"] == "missing"
        assert health["components"]["llm"]["key"] == "llm.model_path"
        assert "absent.gguf" in health["components"]["llm"]["detail"]
        assert health["components"]["fer"]["key"] == "fer.model_path"
        assert health["components"]["stt"]["status"] == "ok"
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            public = requests.get(f"{server.url}/api/v1/health", headers=headers, timeout=10)
            assert public.json() == {"status": "degraded"} and "absent.gguf" not in public.text
        session_id = _session(server, "degraded")
        answer = requests.post(
            f"{server.url}/api/v1/sessions/{session_id}/turns",
            headers=server.device_headers(),
            files={"audio": ("u.wav", speak("hello I feel anxious today"), "audio/wav")},
            timeout=60,
        )
        events = [json.loads(line) for line in answer.text.splitlines()]
        # No model: the person still hears a steady talk-down and a breathing exercise, never an error.
        assert events[0]["type"] == "transcript" and events[-1]["type"] == "done"
        assert events[-1]["source"] == "offline"
        sentences = [e for e in events if e["type"] == "sentence"]
        assert len(sentences) > 10 and any(e.get("pause_ms", 0) >= 4000 for e in sentences)
        _error(
            requests.post(
                f"{server.url}/api/v1/sessions/{session_id}/frames",
                headers=server.device_headers(),
                files={"frame": ("f.png", _png(8, 8), "image/png")},
                timeout=10,
            ),
            503,
            "fer_unavailable",
        )
    finally:
        stop_server(server)


def test_a_spoken_command_is_tagged_for_the_device_and_recorded(live_server: LiveServer) -> None:
    session_id = _session(live_server, "commander")
    streams = []
    for text in ("Okay, start over please.", "be quiet"):
        answer = requests.post(
            f"{live_server.url}/api/v1/sessions/{session_id}/turns",
            headers=live_server.device_headers(),
            data={"text": text},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        streams.append([json.loads(line) for line in answer.text.splitlines()])
    restart, pause = streams
    assert restart[:4] == [
        {"type": "transcript", "text": "Okay, start over please."},
        {"type": "command", "name": "new_session"},
        {"type": "sentence", "text": "Of course."},
        {"type": "sentence", "text": "Let's start again, fresh."},
    ]
    assert [e["type"] for e in pause] == ["transcript", "command", "done"]
    assert pause[1] == {"type": "command", "name": "pause"}
    for done in (restart[-1], pause[-1]):
        assert done["type"] == "done" and done["source"] == "command"
        assert "prompt_tokens" not in done["timings"], "the model answered a command"
    log = requests.get(
        f"{live_server.url}/api/v1/sessions/{session_id}", headers=live_server.therapist_headers(), timeout=10
    ).json()
    assert log["ended_at"] is None, "the server ended the session itself; that is the device's call"
    assert [(t["role"], t["text"]) for t in log["turns"]] == [
        ("user", "Okay, start over please."),
        ("assistant", "Of course. Let's start again, fresh."),
        ("user", "be quiet"),
    ]
    assert [t["id"] for t in log["turns"]][1:] == [restart[-1]["turn_id"], pause[-1]["turn_id"]]


def test_goodbye_ends_the_session_politely_not_as_a_crisis(live_server: LiveServer) -> None:
    """With the embedder loaded, a lone "goodbye" sits near farewell notes in meaning; as a bare command it
    is read by the crisis rules alone, so the person hears a goodbye and the therapist gets no alarm."""
    session_id = _session(live_server, "leaver")
    for text in ("goodbye", "okay goodbye", "thank you, goodbye for now"):
        answer = requests.post(
            f"{live_server.url}/api/v1/sessions/{session_id}/turns",
            headers=live_server.device_headers(),
            data={"text": text},
            timeout=60,
        )
        events = [json.loads(line) for line in answer.text.splitlines()]
        assert [e["type"] for e in events[:2]] == ["transcript", "command"], (text, events)
        assert events[1]["name"] == "end_session"
    log = requests.get(
        f"{live_server.url}/api/v1/sessions/{session_id}", headers=live_server.therapist_headers(), timeout=10
    ).json()
    assert log["safety_events"] == []


def test_openapi_documents_every_command_and_reply_source(live_server: LiveServer) -> None:
    from server.conversation.turns import Source
    from server.safety.commands import CommandName

    spec = requests.get(f"{live_server.url}/api/v1/openapi.json", timeout=10).json()
    events = {
        e["properties"]["type"]["const"]: e for e in spec["components"]["schemas"]["TurnEvent"]["oneOf"]
    }
    assert list(events) == ["transcript", "emotions", "safety", "command", "sentence", "done", "error"]
    assert events["command"]["required"] == ["type", "name"]
    assert events["command"]["properties"]["name"]["enum"] == [str(name) for name in CommandName]
    assert events["done"]["properties"]["source"]["enum"] == [str(source) for source in Source]
    # A crisis reply whose record the database could not take at once still ends with `done`.
    assert events["done"]["properties"]["turn_id"]["type"] == ["integer", "null"]


# Idempotency keys and idle sessions.


def _turn(
    server: LiveServer, session_id: str, text: str, headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.post(
        f"{server.url}/api/v1/sessions/{session_id}/turns",
        headers={**server.device_headers(), **(headers or {})},
        data={"text": text},
        timeout=60,
    )


def test_a_repeated_idempotency_key_is_answered_from_the_record(live_server: LiveServer) -> None:
    session_id = _session(live_server, "retrier")
    key = {"Idempotency-Key": "3f2c9a1e-7b4d-4c1a-9f00-5e6d7c8b9a01"}
    first = [
        json.loads(line) for line in _turn(live_server, session_id, "I feel shaky", key).text.splitlines()
    ]
    again = _turn(live_server, session_id, "I feel shaky", key)
    assert again.status_code == 200, again.text
    replayed = [json.loads(line) for line in again.text.splitlines()]
    assert first[-1]["type"] == "done" and "replayed" not in first[-1]
    assert replayed[:-1] == first[:-1]
    assert replayed[-1] == {**first[-1], "replayed": True}
    log = requests.get(
        f"{live_server.url}/api/v1/sessions/{session_id}", headers=live_server.therapist_headers(), timeout=10
    ).json()
    assert [(t["role"], t["id"]) for t in log["turns"]][1:] == [("assistant", first[-1]["turn_id"])]
    assert [t["role"] for t in log["turns"]] == ["user", "assistant"]


@pytest.mark.parametrize("key", ["", "k" * 101, "two words"], ids=["empty", "too-long", "space"])
def test_a_bad_idempotency_key_is_a_400(live_server: LiveServer, key: str) -> None:
    session_id = _session(live_server, "bad-key")
    _error(_turn(live_server, session_id, "hello", {"Idempotency-Key": key}), 400, "bad_idempotency_key")
    log = requests.get(
        f"{live_server.url}/api/v1/sessions/{session_id}", headers=live_server.therapist_headers(), timeout=10
    ).json()
    assert log["turns"] == []


def _app(tmp_path: Path, idle_s: float) -> tuple[Flask, dict[str, str]]:
    """The real Flask app in-process, with no models: a test can hold a turn open inside it."""
    from server.app import create_app
    from server.config import load_settings
    from server.conversation.components import Components
    from server.records.store import Records

    config = tmp_path / "tadbot.toml"
    config.write_text(f"[server]\nsession_idle_s = {idle_s}\n", encoding="utf-8")
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(tmp_path)})
    records = Records(tmp_path / "db.sqlite3")
    token = Access(records).add("device", "pi", actor="test")
    return create_app(settings, Components(records=records)), {"Authorization": f"Bearer {token}"}


def _open(client: FlaskClient, headers: dict[str, str], name: str) -> str:
    """A session opened through the in-process app, as a device enrolled for that client opens one."""
    client.application.extensions["tadbot.access"].enroll("pi", [name], actor="test")
    return str(client.post("/api/v1/sessions", headers=headers, json={"client": name}).json["session_id"])


def test_a_key_whose_first_attempt_still_streams_gets_409_with_retry_after(tmp_path: Path) -> None:
    from server.conversation.turns import TurnInput

    app, headers = _app(tmp_path, 0)
    engine = app.extensions["tadbot"]
    client = app.test_client()
    try:
        session_id = _open(client, headers, "wren")
        url = f"/api/v1/sessions/{session_id}/turns"
        keyed = {**headers, "Idempotency-Key": "k-1"}
        first = engine.turn(engine.records.session(session_id), TurnInput(text="hello"), "k-1")
        assert next(first)["type"] == "transcript"  # the first attempt is streaming
        answer = client.post(url, headers=keyed, data={"text": "hello"})
        assert answer.status_code == 409 and answer.headers["Retry-After"] == "5"
        assert answer.json["error"]["code"] == "turn_in_progress"
        assert "Idempotency-Key" in answer.json["error"]["message"]
        rest = list(first)
        assert rest[-1]["type"] == "done" and rest[-1]["source"] == "offline"
        answer = client.post(url, headers=keyed, data={"text": "hello"})
        events = [json.loads(line) for line in answer.get_data(as_text=True).splitlines()]
        assert events[-1] == {**rest[-1], "replayed": True}
        assert [e["text"] for e in events if e["type"] == "sentence"] == [
            e["text"] for e in rest if e["type"] == "sentence"
        ]
    finally:
        engine.close()


def test_a_turn_stream_closed_unread_does_not_stay_in_flight(tmp_path: Path) -> None:
    app, headers = _app(tmp_path, 0)
    engine = app.extensions["tadbot"]
    client = app.test_client()
    try:
        session_id = _open(client, headers, "yves")
        url = f"/api/v1/sessions/{session_id}/turns"
        keyed = {**headers, "Idempotency-Key": "unread"}
        unread = client.post(url, headers=keyed, data={"text": "hello"})
        assert unread.status_code == 200
        unread.close()  # what the WSGI server does when the device is gone before the first line
        answer = client.post(url, headers=keyed, data={"text": "hello"})
        events = [json.loads(line) for line in answer.get_data(as_text=True).splitlines()]
        assert events[-1]["type"] == "done" and "replayed" not in events[-1]
        assert engine.records.user_turns(session_id) == ["hello"]
    finally:
        engine.close()


def test_a_session_left_idle_is_ended_by_the_server_and_a_later_turn_gets_409(tmp_path: Path) -> None:
    app, headers = _app(tmp_path, 0.3)
    engine = app.extensions["tadbot"]
    client = app.test_client()
    try:
        session_id = _open(client, headers, "xan")
        deadline = time.monotonic() + 10
        while engine.records.session(session_id).ended_at is None:
            assert time.monotonic() < deadline, "the server never ended the idle session"
            time.sleep(0.05)
        answer = client.post(f"/api/v1/sessions/{session_id}/turns", headers=headers, data={"text": "hello"})
        assert answer.status_code == 409 and answer.json["error"]["code"] == "session_ended"
        assert "POST /api/v1/sessions" in answer.json["error"]["message"]
    finally:
        engine.close()


def test_openapi_documents_the_idempotency_key_and_its_answers(live_server: LiveServer) -> None:
    spec = requests.get(f"{live_server.url}/api/v1/openapi.json", timeout=10).json()
    turns = spec["paths"]["/api/v1/sessions/{session_id}/turns"]["post"]
    (header,) = [p for p in turns["parameters"] if p["in"] == "header"]
    assert (header["name"], header["required"], header["schema"]["maxLength"]) == (
        "Idempotency-Key",
        False,
        100,
    )
    assert "turn_in_progress" in turns["responses"]["409"]["description"]
    assert "Retry-After" in turns["responses"]["409"]["headers"]
    (done,) = [
        e
        for e in spec["components"]["schemas"]["TurnEvent"]["oneOf"]
        if e["properties"]["type"]["const"] == "done"
    ]
    assert done["properties"]["replayed"]["const"] is True and "replayed" not in done["required"]


def test_listing_sessions_is_in_the_audit_log_with_who_and_when(tmp_path: Path) -> None:
    from server.app import create_app
    from server.config import load_settings
    from server.conversation.components import Components
    from server.records.store import Records

    records = Records(tmp_path / "db.sqlite3")
    access = Access(records)
    headers = {"Authorization": f"Bearer {access.add('therapist', 'dr-lee', actor='test')}"}
    records.start_session("ola", None)
    access.assign("dr-lee", ["ola"], actor="test")
    config = tmp_path / "tadbot.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}"\n', encoding="utf-8")
    app = create_app(load_settings(config, env={}), Components(records=records))
    before = time.time()
    with app.test_client() as client:
        assert client.get("/api/v1/sessions", headers=headers).status_code == 200
        assert client.get("/api/v1/sessions?client=ola", headers=headers).status_code == 200
    with records.transaction() as db:
        query = "SELECT t, actor, action, target FROM audit_log WHERE action = 'list_sessions'"
        lines = db.execute(query).fetchall()
    assert [tuple(line)[1:] for line in lines] == [
        ("therapist:dr-lee", "list_sessions", "all"),
        ("therapist:dr-lee", "list_sessions", "client=ola"),
    ]
    assert all(before <= line["t"] <= time.time() for line in lines)
