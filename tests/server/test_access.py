"""Who may reach what: every API route for every role, on their own client and on another's, and tokens that
are expired, revoked or rotated. The real app in-process over a real SQLite, no models."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from server.access.policy import CHECK_CLIENT, Access
from server.errors import AuthError, BadRequest, NotFound
from server.records.store import Records


@dataclass
class Clinic:
    app: Flask
    client: FlaskClient
    access: Access
    records: Records
    tokens: dict[str, str]
    sessions: dict[str, str]

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def clinic(tmp_path: Path) -> Clinic:
    """Two devices and two therapists, each with their own client (ana, bob); an admin with none; an expired
    and a revoked token; one open session per client."""
    from server.app import create_app
    from server.config import load_settings
    from server.conversation.components import Components

    records = Records(tmp_path / "db.sqlite3")
    access = Access(records)
    tokens = {
        "pi-ana": access.add("device", "pi-ana", actor="test"),
        "pi-bob": access.add("device", "pi-bob", actor="test"),
        "dr-ana": access.add("therapist", "dr-ana", actor="test"),
        "dr-bob": access.add("therapist", "dr-bob", actor="test"),
        "admin": access.add("therapist", "boss", role="admin", actor="test"),
        "expired": access.add("therapist", "dr-old", expires_days=1, actor="test"),
        "revoked": access.add("device", "pi-lost", actor="test"),
    }
    access.enroll("pi-ana", ["ana"], actor="test")
    access.enroll("pi-bob", ["bob"], actor="test")
    access.enroll("pi-lost", ["ana"], actor="test")
    access.assign("dr-ana", ["ana"], actor="test")
    access.assign("dr-bob", ["bob"], actor="test")
    access.assign("dr-old", ["ana"], actor="test")
    access.revoke("device", "pi-lost", actor="test")
    with records.transaction() as db:
        db.execute("UPDATE therapists SET expires_at = ? WHERE name = 'dr-old'", (time.time() - 1,))
    config = tmp_path / "tadbot.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}"\nsession_idle_s = 0\n', encoding="utf-8")
    app = create_app(load_settings(config, env={}), Components(records=records))
    clinic = Clinic(app, app.test_client(), access, records, tokens, {})
    for who, name in (("pi-ana", "ana"), ("pi-bob", "bob")):
        answer = clinic.client.post("/api/v1/sessions", headers=clinic.headers(who), json={})
        assert answer.status_code == 201, answer.json
        assert answer.json["client"] == name
        clinic.sessions[name] = answer.json["session_id"]
    yield clinic
    app.extensions["tadbot"].close()


def _code(answer: object) -> tuple[int, str]:
    status = answer.status_code  # type: ignore[attr-defined]
    body = answer.get_json(silent=True) or {}  # type: ignore[attr-defined]
    return status, (body.get("error") or {}).get("code", "")


DEVICE_ROUTES = (
    ("post", "/api/v1/sessions/{sid}/turns", {"data": {"text": "hello"}}),
    ("post", "/api/v1/sessions/{sid}/frames", {"data": {}}),
    ("post", "/api/v1/sessions/{sid}/end", {}),
)
THERAPIST_ROUTES = (
    ("get", "/api/v1/sessions/{sid}", {}),
    ("get", "/api/v1/sessions/{sid}/export?format=csv", {}),
)


@pytest.mark.parametrize(("method", "path", "kwargs"), DEVICE_ROUTES)
def test_a_device_reaches_only_its_own_sessions(clinic: Clinic, method: str, path: str, kwargs: dict) -> None:
    url = path.format(sid=clinic.sessions["ana"])
    call = getattr(clinic.client, method)
    assert _code(call(url, headers=clinic.headers("pi-bob"), **kwargs)) == (404, "unknown_session")
    for who in ("dr-ana", "admin"):  # a therapist's token is no device token
        assert _code(call(url, headers=clinic.headers(who), **kwargs)) == (401, "bad_token")
    assert _code(call(url, headers=clinic.headers("revoked"), **kwargs)) == (401, "revoked_token")
    assert _code(call(url, **kwargs)) == (401, "missing_token")
    own = call(url, headers=clinic.headers("pi-ana"), **kwargs)
    assert own.status_code not in (401, 403, 404), own.get_json(silent=True)


def test_a_device_opens_sessions_only_for_the_clients_it_is_enrolled_for(clinic: Clinic) -> None:
    post = clinic.client.post
    assert _code(post("/api/v1/sessions", headers=clinic.headers("pi-ana"), json={"client": "bob"})) == (
        403,
        "client_not_enrolled",
    )
    # A guessed pseudonym that exists nowhere is refused the same way: no one's record is made or read.
    assert _code(post("/api/v1/sessions", headers=clinic.headers("pi-ana"), json={"client": "client"})) == (
        403,
        "client_not_enrolled",
    )
    with clinic.records.transaction() as db:
        assert db.execute("SELECT 1 FROM clients WHERE pseudonym = 'client'").fetchone() is None
    named = post("/api/v1/sessions", headers=clinic.headers("pi-ana"), json={"client": "ana"})
    assert named.status_code == 201 and named.json["client"] == "ana"
    assert clinic.records.session(named.json["session_id"]).client == "ana"
    # The doctor's checks go under a pseudonym every device may use, never into a person's record.
    check = post("/api/v1/sessions", headers=clinic.headers("pi-bob"), json={"client": CHECK_CLIENT})
    assert check.status_code == 201 and check.json["client"] == CHECK_CLIENT
    assert _code(post("/api/v1/sessions", headers=clinic.headers("revoked"), json={})) == (
        401,
        "revoked_token",
    )


def test_a_device_enrolled_for_none_or_several_is_told_what_to_do(clinic: Clinic) -> None:
    lonely = clinic.access.add("device", "pi-new", actor="test")
    answer = clinic.client.post("/api/v1/sessions", headers={"Authorization": f"Bearer {lonely}"}, json={})
    assert _code(answer) == (403, "not_enrolled")
    assert "tadbot admin enroll pi-new CLIENT" in answer.json["error"]["message"]
    clinic.access.enroll("pi-ana", ["cai"], actor="test")
    answer = clinic.client.post("/api/v1/sessions", headers=clinic.headers("pi-ana"), json={})
    assert _code(answer) == (400, "client_required")
    assert "bob" not in answer.json["error"]["message"]


def test_taking_a_client_off_a_device_closes_its_open_session_to_it(clinic: Clinic) -> None:
    url = f"/api/v1/sessions/{clinic.sessions['ana']}/turns"
    clinic.access.enroll("pi-ana", ["ana"], actor="test", remove=True)
    answer = clinic.client.post(url, headers=clinic.headers("pi-ana"), data={"text": "hello"})
    assert _code(answer) == (403, "client_not_enrolled")


@pytest.mark.parametrize(("method", "path", "kwargs"), THERAPIST_ROUTES)
def test_a_therapist_reads_only_the_clients_assigned_to_them(
    clinic: Clinic, method: str, path: str, kwargs: dict
) -> None:
    url = path.format(sid=clinic.sessions["ana"])
    call = getattr(clinic.client, method)
    assert call(url, headers=clinic.headers("dr-ana")).status_code == 200
    for who in ("dr-bob", "admin"):  # an admin manages access; it does not browse records
        assert _code(call(url, headers=clinic.headers(who))) == (404, "unknown_session")
    assert _code(call(url, headers=clinic.headers("pi-ana"))) == (401, "bad_token")
    answer = call(url, headers=clinic.headers("expired"))
    assert _code(answer) == (401, "expired_token")
    assert "tadbot admin rotate therapist" in answer.json["error"]["message"]
    missing = path.format(sid="0" * 32)
    assert _code(call(missing, headers=clinic.headers("dr-ana"))) == (404, "unknown_session")


def test_listing_sessions_shows_only_ones_own_clients(clinic: Clinic) -> None:
    def listed(who: str, query: str = "") -> set[str]:
        answer = clinic.client.get(f"/api/v1/sessions{query}", headers=clinic.headers(who))
        assert answer.status_code == 200, answer.json
        return {s["client"] for s in answer.json["sessions"]}

    assert listed("dr-ana") == {"ana"}
    assert listed("dr-bob") == {"bob"}
    assert listed("admin") == set()
    assert listed("dr-ana", "?client=ana") == {"ana"}
    answer = clinic.client.get("/api/v1/sessions?client=bob", headers=clinic.headers("dr-ana"))
    assert _code(answer) == (404, "unknown_client")
    assert _code(clinic.client.get("/api/v1/sessions", headers=clinic.headers("pi-ana"))) == (
        401,
        "bad_token",
    )


def test_erasing_needs_the_client_to_be_ones_own_or_an_admin(clinic: Clinic) -> None:
    delete = clinic.client.delete
    assert _code(delete("/api/v1/clients/ana", headers=clinic.headers("dr-bob"))) == (404, "unknown_client")
    assert _code(delete("/api/v1/clients/ana", headers=clinic.headers("pi-ana"))) == (401, "bad_token")
    assert clinic.records.session(clinic.sessions["ana"]).client == "ana"
    assert delete("/api/v1/clients/ana", headers=clinic.headers("dr-ana")).json["erased"]["sessions"] == 1
    admin = delete("/api/v1/clients/bob", headers=clinic.headers("admin"))
    assert admin.status_code == 200 and admin.json["erased"]["sessions"] == 1
    lines = [(line["actor"], line["action"]) for line in clinic.records.audit_lines(5)]
    assert ("therapist:dr-ana", "delete_client") in lines and ("admin:boss", "delete_client") in lines
    # Erased with the client: the device's enrolment, so it cannot start writing a new record for them.
    assert _code(clinic.client.post("/api/v1/sessions", headers=clinic.headers("pi-ana"), json={})) == (
        403,
        "not_enrolled",
    )


def test_every_read_list_and_export_is_audited_with_who(clinic: Clinic) -> None:
    sid = clinic.sessions["ana"]
    for url in (f"/api/v1/sessions/{sid}", f"/api/v1/sessions/{sid}/export?format=json", "/api/v1/sessions"):
        assert clinic.client.get(url, headers=clinic.headers("dr-ana")).status_code == 200
    lines = [(line["actor"], line["action"], line["target"]) for line in clinic.records.audit_lines(3)]
    assert lines == [
        ("therapist:dr-ana", "list_sessions", "all"),
        ("therapist:dr-ana", "export_json", sid),
        ("therapist:dr-ana", "read_session", sid),
    ]


def test_health_shows_details_only_to_a_valid_token(clinic: Clinic) -> None:
    for who in ("expired", "revoked"):
        assert set(clinic.client.get("/api/v1/health", headers=clinic.headers(who)).json) == {"status"}
    assert "components" in clinic.client.get("/api/v1/health", headers=clinic.headers("pi-ana")).json


def test_rotating_a_token_retires_the_old_one_and_revoking_ends_it(clinic: Clinic) -> None:
    old = clinic.tokens["dr-ana"]
    new = clinic.access.rotate("therapist", "dr-ana", actor="test")
    with pytest.raises(AuthError) as refused:
        clinic.access.caller("therapist", old)
    assert refused.value.code == "bad_token"
    assert "`tadbot admin rotate therapist NAME`" in refused.value.message
    assert clinic.access.caller("therapist", new).name == "dr-ana"
    clinic.access.revoke("therapist", "dr-ana", actor="test")
    with pytest.raises(AuthError) as revoked:
        clinic.access.caller("therapist", new)
    assert revoked.value.code == "revoked_token"
    with pytest.raises(BadRequest, match="--replace"):
        clinic.access.rotate("therapist", "dr-ana", actor="test")
    again = clinic.access.add("therapist", "dr-ana", actor="test", replace=True)
    assert clinic.access.caller("therapist", again).role == "therapist"


def test_expiry_is_set_and_cleared(clinic: Clinic) -> None:
    at = clinic.access.expire("device", "pi-ana", 2, actor="test")
    assert at is not None and 2 * 86400 - 5 < at - time.time() <= 2 * 86400
    assert clinic.access.expire("device", "pi-ana", None, actor="test") is None
    assert clinic.access.caller("device", clinic.tokens["pi-ana"]).name == "pi-ana"


def test_names_and_clients_are_checked(clinic: Clinic) -> None:
    with pytest.raises(BadRequest, match="not a valid name"):
        clinic.access.add("device", "../pi", actor="test")
    with pytest.raises(BadRequest, match="already exists"):
        clinic.access.add("device", "pi-ana", actor="test")
    with pytest.raises(NotFound, match="no client 'zed'"):
        clinic.access.assign("dr-ana", ["zed"], actor="test")
    with pytest.raises(NotFound, match="no therapist 'dr-nobody'"):
        clinic.access.assign("dr-nobody", ["ana"], actor="test")


def test_listing_names_state_and_clients_without_secrets(clinic: Clinic) -> None:
    rows = {(r["kind"], r["name"]): r for r in clinic.access.listing()}
    assert rows[("device", "pi-ana")]["clients"] == ["ana"]
    assert rows[("therapist", "boss")]["role"] == "admin"
    assert rows[("device", "pi-lost")]["revoked_at"] is not None
    assert rows[("therapist", "dr-old")]["expires_at"] < time.time()
    assert rows[("device", "pi-ana")]["last_seen"] is not None  # it opened a session
    assert all("token" not in key for row in rows.values() for key in row)


def test_an_old_data_dir_keeps_its_devices_working(tmp_path: Path) -> None:
    """A data dir from before enrolment: each device is enrolled for the clients it served, and therapists
    start with none (an admin assigns them)."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE clients (id INTEGER PRIMARY KEY, pseudonym TEXT NOT NULL UNIQUE, "
        "created_at REAL NOT NULL);"
        "CREATE TABLE devices (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL "
        "UNIQUE, created_at REAL NOT NULL);"
        "CREATE TABLE therapists (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
        "token_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);"
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, client_id INTEGER NOT NULL, device_id INTEGER, "
        "started_at REAL NOT NULL, ended_at REAL, summary TEXT);"
        "INSERT INTO clients VALUES (1, 'ana', 0), (2, 'bob', 0);"
        "INSERT INTO devices VALUES (1, 'pi', 'h1', 0);"
        "INSERT INTO therapists VALUES (1, 'dr', 'h2', 0);"
        "INSERT INTO sessions VALUES ('s1', 1, 1, 0, NULL, NULL), ('s2', 2, NULL, 0, NULL, NULL);"
    )
    db.commit()
    db.close()
    access = Access(Records(path))
    assert access.enrolled(1) == ["ana"]
    rows = {(r["kind"], r["name"]): r for r in access.listing()}
    assert rows[("therapist", "dr")]["clients"] == [] and rows[("therapist", "dr")]["role"] == "therapist"
