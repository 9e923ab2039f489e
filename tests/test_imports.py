"""The architecture's promises that imports can break: device/ and server/ never import each other, and the
light modules stay light so the Pi daemon and the CLI start fast without the server's heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("cv2", "numpy", "onnxruntime", "llama_cpp", "chromadb", "flask", "speech_recognition", "pyttsx3")


def _imported(package: str) -> set[str]:
    """Every top-level package named in an import statement anywhere under `package`."""
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("device", "server"), ("server", "device"), ("server", "training"), ("device", "training")],
)
def test_packages_never_import_each_other(package: str, forbidden: str) -> None:
    assert forbidden not in _imported(package)


def _loaded_after_import(module: str) -> list[str]:
    code = f"import sys, {module}; print(' '.join(sorted(set({HEAVY!r}) & set(sys.modules))))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.split()


@pytest.mark.parametrize(
    "module",
    [
        "server.cli.main",
        "server.face.fer",
        "server.face.manifest",
        "server.face.images",
        "server.conversation.llm.chat",
        "server.speech.stt",
        "server.memory.store",
        "server.config",
        "device.settings",
        "device.client",
        "device.camera",
        "device.speaker",
        "device.session",
    ],
)
def test_light_modules_load_no_heavy_library(module: str) -> None:
    assert _loaded_after_import(module) == []
