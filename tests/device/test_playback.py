"""The one sound output: a stand-in `aplay` (there is no sound card here) that consumes audio in real time,
counts its starts and keeps everything it was given."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from device.errors import SpeakerError
from device.playback import OUTPUT_RATE, Playback, convert, resolve_output
from tests.device import fake_aplay
from tests.device.conftest import tone
from tests.device.fake_aplay import FakeAplay

STREAM_ARGS = ["-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", "48000", "--buffer-time=200000", "-"]


@pytest.fixture
def aplay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeAplay:
    return fake_aplay.install(tmp_path / "aplay", monkeypatch)


def _pcm(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "device.playback" and r.levelno >= logging.WARNING
    ]


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition(), "timed out"


@pytest.mark.parametrize("rate", [16_000, 22_050, 44_100, 48_000])
def test_every_rate_becomes_the_streams_48k_with_the_same_pitch_length_and_level(rate: int) -> None:
    out = np.frombuffer(convert(_pcm(tone(440, 0.5, rate)), rate), dtype="<i2") / 32768.0
    assert len(out) == OUTPUT_RATE // 2, "0.5 s at 48 kHz, nothing held back at the end"
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert np.argmax(spectrum) * OUTPUT_RATE / len(out) == pytest.approx(440, abs=2)
    settled = out[200:-200]  # the filter starts and ends on silence
    ideal = tone(440, 0.5, OUTPUT_RATE)[200:-200]
    assert np.max(np.abs(settled - ideal)) < 0.01, "a clean sine at the new rate, in step with the input"


def test_sounds_at_different_rates_go_out_converted_through_one_output(aplay: FakeAplay) -> None:
    output = Playback()
    sounds = [(_pcm(tone(330, 0.3, 22_050)), 22_050), (_pcm(tone(550, 0.2, 16_000)), 16_000)]
    played = [output.play(pcm, rate) for pcm, rate in sounds]
    started = time.monotonic()
    assert all(p.wait(5.0) for p in played)
    assert time.monotonic() - started >= 0.5, "heard only once both had been played out"
    output.close()
    assert aplay.opens() == [STREAM_ARGS], "one aplay, at the stream's one rate"
    stream = aplay.played()
    first, second = (stream.find(convert(pcm, rate)) for pcm, rate in sounds)
    assert 0 <= first < second, "each sound, converted, in the order given"
    assert second - first == len(convert(*sounds[0])), "back to back, with no gap between them"
    assert not any(p.failed for p in played)


def test_silence_keeps_the_output_running_between_sounds(aplay: FakeAplay) -> None:
    output = Playback()
    assert output.play(_pcm(tone(440, 0.1, OUTPUT_RATE)), OUTPUT_RATE).wait(5.0)
    time.sleep(0.5)
    assert output.play(_pcm(tone(440, 0.1, OUTPUT_RATE)), OUTPUT_RATE).wait(5.0)
    output.close()
    assert len(aplay.opens()) == 1
    samples = aplay.samples()
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    gap = np.diff(loud).max() / OUTPUT_RATE
    assert gap >= 0.5, "the card was fed silence while nothing was said, not left to run dry"


def test_stop_drops_what_is_queued_and_ends_the_wait(aplay: FakeAplay) -> None:
    output = Playback()
    long = output.play(_pcm(tone(440, 3.0, OUTPUT_RATE)), OUTPUT_RATE)
    queued = output.play(_pcm(tone(660, 1.0, OUTPUT_RATE)), OUTPUT_RATE)
    time.sleep(0.3)
    started = time.monotonic()
    output.stop()
    assert long.wait(1.0) and queued.wait(1.0)
    assert time.monotonic() - started < 0.2
    assert (long.failed, queued.failed) == ("", ""), "stopped on purpose is not a failure"
    output.close()
    assert len(aplay.played()) < 2 * OUTPUT_RATE * 2, "not the 4 s that were queued"


def test_a_dead_output_is_reopened_once_and_logged_once(
    aplay: FakeAplay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first aplay dies half a second in, as a USB speaker pulled out does; the sound it was playing
    is lost, the output opens again at once, and the next sound is heard."""
    monkeypatch.setenv("FAKE_APLAY_DIE_AFTER", str(OUTPUT_RATE))
    with caplog.at_level(logging.INFO, logger="device.playback"):
        output = Playback()
        cut = output.play(_pcm(tone(440, 2.0, OUTPUT_RATE)), OUTPUT_RATE)
        assert cut.wait(5.0)
        _wait_for(lambda: output.opens == 2)
        again = _pcm(tone(660, 0.3, 22_050))
        heard = output.play(again, 22_050)
        assert heard.wait(5.0)
        output.close()
    assert cut.failed == f"{fake_aplay.UNPLUGGED} (ALSA's default output)"
    assert heard.failed == ""
    assert aplay.opens() == [STREAM_ARGS, STREAM_ARGS]
    assert _warnings(caplog) == [
        f"the speaker's output failed ({fake_aplay.UNPLUGGED} (ALSA's default output)); opening it again"
    ]
    assert convert(again, 22_050) in aplay.played()


def test_a_hung_output_is_killed_and_reopened_when_the_next_sound_comes(
    aplay: FakeAplay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first aplay stops taking audio a twentieth of a second in, as a wedged card does."""
    monkeypatch.setenv("FAKE_APLAY_HANG_AFTER", str(OUTPUT_RATE // 10))
    with caplog.at_level(logging.WARNING, logger="device.playback"):
        output = Playback(stalled_s=0.5)
        stuck = output.play(_pcm(tone(440, 1.0, OUTPUT_RATE)), OUTPUT_RATE)
        assert not stuck.wait(1.0), "nothing plays while aplay is hung"
        again = _pcm(tone(660, 0.3, OUTPUT_RATE))
        heard = output.play(again, OUTPUT_RATE)
        assert heard.wait(5.0)
        output.close()
    assert stuck.failed == "aplay exited with -9 (ALSA's default output)"
    assert heard.failed == ""
    assert len(aplay.opens()) == 2 and again in aplay.played()
    warnings = _warnings(caplog)
    assert len(warnings) == 2 and warnings[0].startswith("the speaker has taken nothing for ")
    assert warnings[1] == "the speaker's output failed (aplay exited with -9 (ALSA's default output)); " + (
        "opening it again"
    )


def test_an_output_that_cannot_open_refuses_sounds_and_backs_off(
    aplay: FakeAplay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FAKE_APLAY_NO_CARD", "1")
    with caplog.at_level(logging.WARNING, logger="device.playback"):
        output = Playback(delays=(0.0, 0.05, 0.1))
        _wait_for(lambda: output.opens >= 4)
        played = output.play(_pcm(tone(440, 0.5, OUTPUT_RATE)), OUTPUT_RATE)
        started = time.monotonic()
        assert played.wait(2.0)
        assert time.monotonic() - started < 1.0, "refused, not kept waiting for a card that is not there"
        output.close()
    reason = f"{fake_aplay.NO_CARD} (ALSA's default output)"
    assert played.failed == reason
    warnings = _warnings(caplog)
    assert warnings[0] == f"the speaker's output failed ({reason}); opening it again"
    assert all(w.startswith(f"the speaker still cannot play ({reason}); retrying in ") for w in warnings[1:])
    assert len(warnings) < output.opens, "not a line per retry"


@pytest.mark.parametrize(
    ("wanted", "resolved"),
    [
        ("", ""),
        ("default", "default"),
        ("plughw:CARD=Headphones,DEV=0", "plughw:CARD=Headphones,DEV=0"),
        ("hw:CARD=Device,DEV=0", "hw:CARD=Device,DEV=0"),
        ("USB", "plughw:CARD=Device,DEV=0"),
        ("headphones", "plughw:CARD=Headphones,DEV=0"),
    ],
)
def test_the_speaker_is_found_by_name_or_part_of_one(aplay: FakeAplay, wanted: str, resolved: str) -> None:
    """A listed name is taken as it is; a part of one picks the card's plughw: (it converts anything)."""
    assert resolve_output("aplay", wanted) == resolved


def test_a_speaker_name_that_matches_nothing_names_the_key_and_the_outputs(aplay: FakeAplay) -> None:
    with pytest.raises(SpeakerError) as caught:
        Playback("HDMI")
    assert caught.value.message == (
        '[device] speaker_device = "HDMI" matches no ALSA output; outputs: '
        "default (Default ALSA Output (currently PipeWire Media Server)), "
        "plughw:CARD=Headphones,DEV=0 (bcm2835 Headphones, bcm2835 Headphones), "
        "plughw:CARD=Device,DEV=0 (USB Audio Device, USB Audio) (`aplay -L` lists every name)"
    )
    assert aplay.opens() == [], "nothing was opened"


def test_the_named_speaker_is_the_one_played_to(aplay: FakeAplay) -> None:
    output = Playback("usb audio")
    assert output.device == "plughw:CARD=Device,DEV=0"
    output.close()
    assert aplay.opens() == [[*STREAM_ARGS[:-2], "-D", "plughw:CARD=Device,DEV=0", *STREAM_ARGS[-2:]]]
