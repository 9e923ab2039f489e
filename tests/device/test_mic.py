"""The microphone: on a fake PyAudio (no device here) that hears real WAV audio at a USB microphone's
44.1 kHz, or on the real PyAudio, which finds no device here at all."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from device.audio import SAMPLE_RATE
from device.errors import AudioInputError
from device.liveness import Beat
from device.mic import MicPcm, StreamResampler
from tests.device import fake_pyaudio
from tests.device.conftest import MIC_RATE, tone


@pytest.fixture(autouse=True)
def _fast_wav(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read here is one caller's; nothing is lost by handing the WAV over at once."""
    monkeypatch.setattr(fake_pyaudio, "pace_wav", False)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "device.mic" and r.levelno >= logging.WARNING]


def _read_s(mic: MicPcm, seconds: float) -> np.ndarray:
    frames = []
    for _ in range(round(seconds / 0.03)):
        frame = mic.read()
        assert frame is not None and len(frame) == 960, "exactly one 30 ms frame of 16 kHz PCM16"
        frames.append(frame)
    return np.frombuffer(b"".join(frames), dtype="<i2") / 32768.0


@pytest.mark.parametrize("rate", [44_100, 48_000, 22_050, 8_000, 16_000])
def test_resampling_a_stream_in_chunks_is_clean(rate: int) -> None:
    """Whatever the chunk sizes, the output is the same, and a sine stays a clean sine: no clicks."""
    signal = tone(440, 1.0, rate)
    whole = StreamResampler(rate).push(signal)
    resampler, pieces, start = StreamResampler(rate), [], 0
    for size in np.random.default_rng(rate).integers(1, 2000, size=200):
        pieces.append(resampler.push(signal[start : start + size]))
        start += size
    chunked = np.concatenate(pieces)
    assert np.allclose(chunked, whole[: len(chunked)], atol=1e-12)
    assert len(chunked) == pytest.approx(SAMPLE_RATE, abs=40)
    ideal = tone(440, 1.0, SAMPLE_RATE)[: len(chunked)]
    settled = slice(20, len(chunked))  # the stream starts from silence
    assert np.max(np.abs(chunked[settled] - ideal[settled])) < 0.01


def test_resampling_down_removes_what_16k_cannot_hold() -> None:
    out = StreamResampler(48_000).push(tone(10_000, 1.0, 48_000))
    assert np.sqrt(np.mean(out**2)) < 0.005, "10 kHz must vanish, not fold back to 6 kHz"


@pytest.mark.usefixtures("fake_mic")
def test_the_microphone_gives_16k_frames_of_what_it_hears_at_44k1() -> None:
    assert fake_pyaudio.rate == MIC_RATE == 44_100, "through the resampler"
    mic = MicPcm()
    heard = _read_s(mic, 1.5)
    mic.close()
    assert mic.read() is None
    assert fake_pyaudio.log == ["open", "close"]
    lead = round(0.3 * SAMPLE_RATE)
    assert np.max(np.abs(heard[: lead - 40])) == 0
    expected = tone(440, 1.0, SAMPLE_RATE)
    said = heard[lead + 40 : lead + SAMPLE_RATE - 40]
    assert np.max(np.abs(said - expected[40 : SAMPLE_RATE - 40])) < 0.01, "in step, no clicks between reads"


@pytest.mark.usefixtures("fake_mic")
def test_a_microphone_that_fails_to_open_is_retried_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    fake_pyaudio.open_failures = 5
    mic = MicPcm(delays=(0.01, 0.02))
    with caplog.at_level(logging.WARNING, logger="device.mic"):
        assert mic.read() is not None
    mic.close()
    assert fake_pyaudio.log == ["open failed"] * 5 + ["open", "close"]
    # Failures 1, 2 and 4 are logged, 3 and 5 are not: the log grows with the log of the outage.
    assert _warnings(caplog) == [
        "cannot open the microphone (default): [Errno -9985] Device unavailable; unplugged, busy, or not "
        f"an input? list devices with `arecord -l`; retrying in {delay:g} s (failure {n} in a row)"
        for n, delay in ((1, 0.01), (2, 0.02), (4, 0.02))
    ]
    assert all(r.exc_info is None for r in caplog.records), "no traceback in the journal"


@pytest.mark.usefixtures("fake_mic")
def test_an_unplugged_microphone_is_reopened(caplog: pytest.LogCaptureFixture) -> None:
    fake_pyaudio.after = "unplug"
    mic = MicPcm(delays=(0.01,))
    with caplog.at_level(logging.WARNING, logger="device.mic"):
        heard = _read_s(mic, 3.5)
    mic.close()
    assert fake_pyaudio.log == ["open", "close", "open", "close", "open", "close"]
    # A second of good audio resets the back-off: each failure is the first in a row again.
    failed = "microphone failed: [Errno -9999] Unanticipated host error"
    assert _warnings(caplog) == [f"{failed}; retrying in 0.01 s (failure 1 in a row)"] * 2
    loud = np.abs(heard) > 0.1
    assert np.mean(loud[round(1.3 * SAMPLE_RATE) : round(2.6 * SAMPLE_RATE)]) > 0.5, "heard again"


@pytest.mark.usefixtures("fake_mic")
def test_a_microphone_that_is_away_is_waited_for_not_taken_for_a_hung_listener() -> None:
    """A read that waits for an unplugged microphone returns no frame for minutes: the listener's beat
    says what it is doing and for how long, so liveness does not restart it again and again."""
    fake_pyaudio.plugged = False
    beat = Beat("listener")
    mic = MicPcm(delays=(30.0,), beat=beat)
    timer = threading.Timer(0.2, mic.close)
    timer.start()
    try:
        assert mic.read() is None
    finally:
        timer.cancel()
    seen = beat.seen()
    assert seen.doing == "waiting for the microphone" and seen.deadline_s == 60.0


@pytest.mark.usefixtures("fake_mic")
def test_close_ends_a_wait_for_a_missing_microphone() -> None:
    fake_pyaudio.plugged = False
    mic = MicPcm(delays=(30.0,))
    timer = threading.Timer(0.2, mic.close)
    timer.start()
    started = time.monotonic()
    try:
        assert mic.read() is None
    finally:
        timer.cancel()
    assert time.monotonic() - started < 1.0


def test_no_microphone_at_all_is_one_line_per_logged_retry_and_no_native_noise(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The real PyAudio finds no device at index 999; reads wait until the microphone is closed."""
    pytest.importorskip("pyaudio", reason="PyAudio is not installed")
    mic = MicPcm(999, delays=(0.01,))
    timer = threading.Timer(0.5, mic.close)
    timer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="device.mic"):
            assert mic.read() is None
    finally:
        timer.cancel()
    messages = _warnings(caplog)
    assert 1 <= len(messages) <= 1 + math.log2(0.5 / 0.01)
    assert messages[0].startswith("no microphone found (index 999): ")
    assert all("arecord -l" in m and "\n" not in m for m in messages)
    assert "ALSA lib" not in capfd.readouterr().err, "native probe noise must not reach stderr"


def test_microphone_without_pyaudio_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # makes `import pyaudio` raise ImportError
    with pytest.raises(AudioInputError) as caught:
        MicPcm()
    assert "portaudio19-dev" in caught.value.message and "pip install pyaudio" in caught.value.message


USB_MIC = "USB PnP Sound Device: Audio (hw:2,0)"


@pytest.mark.usefixtures("fake_mic")
def test_the_microphone_is_found_by_part_of_its_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any case; the output-only HDMI device is passed over, and mic_device wins over mic_index."""
    monkeypatch.setattr(fake_pyaudio, "extra_devices", [("HDMI pnp output", 0), (USB_MIC, 1)])
    mic = MicPcm(0, device_name="usb pnp")
    with caplog.at_level(logging.INFO, logger="device.mic"):
        assert mic.read() is not None
    mic.close()
    opened = [r.getMessage() for r in caplog.records if r.getMessage().startswith("microphone open")]
    assert opened == [f'microphone open (mic_device "usb pnp", {USB_MIC}, {MIC_RATE} Hz)']


@pytest.mark.usefixtures("fake_mic")
def test_a_microphone_name_that_matches_nothing_names_the_key_and_the_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fake_pyaudio, "extra_devices", [("HDMI output", 0), (USB_MIC, 1)])
    with pytest.raises(AudioInputError) as caught:
        MicPcm(device_name="Blue Yeti")
    assert caught.value.message == (
        f'[device] mic_device = "Blue Yeti" matches no microphone; inputs: "fake USB microphone", "{USB_MIC}"'
    )
    assert fake_pyaudio.log == [], "checked at start, before anything is opened"


@pytest.mark.usefixtures("fake_mic")
def test_a_named_microphone_is_looked_up_again_when_it_comes_back_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plugged in again, a USB microphone can get another index; the name still finds it."""
    opened: list[int | None] = []
    real_open = fake_pyaudio.PyAudio.open

    def recording_open(self: fake_pyaudio.PyAudio, **kwargs: Any) -> Any:
        opened.append(kwargs["input_device_index"])
        return real_open(self, **kwargs)

    monkeypatch.setattr(fake_pyaudio.PyAudio, "open", recording_open)
    monkeypatch.setattr(fake_pyaudio, "extra_devices", [(USB_MIC, 1)])
    fake_pyaudio.after = "unplug"
    mic = MicPcm(device_name="USB PnP", delays=(0.01,))
    _read_s(mic, 0.9)
    monkeypatch.setattr(fake_pyaudio, "extra_devices", [("HDMI output", 0), (USB_MIC, 1)])
    _read_s(mic, 0.9)  # past the end of what it hears: unplugged, then found again at its new index
    mic.close()
    assert opened == [1, 2]
