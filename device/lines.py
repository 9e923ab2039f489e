"""What the device says in its own words, read from `lines.toml` beside this module: data, not code.

The server speaks through its reply; these lines cover the moments it cannot (an error code, a server that
is down), so the person is never met with silence, and each failure gets words that fit it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from device.datafiles import read_versioned
from device.errors import DeviceError

VERSION = 1
"""The layout of lines.toml this code reads; a file of another version is refused, not half-read."""
_STATUS_KEYS = ("waiting_for_server", "refused")


@dataclass(frozen=True)
class Lines:
    """The device's own lines: status lines, one line per error code (`default` for the rest), and the
    gentle acknowledgements for a long wait."""

    waiting_for_server: str
    refused: str
    errors: Mapping[str, str]
    thinking: tuple[str, ...]

    def for_error(self, code: str) -> str:
        """The line to speak when a turn failed with `code`."""
        return self.errors.get(code, self.errors["default"])


def _table(document: dict[str, object], name: str, where: str) -> dict[str, str]:
    table = document.get(name)
    if not isinstance(table, dict):
        raise DeviceError("bad_lines", f"{where} has no [{name}] table")
    for key, line in table.items():
        if not isinstance(line, str) or not line.strip() or "\n" in line:
            raise DeviceError("bad_lines", f"{where}: [{name}] {key} must be one line of text")
    return table


def load_lines(path: Path | None = None) -> Lines:
    """Read and check the lines: the packaged lines.toml, or `path`. A bad file is one-line DeviceError."""
    document, where = read_versioned("lines.toml", path, "bad_lines", VERSION)
    status = _table(document, "status", where)
    errors = _table(document, "errors", where)
    unknown = sorted(set(status) - set(_STATUS_KEYS))
    if unknown:
        raise DeviceError("bad_lines", f"{where}: unknown [status] key {unknown[0]!r}")
    missing = [f"[status] {key}" for key in _STATUS_KEYS if key not in status]
    missing += ["[errors] default"] if "default" not in errors else []
    if missing:
        raise DeviceError("bad_lines", f"{where} lacks {', '.join(missing)}")
    thinking = document.get("thinking")
    if (
        not isinstance(thinking, list)
        or len(thinking) < 2
        or not all(isinstance(line, str) and line.strip() and "\n" not in line for line in thinking)
    ):
        raise DeviceError("bad_lines", f"{where}: thinking must list at least two one-line acknowledgements")
    return Lines(status["waiting_for_server"], status["refused"], errors, tuple(thinking))
