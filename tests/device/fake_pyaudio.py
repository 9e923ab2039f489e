"""A stand-in for PyAudio, because there is no microphone here.

The device's real `MicPcm` (open, resample, reopen) runs on top of it, so it takes the same code path as
on a Pi. The microphone "hears" a real WAV file (16-bit mono), then silence. Module state sets the scene
(the `fake_mic` fixture restores it, except `pace_wav`: change that one with monkeypatch):
- `plugged`: False when no input device exists at all;
- `extra_devices`: (name, input channels) of devices after the microphone at index 0, from index 1 on
  (set it with monkeypatch); those with inputs hear what it hears;
- `open_failures`: how many opens fail before one works (a busy or just re-plugged device);
- `pace_wav`: True (the default) hands the WAV out at the pace of a real device, which blocks for as long
  as the audio lasts, so a listener thread hears it in real time; False hands it over at once;
- `after`: what comes after the WAV: "silence", paced like a real device; "interrupt", which is 2 s of
  that silence and then Ctrl-C (a KeyboardInterrupt in the main thread, whichever thread reads); or
  "unplug", a read that fails as a pulled USB microphone does (a reopened stream hears the WAV again).

`log` records "open failed", "open" and "close". In a subprocess, FAKE_MIC_WAV names the WAV and
FAKE_MIC_LOG a file that gets the same records, one per line.
"""

from __future__ import annotations

import _thread
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
pace_wav = True
extra_devices: list[tuple[str, int]] = []
log: list[str] = []

_LOG_FILE = os.environ.get("FAKE_MIC_LOG")
_INTERRUPT_AFTER_S = 2.0
_INTERRUPT_AGAIN_S = 5.0


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
        return 1 + len(extra_devices) if plugged else 0

    def get_default_input_device_info(self) -> dict[str, Any]:
        if not plugged:
            raise OSError("No Default Input Device Available")
        return {"index": 0, "name": "fake USB microphone", "maxInputChannels": 1, "defaultSampleRate": rate}

    def get_device_info_by_index(self, index: int) -> dict[str, Any]:
        if index == 0:
            return self.get_default_input_device_info()
        if not plugged or not 0 < index <= len(extra_devices):
            raise OSError("Invalid device index")
        name, inputs = extra_devices[index - 1]
        return {"index": index, "name": name, "maxInputChannels": inputs, "defaultSampleRate": rate}

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
        self._interrupt_at_s = _INTERRUPT_AFTER_S
        self._stopped = False

    def read(self, frames: int, exception_on_overflow: bool = True) -> bytes:
        size = 2 * frames
        chunk = pcm[self._offset : self._offset + size]
        self._offset += len(chunk)
        if chunk:
            if pace_wav:
                time.sleep(frames / rate)
            return chunk.ljust(size, b"\0")
        if after == "unplug":
            raise OSError(-9999, "Unanticipated host error")
        self._silence_s += frames / rate
        if after == "interrupt" and self._silence_s > self._interrupt_at_s:
            # What Ctrl-C does: the main thread gets KeyboardInterrupt. Pressed again while the daemon
            # still runs, as a person would: in full-suite runs one press was seen to go unanswered.
            self._interrupt_at_s += _INTERRUPT_AGAIN_S
            _thread.interrupt_main()
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
