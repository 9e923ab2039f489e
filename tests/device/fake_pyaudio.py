"""A stand-in for PyAudio, because there is no microphone here.

SpeechRecognition's real `Microphone` and `Recognizer.listen` run on top of it, so the device takes the
same code path as on a Pi. The microphone "hears" a real WAV file (16-bit mono), then silence. Module
state sets the scene:
- `plugged`: False when no input device exists at all;
- `open_failures`: how many opens fail before one works (a busy or just re-plugged device);
- `after`: what comes after the WAV: "silence", paced like a real device, or "interrupt", which is
  2 s of silence and then Ctrl-C.

`log` records "open failed", "open" and "close". In a subprocess, FAKE_MIC_WAV names the WAV and
FAKE_MIC_LOG a file that gets the same records, one per line.
"""

from __future__ import annotations

import io
import os
import time
import wave
from pathlib import Path
from typing import Any

paInt16 = 8  # PyAudio's own name for 16-bit samples

rate = 44_100
pcm = b""
plugged = True
open_failures = 0
after = "silence"
log: list[str] = []

_LOG_FILE = os.environ.get("FAKE_MIC_LOG")
_INTERRUPT_AFTER_S = 2.0


def load(wav: bytes) -> None:
    """Make `wav` what the microphone hears next."""
    global pcm, rate
    with wave.open(io.BytesIO(wav)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2), "the fake microphone is mono PCM16"
        rate = reader.getframerate()
        pcm = reader.readframes(reader.getnframes())


def _note(event: str) -> None:
    log.append(event)
    if _LOG_FILE:
        with open(_LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(event + "\n")


def get_sample_size(fmt: int) -> int:
    return 2


class PyAudio:
    def get_device_count(self) -> int:
        return 1 if plugged else 0

    def get_default_input_device_info(self) -> dict[str, Any]:
        if not plugged:
            raise OSError("No Default Input Device Available")
        return {"index": 0, "name": "fake USB microphone", "maxInputChannels": 1, "defaultSampleRate": rate}

    def get_device_info_by_index(self, index: int) -> dict[str, Any]:
        if index != 0:
            raise OSError("Invalid device index")
        return self.get_default_input_device_info()

    def open(self, **kwargs: Any) -> _Stream:
        global open_failures
        if open_failures > 0:
            open_failures -= 1
            _note("open failed")
            raise OSError(-9985, "Device unavailable")
        _note("open")
        return _Stream()

    def terminate(self) -> None:
        """Nothing to release."""


class _Stream:
    def __init__(self) -> None:
        self._offset = 0
        self._silence_s = 0.0
        self._stopped = False

    def read(self, frames: int, exception_on_overflow: bool = True) -> bytes:
        size = 2 * frames
        chunk = pcm[self._offset : self._offset + size]
        self._offset += len(chunk)
        if chunk:
            return chunk.ljust(size, b"\0")
        self._silence_s += frames / rate
        if after == "interrupt":
            if self._silence_s > _INTERRUPT_AFTER_S:
                raise KeyboardInterrupt
        else:
            time.sleep(frames / rate)  # a real device blocks for as long as the audio lasts
        return bytes(size)

    def is_stopped(self) -> bool:
        return self._stopped

    def stop_stream(self) -> None:
        self._stopped = True

    def close(self) -> None:
        _note("close")


if os.environ.get("FAKE_MIC_WAV"):
    load(Path(os.environ["FAKE_MIC_WAV"]).read_bytes())
