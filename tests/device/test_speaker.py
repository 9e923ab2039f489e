"""The voice the person hears: Piper by default, espeak-ng when Piper or its voice is missing."""

from __future__ import annotations

import ctypes.util
import shutil
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from device.errors import SpeakerError
from device.playback import Playback, convert
from device.settings import DeviceSettings
from device.speaker import AloudSpeaker, WavDirSpeaker, WavFileSpeaker
from device.synth import (
    EspeakSynth,
    PiperSynth,
    Speech,
    Synthesiser,
    _pick_voice,
    find_piper_voice,
    installed_voices,
    open_synth,
)
from tests.conftest import ROOT
from tests.device import fake_aplay

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


def _own_voice(tmp_path: Path, name: str = "en_US-test-medium") -> Path:
    """A pulled voice under its own name: a copy of the installed Piper voice, which the test may delete."""
    installed = find_piper_voice("en_US-joe-medium", tmp_path / "none")
    voices = tmp_path / "voices"
    voices.mkdir(exist_ok=True)
    shutil.copy(installed, voices / f"{name}.onnx")
    shutil.copy(f"{installed}.json", voices / f"{name}.onnx.json")
    return voices


def test_piper_is_the_default_and_its_voice_comes_installed(tmp_path: Path) -> None:
    synth, fallback = open_synth(DeviceSettings(voices_dir=str(tmp_path)))
    try:
        assert fallback == "" and isinstance(synth, PiperSynth)
        assert synth.description == "Piper voice en_US-joe-medium"
        speech = synth.synthesize("Let's breathe together.")
    finally:
        synth.close()
    assert speech.rate == 22_050
    samples = np.frombuffer(speech.pcm, dtype="<i2").astype(np.float64)
    assert float(np.sqrt(np.mean(samples**2))) > 500, "Piper's speech is (nearly) silent"
    assert 0.8 < speech.seconds < 4


def test_tts_rate_sets_pipers_pace_in_words_per_minute(tmp_path: Path) -> None:
    voice = find_piper_voice("en_US-joe-medium", tmp_path)
    text = "You are safe here, and I am staying with you while this passes."
    slow, fast = (PiperSynth(voice, wpm, 1.0).synthesize(text).seconds for wpm in (120, 200))
    assert 1.45 < slow / fast < 1.9, f"120 wpm should take about 200/120 the time of 200 wpm: {slow / fast}"


def test_a_pulled_voice_is_found_by_name_before_the_installed_one(tmp_path: Path) -> None:
    voices = _own_voice(tmp_path, "en_US-joe-medium")
    assert find_piper_voice("en_US-joe-medium", voices) == voices / "en_US-joe-medium.onnx"


def test_a_missing_or_incomplete_voice_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpeakerError, match=r"en_US-amy-medium is not in .* `tadbot models pull en_US-amy"):
        find_piper_voice("en_US-amy-medium", tmp_path)
    with pytest.raises(SpeakerError, match=r"gone.onnx does not exist \(\[device\] piper_voice\)"):
        find_piper_voice(str(tmp_path / "gone.onnx"), tmp_path)
    voices = _own_voice(tmp_path)
    (voices / "en_US-test-medium.onnx.json").unlink()
    with pytest.raises(SpeakerError, match=r"has no en_US-test-medium.onnx.json beside it"):
        find_piper_voice("en_US-test-medium", voices)


def test_a_broken_voice_file_is_refused_with_its_name(tmp_path: Path) -> None:
    voices = _own_voice(tmp_path)
    (voices / "en_US-test-medium.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(SpeakerError, match=r"cannot load Piper voice .*en_US-test-medium.onnx"):
        PiperSynth(voices / "en_US-test-medium.onnx", 165, 1.0)


@needs_espeak
def test_when_the_voice_is_removed_espeak_ng_speaks_and_says_why(tmp_path: Path) -> None:
    voices = _own_voice(tmp_path)
    settings = DeviceSettings(piper_voice="en_US-test-medium", voices_dir=str(voices))
    synth, fallback = open_synth(settings)
    assert (synth.description, fallback) == ("Piper voice en_US-test-medium", "")
    synth.close()
    (voices / "en_US-test-medium.onnx").unlink()
    synth, fallback = open_synth(settings)
    try:
        assert isinstance(synth, EspeakSynth) and synth.description.startswith("espeak-ng voice ")
        assert fallback.startswith(f"Piper voice en_US-test-medium is not in {voices} and not installed")
        speech = synth.synthesize("I am still here.")
    finally:
        synth.close()
    assert speech.seconds > 0.5 and max(np.frombuffer(speech.pcm, dtype="<i2")) > 1000


def test_the_installed_voices_are_the_catalogues_installed_voices() -> None:
    """device/voices.toml and the server's catalogue must name the same PyPI voices."""
    import tomllib

    catalogue = tomllib.loads((ROOT / "models" / "catalogue.toml").read_text(encoding="utf-8"))
    listed = {
        (m["name"], m["installed"]["package"].replace("-", "_"))
        for m in catalogue["models"]
        if m["role"] == "voice" and "installed" in m
    }
    assert listed and {(v.name, v.package) for v in installed_voices()} == listed


def test_wav_speaker_writes_one_audible_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reply.wav"
    synth, _ = open_synth(DeviceSettings())
    speaker = WavFileSpeaker(out, synth)
    speaker.say("Let's breathe together.")
    speaker.say("   ")
    speaker.say("In for four, and out for six.")
    assert not out.exists(), "nothing is written before close"
    speaker.close()
    assert capsys.readouterr().out == "", "nothing mixes into the transcript on stdout"
    rms, seconds = _rms(out)
    assert rms > 500, f"the spoken WAV is (nearly) silent: RMS {rms:.0f}"
    assert 2.0 < seconds < 10


@needs_espeak
def test_the_espeak_fallback_writes_a_wav_too(tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    speaker = WavFileSpeaker(out, open_synth(DeviceSettings(tts_engine="espeak"))[0])
    speaker.say("Let's breathe together.")
    speaker.close()
    rms, seconds = _rms(out)
    assert rms > 500 and 1.0 < seconds < 6


def test_wav_dir_speaker_writes_each_reply_on_its_own(tmp_path: Path) -> None:
    speaker = WavDirSpeaker(tmp_path / "replies", open_synth(DeviceSettings())[0])
    speaker.say("Hello.")
    speaker.end_reply("greeting")
    speaker.say("I hear you.")
    speaker.say("Let's slow down together.")
    speaker.end_reply()
    speaker.end_reply()
    speaker.close()
    assert [p.name for p in speaker.written] == ["greeting.wav", "reply-001.wav"]
    assert _rms(speaker.written[1])[1] > _rms(speaker.written[0])[1]


def test_wav_speaker_with_nothing_said_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    WavFileSpeaker(out, open_synth(DeviceSettings())[0]).close()
    assert not out.exists()


def test_wav_speaker_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    synth = open_synth(DeviceSettings())[0]
    with pytest.raises(SpeakerError, match=r"folder .*missing or read-only"):
        WavFileSpeaker(tmp_path / "no" / "reply.wav", synth)


def test_speaking_aloud_without_aplay_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SpeakerError, match="alsa-utils"):
        Playback()


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
def test_espeak_voice_is_picked_by_id_name_or_language(voice: str, language: str, expected: str) -> None:
    assert _pick_voice(VOICES, voice, language) == expected


def test_unknown_espeak_voice_or_language_is_an_error() -> None:
    with pytest.raises(SpeakerError, match="'Klingon' not found"):
        _pick_voice(VOICES, "Klingon", "en")
    with pytest.raises(SpeakerError, match="no TTS voice for language 'tlh'"):
        _pick_voice(VOICES, "", "tlh")


class _Keeping:
    """The real voice, keeping what it made so the test can find it in what the speaker was given."""

    def __init__(self, synth: Synthesiser) -> None:
        self._synth = synth
        self.description = synth.description
        self.made: list[Speech] = []

    def synthesize(self, text: str) -> Speech:
        self.made.append(self._synth.synthesize(text))
        return self.made[-1]

    def close(self) -> None:
        self._synth.close()


@pytest.mark.parametrize("engine", ["piper", pytest.param("espeak", marks=needs_espeak)])
def test_say_aloud_plays_every_reply_through_one_output_and_blocks_until_heard(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in `aplay` (there is no sound card) that plays in real time: it is started once for two
    replies, gets each sentence converted to 48 kHz, and `say` returns only once a sentence was heard."""
    aplay = fake_aplay.install(tmp_path / "aplay", monkeypatch)
    synth = _Keeping(open_synth(DeviceSettings(tts_engine=engine, language="en-US"))[0])
    speaker = AloudSpeaker(synth, Playback())
    took = []
    for text, reply_ends in (("Breathe in slowly.", False), ("And out.", True), ("I am here.", True)):
        started = time.monotonic()
        speaker.say(text)
        took.append(time.monotonic() - started)
        if reply_ends:
            speaker.end_reply()
    speaker.close()
    assert all(t >= s.seconds for t, s in zip(took, synth.made, strict=True)), "returned before heard"
    assert len(aplay.opens()) == 1, "one output for every sentence and reply"
    assert aplay.opens()[0][-3:] == ["48000", "--buffer-time=200000", "-"]
    stream = aplay.played()
    found = [stream.find(convert(s.pcm, s.rate)) for s in synth.made]
    assert 0 <= found[0] < found[1] < found[2], "each sentence, converted from its voice's rate, in order"
    assert {s.rate for s in synth.made} == {22_050}
    samples = np.frombuffer(convert(synth.made[0].pcm, 22_050), dtype="<i2").astype(np.float64)
    assert float(np.sqrt(np.mean(samples**2))) > 500


@needs_espeak
def test_an_utterance_pyttsx3_cancels_as_it_begins_is_said_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyttsx3's driver cancels a new utterance when espeak-ng still reports the one before as playing
    (seen under load as "pyttsx3 did not write speech"). Here the first utterance ends as its loop ends a
    cancelled one: a finished-utterance that did not complete, and no sound."""
    synth = EspeakSynth("", 165, 1.0, "en")
    driver = synth._engine.proxy._driver
    started: list[str] = []
    start = driver._start_synthesis

    def cancelled_as_it_began(text: str) -> None:
        started.append(text)
        if len(started) > 1:
            start(text)
            return
        driver._proxy.notify("finished-utterance", completed=False)
        driver._proxy.setBusy(False)
        driver.endLoop()

    monkeypatch.setattr(driver, "_start_synthesis", cancelled_as_it_began)
    try:
        speech = synth.synthesize("Breathe with me, slowly.")
    finally:
        synth.close()
    assert started == ["Breathe with me, slowly."] * 2, "the cancelled utterance was said once more"
    samples = np.frombuffer(speech.pcm, dtype="<i2").astype(np.float64)
    assert speech.rate == 22050 and 0.8 < speech.seconds < 5
    assert float(np.sqrt(np.mean(samples**2))) > 100, "real speech, not the cancelled silence"
