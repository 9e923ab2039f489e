"""The dashboard in-process: logging in (password, second factor, lockout, rate limits), the login cookie and
CSRF, and that each page shows a therapist only their own clients. The browser test drives the same pages in
Chromium; these pin the rules one by one."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient

from server.access.accounts import Accounts, LoginPolicy
from server.access.policy import Access
from server.errors import AuthError, BadRequest
from server.records.rows import EmotionSample
from server.records.store import Records

PASSWORD = "a calm harbour at dusk"


@dataclass
class Board:
    app: Flask
    records: Records
    access: Access
    accounts: Accounts
    session_id: str

    def browser(self) -> FlaskClient:
        return self.app.test_client()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    from server.app import create_app
    from server.config import load_settings
    from server.conversation.components import Components

    records = Records(tmp_path / "db.sqlite3")
    access = Access(records)
    for name in ("dr-ana", "dr-bob"):
        access.add("therapist", name, actor="test")
    access.add("device", "pi", actor="test")
    access.enroll("pi", ["ana", "bob"], actor="test")
    access.assign("dr-ana", ["ana"], actor="test")
    access.assign("dr-bob", ["bob"], actor="test")
    sid = records.start_session("ana", None)
    records.add_turn(sid, "user", "My hands shake <script>alert(1)</script>", {})
    records.add_emotion_samples(
        sid,
        [
            EmotionSample(
                time.time(), "turn", 1, [{"label": "fear", "score": 0.8}, {"label": "sad", "score": 0.1}]
            )
        ],
    )
    records.add_turn(sid, "assistant", "Let us breathe out slowly together.", {})
    config = tmp_path / "tadbot.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path}"\n[dashboard]\ntimezone = "Europe/London"\nlockout_failures = 3\n',
        encoding="utf-8",
    )
    app = create_app(load_settings(config, env={}), Components(records=records))
    accounts = app.extensions["tadbot.accounts"]
    for name in ("dr-ana", "dr-bob"):
        accounts.set_password(name, PASSWORD, actor="test")
    yield Board(app, records, access, accounts, sid)
    app.extensions["tadbot"].close()


def _login(browser: FlaskClient, name: str, password: str = PASSWORD, code: str = "", next_: str = ""):  # type: ignore[no-untyped-def]
    form = browser.get("/dashboard/login")
    token = re.search(r'name="form_token" value="([^"]+)"', form.text)
    assert token is not None
    return browser.post(
        "/dashboard/login",
        data={"form_token": token.group(1), "name": name, "password": password, "code": code, "next": next_},
    )


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def test_pages_need_a_login_and_send_you_back_after_it(board: Board) -> None:
    browser = board.browser()
    url = f"/dashboard/sessions/{board.session_id}"
    answer = browser.get(url)
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/dashboard/login?next=")
    done = _login(browser, "dr-ana", next_=url)
    assert done.status_code == 302 and done.headers["Location"] == url
    cookie = done.headers["Set-Cookie"]
    assert "tadbot_login=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = browser.get(url)
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
    assert "Let us breathe out slowly together." in page.text and "<svg" in page.text
    for header in ("Content-Security-Policy", "X-Frame-Options", "Cache-Control"):
        assert header in page.headers
    assert page.headers["Cache-Control"] == "no-store"


def test_after_login_it_never_sends_you_to_another_site(board: Board) -> None:
    for target in ("https://evil.example/x", "//evil.example/x", "/api/v1/sessions", "/dashboard/\\evil"):
        done = _login(board.browser(), "dr-ana", next_=target)
        assert done.headers["Location"] == "/dashboard/", target


def test_a_wrong_password_says_nothing_about_which_part_was_wrong(board: Board) -> None:
    wrong_password = _login(board.browser(), "dr-ana", password="not it at all, sorry")
    unknown_name = _login(board.browser(), "dr-nobody")
    for answer in (wrong_password, unknown_name):
        assert answer.status_code == 401
        assert "the name, password or code is not right" in answer.text
        assert "tadbot_login=" not in answer.headers.get("Set-Cookie", "")
    lines = [(line["action"], line["target"]) for line in board.records.audit_lines(2)]
    assert lines == [("login_failed", "dr-nobody"), ("login_failed", "dr-ana")]


def test_repeated_failures_lock_the_name_until_an_admin_unlocks_it(board: Board) -> None:
    for _ in range(3):
        assert _login(board.browser(), "dr-ana", password="guess guess guess").status_code == 401
    locked = _login(board.browser(), "dr-ana")  # the right password, but the name is locked
    assert locked.status_code == 429 and 0 < int(locked.headers["Retry-After"]) <= 15 * 60
    assert "tadbot admin unlock" in locked.text
    assert _login(board.browser(), "dr-bob").status_code == 302  # another name is not held up
    board.accounts.unlock("dr-ana", actor="test")
    assert _login(board.browser(), "dr-ana").status_code == 302


def test_one_address_trying_many_names_is_slowed_down(board: Board) -> None:
    from server.access.accounts import ADDRESS_FAILURES

    for i in range(ADDRESS_FAILURES):
        with pytest.raises(AuthError):
            board.accounts.login(f"guess-{i}", "wrong password here", "", "10.0.0.9")
    with pytest.raises(Exception) as refused:
        board.accounts.login("dr-ana", PASSWORD, "", "10.0.0.9")
    assert getattr(refused.value, "status", None) == 429
    assert board.accounts.login("dr-ana", PASSWORD, "", "10.0.0.10").name == "dr-ana"


def test_the_second_factor_is_needed_once_on_and_a_code_works_once(board: Board) -> None:
    uri = board.accounts.totp_on("dr-ana", actor="test")
    assert uri.startswith("otpauth://totp/TADBot:dr-ana?")
    totp = pyotp.parse_uri(uri)
    assert _login(board.browser(), "dr-ana").status_code == 401
    assert (
        _login(board.browser(), "dr-ana", code="000000" if totp.now() != "000000" else "111111").status_code
        == 401
    )
    code = totp.now()
    assert _login(board.browser(), "dr-ana", code=code).status_code == 302
    assert _login(board.browser(), "dr-ana", code=code).status_code == 401  # no replay
    board.accounts.totp_off("dr-ana", actor="test")
    assert _login(board.browser(), "dr-ana").status_code == 302


def test_forms_without_the_login_token_are_refused(board: Board) -> None:
    browser = board.browser()
    _login(browser, "dr-ana")
    erase = "/dashboard/clients/ana/erase"
    assert browser.post(erase, data={"confirm": "ana"}).status_code == 400
    assert browser.post(erase, data={"confirm": "ana", "csrf": "forged"}).status_code == 400
    assert board.records.session(board.session_id).client == "ana"
    stale = board.browser().post("/dashboard/login", data={"name": "dr-ana", "password": PASSWORD})
    assert stale.status_code == 400 and "out of date" in stale.text


def test_a_therapist_sees_only_their_own_clients_pages(board: Board) -> None:
    browser = board.browser()
    _login(browser, "dr-bob")
    listing = browser.get("/dashboard/")
    assert ">bob<" in listing.text and ">ana<" not in listing.text
    for url in (
        "/dashboard/clients/ana",
        f"/dashboard/sessions/{board.session_id}",
        f"/dashboard/sessions/{board.session_id}/export.pdf",
        f"/dashboard/sessions/{board.session_id}/export.csv",
        "/dashboard/clients/ana/erase",
    ):
        answer = browser.get(url)
        assert answer.status_code == 404, url
        assert "Not available" in answer.text and "hands shake" not in answer.text
        assert answer.mimetype == "text/html"


def test_the_clients_list_marks_unread_sessions_and_crises(board: Board) -> None:
    board.records.add_safety_event(board.session_id, None, "crisis", "wants_to_die", "helpline given")
    browser = board.browser()
    _login(browser, "dr-ana")
    assert "1 unread" in browser.get("/dashboard/").text and "Crisis ×1" in browser.get("/dashboard/").text
    session = browser.get(f"/dashboard/sessions/{board.session_id}")
    assert "wants_to_die" in session.text
    assert "unread" not in browser.get("/dashboard/").text
    assert re.search(r"<time>\d\d:\d\d:\d\d</time>", session.text)
    assert "Times in GMT" in session.text or "Times in BST" in session.text  # the clinic's zone, named


def test_exports_are_files_and_audited(board: Board) -> None:
    import io

    from pypdf import PdfReader

    browser = board.browser()
    _login(browser, "dr-ana")
    pdf = browser.get(f"/dashboard/sessions/{board.session_id}/export.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert "attachment" in pdf.headers["Content-Disposition"]
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.data)).pages)
    assert "ana" in text and "My hands shake" in text
    csv = browser.get(f"/dashboard/sessions/{board.session_id}/export.csv")
    assert csv.status_code == 200 and "My hands shake" in csv.text
    actions = [line["action"] for line in board.records.audit_lines(2)]
    assert actions == ["export_csv", "export_pdf"]


def test_erasing_asks_for_the_pseudonym_and_names_what_goes(board: Board) -> None:
    browser = board.browser()
    _login(browser, "dr-ana")
    confirm = browser.get("/dashboard/clients/ana/erase")
    assert "1 session, with 2 turns" in confirm.text and "pi will no longer open sessions" in confirm.text
    wrong = browser.post("/dashboard/clients/ana/erase", data={"csrf": _csrf(confirm.text), "confirm": "an"})
    assert wrong.status_code == 400 and "nothing was erased" in wrong.text
    assert board.records.session(board.session_id).client == "ana"
    done = browser.post("/dashboard/clients/ana/erase", data={"csrf": _csrf(confirm.text), "confirm": "ana"})
    assert done.status_code == 302
    assert "Erased ana" in browser.get(done.headers["Location"]).text
    assert board.access.enrolled(1) == ["bob"]
    assert ("therapist:dr-ana", "delete_client") in [
        (x["actor"], x["action"]) for x in board.records.audit_lines(3)
    ]


def test_logging_out_or_revoking_ends_the_login(board: Board) -> None:
    browser = board.browser()
    _login(browser, "dr-ana")
    home = browser.get("/dashboard/")
    assert home.status_code == 200
    assert browser.post("/dashboard/logout", data={"csrf": _csrf(home.text)}).status_code == 302
    assert browser.get("/dashboard/").status_code == 302
    other = board.browser()
    _login(other, "dr-bob")
    assert other.get("/dashboard/").status_code == 200
    board.access.revoke("therapist", "dr-bob", actor="test")
    assert other.get("/dashboard/").status_code == 302
    assert _login(board.browser(), "dr-bob").status_code == 401


def test_a_login_ends_after_the_idle_time(tmp_path: Path) -> None:
    records = Records(tmp_path / "db.sqlite3")
    Access(records).add("therapist", "dr", actor="test")
    accounts = Accounts(records, LoginPolicy(idle_s=60, max_s=3600))
    accounts.set_password("dr", PASSWORD, actor="test")
    cookie = accounts.open(accounts.login("dr", PASSWORD, "", "127.0.0.1"))
    assert accounts.resume(cookie) is not None
    with records.transaction() as db:
        db.execute("UPDATE web_sessions SET seen_at = seen_at - 61")
    assert accounts.resume(cookie) is None
    assert accounts.resume("not a cookie") is None


def test_passwords_are_argon2id_and_must_be_long_enough(tmp_path: Path) -> None:
    records = Records(tmp_path / "db.sqlite3")
    Access(records).add("therapist", "dr", actor="test")
    accounts = Accounts(records)
    with pytest.raises(BadRequest, match="12 to 1024 characters"):
        accounts.set_password("dr", "short", actor="test")
    accounts.set_password("dr", PASSWORD, actor="test")
    with records.transaction() as db:
        (stored,) = db.execute("SELECT password_hash FROM therapists").fetchone()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
