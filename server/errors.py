"""One error hierarchy with machine codes; the API maps each to a JSON body and a status, the command line
to one line on stderr and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable


class TadbotError(Exception):
    """An error a caller can act on: `code` is stable, `message` says what to do."""

    status = 500
    retry_after_s: float | None = None
    """Seconds a caller should wait before trying again, sent as Retry-After (503s get a default)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status


class ConfigError(TadbotError):
    """A config value is missing or invalid; raised before anything starts."""

    status = 500


class BadRequest(TadbotError):
    status = 400


class AuthError(TadbotError):
    status = 401


class NotFound(TadbotError):
    status = 404


class SttError(TadbotError):
    """The audio could not be read or transcribed."""

    status = 400


class FerError(TadbotError):
    """The frame could not be decoded or classified."""

    status = 400


class LlmError(TadbotError):
    """The language model could not produce a reply."""

    status = 503


class MemoryStoreError(TadbotError):
    """The vector memory could not be read or written."""

    status = 503


class ModelError(TadbotError):
    """A model file is missing, corrupt or cannot be fetched."""

    status = 500


def exit_code(run: Callable[[], int]) -> int:
    """Run a command: a ConfigError is bad input (exit 2), any other TadbotError exit 1, Ctrl-C 130, each
    error one line on stderr and never a traceback."""
    try:
        return int(run())
    except ConfigError as exc:
        print(f"tadbot: error: {exc.message}", file=sys.stderr)
        return 2
    except TadbotError as exc:
        print(f"tadbot: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
