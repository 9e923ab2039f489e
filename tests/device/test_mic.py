"""The microphone through SpeechRecognition's real `Microphone` and `listen`, on a fake PyAudio (no device
here) that hears real WAV audio, or on the real PyAudio, which finds no device here at all."""

from __future__ import annotations

import io
import logging
import math
import sys
import threading
import wave

import numpy as np
import pytest

from device.audio import SAMPLE_RATE
from device.backoff import Backoff
from device.errors import AudioInputError
from device.mic import MicrophoneSource
from tests.device import fake_pyaudio
from tests.device.conftest import spoken_wav


def _heard(wav: bytes) -> tuple[int, float, float]:
    """(sample rate, seconds, dominant frequency in Hz) of an utterance; it must be mono PCM16."""
    with wave.open(io.BytesIO(wav)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
        rate, count = reader.getframerate(), reader.getnframes()
        samples = np.frombuffer(reader.readframes(count), dtype="<i2").astype(np.float64)
    peak = float(np.argmax(np.abs(np.fft.rfft(samples))) * rate / count)
    return rate, count / rate, peak


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "device.mic" and r.levelno >= logging.WARNING]


@pytest.mark.usefixtures("fake_mic")
def test_an_utterance_is_heard_as_16k_mono() -> None:
    utterances = MicrophoneSource(calibration_s=0).utterances()
    rate, seconds, peak = _heard(next(utterances))
    utterances.close()
    assert rate == SAMPLE_RATE
    assert peak == pytest.approx(440, abs=3)
    assert 1.0 <= seconds <= 2.0, "the 1 s of speech, with at most half a second either side"
    assert fake_pyaudio.log == ["open", "close"], "closing the generator releases the microphone"


@pytest.mark.usefixtures("fake_mic")
def test_a_microphone_that_fails_to_open_is_retried_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    # SpeechRecognition 3.17 swallows the failed open and hands back a source with no stream; listening
    # on it raised AssertionError, and leaving it AttributeError, which killed the daemon.
    fake_pyaudio.open_failures = 5
    backoff = Backoff((0.01, 0.02))
    with caplog.at_level(logging.WARNING, logger="device.mic"):
        utterances = MicrophoneSource(calibration_s=0, backoff=backoff).utterances()
        _, _, peak = _heard(next(utterances))
        utterances.close()
    assert peak == pytest.approx(440, abs=3)
    assert fake_pyaudio.log == ["open failed"] * 5 + ["open", "close"]
    assert backoff.failures == 0, "a heard utterance resets the back-off"
    # Failures 1, 2 and 4 are logged, 3 and 5 are not: the log grows with the log of the outage.
    assert [r.getMessage() for r in _warnings(caplog)] == [
        "cannot open the microphone (default): unplugged, busy, or not an input; list devices with "
        f"`arecord -l`; retrying in {delay:g} s (failure {n} in a row)"
        for n, delay in ((1, 0.01), (2, 0.02), (4, 0.02))
    ]
    assert all(r.exc_info is None for r in caplog.records), "no traceback in the journal"


@pytest.mark.usefixtures("fake_mic")
def test_a_microphone_that_is_not_there_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    fake_pyaudio.plugged = False

    class PluggedInAfterThreeTries(Backoff):
        def wait(self, seconds: float) -> bool:
            fake_pyaudio.plugged = self.failures >= 3
            return super().wait(seconds)

    backoff = PluggedInAfterThreeTries((0.01,))
    with caplog.at_level(logging.WARNING, logger="device.mic"):
        utterances = MicrophoneSource(calibration_s=0, backoff=backoff).utterances()
        _, _, peak = _heard(next(utterances))
        utterances.close()
    assert peak == pytest.approx(440, abs=3)
    messages = [r.getMessage() for r in _warnings(caplog)]
    assert len(messages) == 2  # failures 1 and 2; the 3rd is not logged
    assert messages[0].startswith("no microphone found (default): No Default Input Device Available;")
    assert "arecord -l" in messages[0]


def test_no_microphone_at_all_is_one_line_per_logged_retry_and_no_native_noise(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The real PyAudio finds no device at index 999; the loop retries until it is stopped."""
    pytest.importorskip("pyaudio", reason="PyAudio is not installed")
    stop = threading.Event()
    backoff = Backoff((0.01,), stop=stop)
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="device.mic"):
            assert list(MicrophoneSource(device_index=999, backoff=backoff).utterances()) == []
    finally:
        timer.cancel()
    messages = [r.getMessage() for r in _warnings(caplog)]
    assert 1 <= len(messages) <= 1 + math.log2(backoff.failures)
    assert messages[0].startswith("no microphone found (index 999): Device index out of range")
    assert all("\n" not in m for m in messages)
    assert "ALSA lib" not in capfd.readouterr().err, "native probe noise must not reach stderr"


@pytest.mark.usefixtures("fake_mic")
def test_an_utterance_is_cut_at_max_utterance_s() -> None:
    # SpeechRecognition's phrase limit leaves out the lead-in it keeps: 1 s of phrase came back as 1.3 s.
    fake_pyaudio.load(spoken_wav(tone_s=3.0))
    utterances = MicrophoneSource(calibration_s=0, max_utterance_s=1.0).utterances()
    _, seconds, _ = _heard(next(utterances))
    utterances.close()
    assert seconds == pytest.approx(1.0, abs=0.001)


def test_microphone_without_pyaudio_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # makes `import pyaudio` raise ImportError
    with pytest.raises(AudioInputError) as caught:
        MicrophoneSource()
    assert "portaudio19-dev" in caught.value.message and "pip install pyaudio" in caught.value.message
