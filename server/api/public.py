"""Unauthenticated endpoints: health for supervisors and the API description."""

from __future__ import annotations

import json
from importlib import metadata, resources

from flask import Blueprint, Response, jsonify

from server.api.auth import known_caller
from server.app import companion
from server.conversation.components import ComponentStatus

bp = Blueprint("public", __name__, url_prefix="/api/v1")


def version() -> str:
    try:
        return metadata.version("tadbot")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@bp.get("/health")
def health() -> Response:
    """Anyone gets ok/degraded (probes, systemd); only a valid token sees components, whose details name
    model paths and error strings."""
    components = companion().components
    status = dict(components.status)
    try:
        components.records.check()
        problem = components.records.writes.problem()
    except Exception as exc:  # the answer must still come back, saying what is wrong
        problem = str(exc)
    if problem is not None:
        status["db"] = ComponentStatus("error", problem, "server.data_dir")
    overall = "ok" if all(s.status == "ok" for s in status.values()) else "degraded"
    if not known_caller():
        return jsonify({"status": overall})
    return jsonify(
        {
            "status": overall,
            "components": {name: s.as_json() for name, s in status.items()},
            "version": version(),
        }
    )


@bp.get("/openapi.json")
def openapi() -> Response:
    spec = json.loads(resources.files("server.api").joinpath("openapi.json").read_text(encoding="utf-8"))
    spec["info"]["version"] = version()
    return jsonify(spec)
