"""server/api/openapi.json against the app: who may call what, and every refusal the app answers documented
(its status on that operation, its code in that response's description)."""

from __future__ import annotations

import ast
import io
import re
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import schemathesis
from flask import Flask
from schemathesis.core.result import Ok
from urllib3.filepost import encode_multipart_formdata
from werkzeug.test import TestResponse

from server.access.policy import Access
from tests.conftest import ROOT

DEVICE_ROUTES = (
    "/api/v1/sessions/{session_id}/turns",
    "/api/v1/sessions/{session_id}/frames",
    "/api/v1/sessions/{session_id}/end",
)


TURNS = "/api/v1/sessions/{session_id}/turns"
FRAMES = "/api/v1/sessions/{session_id}/frames"
MAX_UPLOAD_MB = 3
"""The world's server.max_upload_mb: a request over it is a few MB, not the default 20."""


def _wav(seconds: float, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(int(16000 * seconds) * 2 * channels))
    return out.getvalue()


def _png(width: int, height: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.zeros((height, width, 3), dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def _raw_text_field(value: bytes) -> dict[str, Any]:
    """A multipart body whose text field holds these exact bytes (the test client would encode a str)."""
    body = b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\n' + value + b"\r\n--b--\r\n"
    return {"data": body, "content_type": "multipart/form-data; boundary=b"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _body(answer: TestResponse) -> dict[str, Any]:
    body = answer.get_json()
    assert isinstance(body, dict), answer.data
    return body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_fer: Path) -> Iterator[dict[str, Any]]:
    """The real app in-process, with no models, and devices and accounts in every state that matters; and
    the same app with real speech recognition (PocketSphinx) and face reading (a tiny ONNX model), so that
    audio and frames are read and their refusals reached."""
    from server.app import create_app
    from server.config import load_settings
    from server.conversation.components import Components, fer_options
    from server.face.fer import build_pipeline
    from server.records.store import Records
    from server.speech.stt import SphinxTranscriber

    root = tmp_path_factory.mktemp("openapi")
    config = root / "tadbot.toml"
    config.write_text(f"[server]\nmax_upload_mb = {MAX_UPLOAD_MB}\n", encoding="utf-8")
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(root)})
    records = Records(root / "db.sqlite3")
    access = Access(records)
    tokens = {
        name: access.add("device", name, actor="test")
        for name in ("pi", "lonely", "shared", "moved", "old", "late")
    }
    tokens |= {name: access.add("therapist", name, actor="test") for name in ("dr-a", "dr-b", "dr-gone")}
    tokens["boss"] = access.add("therapist", "boss", role="admin", actor="test")
    access.enroll("pi", ["ola"], actor="test")
    access.enroll("shared", ["ola", "kai"], actor="test")
    access.enroll("moved", ["ola"], actor="test")
    access.enroll("shared", ["zed"], actor="test")
    access.assign("dr-a", ["ola", "zed"], actor="test")
    access.assign("dr-b", ["kai"], actor="test")
    app = create_app(settings, Components(records=records))
    client = app.test_client()

    def start(device: str, name: str) -> str:
        answer = client.post("/api/v1/sessions", headers=_bearer(tokens[device]), json={"client": name})
        assert answer.status_code == 201, answer.data
        return str(_body(answer)["session_id"])

    sessions = {
        "ola": start("pi", "ola"),
        "kai": start("shared", "kai"),
        "moved": start("moved", "ola"),
        "ended": start("pi", "ola"),
    }
    assert (
        client.post(f"/api/v1/sessions/{sessions['ended']}/end", headers=_bearer(tokens["pi"])).status_code
        == 200
    )
    equipped = create_app(
        settings,
        Components(
            records=records,
            transcriber=SphinxTranscriber(),
            fer=build_pipeline(tiny_fer, **fer_options(settings)),
        ),
    )
    access.enroll("moved", ["ola"], actor="test", remove=True)
    access.revoke("device", "old", actor="test")
    access.revoke("therapist", "dr-gone", actor="test")
    access.expire("device", "late", -1.0, actor="test")
    spec = client.get("/api/v1/openapi.json").json
    try:
        yield {"app": app, "equipped": equipped, "tokens": tokens, "sessions": sessions, "spec": spec}
    finally:
        app.extensions["tadbot"].close()
        equipped.extensions["tadbot"].close()


def _response(spec: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    responses = spec["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answers {status}, which the spec does not document"
    response = responses[str(status)]
    while "$ref" in response:
        *_, kind, name = response["$ref"].split("/")
        response = spec["components"][kind][name]
    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    return dict(response)


# (method, path template, caller, session, request options, status, code): caller is a token's name or raw
# header value; session fills {session_id}.
REFUSALS = [
    pytest.param("POST", "/api/v1/sessions", None, None, {"json": {}}, 401, "missing_token", id="no-token"),
    pytest.param("POST", "/api/v1/sessions", "Bearer nope", None, {"json": {}}, 401, "bad_token", id="bad"),
    pytest.param("POST", "/api/v1/sessions", "dr-a", None, {"json": {}}, 401, "bad_token", id="wrong-kind"),
    pytest.param("POST", "/api/v1/sessions", "old", None, {"json": {}}, 401, "revoked_token", id="revoked"),
    pytest.param("POST", "/api/v1/sessions", "late", None, {"json": {}}, 401, "expired_token", id="expired"),
    pytest.param(
        "POST", "/api/v1/sessions", "lonely", None, {"json": {}}, 403, "not_enrolled", id="no-client"
    ),
    pytest.param(
        "POST",
        "/api/v1/sessions",
        "pi",
        None,
        {"json": {"client": "kai"}},
        403,
        "client_not_enrolled",
        id="other",
    ),
    pytest.param("POST", "/api/v1/sessions", "shared", None, {}, 400, "client_required", id="which-client"),
    pytest.param(
        "POST",
        "/api/v1/sessions",
        "pi",
        None,
        {"json": {"client": "no such/name"}},
        400,
        "bad_client",
        id="name",
    ),
    pytest.param(
        "POST", "/api/v1/sessions", "pi", None, {"data": "not json"}, 400, "bad_client", id="not-json"
    ),
    *(
        pytest.param(
            "POST",
            path,
            "moved",
            "moved",
            {"data": {"text": "hello"}},
            403,
            "client_not_enrolled",
            id=f"unenrolled-{path.rsplit('/', 1)[1]}",
        )
        for path in DEVICE_ROUTES
    ),
    *(
        pytest.param("POST", path, "pi", "kai", {"data": {"text": "hello"}}, 404, "unknown_session", id=path)
        for path in DEVICE_ROUTES
    ),
    pytest.param("GET", "/api/v1/sessions", "pi", None, {}, 401, "bad_token", id="device-lists"),
    pytest.param("GET", "/api/v1/sessions", "dr-gone", None, {}, 401, "revoked_token", id="revoked-lists"),
    pytest.param(
        "GET",
        "/api/v1/sessions",
        "dr-a",
        None,
        {"query_string": {"client": "kai"}},
        404,
        "unknown_client",
        id="kai",
    ),
    pytest.param(
        "GET", "/api/v1/sessions/{session_id}", "dr-a", "kai", {}, 404, "unknown_session", id="read"
    ),
    pytest.param(
        "GET", "/api/v1/sessions/{session_id}/export", "dr-a", "kai", {}, 404, "unknown_session", id="export"
    ),
    pytest.param("DELETE", "/api/v1/clients/{client}", "dr-a", "kai", {}, 404, "unknown_client", id="erase"),
    pytest.param(
        "DELETE", "/api/v1/clients/{client}", None, "kai", {}, 401, "missing_token", id="erase-anon"
    ),
    pytest.param(
        "POST",
        TURNS,
        "pi",
        "ola",
        {"data": {"audio": [(_wav(1), "u.wav")]}},
        503,
        "stt_unavailable",
        id="no-stt",
    ),
    pytest.param(
        "POST",
        FRAMES,
        "pi",
        "ola",
        {"data": {"frame": [(_png(8, 8), "f.png")]}},
        503,
        "fer_unavailable",
        id="no-fer",
    ),
    pytest.param(
        "GET",
        "/api/v1/sessions/{session_id}/export",
        "dr-a",
        "ola",
        {"query_string": {"format": "xml"}},
        400,
        "bad_format",
        id="export-format",
    ),
]

TOO_BIG = bytes((MAX_UPLOAD_MB + 1) * 1024 * 1024)


def _turn(status: int, code: str, case: str, target: str = "ola", **options: Any) -> Any:
    return pytest.param("POST", TURNS, "pi", target, options, status, code, id=f"turn-{case}")


def _frame(status: int, code: str, case: str, target: str = "ola", **options: Any) -> Any:
    return pytest.param("POST", FRAMES, "pi", target, options, status, code, id=f"frame-{case}")


TEXT = {"text": "I feel tight in my chest"}
# The same, on the app that reads audio and frames: what an upload can be refused for.
UPLOAD_REFUSALS = [
    _turn(400, "bad_turn", "nothing", data={}),
    _turn(400, "bad_turn", "both", data={**TEXT, "audio": [(_wav(1), "u.wav")]}),
    _turn(400, "bad_turn", "blank", data={"text": "  \n "}),
    _turn(400, "bad_turn", "audio-as-field", data={"audio": "RIFF"}),
    _turn(400, "bad_turn", "text-as-file", data={"text": [(b"hello", "t.txt")]}),
    _turn(400, "bad_text", "bad-utf8", **_raw_text_field(b"I feel \xff\xfe sad")),
    _turn(400, "bad_audio", "not-wav", data={"audio": [(b"ID3 an mp3, say", "u.wav")]}),
    _turn(415, "unsupported_audio", "stereo", data={"audio": [(_wav(1, channels=2), "u.wav")]}),
    _turn(413, "audio_too_long", "61s", data={"audio": [(_wav(61), "u.wav")]}),
    _turn(413, "text_too_long", "2001-chars", data={"text": "a" * 2001}),
    _turn(400, "too_many_frames", "9-frames", data={**TEXT, "frame": [(_png(8, 8), "f.png")] * 9}),
    _turn(400, "bad_frame", "frame-as-field", data={**TEXT, "frame": "not a file"}),
    _turn(415, "bad_image", "not-image", data={**TEXT, "frame": [(b"GIF89a", "f.gif")]}),
    _turn(413, "image_too_large", "5000px", data={**TEXT, "frame": [(_png(5000, 8), "f.png")]}),
    _turn(400, "bad_idempotency_key", "key", data=TEXT, headers={"Idempotency-Key": "has a space"}),
    _turn(409, "session_ended", "ended", target="ended", data=TEXT),
    _turn(413, "request_entity_too_large", "too-big", data={"audio": [(TOO_BIG, "u.wav")]}),
    _frame(400, "bad_frame", "none", data={}),
    _frame(400, "bad_frame", "as-field", data={"frame": "not a file"}),
    _frame(400, "too_many_frames", "9", data={"frame": [(_png(8, 8), "f.png")] * 9}),
    _frame(415, "bad_image", "not-image", data={"frame": [(b"\x89PNG\r\n\x1a\n", "f.png")]}),
    _frame(413, "image_too_large", "5000px", data={"frame": [(_png(8, 5000), "f.png")]}),
    _frame(409, "session_ended", "ended", target="ended", data={"frame": [(_png(8, 8), "f.png")]}),
    _frame(413, "request_entity_too_large", "too-big", data={"frame": [(TOO_BIG, "f.png")]}),
    pytest.param(
        "POST",
        "/api/v1/sessions",
        "pi",
        None,
        {"data": TOO_BIG, "content_type": "application/json"},
        413,
        "request_entity_too_large",
        id="start-too-big",
    ),
    pytest.param(
        "POST",
        "/api/v1/sessions",
        "pi",
        None,
        {"json": {"client": None}},
        400,
        "bad_client",
        id="null-client",
    ),
    pytest.param(
        "POST", "/api/v1/sessions", "pi", None, {"json": {"client": "ola\n"}}, 400, "bad_client", id="newline"
    ),
]


def _refused(
    world: dict[str, Any],
    app: Flask,
    call: tuple[str, str, str | None, str | None, dict[str, Any]],
    status: int,
    code: str,
) -> TestResponse:
    """Send the call, check it is refused with this status and code, and that the spec documents both on
    the operation. A form's file parts are lists of (bytes, file name)."""
    method, path, caller, target, options = call
    headers: dict[str, str] = dict(options.get("headers", {}))
    if caller is not None:
        headers |= {"Authorization": caller} if " " in caller else _bearer(world["tokens"][caller])
    url = path.replace("{session_id}", world["sessions"].get(target or "", "")).replace(
        "{client}", target or ""
    )
    sent = {key: value for key, value in options.items() if key != "headers"}
    if isinstance(sent.get("data"), dict):
        # Encoded here: the test client spools a large form to a temporary file it never closes.
        fields: list[tuple[str, Any]] = []
        for name, value in sent["data"].items():
            if isinstance(value, list):
                fields += [(name, (filename, content)) for content, filename in value]
            else:
                fields.append((name, value))
        sent["data"], sent["content_type"] = encode_multipart_formdata(fields)
    answer = app.test_client().open(url, method=method, headers=headers, **sent)
    assert (answer.status_code, _body(answer)["error"]["code"]) == (status, code), answer.data
    assert code in _response(world["spec"], path, method, status)["description"]
    return answer


@pytest.mark.parametrize(("method", "path", "caller", "target", "options", "status", "code"), REFUSALS)
def test_every_refusal_is_documented_on_its_operation(
    world: dict[str, Any],
    method: str,
    path: str,
    caller: str | None,
    target: str | None,
    options: dict[str, Any],
    status: int,
    code: str,
) -> None:
    answer = _refused(world, world["app"], (method, path, caller, target, options), status, code)
    if status == 503:
        assert answer.headers["Retry-After"].isdigit()
        assert "Retry-After" in _response(world["spec"], path, method, status)["headers"]


@pytest.mark.parametrize(("method", "path", "caller", "target", "options", "status", "code"), UPLOAD_REFUSALS)
def test_every_refusal_of_an_upload_is_documented_on_its_operation(
    world: dict[str, Any],
    method: str,
    path: str,
    caller: str | None,
    target: str | None,
    options: dict[str, Any],
    status: int,
    code: str,
) -> None:
    answer = _refused(world, world["equipped"], (method, path, caller, target, options), status, code)
    assert len(_body(answer)["error"]["message"]) > 20


def test_a_repeat_still_streaming_is_409_with_retry_after(world: dict[str, Any]) -> None:
    engine = world["equipped"].extensions["tadbot"]
    session = world["sessions"]["ola"]
    engine.in_flight.begin(session, "utterance-1")
    try:
        answer = _refused(
            world,
            world["equipped"],
            ("POST", TURNS, "pi", "ola", {"data": TEXT, "headers": {"Idempotency-Key": "utterance-1"}}),
            409,
            "turn_in_progress",
        )
    finally:
        engine.in_flight.end(session, "utterance-1")
    assert answer.headers["Retry-After"] == "5"
    assert "Retry-After" in _response(world["spec"], TURNS, "POST", 409)["headers"]


def test_an_erasure_the_memory_cannot_do_is_503_with_retry_after(world: dict[str, Any]) -> None:
    """With a memory folder on disk but no memory loaded, nothing is erased: the records stay whole."""
    memory = Path(world["app"].extensions["tadbot"].settings.data_path) / "memory"
    memory.mkdir()
    try:
        answer = _refused(
            world,
            world["app"],
            ("DELETE", "/api/v1/clients/{client}", "dr-a", "zed", {}),
            503,
            "memory_unavailable",
        )
    finally:
        memory.rmdir()
    assert answer.headers["Retry-After"].isdigit()
    assert "Retry-After" in _response(world["spec"], "/api/v1/clients/{client}", "DELETE", 503)["headers"]
    # Still one of dr-a's clients: an erasure would have taken the assignment too (404 unknown_client).
    listed = (
        world["app"]
        .test_client()
        .get("/api/v1/sessions?client=zed", headers=_bearer(world["tokens"]["dr-a"]))
    )
    assert listed.status_code == 200


def test_every_operation_on_the_database_documents_storage_unavailable(world: dict[str, Any]) -> None:
    """Any request past the token reads the database, so a data dir that will not be read or written is a
    503 on every authenticated operation (test_storage_faults.py provokes it live)."""
    from server.records.storage import StorageError

    refused = StorageError("database is locked")
    assert (refused.code, refused.status, refused.retry_after_s) == ("storage_unavailable", 503, 30.0)
    spec = world["spec"]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if op["security"] and {} not in op["security"]:
                documented = _response(spec, path, method, 503)
                assert "storage_unavailable" in documented["description"], (method, path)
                assert "Retry-After" in documented["headers"], (method, path)


# Where a refusal can come from on a request's way: each module's raises, or only these functions'.
REQUEST_PATH: dict[str, tuple[str, ...]] = {
    "server/api/device.py": (),
    "server/api/therapist.py": (),
    "server/api/auth.py": (),
    "server/access/policy.py": ("Access.caller", "Access.session_client", "Access.require_session"),
    "server/records/sessions.py": ("SessionRecords.session",),
    "server/records/therapist.py": ("TherapistRecords.require_client", "TherapistRecords.delete_client"),
    "server/conversation/session.py": ("SessionService.forget_client",),
    "server/conversation/in_flight.py": ("TurnsInFlight.begin",),
    "server/speech/stt.py": ("read_wav",),
    "server/face/images.py": ("decode_image", "_check_side"),
}


def _raised_codes(path: str, names: tuple[str, ...]) -> set[str]:
    """The codes of `raise SomeError("code", ...)` in a module, or in the named functions of it."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    scopes: dict[str, ast.AST] = {}
    for top in tree.body:
        if isinstance(top, ast.FunctionDef):
            scopes[top.name] = top
        elif isinstance(top, ast.ClassDef):
            scopes |= {f"{top.name}.{f.name}": f for f in top.body if isinstance(f, ast.FunctionDef)}
    missing = set(names) - set(scopes)
    assert not missing, f"{path} has no {sorted(missing)}: update REQUEST_PATH"
    codes = set()
    for scope in [scopes[name] for name in names] or [tree]:
        for node in ast.walk(scope):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                first = node.exc.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    codes.add(first.value)
    return codes


def test_every_refusal_on_a_request_s_way_is_provoked_above() -> None:
    """A new `raise` on the way of a request fails here until a case above provokes it, and so checks that
    the spec documents it on its operation."""
    raised = set().union(*(_raised_codes(path, names) for path, names in REQUEST_PATH.items()))
    provoked = {param.values[-1] for param in [*REFUSALS, *UPLOAD_REFUSALS]} | {
        "turn_in_progress",
        "memory_unavailable",
        # Needs gunicorn's socket: test_hostile_input.py provokes it live and checks it is documented.
        "upload_too_slow",
    }
    assert {"bad_token", "unsupported_audio", "image_too_large", "turn_in_progress"} <= raised
    assert raised - provoked == set()


def test_a_session_needs_no_body_and_the_answer_names_its_client(world: dict[str, Any]) -> None:
    spec = world["spec"]
    start = spec["paths"]["/api/v1/sessions"]["post"]
    body = start["requestBody"]
    assert body["required"] is False
    schema = body["content"]["application/json"]["schema"]
    assert "client" in schema["properties"] and "client" not in schema.get("required", [])
    created = start["responses"]["201"]["content"]["application/json"]["schema"]
    client = world["app"].test_client()
    for device, sent, chosen in (
        ("pi", None, "ola"),
        ("pi", {}, "ola"),
        ("lonely", {"client": "tadbot-doctor"}, "tadbot-doctor"),
    ):
        answer = client.post("/api/v1/sessions", headers=_bearer(world["tokens"][device]), json=sent)
        assert answer.status_code == 201, answer.data
        assert set(_body(answer)) == set(created["properties"]) == set(created["required"])
        assert _body(answer)["client"] == chosen
    assert "tadbot-doctor" in start["description"]


def test_every_authenticated_operation_documents_its_401s(world: dict[str, Any]) -> None:
    spec = world["spec"]
    unauthorized = spec["components"]["responses"]["Unauthorized"]["description"]
    for code in ("missing_token", "bad_token", "revoked_token", "expired_token"):
        assert code in unauthorized and code in spec["info"]["description"]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if {} in op["security"] or not op["security"]:  # public: health and this document
                assert "401" not in op["responses"], (method, path)
            else:
                assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}, (
                    method,
                    path,
                )


def test_the_token_schemes_say_what_each_token_reaches_and_how_it_ends(world: dict[str, Any]) -> None:
    schemes = world["spec"]["components"]["securitySchemes"]
    assert "tadbot admin enroll" in schemes["deviceToken"]["description"]
    assert "tadbot admin assign" in schemes["therapistToken"]["description"]
    for scheme in schemes.values():
        for words in ("tadbot admin rotate", "tadbot admin revoke", "tadbot admin expire"):
            assert words in scheme["description"]


def test_health_without_a_token_is_documented_as_status_only(world: dict[str, Any]) -> None:
    spec = world["spec"]
    health = spec["paths"]["/api/v1/health"]["get"]
    assert {} in health["security"]
    short = spec["components"]["schemas"]["HealthStatus"]
    assert (short["required"], list(short["properties"]), short["additionalProperties"]) == (
        ["status"],
        ["status"],
        False,
    )
    answer = world["app"].test_client().get("/api/v1/health")
    assert set(_body(answer)) == {"status"}


def test_schemathesis_loads_the_spec_as_valid_openapi_3(world: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(world["spec"], config=schemathesis.Config())
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = list(schema.get_all_operations())
    assert operations and all(isinstance(operation, Ok) for operation in operations), operations
    assert world["spec"]["openapi"].startswith("3.")


def test_the_spec_and_the_app_have_the_same_routes_and_path_parameters(world: dict[str, Any]) -> None:
    spec = world["spec"]
    served: dict[tuple[str, str], set[str]] = {}
    for rule in world["app"].url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                served[(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())] = set(
                    rule.arguments
                )
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == set(served)
    for (path, method), arguments in served.items():
        parameters = spec["paths"][path][method].get("parameters", [])
        in_path = {p["name"]: p for p in parameters if p["in"] == "path"}
        assert set(in_path) == arguments, (method, path)
        for parameter in in_path.values():
            assert parameter["required"] and "pattern" in parameter["schema"], (method, path, parameter)


def test_what_the_server_hands_out_matches_the_documented_patterns(world: dict[str, Any]) -> None:
    patterns = {
        parameter["name"]: re.compile(parameter["schema"]["pattern"])
        for ops in world["spec"]["paths"].values()
        for op in ops.values()
        for parameter in op.get("parameters", [])
        if parameter["in"] == "path"
    }
    assert set(patterns) == {"session_id", "client"}
    assert all(patterns["session_id"].fullmatch(made) for made in world["sessions"].values()), world[
        "sessions"
    ]
    good, bad = ("ola", "kai", "tadbot-doctor", "a" * 64), ("", "-x", "a" * 65, "no such/name", "ola\n")
    assert all(patterns["client"].fullmatch(name) for name in good)
    assert not any(patterns["client"].fullmatch(name) for name in bad)
