"""The earcons: made by the project's own generator, soft and short, and played through the speaker's one
output (a stand-in `aplay` here, as there is no sound card) without waiting."""

from __future__ import annotations

import io
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from device.__main__ import _earcons
from device.earcons import FOLDER, RATE, Earcon, Earcons, synthesise, wav_bytes, write
from device.errors import DeviceError
from device.playback import OUTPUT_RATE, Playback
from device.settings import DeviceSettings
from device.speaker import AloudSpeaker, WavFileSpeaker
from device.synth import open_synth
from device.voice import Voice
from tests.device import fake_aplay
from tests.device.fake_aplay import FakeAplay


def _pcm(wav: bytes) -> bytes:
    with wave.open(io.BytesIO(wav)) as reader:
        return reader.readframes(reader.getnframes())


def _pitch(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), 8 * len(samples)))
    return float(np.argmax(spectrum) * RATE / (8 * len(samples)))


@pytest.mark.parametrize("earcon", list(Earcon))
def test_the_shipped_earcons_are_exactly_what_the_generator_makes(earcon: Earcon, tmp_path: Path) -> None:
    shipped = (FOLDER / f"{earcon}.wav").read_bytes()
    assert wav_bytes(earcon) == shipped
    assert [p.read_bytes() for p in write(tmp_path)] == [wav_bytes(e) for e in Earcon]
    assert "CC0" in (FOLDER / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("earcon", "seconds", "peak", "first_hz", "last_hz"),
    [(Earcon.HEARD, 0.24, 0.2, 659.26, 987.77), (Earcon.OFFLINE, 0.30, 0.16, 587.33, 392.0)],
)
def test_earcons_are_short_soft_click_free_chimes(
    earcon: Earcon, seconds: float, peak: float, first_hz: float, last_hz: float
) -> None:
    """ "heard" rises and "offline" falls; both begin and end on silence, so neither clicks."""
    samples = synthesise(earcon)
    assert RATE == OUTPUT_RATE, "made at the output's rate: playing one converts nothing"
    assert len(samples) / RATE == pytest.approx(seconds)
    assert float(np.max(np.abs(samples))) == pytest.approx(peak), "about -14 dBFS at most: a chime"
    assert samples[0] == 0.0 and abs(samples[-1]) < 1e-6
    assert float(np.max(np.abs(np.diff(samples)))) < 0.05, "no sudden step anywhere"
    window = round(0.05 * RATE)
    assert _pitch(samples[:window]) == pytest.approx(first_hz, rel=0.02)
    assert _pitch(samples[-2 * window :]) == pytest.approx(last_hz, rel=0.02)


@pytest.fixture
def aplay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeAplay:
    return fake_aplay.install(tmp_path / "aplay", monkeypatch)


@pytest.mark.usefixtures("aplay")
def test_a_broken_earcon_file_is_named(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "offline.wav").write_bytes(b"RIFF")
    output = Playback()
    try:
        with pytest.raises(DeviceError, match=r"^cannot read .*offline\.wav: .*`python -m device\.earcons`$"):
            Earcons(output, tmp_path)
    finally:
        output.close()


@pytest.mark.usefixtures("aplay")
def test_earcons_go_only_to_a_speaker_that_plays_aloud_and_only_when_on(tmp_path: Path) -> None:
    synth = open_synth(DeviceSettings())[0]
    aloud = AloudSpeaker(synth, Playback())
    try:
        assert isinstance(_earcons(aloud, DeviceSettings()), Earcons)
        assert _earcons(aloud, DeviceSettings(earcons=False)) is None
        assert _earcons(WavFileSpeaker(tmp_path / "r.wav", synth), DeviceSettings()) is None
    finally:
        aloud.close()


def test_the_voice_chimes_at_once_through_the_speakers_own_output(aplay: FakeAplay) -> None:
    """One aplay for the chime and the speech after it; the chime does not wait for anything."""
    speaker = AloudSpeaker(open_synth(DeviceSettings())[0], Playback())
    voice = Voice(speaker, earcons=Earcons(speaker.output))
    started = time.monotonic()
    voice.earcon(Earcon.HEARD)
    assert time.monotonic() - started < 0.05, "non-blocking"
    voice.say("I'm here.")
    assert voice.wait_idle(30.0)
    voice.earcon(Earcon.OFFLINE)
    voice.close()
    speaker.close()
    assert len(aplay.opens()) == 1
    stream = aplay.played()
    heard, offline = (stream.find(_pcm(wav_bytes(e))) for e in Earcon)
    assert 0 <= heard < offline, "both chimes, sample for sample, in order, through the one output"
    speech = np.frombuffer(stream[heard + len(_pcm(wav_bytes(Earcon.HEARD))) : offline], dtype="<i2")
    assert float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) > 300, "the sentence came between them"
