"""A WAV file as the person's voice: one whole turn (`--audio-file`), or the microphone (`--mic-file`).

Either way the file is read and converted at construction, so a bad file fails before the session opens.
"""

from __future__ import annotations

import io
import logging
import time
import wave
from collections.abc import Generator
from pathlib import Path

from device.audio import SAMPLE_RATE, to_pcm16_mono_16k
from device.errors import AudioInputError

_LOGGER = logging.getLogger(__name__)


def _converted(path: Path) -> bytes:
    """The file as 16 kHz mono PCM16 WAV bytes, or AudioInputError naming it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AudioInputError("bad_audio", f"cannot read audio file {path}: {exc.strerror}") from exc
    return to_pcm16_mono_16k(data, str(path))


class WavFileSource:
    """The whole file as one utterance, without endpointing: what the person recorded is what is sent."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._wav = _converted(self.path)
        _LOGGER.info("audio file %s: %d bytes as 16 kHz mono PCM16", self.path, len(self._wav))

    def utterances(self) -> Generator[bytes, None, None]:
        yield self._wav


class WavPcm:
    """The file as a `PcmSource` in place of the microphone: frame after frame, the last one padded with
    silence, then None. Not live, so a `Listener` pauses it instead of discarding it while the device
    speaks, and no part of it is lost.

    `realtime` hands the frames out at the pace a microphone would (`--mic-file`), so the server's
    answers, and its outages, fall where they would in a spoken conversation; after a pause the file
    goes on from where it stopped rather than rushing to catch up. Tests read as fast as they can.
    """

    live = False

    def __init__(self, path: str | Path, *, frame_ms: int = 30, realtime: bool = False) -> None:
        self.path = Path(path)
        with wave.open(io.BytesIO(_converted(self.path))) as reader:
            self._pcm = reader.readframes(reader.getnframes())
        self._frame_bytes = SAMPLE_RATE * frame_ms // 1000 * 2
        self._frame_s = frame_ms / 1000
        self._realtime = realtime
        self._due: float | None = None
        self._offset = 0
        _LOGGER.info("microphone file %s: %.1f s", self.path, len(self._pcm) / 2 / SAMPLE_RATE)

    def _wait_for_frame(self) -> None:
        now = time.monotonic()
        if self._due is None or now > self._due + 0.5:  # the first frame, or after the listener paused
            self._due = now
        if self._due > now:
            time.sleep(self._due - now)
        self._due += self._frame_s

    def read(self) -> bytes | None:
        if self._offset >= len(self._pcm):
            return None
        if self._realtime:
            self._wait_for_frame()
        frame = self._pcm[self._offset : self._offset + self._frame_bytes]
        self._offset += self._frame_bytes
        return frame.ljust(self._frame_bytes, b"\0")

    def close(self) -> None:
        self._offset = len(self._pcm)
