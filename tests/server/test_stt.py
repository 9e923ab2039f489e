"""Speech-to-text on real speech: espeak-ng speaks, PocketSphinx listens, nothing is downloaded."""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
import wave
from array import array
from pathlib import Path

import pytest

from server.errors import ConfigError, SttError
from server.speech.stt import SphinxTranscriber, Transcriber, WavAudio, get_transcriber, read_wav

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

# Sphinx's US model hears espeak-ng's robotic voice poorly, so each sentence comes with the voice and speed it
# was found to recognise, whether resampled here or by sox; speeds 10 words/min either side work too. With the
# default voice, "hello I feel anxious today" comes back as "a lot like the lobby system do you".
SPOKEN = [
    pytest.param(
        "hello I feel anxious today", "en-us+f1", 140, {"hello", "feel", "anxious", "today"}, id="anxious"
    ),
    pytest.param("please help me breathe", "en-us+f1", 140, {"please", "help", "breathe"}, id="breathe"),
    pytest.param(
        "my heart is racing and I am scared", "en-us", 145, {"heart", "racing", "scared"}, id="racing"
    ),
    pytest.param("good morning how are you", "en-us+m7", 155, {"good", "morning", "how"}, id="morning"),
]


def pcm16_wav(pcm: bytes, *, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def float32_wav(seconds: float, rate: int = 16000) -> bytes:
    """IEEE-float WAV (format tag 3), which the stdlib `wave` cannot write."""
    data = bytes(4 * int(seconds * rate))
    fmt = struct.pack("<HHIIHH", 3, 1, rate, 4 * rate, 4, 32)
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def speak(tmp_path: Path, text: str, voice: str, speed: int, *, to_16k: bool) -> bytes:
    """espeak-ng's own 22.05 kHz WAV, or the same converted to 16 kHz by sox (the engine's native rate)."""
    spoken = tmp_path / "spoken.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(spoken), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    if not to_16k:
        return spoken.read_bytes()
    if shutil.which("sox") is None:
        pytest.skip("sox is not installed")
    converted = tmp_path / "spoken-16k.wav"
    subprocess.run(
        ["sox", str(spoken), "-r", "16000", "-c", "1", "-b", "16", str(converted)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return converted.read_bytes()


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return get_transcriber("sphinx", language="en-US")


@needs_espeak
@pytest.mark.parametrize("to_16k", [False, True], ids=["22k-resampled-here", "16k-by-sox"])
@pytest.mark.parametrize(("text", "voice", "speed", "keywords"), SPOKEN)
def test_speech_is_transcribed(
    transcriber: Transcriber,
    tmp_path: Path,
    text: str,
    voice: str,
    speed: int,
    keywords: set[str],
    to_16k: bool,
) -> None:
    audio = read_wav(speak(tmp_path, text, voice, speed, to_16k=to_16k), max_seconds=30)
    assert audio.sample_rate == (16000 if to_16k else 22050)
    heard = transcriber.transcribe(audio)
    assert heard.engine == "sphinx" and heard.alternatives == ()
    assert len(keywords & set(heard.text.split())) >= 2, f"said {text!r}, heard {heard.text!r}"


@needs_espeak
def test_the_words_do_not_depend_on_what_came_before(transcriber: Transcriber, tmp_path: Path) -> None:
    first = read_wav(
        speak(tmp_path, "my heart is racing and I am scared", "en-us", 145, to_16k=False), max_seconds=30
    )
    other = read_wav(speak(tmp_path, "good morning how are you", "en", 160, to_16k=False), max_seconds=30)
    before = transcriber.transcribe(first)
    transcriber.transcribe(other)
    assert transcriber.transcribe(first) == before


def _noise(amplitude: int, seconds: float = 1.5, rate: int = 16000) -> bytes:
    rng = random.Random(7)
    return array("h", (rng.randint(-amplitude, amplitude) for _ in range(int(seconds * rate)))).tobytes()


@pytest.mark.parametrize(
    "pcm",
    [bytes(2 * 24000), _noise(30), b""],
    ids=["digital-zeros", "quiet-room-noise", "no-samples"],
)
def test_silence_is_empty_text(transcriber: Transcriber, pcm: bytes) -> None:
    # Without dither, PocketSphinx hears exact zeros as "dog".
    assert transcriber.transcribe(read_wav(pcm16_wav(pcm), max_seconds=30)).text == ""


def test_a_failed_decode_is_stt_failed_and_the_next_one_works(transcriber: Transcriber) -> None:
    broken = WavAudio(pcm=b"\x00\x00\x00", sample_rate=22050, duration_s=0.0)  # not whole samples
    with pytest.raises(SttError) as caught:
        transcriber.transcribe(broken)
    assert (caught.value.code, caught.value.status) == ("stt_failed", 500)
    assert transcriber.transcribe(read_wav(pcm16_wav(bytes(3200)), max_seconds=30)).text == ""


def test_read_wav_returns_pcm_rate_and_duration() -> None:
    pcm = _noise(1000, seconds=0.5, rate=8000)
    audio = read_wav(pcm16_wav(pcm, rate=8000), max_seconds=0.5)
    assert audio == WavAudio(pcm=pcm, sample_rate=8000, duration_s=0.5)


def test_read_wav_trusts_the_samples_not_a_streaming_header() -> None:
    # Writers that cannot seek back (ffmpeg to a pipe) leave the data size at 0xFFFFFFFF.
    wav = bytearray(pcm16_wav(bytes(2 * 16000)))
    data_size_at = wav.index(b"data") + 4
    wav[data_size_at : data_size_at + 4] = b"\xff\xff\xff\xff"
    assert read_wav(bytes(wav), max_seconds=30).duration_s == 1.0


@pytest.mark.parametrize(
    "data",
    [b"", b"this is not audio", b"RIFF\x10\x00\x00\x00WAVEjunk", pcm16_wav(bytes(3200))[:30]],
    ids=["empty", "text", "riff-without-chunks", "cut-in-header"],
)
def test_corrupt_audio_is_bad_audio(data: bytes) -> None:
    with pytest.raises(SttError) as caught:
        read_wav(data, max_seconds=30)
    assert (caught.value.code, caught.value.status) == ("bad_audio", 400)
    assert "16-bit PCM mono WAV" in caught.value.message


@pytest.mark.parametrize(
    "data",
    [
        pcm16_wav(bytes(6400), channels=2),
        pcm16_wav(bytes(1600), width=1),
        pcm16_wav(bytes(4800), width=3),
        pcm16_wav(bytes(6400), width=4),
        float32_wav(0.1),
        pcm16_wav(bytes(800), rate=4000),
        pcm16_wav(bytes(9600), rate=96000),
    ],
    ids=["stereo", "8-bit", "24-bit", "32-bit", "float", "4-khz", "96-khz"],
)
def test_other_encodings_are_unsupported_audio(data: bytes) -> None:
    with pytest.raises(SttError) as caught:
        read_wav(data, max_seconds=30)
    assert (caught.value.code, caught.value.status) == ("unsupported_audio", 415)
    assert "send 16-bit PCM mono WAV" in caught.value.message


def test_audio_at_the_limit_is_accepted() -> None:
    assert read_wav(pcm16_wav(bytes(2 * 32000)), max_seconds=2).duration_s == 2.0


@pytest.mark.parametrize("seconds", [2.001, 60.0])
def test_audio_over_the_limit_is_too_long(seconds: float) -> None:
    with pytest.raises(SttError) as caught:
        read_wav(pcm16_wav(bytes(2 * int(seconds * 16000))), max_seconds=2)
    assert (caught.value.code, caught.value.status) == ("audio_too_long", 413)


def test_sphinx_is_built_by_name(transcriber: Transcriber) -> None:
    assert isinstance(transcriber, SphinxTranscriber)
    assert transcriber.name == "sphinx"


def test_unknown_engine_lists_the_allowed_names() -> None:
    with pytest.raises(ValueError, match="allowed: faster_whisper, sphinx"):
        get_transcriber("whisper.cpp", language="en-US")


def test_a_language_without_a_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        SphinxTranscriber(language="xx-XX")
    assert caught.value.code == "stt_language_unavailable"
    assert "stt.language" in caught.value.message
