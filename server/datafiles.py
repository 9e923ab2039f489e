"""The versioned data files shipped with the code (crisis rules, guard, exercises, commands, prompt lines,
the model catalogue, the bench's and training's lists): one way to read and check them.

Each file is read once, where its module needs it. A file of another layout version is refused rather than
half-read, and its module's parser raises `Invalid` (or lets a KeyError, TypeError or ValueError out) with
what is wrong; here either becomes one error, with the module's own code, naming the file, so a bad edit
stops the server with a clear line.

The format follows the file's name. A .toml file carries its layout in a top-level `version` key. A .csv file
carries it in its first line, `# version: 1`, before the header row; the parser is handed
`{"version": 1, "rows": [...]}`, one dict per row keyed by the header.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

from server.errors import ConfigError, TadbotError

T = TypeVar("T")

_CSV_VERSION = re.compile(r"#\s*version:\s*(\d+)\s*")
_PARSE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, re.error)
"""What a parser's indexing and converting raise on a file that strays from its layout."""


class Invalid(ValueError):
    """What is wrong with a data file; the loader adds the file's name."""


@dataclass(frozen=True)
class DataFile(Generic[T]):
    """One data file: where it is shipped, the layout version this code reads, and how to check it."""

    shipped: str
    """Its path in the source tree, "<package>/.../<name>": how the package finds it, and errors name it."""
    version: int
    """The layout this code reads; a file of another version is refused."""
    code: str
    """The code of the error a bad file raises."""
    parse: Callable[[dict[str, Any]], T]
    """Checks the document and makes what the module uses of it."""
    error: type[TadbotError] = ConfigError
    unversioned: int | None = None
    """The version a file without one is read as: for files written before they carried one (a user's own
    model catalogue). None refuses such a file."""

    def load(self, path: Path | None = None) -> T:
        """The shipped file, or the one at `path`, read and checked."""
        source = str(path) if path is not None else self.shipped
        try:
            if path is not None:
                text = path.read_text(encoding="utf-8")
            else:
                package, _, name = self.shipped.partition("/")
                text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(self.code, f"{source}: cannot read ({exc})") from exc
        return self.parse_text(text, source)

    def parse_text(self, text: str, source: str) -> T:
        """Read and check `text`; `source` names it in the error a bad file raises."""
        try:
            document = _csv(text) if source.endswith(".csv") else tomllib.loads(text)
        except (tomllib.TOMLDecodeError, csv.Error) as exc:
            kind = "CSV" if source.endswith(".csv") else "TOML"
            raise self.error(self.code, f"{source}: not valid {kind} ({exc})") from exc
        found = document.get("version", self.unversioned)
        if type(found) is not int or found != self.version:
            raise self.error(self.code, f"{source}: version is {found!r}; expected {self.version}")
        try:
            return self.parse(document)
        except Invalid as exc:
            raise self.error(self.code, f"{source}: {exc}") from None
        except _PARSE_ERRORS as exc:
            raise self.error(self.code, f"{source}: {type(exc).__name__}: {exc}") from exc


def _csv(text: str) -> dict[str, Any]:
    first, _, rest = text.partition("\n")
    version = _CSV_VERSION.fullmatch(first.strip())
    if version is None:
        return {"rows": list(csv.DictReader(io.StringIO(text)))}
    return {"version": int(version.group(1)), "rows": list(csv.DictReader(io.StringIO(rest)))}
