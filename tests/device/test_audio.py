from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

from device.audio import SAMPLE_RATE, to_pcm16_mono_16k
from device.errors import AudioInputError
from device.wavfile import WavFileSource
from tests.device.conftest import tone, wav_bytes


def _read(data: bytes) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(io.BytesIO(data)) as reader:
        params = reader.getparams()
        samples = np.frombuffer(reader.readframes(params.nframes), dtype="<i2").astype(np.float64) / 32768
    return params, samples


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_44k1_stereo_becomes_16k_mono(tmp_path: Path, width: int) -> None:
    left = tone(440, 1.0, 44_100)
    right = tone(440, 1.0, 44_100) + tone(6_000, 1.0, 44_100, amplitude=0.2)
    path = tmp_path / "stereo.wav"
    path.write_bytes(wav_bytes(np.stack([left, right], axis=1) * 0.9, 44_100, width))

    (utterance,) = WavFileSource(path).utterances()

    params, samples = _read(utterance)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, SAMPLE_RATE)
    assert params.nframes == SAMPLE_RATE
    assert _peak_hz(samples, SAMPLE_RATE) == pytest.approx(440, abs=2)
    # The 440 Hz tone is in both channels, so the mono mix keeps its amplitude (0.45 peak → 0.318 RMS).
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(np.sqrt(0.45**2 / 2 + 0.09**2 / 2), rel=0.05)


def test_16k_mono_pcm16_round_trips_bit_exact() -> None:
    original = wav_bytes(tone(300, 0.5, SAMPLE_RATE), SAMPLE_RATE)
    assert to_pcm16_mono_16k(original, "x.wav") == original


def test_downsampling_removes_what_16k_cannot_hold() -> None:
    # 10 kHz is above the 8 kHz Nyquist limit of 16 kHz audio: it must vanish, not fold back to 6 kHz.
    _, samples = _read(to_pcm16_mono_16k(wav_bytes(tone(10_000, 1.0, 48_000), 48_000), "high.wav"))
    assert np.sqrt(np.mean(samples**2)) < 0.01


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"this is not audio at all", "RIFF"),
        (wav_bytes(np.zeros((0, 1)), SAMPLE_RATE), "no audio samples"),
        (
            # A 32-bit float WAV (format tag 3): common from editors, not PCM.
            wav_bytes(tone(440, 0.1, SAMPLE_RATE), SAMPLE_RATE, 4).replace(
                b"\x01\x00\x01\x00", b"\x03\x00\x01\x00", 1
            ),
            "unknown format",
        ),
    ],
    ids=["text", "empty", "float"],
)
def test_bad_files_are_named_in_the_error(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad input.wav"
    path.write_bytes(content)
    with pytest.raises(AudioInputError) as caught:
        WavFileSource(path)
    assert str(path) in caught.value.message and words in caught.value.message
    assert "\n" not in caught.value.message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AudioInputError, match=r"cannot read audio file .*nope\.wav"):
        WavFileSource(tmp_path / "nope.wav")


def test_max_seconds_cuts_the_end_off() -> None:
    # The server refuses audio over its limit, so the device never sends more than it was told to.
    original = wav_bytes(tone(300, 3.0, 48_000), 48_000)
    params, samples = _read(to_pcm16_mono_16k(original, "long.wav", max_seconds=2.0))
    assert params.nframes == 2 * SAMPLE_RATE
    assert _peak_hz(samples, SAMPLE_RATE) == pytest.approx(300, abs=2)
    assert _read(to_pcm16_mono_16k(original, "long.wav", max_seconds=5.0))[0].nframes == 3 * SAMPLE_RATE
