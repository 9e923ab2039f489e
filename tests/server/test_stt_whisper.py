"""Whisper on real speech: faster-whisper runs the tiny.en model that pip installed, on sentences that
espeak-ng speaks; nothing is downloaded. Also the n-best crisis rule, silence and noise, and where the
model is found."""

from __future__ import annotations

import random
import re
from array import array
from pathlib import Path

import numpy as np
import pytest

from server.config import Settings
from server.errors import ConfigError, ModelError, SttError
from server.eval.stt import word_errors, words
from server.models.catalogue import load_catalogue
from server.safety.care import Care
from server.safety.crisis import Level
from server.safety.soundalikes import SOUNDALIKES_FILE
from server.speech import whisper as stt_whisper
from server.speech.stt import Transcript, WavAudio, Word, read_wav
from server.speech.whisper import WhisperTranscriber, find_model
from tests.speech import pcm16_wav, speak

SENTENCES = [
    "I feel anxious today and my chest is tight.",
    "Please help me slow down my breathing.",
    "My heart is racing and I am scared.",
    "I could not sleep last night because of the noise.",
]
LONGER = [
    "We walked to the park after lunch and sat by the pond.",
    "The bus was late again so I had to wait in the rain.",
    "My sister called me on Sunday to ask about the garden.",
    "I tried to read a book but I kept losing my place.",
    "The kettle is on and the kitchen smells of fresh bread.",
    "Tomorrow I have an appointment with the doctor at ten.",
    "There were a lot of people at the station this morning.",
    "I would like to go for a walk when the weather is better.",
]
CRISIS = ["I just want to die.", "I am going to kill myself.", "I want to end my life."]


def word_error_rate(said: str, heard: str) -> float:
    """The benches' own measure (server.eval.stt): word edits over the words said."""
    reference = words(said)
    return word_errors(reference, words(heard)) / max(1, len(reference))


@pytest.fixture(scope="module")
def whisper() -> WhisperTranscriber:
    return WhisperTranscriber(find_model("whisper-tiny.en"), threads=2)


def heard(whisper: WhisperTranscriber, text: str, **voice: object) -> Transcript:
    return whisper.transcribe(read_wav(speak(text, **voice), max_seconds=60))  # type: ignore[arg-type]


def test_the_default_model_is_the_installed_tiny_en_with_systran_s_checksums() -> None:
    folder = find_model("whisper-tiny.en")
    (entry,) = [e for e in load_catalogue().entries if e.name == "whisper-tiny.en"]
    assert entry.default and entry.installed is not None
    assert folder == entry.installed.location()
    for f in entry.files:
        assert (folder / Path(f.dest).name).stat().st_size == f.size
    assert Settings().stt.engine == "faster_whisper" and Settings().stt.model == "whisper-tiny.en"


VOICE = {"voice": "en-us", "speed": 150}
"""espeak-ng's plain US voice: tiny.en hears it almost word for word (its female variant "en-us+f1" at 140
turns "I just want to die" into "I just won tonight", which no rule can catch)."""


def test_spoken_sentences_come_back_nearly_word_for_word(whisper: WhisperTranscriber) -> None:
    rates = []
    for sentence in SENTENCES:
        transcript = heard(whisper, sentence, **VOICE)
        assert transcript.engine == "whisper"
        assert [w.text for w in transcript.words], "every word carries a probability"
        assert all(0.0 <= w.probability <= 1.0 for w in transcript.words)
        assert all(any(c.isalnum() for c in w.text) for w in transcript.words), "no punctuation as words"
        assert transcript.avg_logprob is not None and transcript.avg_logprob < 0
        rates.append(word_error_rate(sentence, transcript.text))
    assert max(rates) <= 0.15 and sum(rates) / len(rates) <= 0.05, rates


@pytest.mark.parametrize("sentence", CRISIS)
def test_spoken_crisis_lines_are_heard_as_a_crisis(whisper: WhisperTranscriber, sentence: str) -> None:
    transcript = heard(whisper, sentence, **VOICE)
    found, _, _ = Care.load(Settings().safety).assess_heard(transcript.hypotheses, spoken=True)
    assert found.level == Level.CRISIS, transcript.hypotheses


def test_a_crisis_only_the_beam_s_second_reading_heard_is_caught(whisper: WhisperTranscriber) -> None:
    """Real audio for the n-best rule: in espeak-ng's "en-us+m7" voice tiny.en's best reading of "I want
    to end my life" is "I won't turn my life"; the words come back only among the other hypotheses."""
    transcript = heard(whisper, "I want to end my life.", voice="en-us+m7", speed=155)
    care = Care.load(Settings().safety)
    best, _, _ = care.assess_heard(transcript.hypotheses[:1], spoken=True)
    found, index, read_as = care.assess_heard(transcript.hypotheses, spoken=True)
    assert best.level != Level.CRISIS, (
        f"the best reading is a crisis now: {transcript.text!r}; pick a new case"
    )
    assert found.level == Level.CRISIS and index > 0, transcript.hypotheses
    assert read_as == transcript.hypotheses[index]


def test_the_beam_s_other_hypotheses_come_back_best_first_and_distinct(whisper: WhisperTranscriber) -> None:
    transcript = heard(whisper, "I took all of the pills in the cupboard.")
    assert transcript.alternatives, "a beam of 5 gives other readings"
    assert len(set(transcript.hypotheses)) == len(transcript.hypotheses)
    assert transcript.text not in transcript.alternatives


def _pink_noise(seconds: float, amplitude: float, rate: int = 16000) -> bytes:
    """1/f noise: white noise shaped in the frequency domain, the hiss of a room or a fan."""
    rng = np.random.default_rng(3)
    spectrum = np.fft.rfft(rng.standard_normal(int(seconds * rate)))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    noise = np.fft.irfft(spectrum)
    noise *= amplitude / np.abs(noise).max()
    return (noise * 32767).astype("<i2").tobytes()


def _white(seconds: float, amplitude: int, rate: int = 16000) -> bytes:
    rng = random.Random(7)
    return array("h", (rng.randint(-amplitude, amplitude) for _ in range(int(seconds * rate)))).tobytes()


@pytest.mark.parametrize(
    "pcm",
    [bytes(2 * 32000), _white(3, 30), _pink_noise(4, 0.3), _pink_noise(4, 0.05), b""],
    ids=["digital-zeros", "quiet-room", "loud-pink-noise", "soft-pink-noise", "no-samples"],
)
def test_silence_and_noise_give_no_words(whisper: WhisperTranscriber, pcm: bytes) -> None:
    """Whisper's known failure: reading "Thank you." or "you" into a quiet turn."""
    transcript = whisper.transcribe(read_wav(pcm16_wav(pcm, 16000), max_seconds=60))
    assert transcript.text == "" and transcript.alternatives == ()


def test_a_minute_of_speech_is_read_in_windows(whisper: WhisperTranscriber) -> None:
    """Past Whisper's 30 s window the speech is split, and every part is read."""
    said = " ".join([*SENTENCES, *LONGER])
    audio = read_wav(speak(said, **VOICE), max_seconds=60)
    assert audio.duration_s > 30
    transcript = whisper.transcribe(audio)
    assert word_error_rate(said, transcript.text) <= 0.2, transcript.text


def test_other_sample_rates_are_resampled_in_memory() -> None:
    wav = read_wav(speak(SENTENCES[2]), max_seconds=60)
    assert wav.sample_rate == 22050
    resampled = stt_whisper.to_16k(wav)
    assert resampled.dtype == np.float32
    assert abs(len(resampled) / stt_whisper.SAMPLE_RATE - wav.duration_s) < 0.01
    assert 0.01 < float(np.abs(resampled).max()) <= 1.0


def test_only_a_lower_ranked_hypothesis_carries_the_crisis() -> None:
    """The n-best rule: the transcript says "bills", the beam's third reading "pills"; the crisis wins."""
    care = Care.load(Settings().safety)
    hypotheses = (
        "I have taken all my bills tonight.",
        "I have taken all my bells tonight.",
        "I have taken all my pills tonight.",
    )
    best, _, _ = care.assess_heard(hypotheses[:1])
    assert best.level != Level.CRISIS
    found, index, read_as = care.assess_heard(hypotheses)
    assert found.level == Level.CRISIS and (index, read_as) == (2, hypotheses[2])


@pytest.mark.parametrize(
    ("heard", "meant"),
    [
        # The spoken line ends "...and I'm going to take them all", which the rules now read as a crisis
        # whatever was lined up; its first half alone still needs the sound-alike put back.
        ("I've got the bills lined up on the table.", "I've got the pills lined up on the table."),
        ("I've got the Pulls lined up on the table.", "I've got the pills lined up on the table."),
        ("There's no reason for me to love anymore.", "There's no reason for me to live anymore."),
    ],
)
def test_a_crisis_word_misheard_in_every_hypothesis_is_put_back_for_speech(heard: str, meant: str) -> None:
    """Measured mishearings (server/data/soundalikes.toml): the beam held no "pills" at all, only "bills"."""
    care = Care.load(Settings().safety)
    typed, _, _ = care.assess_heard((heard,))
    assert typed.level != Level.CRISIS, "a typed word means what it says"
    found, index, read_as = care.assess_heard(("Oh.", heard), spoken=True)
    assert found.level == Level.CRISIS and (index, read_as) == (1, meant)


@pytest.mark.parametrize(
    "heard",
    ["I paid all the bills today.", "I love my cat.", "The door pulls open.", "I want to love again."],
)
def test_a_sound_alike_that_is_no_crisis_when_put_back_stays_what_it_was(heard: str) -> None:
    found, index, read_as = Care.load(Settings().safety).assess_heard((heard,), spoken=True)
    assert (found.level, index, read_as) == (Level.NONE, 0, "")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("version = 2\n", "version is 2; expected 1"),
        ('version = 1\n[[soundalike]]\nmeant = "pills"\n', "[[soundalike]] 1 needs meant"),
        ('version = 1\n[[soundalike]]\nmeant = "pills"\nheard = ["b ills"]\n', "heard must be single"),
    ],
)
def test_a_bad_soundalikes_file_is_refused_naming_the_entry(data: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        SOUNDALIKES_FILE.parse_text(data, "soundalikes.toml")


def test_the_transcript_s_confidence_is_what_the_record_keeps() -> None:
    transcript = Transcript(
        text="I feel sick",
        engine="whisper",
        words=(Word("I", 0.99), Word("feel", 0.9), Word("sick", 0.31)),
        avg_logprob=-0.42,
    )
    assert transcript.confidence() == {
        "engine": "whisper",
        "avg_logprob": -0.42,
        "words": [["I", 0.99], ["feel", 0.9], ["sick", 0.31]],
    }
    assert Transcript(text="hi", engine="sphinx").confidence() == {"engine": "sphinx"}


def test_a_model_path_or_name_that_is_not_there_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="neither a catalogue name") as caught:
        find_model(str(tmp_path / "absent"))
    assert caught.value.code == "model_missing"
    with pytest.raises(ModelError, match=re.escape("tadbot models pull whisper-base.en")):
        find_model("whisper-base.en")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match=re.escape("lacks config.json, tokenizer.json, vocabulary.txt")):
        WhisperTranscriber(tmp_path)


def test_a_pulled_copy_is_preferred_to_the_installed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = find_model("whisper-tiny.en")
    pulled = tmp_path / "stt" / "whisper-tiny.en"
    pulled.mkdir(parents=True)
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        (pulled / name).symlink_to(installed / name)
    monkeypatch.setenv("TADBOT_MODELS_DIR", str(tmp_path))
    assert find_model("whisper-tiny.en") == pulled


def test_an_english_only_model_refuses_another_language() -> None:
    with pytest.raises(ModelError, match="English-only") as caught:
        WhisperTranscriber(find_model("whisper-tiny.en"), language="fr-FR")
    assert caught.value.code == "stt_language_unavailable"


def test_a_damaged_utterance_is_stt_failed(whisper: WhisperTranscriber) -> None:
    broken = WavAudio(pcm=b"\x00\x00\x00", sample_rate=16000, duration_s=0.0)
    with pytest.raises(SttError) as caught:
        whisper.transcribe(broken)
    assert (caught.value.code, caught.value.status) == ("stt_failed", 500)
    assert whisper.transcribe(read_wav(pcm16_wav(bytes(3200), 16000), max_seconds=30)).text == ""


def test_the_export_marks_the_words_recognition_was_unsure_of() -> None:
    from server.records.export import to_text

    turn = {
        "id": 1,
        "role": "user",
        "text": "I took the pills, I think.",
        "created_at": 1.0,
        "timings": {},
        "confidence": {
            "engine": "whisper",
            "words": [["I", 0.9], ["took", 0.8], ["the", 0.9], ["pills", 0.3]],
        },
    }
    event = {
        "turn_id": 1,
        "t": 2.0,
        "level": "crisis",
        "trigger": "overdose: took the pills",
        "message": "helpline",
        "hypothesis": 3,
        "heard_as": "I took the pills, I think.",
    }
    log = {
        "session_id": "s",
        "client": "c",
        "started_at": 1.0,
        "ended_at": None,
        "summary": None,
        "turns": [turn],
        "emotion_samples": [],
        "safety_events": [event],
    }
    text, _ = to_text(log)
    assert "client: I took the pills(?), I think." in text
    assert "(?) follows a word speech recognition was unsure of" in text
    assert "speech hypothesis 3" in text
