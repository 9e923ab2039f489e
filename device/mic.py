"""The microphone as the audio source, through SpeechRecognition's energy-threshold endpointing.

This is the walking skeleton's VAD: `Recognizer.listen()` returns when the person pauses. A real VAD (vad.py)
can later replace the endpointing behind the same `AudioSource` seam.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

from device.audio import to_pcm16_mono_16k
from device.errors import AudioInputError

_LOGGER = logging.getLogger(__name__)

_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Back-off between attempts to reopen a microphone that failed (unplugged, busy); never spin."""

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
    """Yields one WAV per utterance, listening only between turns so the device never hears itself speak."""

    def __init__(
        self, device_index: int | None = None, calibration_s: float = 1.0, max_utterance_s: float = 30.0
    ) -> None:
        try:
            import pyaudio
        except ImportError as exc:
            raise AudioInputError("no_microphone", _NO_PYAUDIO) from exc
        self._sr = _speech_recognition()
        self._device_index = device_index
        self._calibration_s = calibration_s
        self._max_utterance_s = max_utterance_s
        self._recognizer = self._sr.Recognizer()
        with _quiet_native_stderr():
            audio = pyaudio.PyAudio()
        try:
            if device_index is None:
                info = audio.get_default_input_device_info()
            else:
                info = audio.get_device_info_by_index(device_index)
            if int(info.get("maxInputChannels", 0)) < 1:
                raise OSError(f"{info.get('name', '?')} has no input channels")
        except (OSError, ValueError) as exc:
            raise AudioInputError(
                "no_microphone",
                f"no microphone found (index {'default' if device_index is None else device_index}): {exc}; "
                "list devices with `arecord -l`, or use --audio-file/--text",
            ) from exc
        finally:
            audio.terminate()
        _LOGGER.info("microphone: %s", info.get("name", "?"))

    def utterances(self) -> Iterator[bytes]:
        failures = 0
        while True:
            try:
                with contextlib.ExitStack() as stack:
                    with _quiet_native_stderr():
                        source = stack.enter_context(self._sr.Microphone(device_index=self._device_index))
                    if self._calibration_s > 0:
                        self._recognizer.adjust_for_ambient_noise(source, duration=self._calibration_s)
                        _LOGGER.info(
                            "speech threshold %.0f after calibration", self._recognizer.energy_threshold
                        )
                    while True:
                        audio = self._recognizer.listen(source, phrase_time_limit=self._max_utterance_s)
                        failures = 0
                        yield to_pcm16_mono_16k(audio.get_wav_data(), "microphone")
            except OSError as exc:
                delay = _RETRY_S[min(failures, len(_RETRY_S) - 1)]
                failures += 1
                _LOGGER.warning("microphone failed (%s); retrying in %.0f s", exc, delay)
                time.sleep(delay)
