"""Data both packages ship: the device imports nothing from the server, so each carries its own copy, and the
copies must not drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("server", "device"), [("server/data/exercises.toml", "device/exercises.toml")])
def test_server_and_device_copies_are_identical(server: str, device: str) -> None:
    assert (ROOT / server).read_bytes() == (ROOT / device).read_bytes(), f"copy {server} over {device}"
