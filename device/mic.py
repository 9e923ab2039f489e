"""The microphone as the audio source, through SpeechRecognition's energy-threshold endpointing.

This is the walking skeleton's VAD: `Recognizer.listen()` returns when the person pauses. A real VAD (vad.py)
can later replace the endpointing behind the same `AudioSource` seam.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Generator, Iterator
from typing import Any

from device.audio import to_pcm16_mono_16k
from device.backoff import Backoff
from device.errors import AudioInputError

_LOGGER = logging.getLogger(__name__)

_NO_PYAUDIO = (
    "the microphone needs PyAudio, which is not installed: run `sudo apt install portaudio19-dev` then "
    "`pip install pyaudio`, or use --audio-file/--text"
)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hide what ALSA, JACK and PortAudio print straight to fd 2 while probing devices: dozens of lines of
    "Unknown PCM cards.pcm.rear" on every open, which would bury the one line that matters in the journal."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _speech_recognition() -> Any:
    # On Python 3.11-3.12 it imports the deprecated `aifc` and `audioop` modules; that is its business, not
    # a reason to fail under `-W error`.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import speech_recognition
    return speech_recognition


class MicrophoneSource:
    """Yields one WAV per utterance, listening only between turns so the device never hears itself speak.

    A microphone that is missing, unplugged or busy is not fatal: the daemon logs one line and tries again
    with growing waits, so plugging the microphone back in is all it takes.
    """

    def __init__(
        self,
        device_index: int | None = None,
        calibration_s: float = 1.0,
        max_utterance_s: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        try:
            import pyaudio  # noqa: F401  (here to fail early and clearly; SpeechRecognition uses it)
        except ImportError as exc:
            raise AudioInputError("no_microphone", _NO_PYAUDIO) from exc
        self._sr = _speech_recognition()
        self._device_index = device_index
        self._where = "default" if device_index is None else f"index {device_index}"
        self._calibration_s = calibration_s
        self._max_utterance_s = max_utterance_s
        self._backoff = backoff or Backoff()
        self._recognizer = self._sr.Recognizer()

    @contextlib.contextmanager
    def _opened(self) -> Iterator[Any]:
        """The microphone, open, or AudioInputError.

        SpeechRecognition 3.17's `Microphone.__enter__` swallows a failed open and returns a source whose
        stream is None: listening on it then fails with AssertionError, and its `__exit__` with
        AttributeError. So the open is checked here, and `__exit__` is only called on an open microphone.
        """
        with _quiet_native_stderr():
            try:
                microphone = self._sr.Microphone(device_index=self._device_index)
            except (AssertionError, OSError) as exc:  # AssertionError: "Device index out of range"
                raise AudioInputError(
                    "no_microphone",
                    f"no microphone found ({self._where}): {exc}; list devices with `arecord -l`",
                ) from exc
            source = microphone.__enter__()
        if source.stream is None:
            raise AudioInputError(
                "no_microphone",
                f"cannot open the microphone ({self._where}): unplugged, busy, or not an input; "
                "list devices with `arecord -l`",
            )
        _LOGGER.info("microphone open (%s, %d Hz)", self._where, source.SAMPLE_RATE)
        try:
            yield source
        finally:
            try:
                microphone.__exit__(None, None, None)
            except OSError as exc:  # an unplugged device can fail to close; it is released either way
                _LOGGER.debug("closing the microphone: %s", exc)

    def utterances(self) -> Generator[bytes, None, None]:
        """Listen until closed; a failing microphone is reopened after a back-off, never raised."""
        while True:
            try:
                with self._opened() as source:
                    if self._calibration_s > 0:
                        self._recognizer.adjust_for_ambient_noise(source, duration=self._calibration_s)
                        _LOGGER.info(
                            "speech threshold %.0f after calibration", self._recognizer.energy_threshold
                        )
                    while True:
                        audio = self._recognizer.listen(source, phrase_time_limit=self._max_utterance_s)
                        self._backoff.reset()
                        yield to_pcm16_mono_16k(
                            audio.get_wav_data(), "microphone", max_seconds=self._max_utterance_s
                        )
            except (AudioInputError, OSError) as exc:
                delay = self._backoff.failed()
                if self._backoff.worth_logging:
                    reason = exc.message if isinstance(exc, AudioInputError) else f"microphone failed: {exc}"
                    _LOGGER.warning(
                        "%s; retrying in %g s (failure %d in a row)", reason, delay, self._backoff.failures
                    )
                if not self._backoff.wait(delay):
                    return
