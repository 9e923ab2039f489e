"""Speech-to-text: read the uploaded WAV in memory, then turn it into words with an offline engine.

Audio is never written to disk: the privacy promise is that nothing raw is kept, not even in a temp file.
Whisper (`server/speech/whisper.py`) is the default engine; PocketSphinx, here, is the small fallback.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import warnings
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from server.errors import ConfigError, ModelError, SttError

_LOGGER = logging.getLogger(__name__)

_MIN_RATE = 8000
_MAX_RATE = 48000
_SPHINX_RATE = 16000  # the PocketSphinx acoustic models are trained on 16 kHz audio
_SAMPLE_WIDTH = 2
_SEND_THIS = "send 16-bit PCM mono WAV at 8000 to 48000 Hz (16000 Hz is best)"
_UNKNOWN_LENGTH = 1 << 30
"""A data size this large (hours) is a streaming header's placeholder (0xFFFFFFFF), not a length."""
ENGINES = ("faster_whisper", "sphinx")


@dataclass(frozen=True)
class WavAudio:
    """One utterance as little-endian 16-bit mono PCM, checked and ready for any engine."""

    pcm: bytes
    sample_rate: int
    duration_s: float


def read_wav(data: bytes, *, max_seconds: float) -> WavAudio:
    """Parse an uploaded WAV in memory; reject what the engines cannot use, with a message that says why."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            if channels != 1 or width != _SAMPLE_WIDTH or not _MIN_RATE <= rate <= _MAX_RATE:
                raise SttError(
                    "unsupported_audio",
                    f"The audio is {channels}-channel, {8 * width}-bit at {rate} Hz; {_SEND_THIS}.",
                    415,
                )
            # Read at most one frame past the limit: a bogus or streaming header (size 0xFFFFFFFF) must not
            # make us trust the declared length, and an oversized upload must not be decoded in full.
            max_frames = int(max_seconds * rate)
            declared = wav.getnframes()
            pcm = wav.readframes(max_frames + 1)
    except wave.Error as exc:
        # The stdlib rejects float, A-law and other non-PCM encodings with this message; all else is damage.
        if str(exc).startswith("unknown format"):
            message = f"The audio is not plain PCM ({exc}); {_SEND_THIS}."
            raise SttError("unsupported_audio", message, 415) from exc
        message = f"The audio is not a readable WAV file ({exc}); {_SEND_THIS}."
        raise SttError("bad_audio", message, 400) from exc
    except (EOFError, RuntimeError) as exc:  # Python 3.11's wave raises a bare RuntimeError on a bad chunk
        raise SttError("bad_audio", f"The WAV file is truncated or damaged; {_SEND_THIS}.", 400) from exc
    pcm = pcm[: len(pcm) - len(pcm) % _SAMPLE_WIDTH]  # a truncated upload can end mid-sample
    frames = len(pcm) // _SAMPLE_WIDTH
    if declared * _SAMPLE_WIDTH < _UNKNOWN_LENGTH and frames < min(declared, max_frames + 1):
        # Less audio than the header promises: the recording was cut, and half a sentence would be answered.
        raise SttError(
            "bad_audio",
            f"The WAV file is truncated: its header promises {declared / rate:.1f} s of audio and it holds "
            f"{frames / rate:.1f} s; send the whole recording.",
            400,
        )
    if frames > max_frames:
        raise SttError(
            "audio_too_long",
            f"The audio is longer than the {max_seconds:g} s limit; send shorter turns.",
            413,
        )
    return WavAudio(pcm=pcm, sample_rate=rate, duration_s=frames / rate)


@dataclass(frozen=True)
class Word:
    """One word of the best transcript and the engine's probability that it is right (0 to 1)."""

    text: str
    probability: float


@dataclass(frozen=True)
class Transcript:
    """What an engine heard: the best text, the other hypotheses it weighed (best first), and how sure
    it was. The crisis check reads every hypothesis; the record keeps the words' probabilities."""

    text: str
    engine: str
    alternatives: tuple[str, ...] = ()
    words: tuple[Word, ...] = ()
    avg_logprob: float | None = None
    no_speech_prob: float | None = None

    @property
    def hypotheses(self) -> tuple[str, ...]:
        return (self.text, *self.alternatives)

    def confidence(self) -> dict[str, Any]:
        """The turn record's `confidence`: per-word probabilities and the average log-probability."""
        found: dict[str, Any] = {"engine": self.engine}
        if self.avg_logprob is not None:
            found["avg_logprob"] = self.avg_logprob
        if self.words:
            found["words"] = [[word.text, word.probability] for word in self.words]
        return found


class Transcriber(Protocol):
    """Anything that turns one utterance into text; the turn handler depends on this, not on an engine."""

    name: str

    def transcribe(self, audio: WavAudio) -> Transcript:
        """Return what was heard; an empty text when nothing was said."""
        ...


class SphinxTranscriber:
    """Offline CMU PocketSphinx, the engine that works with nothing but the PyPI wheels.

    SpeechRecognition's `recognize_sphinx` builds a new decoder on every call (about 0.7 s of model loading),
    so this class keeps one pocketsphinx `Decoder` behind a lock and resets its feature extraction per
    utterance, which gives the same words as a fresh decoder. SpeechRecognition still resamples to 16 kHz.
    """

    name = "sphinx"

    def __init__(self, language: str = "en-US") -> None:
        import pocketsphinx

        with warnings.catch_warnings():
            # SpeechRecognition imports the stdlib's deprecated `aifc` and `audioop` on Python 3.11-3.12; that
            # is its business, not a reason to fail under `-W error` (the project's pytest setting).
            warnings.filterwarnings("ignore", r"'(aifc|audioop)' is deprecated", DeprecationWarning)
            import speech_recognition as sr

        self._audio_data = sr.AudioData
        hmm, lm, dictionary = _sphinx_model_paths(language, os.path.dirname(sr.__file__))
        started = time.perf_counter()
        try:
            # Dither stops digital silence (exact zeros) from being heard as words; a fixed seed keeps the
            # dither, and so the transcript, the same for the same audio.
            self._decoder = pocketsphinx.Decoder(
                hmm=hmm, lm=lm, dict=dictionary, dither=True, seed=1, logfn=os.devnull
            )
        except RuntimeError as exc:
            raise ModelError(
                "stt_model_unreadable",
                f"PocketSphinx could not load its model from {hmm}; reinstall pocketsphinx.",
            ) from exc
        self._lock = threading.Lock()
        _LOGGER.info("sphinx decoder loaded in %.0f ms from %s", 1000 * (time.perf_counter() - started), hmm)

    def transcribe(self, audio: WavAudio) -> Transcript:
        """Decode one whole utterance; silence gives "" because a quiet turn is not a failure."""
        if not audio.pcm:
            # A header-only WAV is an empty turn, and the decoder raises IndexError on no samples.
            return Transcript(text="", engine=self.name)
        started = time.perf_counter()
        try:
            raw = self._audio_data(audio.pcm, audio.sample_rate, _SAMPLE_WIDTH).get_raw_data(
                convert_rate=_SPHINX_RATE
            )
            with self._lock:
                # Feature state (noise floor, cepstral mean, dither) otherwise carries over from the previous
                # utterance, which may be another person's, and makes the result depend on call order.
                self._decoder.reinit_feat()
                self._decoder.start_utt()
                try:
                    self._decoder.process_raw(raw, False, True)
                finally:
                    self._decoder.end_utt()  # an utterance left open makes every later start_utt fail
                hypothesis = self._decoder.hyp()
        except Exception as exc:
            _LOGGER.exception("sphinx failed on %.1f s of audio", audio.duration_s)
            raise SttError("stt_failed", "Speech recognition failed; try again or send text.", 500) from exc
        text = hypothesis.hypstr.strip() if hypothesis is not None else ""
        _LOGGER.debug(
            "sphinx heard %d words in %.1f s of audio, %.0f ms",
            len(text.split()),
            audio.duration_s,
            1000 * (time.perf_counter() - started),
        )
        return Transcript(text=text, engine=self.name)


def _sphinx_model_paths(language: str, speech_recognition_dir: str) -> tuple[str, str, str]:
    """US English uses the model in the pocketsphinx wheel; other languages use SpeechRecognition's layout.

    The pocketsphinx 5 wheel ships the same acoustic model as SpeechRecognition's bundled en-US copy, with a
    newer language model and dictionary and feature settings (batch CMN) that pocketsphinx 5 understands.
    """
    if language == "en-US":
        from pocketsphinx import get_model_path

        root = os.path.join(get_model_path(), "en-us")
        return (
            os.path.join(root, "en-us"),
            os.path.join(root, "en-us.lm.bin"),
            os.path.join(root, "cmudict-en-us.dict"),
        )
    root = os.path.join(speech_recognition_dir, "pocketsphinx-data", language)
    paths = (
        os.path.join(root, "acoustic-model"),
        os.path.join(root, "language-model.lm.bin"),
        os.path.join(root, "pronounciation-dictionary.dict"),  # sic: SpeechRecognition's spelling
    )
    if not all(os.path.exists(path) for path in paths):
        raise ConfigError(
            "stt_language_unavailable",
            f"stt.language = {language!r} has no PocketSphinx model; install one under {root} "
            "(acoustic-model/, language-model.lm.bin, pronounciation-dictionary.dict) or use 'en-US'.",
        )
    return paths


def get_transcriber(engine: str, *, language: str, whisper: dict[str, Any] | None = None) -> Transcriber:
    """Build the engine named by `stt.engine`; `whisper` holds faster-whisper's options and model folder."""
    if engine == "sphinx":
        return SphinxTranscriber(language=language)
    if engine == "faster_whisper":
        from server.speech.whisper import WhisperTranscriber

        options = dict(whisper or {})
        model_dir = Path(options.pop("model_dir"))
        return WhisperTranscriber(model_dir, language=language, **options)
    raise ValueError(f"unknown stt.engine {engine!r}; allowed: {', '.join(ENGINES)}")
