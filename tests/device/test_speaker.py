from __future__ import annotations

import ctypes.util
import os
import shutil
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from device.errors import SpeakerError
from device.speaker import Pyttsx3Speaker, WavFileSpeaker, _pick_voice

needs_espeak = pytest.mark.skipif(
    ctypes.util.find_library("espeak-ng") is None and ctypes.util.find_library("espeak") is None,
    reason="libespeak-ng is not installed (apt-get install espeak-ng)",
)


def _rms(path: Path) -> tuple[float, float]:
    """(RMS of the PCM16 samples, duration in seconds)."""
    with wave.open(str(path)) as reader:
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(np.float64)
        seconds = reader.getnframes() / reader.getframerate()
    return float(np.sqrt(np.mean(samples**2))), seconds


@needs_espeak
def test_wav_speaker_writes_one_audible_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reply.wav"
    speaker = WavFileSpeaker(out, rate=165, volume=1.0, language="en")
    speaker.say("Let's breathe together.")
    speaker.say("   ")
    speaker.say("In for four, and out for six.")
    assert not out.exists(), "nothing is written before close"
    speaker.close()
    assert capsys.readouterr().out == "", "pyttsx3's chatter must not mix into the transcript on stdout"
    rms, seconds = _rms(out)
    assert rms > 500, f"the spoken WAV is (nearly) silent: RMS {rms:.0f}"
    assert 1.5 < seconds < 10


@needs_espeak
def test_wav_speaker_with_nothing_said_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    WavFileSpeaker(out).close()
    assert not out.exists()


def test_wav_speaker_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(SpeakerError, match=r"folder .*missing or read-only"):
        WavFileSpeaker(tmp_path / "no" / "reply.wav")


def test_speaking_aloud_without_aplay_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SpeakerError, match="alsa-utils"):
        Pyttsx3Speaker()


VOICES = [
    SimpleNamespace(id="gmw/en-029", name="English (Caribbean)", languages=["en-029"]),
    SimpleNamespace(id="gmw/en", name="English (Great Britain)", languages=["en-gb"]),
    SimpleNamespace(id="gmw/en-us", name="English (America)", languages=["en-us"]),
    SimpleNamespace(id="roa/fr", name="French", languages=["fr-fr"]),
]


@pytest.mark.parametrize(
    ("voice", "language", "expected"),
    [
        ("", "en", "gmw/en"),
        ("", "en-US", "gmw/en-us"),
        ("", "fr", "roa/fr"),
        ("English (America)", "fr", "gmw/en-us"),
        ("GMW/EN-029", "en", "gmw/en-029"),
    ],
)
def test_voice_is_picked_by_id_name_or_language(voice: str, language: str, expected: str) -> None:
    assert _pick_voice(VOICES, voice, language) == expected


def test_unknown_voice_or_language_is_an_error() -> None:
    with pytest.raises(SpeakerError, match="'Klingon' not found"):
        _pick_voice(VOICES, "Klingon", "en")
    with pytest.raises(SpeakerError, match="no TTS voice for language 'tlh'"):
        _pick_voice(VOICES, "", "tlh")


@needs_espeak
def test_say_aloud_blocks_until_playback_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Speech is played with `aplay`; a stand-in (there is no sound card) keeps the WAV and takes 0.5 s."""
    played = tmp_path / "played.wav"
    fake = tmp_path / "bin" / "aplay"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nfor wav; do :; done\ncp "$wav" {played}\nsleep 0.5\n', encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    speaker = Pyttsx3Speaker(language="en-US")
    started = time.monotonic()
    speaker.say("Breathe in slowly.")
    elapsed = time.monotonic() - started
    speaker.close()
    assert elapsed >= 0.5, "say returned before playback ended: the microphone would hear the device"
    assert _rms(played)[0] > 500
