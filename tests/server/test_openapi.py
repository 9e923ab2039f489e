"""server/api/openapi.json against the app: who may call what, and every refusal the app answers documented
(its status on that operation, its code in that response's description)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from server.access import Access

DEVICE_ROUTES = (
    "/api/v1/sessions/{session_id}/turns",
    "/api/v1/sessions/{session_id}/frames",
    "/api/v1/sessions/{session_id}/end",
)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _body(answer: TestResponse) -> dict[str, Any]:
    body = answer.get_json()
    assert isinstance(body, dict), answer.data
    return body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The real app in-process, with no models, and devices and accounts in every state that matters."""
    from server.app import create_app
    from server.components import Components
    from server.config import load_settings
    from server.records import Records

    root = tmp_path_factory.mktemp("openapi")
    config = root / "tadbot.toml"
    config.write_text("", encoding="utf-8")
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
    access.assign("dr-a", ["ola"], actor="test")
    access.assign("dr-b", ["kai"], actor="test")
    app = create_app(settings, Components(records=records))
    client = app.test_client()

    def start(device: str, name: str) -> str:
        answer = client.post("/api/v1/sessions", headers=_bearer(tokens[device]), json={"client": name})
        assert answer.status_code == 201, answer.data
        return str(_body(answer)["session_id"])

    sessions = {"ola": start("pi", "ola"), "kai": start("shared", "kai"), "moved": start("moved", "ola")}
    access.enroll("moved", ["ola"], actor="test", remove=True)
    access.revoke("device", "old", actor="test")
    access.revoke("therapist", "dr-gone", actor="test")
    access.expire("device", "late", -1.0, actor="test")
    spec = client.get("/api/v1/openapi.json").json
    try:
        yield {"app": app, "tokens": tokens, "sessions": sessions, "spec": spec}
    finally:
        app.extensions["tadbot"].close()


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
]


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
    app: Flask = world["app"]
    headers: dict[str, str] = {}
    if caller is not None:
        headers = {"Authorization": caller} if " " in caller else _bearer(world["tokens"][caller])
    url = path.replace("{session_id}", world["sessions"].get(target or "", "")).replace(
        "{client}", target or ""
    )
    answer = app.test_client().open(url, method=method, headers=headers, **options)
    assert (answer.status_code, _body(answer)["error"]["code"]) == (status, code), answer.data
    assert code in _response(world["spec"], path, method, status)["description"]


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
