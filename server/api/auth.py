"""Bearer tokens: devices and therapists each have their own, created by `tadbot admin`."""

from __future__ import annotations

from flask import g, request

from server.errors import AuthError


def _bearer() -> str:
    """The request's bearer token, or "" when it sends none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def require(kind: str) -> None:
    """Run before each request of a blueprint; puts the caller (an access.policy.Caller) on `g.caller`."""
    from server.app import access

    token = _bearer()
    if not token:
        raise AuthError(
            "missing_token",
            f"send 'Authorization: Bearer <token>'; create one with `tadbot admin add-{kind} NAME`",
        )
    g.caller = access().caller(kind, token)


def known_caller() -> bool:
    """Whether the request carries a valid device or therapist token. Never refuses and never raises, so a
    public route can show more to a known caller while a probe without (or with a wrong) token is still
    answered."""
    from server.app import access

    token = _bearer()
    if not token:
        return False
    try:
        return access().known(token)
    except Exception:  # a broken database must not take the health answer down with it
        return False
