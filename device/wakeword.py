"""The optional wake word: openWakeWord's streaming pipeline, run on onnxruntime directly.

openWakeWord hears a word in three steps, each an ONNX model: a melspectrogram of every 80 ms of audio,
a 96-number speech embedding of the last 76 mel frames (Google's speech_embedding), and a small per-word
classifier over the last 16 embeddings. Running its published models ourselves keeps the device free of
openwakeword's own dependencies, and onnxruntime is imported only when a wake word is set.

`WakeGate` is what the listener holds: it feeds every frame to the detector and decides which utterances
are sent. It keeps its own clock, the seconds of audio heard, so time the device spends talking (its
frames are thrown away) does not count against the window, and a file read faster than real time keeps
the timing it was recorded with.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Final

import numpy as np

from device.audio import SAMPLE_RATE
from device.errors import DeviceConfigError
from device.settings import models_path

__all__ = ["CHUNK_SAMPLES", "WakeGate", "WakeWordDetector", "resolve_word_model"]

_LOGGER = logging.getLogger(__name__)

CHUNK_SAMPLES: Final = 1280
"""openWakeWord scores every 80 ms of 16 kHz audio."""
_CONTEXT_SAMPLES: Final = 480
"""Audio from before each chunk that the melspectrogram also gets: with its 512-sample windows 160 apart,
each 80 ms then gives 8 mel frames, as openWakeWord's streaming does."""
_MEL_BINS: Final = 32
_EMBEDDING_WINDOW: Final = 76
"""Mel frames (0.76 s) behind each embedding."""
_EMBEDDING_STEP: Final = 8
"""Mel frames between embeddings: one per chunk."""
_EMBEDDING_DIM: Final = 96
_WORD_FRAMES: Final = 16
"""Embeddings a word model looks at, when its input does not say."""
_WARMUP_SCORES: Final = 5
"""Scores after a reset that count as 0: openWakeWord's own, while the buffers still hold the filler."""
_PULL: Final = "run `tadbot models pull wakeword`"


def resolve_word_model(wake_word: str, models_dir: str | Path) -> Path:
    """The word model's file: `wake_word` itself when it is a path, else `<models_dir>/<wake_word>*.onnx`.

    Of several versions of one word (hey_jarvis_v0.1, hey_jarvis_v0.2) the last in name order is taken.
    """
    if wake_word.endswith(".onnx") or "/" in wake_word or os.sep in wake_word:
        path = models_path(wake_word)
        if not path.is_file():
            raise DeviceConfigError(
                f"wake word model {path} does not exist: {_PULL}, or set [device] wake_word to the path of "
                "an openWakeWord .onnx model"
            )
        return path
    directory = models_path(models_dir)
    found = sorted(directory.glob(f"{wake_word}*.onnx"))
    if not found:
        raise DeviceConfigError(
            f"no wake word model {directory / wake_word}*.onnx: {_PULL}, or set [device] wake_models_dir to "
            "where openWakeWord's models are"
        )
    return found[-1]


class WakeWordDetector:
    """Scores 16 kHz PCM16 audio for one wake word, 0 to 1, every 80 ms; feed it any lengths.

    The buffers start filled as openWakeWord fills them (mel frames of ones, embeddings of quiet noise), so
    scores come after `_WARMUP_SCORES` chunks rather than after two seconds; the noise is seeded, so the same
    audio always gets the same scores.
    """

    def __init__(self, wake_word: str, models_dir: str | Path, *, threshold: float = 0.5) -> None:
        word_path = resolve_word_model(wake_word, models_dir)
        feature_dir = models_path(models_dir)
        mel_path, embedding_path = (feature_dir / "melspectrogram.onnx", feature_dir / "embedding_model.onnx")
        for path in (mel_path, embedding_path):
            if not path.is_file():
                raise DeviceConfigError(
                    f"wake word: {path} is missing: {_PULL}, or set [device] wake_models_dir to where "
                    "openWakeWord's melspectrogram.onnx and embedding_model.onnx are"
                )
        try:
            import onnxruntime
        except ImportError as exc:
            raise DeviceConfigError(
                f"the wake word ({word_path}) needs onnxruntime: run `pip install onnxruntime`, or set "
                '[device] wake_word = "" to listen without one'
            ) from exc
        self.name = word_path.stem
        self.threshold = threshold
        self._mel = _session(onnxruntime, mel_path)
        self._embedding = _session(onnxruntime, embedding_path)
        self._word = _session(onnxruntime, word_path)
        self._word_frames = _word_frames(self._word, word_path)
        self._filler = self._filler_embeddings()
        self._pending = bytearray()
        self.reset()
        _LOGGER.info("wake word %s loaded from %s (threshold %.2f)", self.name, word_path, threshold)

    def reset(self) -> None:
        """Forget the audio heard so far, as if just started."""
        self._pending.clear()
        self._context = np.zeros(0, dtype=np.float32)
        self._mels = np.ones((_EMBEDDING_WINDOW, _MEL_BINS), dtype=np.float32)
        self._embeddings = self._filler.copy()
        self._scores = 0

    def feed(self, pcm16: bytes) -> float:
        """The highest score of the 80 ms chunks this audio completed; 0.0 when it completed none."""
        self._pending += pcm16
        chunk_bytes = CHUNK_SAMPLES * 2
        best = 0.0
        while len(self._pending) >= chunk_bytes:
            chunk = np.frombuffer(bytes(self._pending[:chunk_bytes]), dtype="<i2").astype(np.float32)
            del self._pending[:chunk_bytes]
            best = max(best, self._score(chunk))
        return best

    def detected(self, pcm16: bytes) -> bool:
        """Whether the wake word was heard in the chunks this audio completed."""
        return self.feed(pcm16) >= self.threshold

    def _score(self, chunk: np.ndarray) -> float:
        audio = np.concatenate([self._context, chunk])
        self._context = audio[-_CONTEXT_SAMPLES:]
        self._mels = np.concatenate([self._mels, self._melspectrogram(audio)])[-_EMBEDDING_WINDOW:]
        self._embeddings = np.concatenate([self._embeddings[1:], self._embed(self._mels)[None]])
        score = self._run(self._word, self._embeddings[None])
        self._scores += 1
        return float(score.reshape(-1)[0]) if self._scores > _WARMUP_SCORES else 0.0

    def _melspectrogram(self, audio: np.ndarray) -> np.ndarray:
        """Mel frames of int16-valued audio, rescaled as openWakeWord does to match Google's features."""
        mels = self._run(self._mel, audio[None].astype(np.float32)).reshape(-1, _MEL_BINS)
        return (mels / 10 + 2).astype(np.float32)

    def _embed(self, window: np.ndarray) -> np.ndarray:
        embedding = self._run(self._embedding, window[None, :, :, None]).reshape(-1)
        if embedding.size != _EMBEDDING_DIM:
            raise DeviceConfigError(
                f"wake word: the embedding model gave {embedding.size} numbers, not {_EMBEDDING_DIM}: {_PULL}"
            )
        return embedding

    def _filler_embeddings(self) -> np.ndarray:
        """Embeddings of quiet noise for the word model to look at before real audio has filled its input."""
        frames = _EMBEDDING_WINDOW + _EMBEDDING_STEP * (self._word_frames - 1)
        samples = 160 * (frames - 1) + 512  # the melspectrogram's hop and window
        noise = np.random.default_rng(0).integers(-1000, 1000, samples).astype(np.float32)
        mels = self._melspectrogram(noise)
        starts = range(0, len(mels) - _EMBEDDING_WINDOW + 1, _EMBEDDING_STEP)
        return np.stack([self._embed(mels[s : s + _EMBEDDING_WINDOW]) for s in starts][-self._word_frames :])

    @staticmethod
    def _run(session: Any, value: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {session.get_inputs()[0].name: value})[0])


def _session(onnxruntime: Any, path: Path) -> Any:
    """One single-threaded session: the wake word runs beside the VAD on a Pi's core, never in bursts."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own error types are not part of its API
        reason = " ".join(str(exc).split())
        raise DeviceConfigError(f"wake word: cannot load {path} ({reason}): {_PULL} again") from exc


def _word_frames(session: Any, path: Path) -> int:
    """How many embeddings the word model takes: [1, frames, 96], 16 for openWakeWord's own."""
    shape = session.get_inputs()[0].shape
    dims = [d if isinstance(d, int) else None for d in shape]  # a named dimension is free
    if len(dims) != 3 or dims[2] not in (None, _EMBEDDING_DIM):
        raise DeviceConfigError(
            f"wake word: {path} takes {shape}, not [1, frames, {_EMBEDDING_DIM}]: it is not an openWakeWord "
            f"word model; {_PULL}"
        )
    return dims[1] or _WORD_FRAMES


class WakeGate:
    """Lets utterances through from the wake word on, until `window_s` of audio passed after the last one.

    The listener calls `hear` with every frame it endpoints and `admit` with every utterance, in order.
    An utterance is sent when it started while awake, so the one that held the wake word is sent too.
    """

    def __init__(self, detector: WakeWordDetector, window_s: float) -> None:
        self._detector = detector
        self._window_s = window_s
        self._clock = 0.0
        self._awake_until = -math.inf
        self.awake = False
        """True from the wake word until `window_s` after the last utterance sent."""

    def hear(self, frame: bytes) -> None:
        """Advance the clock by `frame` and listen for the wake word in it."""
        self._clock += len(frame) / 2 / SAMPLE_RATE
        score = self._detector.feed(frame)
        if score >= self._detector.threshold:
            if not self.awake:
                _LOGGER.info(
                    "wake word %s heard (score %.2f): awake until %.0f s after the last utterance",
                    self._detector.name,
                    score,
                    self._window_s,
                )
            self.awake = True
            self._awake_until = max(self._awake_until, self._clock + self._window_s)
        elif self.awake and self._clock > self._awake_until:
            self.awake = False
            _LOGGER.info("nothing said for %.0f s: asleep until the wake word", self._window_s)

    def admit(self, seconds: float) -> bool:
        """Whether the utterance of `seconds` that ended with the last frame heard is sent."""
        if self._clock - seconds > self._awake_until:
            _LOGGER.info("asleep: ignored an utterance without the wake word")
            return False
        self.awake = True
        self._awake_until = max(self._awake_until, self._clock + self._window_s)
        return True
