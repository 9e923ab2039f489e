"""Fixtures for the device tests: a loopback contract server, a clean config environment, test media."""

from __future__ import annotations

import io
import os
import socket
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.device import fake_pyaudio
from tests.device.loopback import Loopback, serve


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    """The contract server with close-delimited turn bodies, the framing that defeats naive line readers."""
    yield from serve(chunked=False)


@pytest.fixture(params=[False, True], ids=["close-delimited", "chunked"])
def any_loopback(request: pytest.FixtureRequest) -> Iterator[Loopback]:
    """The contract server once per body framing a real server may use."""
    yield from serve(chunked=request.param)


@pytest.fixture(autouse=True)
def clean_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No config file or TADBOT_* variable from the machine running the tests may leak in."""
    for name in list(os.environ):
        if name.startswith("TADBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def wav_bytes(samples: np.ndarray, rate: int, width: int = 2) -> bytes:
    """A PCM WAV of float samples shaped (n,) or (n, channels), at any standard sample width."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    if width == 1:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(frames * (2**23 - 1)).astype("<i4")
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = np.round(frames * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(frames.shape[1])
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(data)
    return out.getvalue()


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


@pytest.fixture
def face_png(tmp_path: Path) -> Path:
    """A small synthetic picture; the device only re-encodes frames, it never looks for faces."""
    import cv2

    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[:, :32] = (0, 0, 255)
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on: bound once to pick it, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


MIC_RATE = 44_100
"""A common USB microphone rate: the device resamples it to 16 kHz."""


def spoken_wav(tone_s: float = 1.0, lead_s: float = 0.3) -> bytes:
    """A real WAV as a microphone hears it: room silence, then a 440 Hz "voice" loud enough to be speech."""
    samples = np.concatenate([np.zeros(round(lead_s * MIC_RATE)), tone(440, tone_s, MIC_RATE)])
    return wav_bytes(samples, MIC_RATE)


@pytest.fixture
def fake_mic(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyAudio replaced by `fake_pyaudio` (there is no microphone here), hearing `spoken_wav()`.

    Tests change the scene through that module's attributes; all are restored afterwards.
    """
    for name in ("rate", "pcm", "plugged", "open_failures", "after", "pace_wav"):
        monkeypatch.setattr(fake_pyaudio, name, getattr(fake_pyaudio, name))
    monkeypatch.setattr(fake_pyaudio, "log", [])
    fake_pyaudio.load(spoken_wav())
    monkeypatch.setitem(sys.modules, "pyaudio", fake_pyaudio)


class RecordingGate:
    """The microphone's gate as the state machine drives it, recorded."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def mute(self) -> None:
        self.events.append("mute")

    def unmute(self, tail_s: float = 0.3) -> None:
        self.events.append(f"unmute {tail_s}")
