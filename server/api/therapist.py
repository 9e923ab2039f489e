"""The therapist's API: read sessions, export a session log, erase a client."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from server.api.auth import require
from server.app import companion
from server.errors import BadRequest
from server.export import EXPORTERS

bp = Blueprint("therapist", __name__, url_prefix="/api/v1")


@bp.before_request
def _authenticate() -> None:
    require("therapists")


@bp.get("/sessions")
def list_sessions() -> Response:
    client = request.args.get("client")
    engine = companion()
    sessions = engine.records.list_sessions(client)
    target = f"client={client}" if client else "all"
    engine.records.audit(f"therapist:{g.caller['name']}", "list_sessions", target)
    return jsonify({"sessions": sessions})


@bp.get("/sessions/<session_id>")
def read_session(session_id: str) -> Response:
    engine = companion()
    log = engine.records.session_log(session_id)
    engine.records.audit(f"therapist:{g.caller['name']}", "read_session", session_id)
    return jsonify(log)


@bp.get("/sessions/<session_id>/export")
def export_session(session_id: str) -> Response:
    fmt = request.args.get("format", "json")
    if fmt not in EXPORTERS:
        raise BadRequest("bad_format", f"format must be one of: {', '.join(EXPORTERS)}")
    engine = companion()
    log = engine.records.session_log(session_id)
    engine.records.audit(f"therapist:{g.caller['name']}", f"export_{fmt}", session_id)
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
    erased = companion().forget_client(client, f"therapist:{g.caller['name']}")
    return jsonify({"client": client, "erased": erased})
