"""Bearer tokens: devices and therapists each have their own, created by `tadbot admin`."""

from __future__ import annotations

from flask import g, request

from server.errors import AuthError


def require(table: str) -> None:
    """Run before each request of a blueprint; puts the caller's row on `g.caller`."""
    from server.app import companion

    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(
            "missing_token",
            f"send 'Authorization: Bearer <token>'; create one with `tadbot admin add-{table[:-1]} NAME`",
        )
    row = companion().records.who(table, token.strip())
    if row is None:
        raise AuthError("bad_token", f"this token is not a valid {table[:-1]} token")
    g.caller = row
