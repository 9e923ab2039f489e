"""The endpointer on real speech (espeak-ng) and synthetic room sounds, with the real WebRTC VAD.

Every signal carries a faint seeded hiss, as a real room does; that also makes every frame unique, so
an utterance can be found in the stream it came from, byte for byte, to check where it was cut.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np
import pytest
import webrtcvad

from device.audio import SAMPLE_RATE, to_pcm16_mono_16k
from device.vad import EndpointConfig, Endpointer
from tests.speech import speak

FRAME_S = 0.03
FRAME_BYTES = 960


@functools.cache
def speech(text: str) -> np.ndarray:
    """espeak-ng saying `text` at 16 kHz, trimmed to the first and last sample above -40 dBFS."""
    wav = to_pcm16_mono_16k(speak(text), "espeak")
    samples = np.frombuffer(wav[44:], dtype="<i2").astype(np.float64)
    loud = np.flatnonzero(np.abs(samples) > 328)
    return samples[loud[0] : loud[-1] + 1]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE))


def noise(seconds: float, dbfs: float, low: float = 300, high: float = 3000, seed: int = 1) -> np.ndarray:
    """Steady band-limited noise at `dbfs` RMS: a fan or a road, which fools WebRTC VAD on its own."""
    count = round(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(count))
    freqs = np.fft.rfftfreq(count, 1 / SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    shaped = np.fft.irfft(spectrum, count)
    return shaped / np.sqrt(np.mean(shaped**2)) * 32768 * 10 ** (dbfs / 20)


def hum(seconds: float, dbfs: float) -> np.ndarray:
    """Mains hum with its harmonics, at a constant level."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * 100 * k * t) / k for k in range(1, 8))
    return wave / np.sqrt(np.mean(wave**2)) * 32768 * 10 ** (dbfs / 20)


def pcm(*parts: np.ndarray, hiss_dbfs: float = -60.0) -> bytes:
    """The parts one after another over a faint hiss, as whole frames of PCM16."""
    signal = np.concatenate(parts)
    signal = np.concatenate([signal, np.zeros(-len(signal) % (FRAME_BYTES // 2))])
    signal += np.random.default_rng(0).standard_normal(len(signal)) * 32768 * 10 ** (hiss_dbfs / 20)
    return np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()


def frames(stream: bytes) -> list[bytes]:
    return [stream[i : i + FRAME_BYTES] for i in range(0, len(stream), FRAME_BYTES)]


def seconds(samples: np.ndarray) -> float:
    return len(samples) / SAMPLE_RATE


def cuts(endpointer: Endpointer, stream: bytes, flush: bool = True) -> list[tuple[float, float]]:
    """(start, end) in seconds of each utterance cut from `stream`, found in it byte for byte."""
    found = []
    utterances = [u for f in frames(stream) if (u := endpointer.feed(f)) is not None]
    if flush and (last := endpointer.flush()) is not None:
        utterances.append(last)
    for utterance in utterances:
        offset = stream.find(utterance)
        assert offset >= 0 and offset % FRAME_BYTES == 0, "an utterance is a run of whole input frames"
        found.append((offset / 2 / SAMPLE_RATE, (offset + len(utterance)) / 2 / SAMPLE_RATE))
    return found


def test_two_utterances_are_cut_where_the_speech_is() -> None:
    first, second = speech("I have been feeling anxious all day."), speech("Can you help me breathe?")
    stream = pcm(silence(1.2), first, silence(1.5), second, silence(1.5))
    onsets = (1.2, 1.2 + seconds(first) + 1.5)
    ends = (onsets[0] + seconds(first), onsets[1] + seconds(second))

    endpointer = Endpointer()
    (a, b) = cuts(endpointer, stream, flush=False)

    for (start, end), onset, speech_end in zip((a, b), onsets, ends, strict=True):
        assert start == pytest.approx(onset - 0.8, abs=0.06), "0.8 s of pre-roll before the onset"
        assert 0.6 <= end - speech_end <= 0.85, "ends about end_silence_s after the last word"
    assert endpointer.last_speech_s == pytest.approx(seconds(second), abs=0.25)
    assert not endpointer.in_speech and endpointer.flush() is None


def test_a_short_stream_keeps_what_there_is_before_the_onset() -> None:
    said = speech("Hello.")
    (cut,) = cuts(Endpointer(), pcm(silence(0.3), said, silence(1.0)))
    assert cut[0] == 0.0


def test_a_cough_is_started_then_dropped_and_a_click_never_starts() -> None:
    cough = speech("I have been feeling anxious all day.")[: round(0.2 * SAMPLE_RATE)]
    click = np.full(round(0.01 * SAMPLE_RATE), 20_000.0)
    endpointer = Endpointer()
    started = []
    for frame in frames(pcm(silence(1.0), cough, silence(1.0), click, silence(1.0))):
        assert endpointer.feed(frame) is None
        started.append(endpointer.in_speech)
    assert any(started[: round(2.0 / FRAME_S)]), "the cough did start an utterance"
    assert not any(started[round(2.0 / FRAME_S) :]), "the click did not"
    assert endpointer.flush() is None
    # and the endpointer still hears real speech afterwards
    assert len(cuts(endpointer, pcm(speech("Hello there."), silence(1.0)))) == 1


@pytest.mark.parametrize("make", [noise, hum], ids=["fan", "hum"])
def test_steady_noise_is_not_speech_but_speech_over_it_is(make: Callable[[float, float], np.ndarray]) -> None:
    loud = make(6.0, -30.0)
    vad = webrtcvad.Vad(2)
    fooled = sum(vad.is_speech(f, SAMPLE_RATE) for f in frames(pcm(loud)))
    assert fooled > 0.9 * len(frames(pcm(loud))), "WebRTC VAD alone takes this noise for speech"

    endpointer = Endpointer()
    second = SAMPLE_RATE - SAMPLE_RATE % (FRAME_BYTES // 2)  # whole frames: a part-frame would be quieter
    endpointer.calibrate(frames(pcm(loud[:second])))
    calibrated = endpointer.noise_floor_db
    assert calibrated is not None and calibrated == pytest.approx(-30, abs=2.5)
    for frame in frames(pcm(loud[second:])):
        assert endpointer.feed(frame) is None
        assert not endpointer.in_speech
    assert endpointer.flush() is None

    said = speech("I have been feeling anxious all day.")
    with_speech = make(seconds(said) + 2.0, -30.0)
    with_speech[SAMPLE_RATE : SAMPLE_RATE + len(said)] += said  # about 12 dB above the noise
    ((start, end),) = cuts(endpointer, pcm(with_speech))
    assert start == pytest.approx(1.0 - 0.8, abs=0.1)
    assert end - (1.0 + seconds(said)) < 0.9


def test_the_floor_follows_a_new_noise_after_one_window() -> None:
    config = EndpointConfig(floor_window_s=2.0)
    endpointer = Endpointer(config)
    endpointer.calibrate(frames(pcm(silence(1.0))))
    assert endpointer.noise_floor_db == pytest.approx(-60, abs=3)
    fan = frames(pcm(noise(8.0, -30.0)))
    in_speech = []
    for frame in fan:
        endpointer.feed(frame)
        in_speech.append(endpointer.in_speech)
    assert endpointer.noise_floor_db == pytest.approx(-30, abs=2)
    settled = round((config.floor_window_s + config.end_silence_s + 0.1) / FRAME_S)
    assert not any(in_speech[settled:]), "once learnt, the fan no longer counts as speech"


def test_speech_does_not_raise_the_floor() -> None:
    endpointer = Endpointer(EndpointConfig(floor_window_s=2.0))
    endpointer.calibrate(frames(pcm(silence(1.0), hiss_dbfs=-50)))
    talk = [speech("I have been feeling anxious all day."), speech("Can you help me breathe?")] * 2
    gaps = [part for said in talk for part in (said, silence(0.2))]
    assert sum(map(seconds, gaps)) > 8.0
    utterances = cuts(endpointer, pcm(*gaps, hiss_dbfs=-50), flush=True)
    assert len(utterances) == 1, "one long utterance: the pauses are shorter than end_silence_s"
    floor = endpointer.noise_floor_db
    assert floor is not None and floor < -45


def test_a_long_utterance_is_cut_at_max_utterance_s_and_goes_on() -> None:
    config = EndpointConfig(max_utterance_s=2.0)
    talk = np.concatenate(
        [speech("I have been feeling anxious all day."), speech("Can you help me breathe?")]
    )
    stream = pcm(silence(1.0), talk, silence(1.5))
    assert seconds(talk) + 0.8 > 4.0
    found = cuts(Endpointer(config), stream)
    assert len(found) == 3
    assert [end - start for start, end in found[:2]] == pytest.approx([1.98, 1.98]), "66 whole frames"
    assert [start for start, _ in found[1:]] == [end for _, end in found[:-1]], (
        "each goes on where the last stopped"
    )
    assert found[-1][1] == pytest.approx(1.0 + seconds(talk) + 0.7, abs=0.12)


def test_flush_hands_over_the_utterance_at_the_end_of_the_stream() -> None:
    said = speech("Can you help me breathe?")
    stream = pcm(silence(1.0), said, silence(0.2))
    endpointer = Endpointer()
    assert all(endpointer.feed(f) is None for f in frames(stream))
    assert endpointer.in_speech
    utterance = endpointer.flush()
    assert utterance is not None and stream.endswith(utterance)
    assert len(utterance) / 2 / SAMPLE_RATE == pytest.approx(0.8 + seconds(said) + 0.2, abs=0.06)
    assert not endpointer.in_speech and endpointer.flush() is None


def test_reset_drops_the_utterance_in_progress() -> None:
    said = speech("I have been feeling anxious all day.")
    endpointer = Endpointer()
    for frame in frames(pcm(silence(1.0), said[: len(said) // 2])):
        endpointer.feed(frame)
    assert endpointer.in_speech
    endpointer.reset()
    assert not endpointer.in_speech
    assert cuts(endpointer, pcm(silence(1.0))) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"frame_ms": 25}, "frame_ms must be 10, 20 or 30"),
        ({"aggressiveness": 4}, "aggressiveness must be 0 to 3"),
        ({"end_silence_s": 0.0}, "end_silence_s must be at least one frame"),
        ({"max_utterance_s": 0.5}, "max_utterance_s must be longer than pre_roll_s + start_s"),
        ({"min_speech_s": -1.0}, "must not be negative"),
    ],
)
def test_bad_settings_are_refused(change: dict[str, float], words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        EndpointConfig(**change)  # type: ignore[arg-type]


def test_a_frame_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="960 bytes"):
        Endpointer().feed(bytes(640))
