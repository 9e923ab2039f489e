"""Backbones with a head per emotion, and ImageNet weights read from torch's cache, never fetched in tests."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from server.errors import ModelError
from training.fer.config import ARCHITECTURES
from training.fer.model import BN_MOMENTUM, build_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_backbone_gets_a_head_per_emotion(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 5, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and {m.momentum for m in norms} == {BN_MOMENTUM}


def test_pretrained_weights_come_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    torch.manual_seed(123)
    imagenet = torchvision.models.mobilenet_v3_small()
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cached)

    model = build_model("mobilenet_v3_small", 3, pretrained=True)
    loaded, saved = model.state_dict(), imagenet.state_dict()
    first_conv = "features.0.0.weight"
    assert torch.equal(loaded[first_conv], saved[first_conv])
    assert loaded["classifier.3.weight"].shape == (3, 1024)
    assert torch.equal(loaded["classifier.0.weight"], saved["classifier.0.weight"])


def test_pretrained_offline_without_a_cache_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(ModelError, match=r"not in .*hub/checkpoints .*pass --no-pretrained") as raised:
        build_model("efficientnet_b0", 3, pretrained=True)
    assert raised.value.code == "weights_unavailable"


def _no_download(url: str, *args: object, **kwargs: object) -> None:
    raise urllib.error.URLError(f"tests never download ({url})")
