"""The therapist's API: read sessions, export a session log, erase a client; each only for the clients
assigned to the caller (an admin may erase any), and each in the audit log."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from server.api.auth import require
from server.app import access, companion
from server.errors import BadRequest, NotFound
from server.records.export import EXPORTERS

bp = Blueprint("therapist", __name__, url_prefix="/api/v1")


@bp.before_request
def _authenticate() -> None:
    require("therapist")


@bp.get("/sessions")
def list_sessions() -> Response:
    client = request.args.get("client")
    mine = access().assigned(g.caller)
    if client is not None and client not in mine:
        raise NotFound("unknown_client", f"no client {client!r} among those assigned to you")
    engine = companion()
    sessions = engine.records.list_sessions([client] if client else mine)
    engine.records.audit(g.caller.actor, "list_sessions", f"client={client}" if client else "all")
    return jsonify({"sessions": sessions})


@bp.get("/sessions/<session_id>")
def read_session(session_id: str) -> Response:
    engine = companion()
    log = _readable_log(session_id)
    engine.records.audit(g.caller.actor, "read_session", session_id)
    return jsonify(log)


@bp.get("/sessions/<session_id>/export")
def export_session(session_id: str) -> Response:
    fmt = request.args.get("format", "json")
    if fmt not in EXPORTERS:
        raise BadRequest("bad_format", f"format must be one of: {', '.join(EXPORTERS)}")
    log = _readable_log(session_id)
    companion().records.audit(g.caller.actor, f"export_{fmt}", session_id)
    body, mimetype = EXPORTERS[fmt](log)
    return Response(
        body,
        mimetype=mimetype,
        headers={
            "Content-Disposition": f'attachment; filename="tadbot-session-{session_id}.{fmt}"',
            "Cache-Control": "no-store",
        },
    )


@bp.delete("/clients/<client>")
def delete_client(client: str) -> Response:
    if not access().may_erase(g.caller, client):
        raise NotFound("unknown_client", f"no client {client!r} among those you may erase")
    erased = companion().forget_client(client, g.caller.actor)
    return jsonify({"client": client, "erased": erased})


def _readable_log(session_id: str) -> dict[str, object]:
    access().require_session(g.caller, session_id)
    return companion().records.session_log(session_id)
