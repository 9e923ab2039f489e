"""The backbone: a torchvision ImageNet classifier with its last layer swapped for one output per emotion."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from server.for_training import ModelError
from training.fer.config import ARCHITECTURES

BN_MOMENTUM = 0.1


def build_model(arch: str, num_classes: int, *, pretrained: bool) -> nn.Module:
    """`pretrained` loads torchvision's ImageNet weights, from torch's cache or downloaded into it once.

    Small data sets of faces train far better from ImageNet features than from scratch; offline, the weights
    must already be in the cache (torch.hub.get_dir()/checkpoints).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    try:
        model = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained else None)
    except OSError as exc:  # urllib's URLError offline, or a cache that cannot be written
        cache = f"{torch.hub.get_dir()}/checkpoints"
        raise ModelError(
            "weights_unavailable",
            f"the ImageNet weights for {arch} are not in {cache} and could not be downloaded ({exc}); "
            "connect once to fetch them, or pass --no-pretrained",
        ) from exc
    head = model.classifier
    if not isinstance(head, nn.Sequential) or not isinstance(head[-1], nn.Linear):
        raise TypeError(f"{arch}: expected a classifier ending in nn.Linear, found {head}")
    head[-1] = nn.Linear(head[-1].in_features, num_classes)
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            # torchvision sets 0.01 for ImageNet's long schedule. A fine-tune on faces is a few thousand steps
            # at most; its running statistics must reach the new data within an epoch, or validation (which
            # uses them) scores a different network from the one being trained.
            layer.momentum = BN_MOMENTUM
    return model
