"""The fine-tune's libraries are an optional extra: a missing one is a one-line error saying what to
install, before any work starts. A model they cannot load is one line too."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from server.for_training import ConfigError, TadbotError

TRAINING = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")


def require(*names: str) -> None:
    missing = [name for name in names or TRAINING if importlib.util.find_spec(name) is None]
    if missing:
        raise TadbotError(
            "training_unavailable",
            f"{', '.join(missing)} not installed: pip install 'tadbot[training]' (with a CUDA GPU, also "
            "'tadbot[training-cuda]' for 4-bit QLoRA)",
        )


def unloadable(what: str, name: str, exc: Exception) -> ConfigError:
    """A model or tokenizer that will not load, in one line: a path that is not there says so, and the hub
    libraries' many-line messages are cut to their first line."""
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        reason = "no such folder"
    else:
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return ConfigError("model_unavailable", f"cannot load {what} {name}: {reason}")
