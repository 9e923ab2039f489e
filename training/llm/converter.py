"""llama.cpp's own Hugging Face → GGUF converter, taken from the llama-cpp-python sdist of the installed
version, so the GGUF it writes matches the llama.cpp that will load it.

`tadbot train fetch-converter` fetches the sdist with pip (or takes a local one) and keeps only the
converter: `convert_hf_to_gguf.py`, its `conversion/` package and the `gguf-py/` it imports. Export never
downloads by itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from server.for_training import ConfigError, TadbotError

_LOGGER = logging.getLogger(__name__)
SCRIPT = "convert_hf_to_gguf.py"
_PACKAGES = ("conversion/", "gguf-py/")
_VENDOR = "vendor/llama.cpp/"
_MARKER = "converter.json"
_ENV = "TADBOT_CONVERTER_DIR"


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError as exc:
        raise TadbotError(
            "llama_cpp_missing", "llama-cpp-python is not installed: pip install 'tadbot[server]'"
        ) from exc


def converter_dir(version: str | None = None) -> Path:
    """Where the converter lives: $TADBOT_CONVERTER_DIR, else beside the Python environment (a venv's
    share/), else the user's cache when that is not writable."""
    if os.environ.get(_ENV):
        return Path(os.environ[_ENV])
    name = f"llama.cpp-convert-{version or llama_cpp_version()}"
    share = Path(sys.prefix) / "share" / "tadbot"
    if os.access(share if share.exists() else Path(sys.prefix), os.W_OK):
        return share / name
    return Path.home() / ".cache" / "tadbot" / name


def find_converter(directory: Path | None = None) -> Path:
    """The converter script, or a clear error saying how to get it."""
    directory = directory or converter_dir()
    script = directory / SCRIPT
    if not script.is_file():
        raise ConfigError(
            "no_converter",
            f"llama.cpp's converter is not in {directory}: run `tadbot train fetch-converter` once "
            "(it fetches the llama-cpp-python sdist with pip, about 80 MB; --sdist takes a copy you have)",
        )
    return script


def fetch_converter(sdist: Path | None = None, dest: Path | None = None) -> dict[str, str]:
    """Unpack the converter from `sdist` (default: the installed version's sdist, downloaded by pip into a
    temporary folder) into `dest`; a converter already there for the same sdist is kept."""
    version = llama_cpp_version()
    dest = dest or converter_dir(version)
    with tempfile.TemporaryDirectory(prefix="tadbot-sdist-") as tmp:
        if sdist is None:
            sdist = _pip_download(version, Path(tmp))
        if not sdist.is_file():
            raise ConfigError("no_sdist", f"{sdist}: no such file")
        digest = _sha256(sdist)
        marker = dest / _MARKER
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("sha256") == digest:
            return {"converter": str(dest / SCRIPT), "sdist": sdist.name, "sha256": digest, "fetched": "kept"}
        staging = Path(tempfile.mkdtemp(prefix=".converter-", dir=_parent(dest)))
        try:
            count = _extract(sdist, staging)
            (staging / _MARKER).write_text(
                json.dumps({"sdist": sdist.name, "sha256": digest, "llama_cpp_python": version}) + "\n",
                encoding="utf-8",
            )
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _LOGGER.info("llama.cpp's converter (%d files) is in %s", count, dest)
    return {"converter": str(dest / SCRIPT), "sdist": sdist.name, "sha256": digest, "fetched": "new"}


def convert(model_dir: Path, out: Path, outtype: str = "auto", script: Path | None = None) -> Path:
    """Run the converter in its own process (it puts its own gguf-py first on the path); its log is kept
    and the last lines explain a failure."""
    script = script or find_converter()
    command = [sys.executable, str(script), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    _LOGGER.info("Converting %s to GGUF (%s)", model_dir, outtype)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stderr.splitlines():
        _LOGGER.debug("convert: %s", line)
    if done.returncode != 0 or not out.is_file():
        tail = " / ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:])
        raise TadbotError("convert_failed", f"llama.cpp's converter failed on {model_dir}: {tail}")
    return out


def _pip_download(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"llama-cpp-python=={version}",
        "--dest",
        str(into),
    ]
    _LOGGER.info("Fetching the llama-cpp-python %s sdist with pip", version)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        tail = " / ".join(done.stderr.strip().splitlines()[-2:])
        raise TadbotError(
            "fetch_failed",
            f"pip could not fetch the llama-cpp-python {version} sdist: {tail or done.returncode}",
        )
    return found[0]


def _extract(sdist: Path, into: Path) -> int:
    """Unpack only the converter's files, through tarfile's data filter (no links out, no odd modes)."""
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            members = []
            for member in archive.getmembers():
                _, _, inner = member.name.partition("/")
                if not inner.startswith(_VENDOR):
                    continue
                relative = inner.removeprefix(_VENDOR)
                if member.isfile() and (relative == SCRIPT or relative.startswith(_PACKAGES)):
                    member.name = relative
                    members.append(member)
            archive.extractall(into, members=members, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError("bad_sdist", f"{sdist}: not a readable sdist ({exc})") from exc
    if not (into / SCRIPT).is_file():
        raise ConfigError("bad_sdist", f"{sdist}: has no {_VENDOR}{SCRIPT}")
    return len(members)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parent(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.parent
