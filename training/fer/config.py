"""Settings for one training run, checked once before any data is read or torch is imported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.for_training import ConfigError

ARCHITECTURES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_LICENSE = "see the training data's licence"


@dataclass(frozen=True)
class TrainConfig:
    """One `tadbot train fer` run; each field is a command-line flag of the same name."""

    data: Path
    """The labelled faces: images/ + labels.csv, <emotion>/ folders, or RAF-DB's basic layout."""
    out: Path
    """Where the ONNX model, its manifest, a checkpoint and the report go."""
    arch: str = "mobilenet_v3_small"
    """The torchvision backbone; its ImageNet classifier head is replaced by one for our emotions."""
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    """AdamW's peak learning rate; a cosine schedule takes it down to 1% of this by the last step."""
    weight_decay: float = 1e-4
    input_size: int = 112
    """Side of the square face crop the model sees, in pixels."""
    val_fraction: float = 0.15
    """Share of the training images held out for validation when the dataset names no val split."""
    seed: int = 0
    pretrained: bool = True
    """Start from torchvision's ImageNet weights (downloaded once into torch's cache)."""
    device: str = "auto"
    """auto picks CUDA when torch sees a GPU, else the CPU."""
    workers: int = 2
    """Processes decoding and augmenting images alongside training; 0 does it in the training process."""
    label_smoothing: float = 0.1
    limit: int | None = None
    """Use at most this many images (a seeded subset in proportion to each emotion): for quick trial runs."""
    patience: int | None = None
    """Stop after this many epochs without a better validation macro recall; None trains every epoch."""
    license: str = DEFAULT_LICENSE
    """Written into the manifest: the licence the training data puts on models made from it."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            _bad("arch", self.arch, f"one of {', '.join(ARCHITECTURES)}")
        if self.device not in DEVICES:
            _bad("device", self.device, f"one of {', '.join(DEVICES)}")
        for key in ("epochs", "batch_size", "input_size"):
            if getattr(self, key) < 1:
                _bad(key, getattr(self, key), "at least 1")
        if self.input_size < 32:
            _bad("input_size", self.input_size, "at least 32 (the backbones downsample 32 times)")
        if not 0 < self.lr < 1:
            _bad("lr", self.lr, "between 0 and 1")
        if self.weight_decay < 0:
            _bad("weight_decay", self.weight_decay, "0 or more")
        if not 0 < self.val_fraction < 1:
            _bad("val_fraction", self.val_fraction, "between 0 and 1")
        if not 0 <= self.label_smoothing < 1:
            _bad("label_smoothing", self.label_smoothing, "from 0 up to (not including) 1")
        if self.workers < 0:
            _bad("workers", self.workers, "0 or more")
        if self.limit is not None and self.limit < 2:
            _bad("limit", self.limit, "at least 2")
        if self.patience is not None and self.patience < 1:
            _bad("patience", self.patience, "at least 1")
        if not self.license.strip():
            _bad("license", self.license, "a non-empty description")


def _bad(key: str, value: object, wanted: str) -> None:
    flag = "--" + key.replace("_", "-")
    raise ConfigError("bad_option", f"{flag} {value!r}: expected {wanted}")
