"""Real speech for tests: espeak-ng speaks a sentence into a 16 kHz mono PCM16 WAV, in memory first."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest


def speak(text: str, *, voice: str = "en-us+f1", speed: int = 140) -> bytes:
    """espeak-ng's own WAV (22.05 kHz mono PCM16) of `text`; skips the test without espeak-ng.

    PocketSphinx's US model hears espeak-ng's default voice poorly; this voice at this speed it hears well.
    """
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text]
    return subprocess.run(command, capture_output=True, check=True, timeout=60).stdout


def pcm16_wav(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def rms(path: Path) -> float:
    """Loudness of a PCM16 WAV file, 0 for silence."""
    with wave.open(str(path)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
