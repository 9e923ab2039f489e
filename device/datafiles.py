"""The device's versioned data files (lines.toml, exercises.toml, the crisis files, ...): one way to read
them, and one error.

A file shipped in the package is read from it; tests and a curious owner may pass another path. A file that
cannot be read, or has another layout version, is refused with one DeviceError naming it.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

from device.errors import DeviceError


def read_versioned(name: str, path: Path | None, code: str, version: int) -> tuple[dict[str, Any], str]:
    """The TOML document of device/`name` (or `path`), checked for `version`, and how errors name it."""
    where = str(path) if path is not None else f"device/{name}"
    try:
        if path is None:
            text = importlib.resources.files("device").joinpath(name).read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeviceError(code, f"cannot read {where}: {exc}") from exc
    if document.get("version") != version:
        raise DeviceError(code, f"{where} has version {document.get('version')!r}; expected {version}")
    return document, where
