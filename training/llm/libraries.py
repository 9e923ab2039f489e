"""The fine-tune's libraries are an optional extra: a missing one is a one-line error saying what to
install, before any work starts."""

from __future__ import annotations

import importlib.util

from server.errors import TadbotError

TRAINING = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")


def require(*names: str) -> None:
    missing = [name for name in names or TRAINING if importlib.util.find_spec(name) is None]
    if missing:
        raise TadbotError(
            "training_unavailable",
            f"{', '.join(missing)} not installed: pip install 'tadbot[training]' (with a CUDA GPU, also "
            "'tadbot[training-cuda]' for 4-bit QLoRA)",
        )
