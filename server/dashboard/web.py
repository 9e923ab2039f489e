"""The dashboard's front door: the login form, the login cookie and its checks, CSRF on every form, and the
headers that keep its pages out of caches and frames.

The cookie holds only a random id (HttpOnly, SameSite=Strict, Secure over HTTPS); the login behind it lives
in the database (server/access/accounts.py), so logging out or revoking an account ends it at once.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for
from werkzeug.wrappers.response import Response as BaseResponse

from server.access.accounts import Accounts, WebLogin
from server.errors import TadbotError

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)

COOKIE = "tadbot_login"
LOGIN_FORM_COOKIE = "tadbot_login_form"
"""A random value the login form carries too: the form itself needs CSRF protection before any login."""
OPEN_ENDPOINTS = frozenset({"dashboard.login", "dashboard.login_post", "dashboard.static"})
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def accounts() -> Accounts:
    found: Accounts = current_app.extensions["tadbot.accounts"]
    return found


def current() -> WebLogin:
    """The logged-in reader of this request (the gate has made sure there is one)."""
    login: WebLogin = g.web_login
    return login


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    login = g.get("web_login")
    return render_template(template, login=login, csrf=login.csrf if login else "", **context), status


@bp.before_request
def _gate() -> BaseResponse | None:
    g.web_login = None
    cookie = request.cookies.get(COOKIE)
    if cookie:
        g.web_login = accounts().resume(cookie)
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if g.web_login is None:
        return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
    if request.method == "POST":
        sent = request.form.get("csrf", "")
        if not hmac.compare_digest(sent.encode(), g.web_login.csrf.encode()):
            raise TadbotError("bad_csrf", "this form is out of date: reload the page and try again", 400)
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


@bp.errorhandler(TadbotError)
def _error(exc: TadbotError) -> tuple[str, int]:
    """Errors on a page are a page that says what to do, never JSON or a traceback."""
    return page("error.html", exc.status, message=exc.message)


@bp.get("/login")
def login() -> BaseResponse | tuple[str, int]:
    if g.web_login is not None:
        return redirect(url_for("dashboard.clients"))
    form_token = secrets.token_urlsafe(24)
    body, status = page("login.html", form_token=form_token, next=_safe_next(), error="")
    response = current_app.make_response((body, status))
    response.set_cookie(
        LOGIN_FORM_COOKIE,
        form_token,
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
        max_age=3600,
    )
    return response


@bp.post("/login")
def login_post() -> BaseResponse | tuple[str, int]:
    form_token = request.cookies.get(LOGIN_FORM_COOKIE, "")
    sent = request.form.get("form_token", "")
    if not form_token or not hmac.compare_digest(sent.encode(), form_token.encode()):
        raise TadbotError("bad_csrf", "the login form is out of date: reload the page and try again", 400)
    name = request.form.get("name", "").strip()
    try:
        caller = accounts().login(
            name, request.form.get("password", ""), request.form.get("code", ""), request.remote_addr or "?"
        )
    except TadbotError as exc:
        status = exc.status
        body, _ = page("login.html", form_token=form_token, next=_safe_next(), error=exc.message, name=name)
        refused = current_app.make_response((body, status))
        if exc.retry_after_s:
            refused.headers["Retry-After"] = str(int(exc.retry_after_s))
        return refused
    done = redirect(_safe_next() or url_for("dashboard.clients"))
    done.set_cookie(
        COOKIE, accounts().open(caller), httponly=True, samesite="Strict", secure=request.is_secure, path="/"
    )
    done.delete_cookie(LOGIN_FORM_COOKIE)
    return done


@bp.post("/logout")
def logout() -> BaseResponse:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        accounts().close(cookie)
    response = redirect(url_for("dashboard.login"))
    response.delete_cookie(COOKIE, path="/")
    return response


def _safe_next() -> str:
    """Where to go after logging in: a path on this dashboard only, never another site."""
    target = request.values.get("next", "")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/dashboard/") or "\\" in target:
        return ""
    return target
