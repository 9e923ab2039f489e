"""Every error leaves as `{"error": {"code", "message"}}`; nothing unexpected leaks internals."""

from __future__ import annotations

import logging
import math

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from server.errors import TadbotError

_LOGGER = logging.getLogger(__name__)

RETRY_AFTER_S = 5
"""What a busy or degraded server asks a device to wait before trying again."""

_HTTP_MESSAGES = {
    404: "no such endpoint; see GET /api/v1/openapi.json",
    405: "method not allowed on this endpoint; see GET /api/v1/openapi.json",
    413: "the request is too large; send a shorter utterance or a smaller frame "
    "(limit: server.max_upload_mb)",
}


def error_response(code: str, message: str, status: int) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def register(app: Flask) -> None:
    @app.errorhandler(TadbotError)
    def _tadbot(exc: TadbotError) -> tuple[Response, int]:
        if exc.status >= 500:
            _LOGGER.warning("%s: %s", exc.code, exc.message)
        response, status = error_response(exc.code, exc.message, exc.status)
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
        elif exc.status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response, status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(code, _HTTP_MESSAGES.get(status, exc.description or code), status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        _LOGGER.exception("unhandled error")
        return error_response("internal_error", "the server failed; the error is in its log", 500)
