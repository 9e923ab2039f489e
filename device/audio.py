"""The audio-input seam: an `AudioSource` yields utterances as WAV bytes in the one format the server expects.

Every source converts to 16 kHz mono PCM16 here, on the device, so the server gets a single format and the Pi
sends about a third of the bytes a 44.1 kHz stereo file would take.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Generator
from typing import Protocol

import numpy as np

from device.errors import AudioInputError

SAMPLE_RATE = 16_000
"""The rate the server's speech-to-text expects."""

_PCM_WIDTHS = {1: "8-bit", 2: "16-bit", 3: "24-bit", 4: "32-bit"}


class AudioSource(Protocol):
    """Something that hears the person: each item is one utterance, a complete 16 kHz mono PCM16 WAV."""

    def utterances(self) -> Generator[bytes, None, None]:
        """Yield utterances until the source runs out (a file) or the generator is closed (a microphone)."""
        ...


def _pcm_to_float(frames: bytes, width: int) -> np.ndarray:
    """Decode interleaved PCM of any standard width to float64 in [-1, 1)."""
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(frames, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 3:  # 24-bit: widen each little-endian triplet to int32 by putting it in the top bytes
        triplets = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((len(triplets), 4), dtype=np.uint8)
        padded[:, 1:] = triplets
        return padded.view("<i4").reshape(-1).astype(np.float64) / 2.0**31
    dtype = {2: "<i2", 4: "<i4"}[width]
    return np.frombuffer(frames, dtype=dtype).astype(np.float64) / 2.0 ** (8 * width - 1)


def _resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain: no aliasing when going down, no scipy on the Pi."""
    if rate_in == rate_out or len(samples) == 0:
        return samples
    count_out = max(1, round(len(samples) * rate_out / rate_in))
    spectrum = np.fft.rfft(samples)
    bins_out = count_out // 2 + 1
    if len(spectrum) >= bins_out:
        spectrum = spectrum[:bins_out]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins_out - len(spectrum), dtype=spectrum.dtype)])
    return np.fft.irfft(spectrum, count_out) * (count_out / len(samples))


def encode_wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Write float samples in [-1, 1) as a mono PCM16 WAV in memory; PCM16 input round-trips bit-exact."""
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def to_pcm16_mono_16k(data: bytes, name: str, max_seconds: float | None = None) -> bytes:
    """Convert any PCM WAV (8/16/24/32-bit, any rate, any channel count) to 16 kHz mono PCM16 WAV bytes.

    `name` only labels errors, so the person knows which file to fix. `max_seconds` cuts the end off: the
    server refuses audio over its limit, and SpeechRecognition's phrase limit leaves out the half second
    of lead-in it keeps, so a capped phrase can still run over.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioInputError(
            "bad_audio",
            f"{name} is not a PCM WAV file ({exc}); convert it with: sox {name} -b 16 -c 1 -r 16000 out.wav",
        ) from exc
    if width not in _PCM_WIDTHS or channels < 1 or rate <= 0:
        raise AudioInputError(
            "bad_audio", f"{name} has an unsupported WAV layout: {channels} ch, {width} bytes"
        )
    usable = len(frames) - len(frames) % (width * channels)
    if usable == 0:
        raise AudioInputError("bad_audio", f"{name} contains no audio samples")
    mono = _pcm_to_float(frames[:usable], width).reshape(-1, channels).mean(axis=1)
    samples = _resample(mono, rate, SAMPLE_RATE)
    if max_seconds is not None:
        samples = samples[: int(max_seconds * SAMPLE_RATE)]
    return encode_wav(samples)
