"""The versioned data files shipped in server/data/ (exercises, commands): one way to read and check them.

Each file is checked once at start-up by its module's own parser, which raises `Invalid` with what is
wrong; here that becomes one ConfigError naming the file, so a bad edit stops the server with a clear line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

from server.errors import ConfigError

T = TypeVar("T")


class Invalid(ValueError):
    """What is wrong with a data file; `parse_data_file` adds the file's name."""


def parse_data_file(text: str, source: str, code: str, parse: Callable[[dict[str, Any]], T]) -> T:
    """Parse and check the TOML `text`; `source` names it, and `code` is the error's code, if it is bad."""
    try:
        return parse(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(code, f"{source}: not valid TOML ({exc})") from exc
    except Invalid as exc:
        raise ConfigError(code, f"{source}: {exc}") from None


def load_data_file(name: str, code: str, parse: Callable[[dict[str, Any]], T]) -> T:
    """The packaged server/data/`name`, checked."""
    source = f"server/data/{name}"
    try:
        text = resources.files("server").joinpath("data", name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(code, f"{source}: cannot read ({exc})") from exc
    return parse_data_file(text, source, code, parse)
