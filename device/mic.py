"""The microphone: PyAudio at the device's own rate, as 16 kHz mono PCM16 frames for the endpointer.

`MicPcm` is the `PcmSource` a `Listener` (device.listen) reads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from device.audio import SAMPLE_RATE
from device.backoff import DELAYS_S, Backoff
from device.errors import AudioInputError
from device.liveness import Beat

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


class StreamResampler:
    """Polyphase windowed-sinc resampling of a stream that arrives in chunks of any size.

    Each output sample is computed from the input around it, and the input not yet used is carried over
    to the next chunk, so chunk edges leave no clicks: the output is the same however the input is cut.
    The low-pass sits below both Nyquist limits, so a 44.1 kHz microphone does not alias into 16 kHz.
    """

    _ZERO_CROSSINGS = 16
    """Filter length each side, in zero crossings of the sinc: long enough for a narrow transition band."""

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE) -> None:
        divisor = math.gcd(rate_in, rate_out)
        self._up, self._down = rate_out // divisor, rate_in // divisor
        cutoff = 0.4 * min(1.0, rate_out / rate_in)  # in cycles per input sample
        self._half = math.ceil(self._ZERO_CROSSINGS / (2 * cutoff))
        self._taps = np.arange(-self._half + 1, self._half + 1)
        # Output sample n sits at input position n * down / up; its fraction takes one of `up` values,
        # one row of weights each.
        distance = self._taps[None, :] - (np.arange(self._up) / self._up)[:, None]
        angle = np.pi * distance / self._half
        window = 0.42 + 0.5 * np.cos(angle) + 0.08 * np.cos(2 * angle)  # Blackman
        weights = np.sinc(2 * cutoff * distance) * window
        self._weights = weights / weights.sum(axis=1, keepdims=True)
        self._held = np.zeros(self._half)  # silence before the stream starts
        self._held_from = -self._half  # input index of _held[0]
        self._next = 0  # index of the next output sample

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk; returns as many output samples as the input so far allows."""
        if self._up == self._down:
            return samples
        held = np.concatenate([self._held, samples])
        last_usable = self._held_from + len(held) - 1 - self._half  # latest centre whose taps all exist
        last = ((last_usable + 1) * self._up - 1) // self._down
        wanted = np.arange(self._next, last + 1)
        centres, phases = np.divmod(wanted * self._down, self._up)
        out = np.einsum(
            "ij,ij->i", held[centres[:, None] + self._taps[None, :] - self._held_from], self._weights[phases]
        )
        self._next = max(self._next, last + 1)
        keep_from = self._next * self._down // self._up - self._half + 1
        drop = min(max(0, keep_from - self._held_from), len(held))
        self._held, self._held_from = held[drop:], self._held_from + drop
        return out


def list_inputs(audio: Any) -> dict[int, dict[str, Any]]:
    """PortAudio's input devices by index: what `mic_index` and `mic_device` choose from."""
    inputs: dict[int, dict[str, Any]] = {}
    for number in range(audio.get_device_count()):
        with contextlib.suppress(OSError):
            info = audio.get_device_info_by_index(number)
            if int(info.get("maxInputChannels", 0)) > 0:
                inputs[number] = info
    return inputs


def match_input(inputs: dict[int, dict[str, Any]], name: str) -> int | None:
    """The first input whose name contains `name`, in any case; None if none does."""
    wanted = name.lower()
    return next((i for i, info in inputs.items() if wanted in str(info.get("name", "")).lower()), None)


def find_input(audio: Any, name: str) -> int:
    """The index of the input `[device] mic_device` names; an error that names the key and the inputs."""
    inputs = list_inputs(audio)
    index = match_input(inputs, name)
    if index is None:
        listed = ", ".join(f'"{info.get("name", "?")}"' for info in inputs.values()) or "none"
        raise AudioInputError(
            "no_microphone", f'[device] mic_device = "{name}" matches no microphone; inputs: {listed}'
        )
    return index


class MicPcm:
    """The microphone as a `PcmSource`: opened on the first read and reopened, with growing waits, when it
    is missing, unplugged or busy. That is never fatal: it logs a line now and then until it works again.

    A `device_name` (`[device] mic_device`) is looked up at every open, since a USB microphone plugged in
    again may get another index; it must match an input when the microphone is made, so a typo stops
    start-up with the inputs there are."""

    live = True

    def __init__(
        self,
        device_index: int | None = None,
        *,
        device_name: str = "",
        frame_ms: int = 30,
        delays: Sequence[float] = DELAYS_S,
        beat: Beat | None = None,
    ) -> None:
        try:
            import pyaudio
        except ImportError as exc:
            raise AudioInputError("no_microphone", _NO_PYAUDIO) from exc
        self._pyaudio = pyaudio
        self._device_index = device_index
        self._device_name = device_name
        if device_name:
            self._where = f'mic_device "{device_name}"'
            with _quiet_native_stderr():
                audio = pyaudio.PyAudio()
                try:
                    find_input(audio, device_name)
                finally:
                    audio.terminate()
        else:
            self._where = "default" if device_index is None else f"index {device_index}"
        self._beat = beat or Beat("microphone")
        self._frame_ms = frame_ms
        self._frame_samples = SAMPLE_RATE * frame_ms // 1000
        self._closed = threading.Event()
        self._backoff = Backoff(delays, stop=self._closed)
        self._lock = threading.Lock()  # one reader at a time, and no release in the middle of a read
        self._audio: Any = None
        self._stream: Any = None
        self._resampler = StreamResampler(SAMPLE_RATE)  # replaced at each open, for the device's rate
        self._chunk = 0
        self._rate = 0
        self._pending = np.zeros(0)
        self._read_since_open = 0

    def read(self) -> bytes | None:
        with self._lock:
            while len(self._pending) < self._frame_samples:
                if self._closed.is_set():
                    self._release()
                    return None
                try:
                    self._pending = np.concatenate([self._pending, self._capture()])
                except (AudioInputError, OSError) as exc:
                    self._release()
                    self._wait_after(exc)
            frame, self._pending = self._pending[: self._frame_samples], self._pending[self._frame_samples :]
        return np.clip(np.round(frame * 32768.0), -32768, 32767).astype("<i2").tobytes()

    def _wait_after(self, exc: AudioInputError | OSError) -> None:
        """Back off before the next open; `close()` ends the wait at once. A microphone that is away is
        waited for, not a hung listener: the listener's beat says so, or liveness would restart it."""
        delay = self._backoff.failed()
        self._beat.beat("waiting for the microphone", delay + 30.0)
        if self._backoff.worth_logging:
            reason = exc.message if isinstance(exc, AudioInputError) else f"microphone failed: {exc}"
            _LOGGER.warning(
                "%s; retrying in %g s (failure %d in a row)", reason, delay, self._backoff.failures
            )
        self._backoff.wait(delay)

    def close(self) -> None:
        """Stop reading and release the device; waits for a read in progress, at most one chunk."""
        self._closed.set()
        with self._lock:
            self._release()

    def _capture(self) -> np.ndarray:
        if self._stream is None:
            self._open()
        data = self._stream.read(self._chunk, exception_on_overflow=False)
        self._read_since_open += self._chunk
        if self._read_since_open >= self._rate:  # a second of audio: the microphone works again
            self._backoff.reset()
        return self._resampler.push(np.frombuffer(data, dtype="<i2") / 32768.0)

    def _open(self) -> None:
        with _quiet_native_stderr():
            audio = self._pyaudio.PyAudio()
            try:
                index, info = self._device_info(audio)
                rate = int(info["defaultSampleRate"])
                chunk = rate * self._frame_ms // 1000
                try:
                    stream = audio.open(
                        format=self._pyaudio.paInt16,
                        channels=1,
                        rate=rate,
                        input=True,
                        input_device_index=index,
                        frames_per_buffer=chunk,
                    )
                except (OSError, ValueError) as exc:
                    raise AudioInputError(
                        "no_microphone",
                        f"cannot open the microphone ({self._where}): {exc}; unplugged, busy, or not an "
                        "input? list devices with `arecord -l`",
                    ) from exc
            except AudioInputError:
                audio.terminate()
                raise
        self._audio, self._stream, self._rate, self._chunk = audio, stream, rate, chunk
        self._resampler = StreamResampler(rate)
        self._read_since_open = 0
        _LOGGER.info("microphone open (%s, %s, %d Hz)", self._where, info.get("name", "?"), rate)

    def _device_info(self, audio: Any) -> tuple[int | None, dict[str, Any]]:
        """The index to open (None: the default) and its PortAudio description."""
        index = find_input(audio, self._device_name) if self._device_name else self._device_index
        try:
            if index is None:
                info: dict[str, Any] = audio.get_default_input_device_info()
            else:
                info = audio.get_device_info_by_index(index)
        except OSError as exc:
            raise AudioInputError(
                "no_microphone", f"no microphone found ({self._where}): {exc}; list devices with `arecord -l`"
            ) from exc
        if int(info.get("maxInputChannels", 0)) < 1:
            raise AudioInputError(
                "no_microphone",
                f"{info.get('name', 'the device')} ({self._where}) is not a microphone: it has no inputs; "
                "list devices with `arecord -l`",
            )
        return index, info

    def _release(self) -> None:
        """Close the stream, if open; the next read opens it again unless closed."""
        stream, audio, self._stream, self._audio = self._stream, self._audio, None, None
        self._pending = np.zeros(0)
        if stream is None:
            return
        try:
            stream.stop_stream()
            stream.close()
        except OSError as exc:  # an unplugged device can fail to close; it is released either way
            _LOGGER.debug("closing the microphone: %s", exc)
        with _quiet_native_stderr():
            audio.terminate()
        _LOGGER.debug("microphone closed (%s)", self._where)
