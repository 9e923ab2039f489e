"""Data both packages ship: the device imports nothing from the server, so each carries its own copy, and the
copies must not drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.crisis import load_crisis_reply
from server.safety.crisis import CrisisReply

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("server", "device"),
    [
        ("server/data/exercises.toml", "device/exercises.toml"),
        ("server/data/crisis_reply.toml", "device/crisis_reply.toml"),
    ],
)
def test_server_and_device_copies_are_identical(server: str, device: str) -> None:
    assert (ROOT / server).read_bytes() == (ROOT / device).read_bytes(), f"copy {server} over {device}"


@pytest.mark.parametrize("locale", ["US", "CA", "GB", "IE", "AU", "NZ", "FR"])
def test_the_device_says_the_crisis_reply_the_server_says(locale: str) -> None:
    """Both loaders fill the same file in: the device's last resort is word for word the server's reply."""
    assert load_crisis_reply(locale) == CrisisReply.load(locale).lines
