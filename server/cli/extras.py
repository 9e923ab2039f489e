"""The optional dependency groups (pip extras) a command needs, checked before it imports any of them."""

from __future__ import annotations

import importlib.util

from server.errors import TadbotError

EXTRAS = {
    "server": ("flask", "gunicorn", "llama_cpp", "onnxruntime", "cv2", "chromadb", "speech_recognition"),
    "device": ("numpy", "requests", "cv2", "pyttsx3", "speech_recognition"),
}


def require(extra: str) -> None:
    """A missing extra is one clear line, not an ImportError traceback from deep inside a module."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise TadbotError(
            "missing_dependencies",
            f"the {extra} needs {', '.join(missing)}: install it with pip install 'tadbot[{extra}]'",
        )
