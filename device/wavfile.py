"""A WAV file as the audio source: one utterance, for tests, demos and `tadbot device --audio-file`."""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path

from device.audio import to_pcm16_mono_16k
from device.errors import AudioInputError

_LOGGER = logging.getLogger(__name__)


class WavFileSource:
    """Reads and converts the file once, at construction, so a bad file fails before the session opens."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise AudioInputError("bad_audio", f"cannot read audio file {self.path}: {exc.strerror}") from exc
        self._wav = to_pcm16_mono_16k(data, str(self.path))
        _LOGGER.info("audio file %s: %d bytes as 16 kHz mono PCM16", self.path, len(self._wav))

    def utterances(self) -> Generator[bytes, None, None]:
        yield self._wav
