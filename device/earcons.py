"""Earcons: two short, soft chimes that say something without words, made here and shipped as WAVs.

"heard" (two notes rising a fifth) plays when an utterance has ended and is being sent, so the person
knows they were heard before the reply begins, which can take many seconds on a Pi. "offline" (two notes
falling a fifth, softer) plays when the server is away. Each note is a sine with a little of its second
and third harmonics, a gentle attack and a decay that fades to nothing, at about -14 dBFS: a chime, not
an alarm, for someone already frightened.

`synthesise` makes them with numpy alone, so the project owns them outright (CC0; device/earcons/README.md).
`python -m device.earcons` writes device/earcons/*.wav again, and a test checks that the shipped files are
exactly what it makes. They are made at the output's own rate, so playing one converts nothing.
"""

from __future__ import annotations

import enum
import importlib.resources
import io
import logging
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from device.errors import DeviceError
from device.playback import OUTPUT_RATE, Played, SoundOut

if TYPE_CHECKING:
    import numpy as np

_LOGGER = logging.getLogger(__name__)

RATE = OUTPUT_RATE
FOLDER = Path(__file__).with_name("earcons")
"""Where the shipped WAVs live in a source checkout, for `python -m device.earcons`."""

_ATTACK_S = 0.008
"""Rise time of each note: fast enough to sound like a chime, slow enough not to click."""
_RELEASE_S = 0.02
"""Each note's last moments fade to zero, so nothing ends in a click."""
_HARMONICS = ((1, 1.0), (2, 0.2), (3, 0.05))
"""(multiple, level) of each note's partials: a little warmth over a pure sine."""


class Earcon(enum.StrEnum):
    HEARD = "heard"
    """The person's utterance has ended and is on its way to the server."""
    OFFLINE = "offline"
    """The server cannot be reached."""


@dataclass(frozen=True)
class _Note:
    hz: float
    start_s: float
    length_s: float


@dataclass(frozen=True)
class _Score:
    notes: tuple[_Note, ...]
    peak: float
    """The loudest sample, as a fraction of full scale."""


_SCORES = {
    # E5 then B5, overlapping: a soft "mm-hm" upwards, 240 ms.
    Earcon.HEARD: _Score((_Note(659.26, 0.0, 0.16), _Note(987.77, 0.07, 0.17)), peak=0.2),
    # D5 then G4: the same shape falling, quieter, 300 ms.
    Earcon.OFFLINE: _Score((_Note(587.33, 0.0, 0.18), _Note(392.0, 0.11, 0.19)), peak=0.16),
}


def _note(note: _Note) -> np.ndarray:
    import numpy as np  # only to make the files: the daemon plays what ships

    count = round(note.length_s * RATE)
    t = np.arange(count) / RATE
    tone = sum(level * np.sin(2 * np.pi * note.hz * multiple * t) for multiple, level in _HARMONICS)
    envelope = np.exp(-3.0 * t / note.length_s)
    attack, release = round(_ATTACK_S * RATE), round(_RELEASE_S * RATE)
    envelope[:attack] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    envelope[-release:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, release + 1) / release)
    return np.asarray(tone * envelope)


def synthesise(earcon: Earcon) -> np.ndarray:
    """The earcon's samples at RATE, as floats in [-1, 1): its notes mixed and scaled to its peak."""
    import numpy as np

    score = _SCORES[earcon]
    length = max(round((n.start_s + n.length_s) * RATE) for n in score.notes)
    mixed = np.zeros(length)
    for note in score.notes:
        start = round(note.start_s * RATE)
        samples = _note(note)
        mixed[start : start + len(samples)] += samples
    return mixed * (score.peak / np.max(np.abs(mixed)))


def wav_bytes(earcon: Earcon) -> bytes:
    """The earcon as the mono PCM16 WAV that is shipped."""
    from device.audio import encode_wav

    return encode_wav(synthesise(earcon), RATE)


def write(folder: Path = FOLDER) -> list[Path]:
    """Write every earcon's WAV into `folder`: how the shipped files were made."""
    paths = []
    for earcon in Earcon:
        path = folder / f"{earcon}.wav"
        path.write_bytes(wav_bytes(earcon))
        paths.append(path)
    return paths


def _read(earcon: Earcon, folder: Path | None) -> tuple[bytes, int]:
    where = f"device/earcons/{earcon}.wav" if folder is None else str(folder / f"{earcon}.wav")
    try:
        if folder is None:
            data = importlib.resources.files("device").joinpath("earcons", f"{earcon}.wav").read_bytes()
        else:
            data = (folder / f"{earcon}.wav").read_bytes()
        with wave.open(io.BytesIO(data)) as reader:
            if (reader.getnchannels(), reader.getsampwidth()) != (1, 2):
                raise DeviceError("bad_earcon", f"{where} is not mono 16-bit; `python -m device.earcons`")
            return reader.readframes(reader.getnframes()), reader.getframerate()
    except (OSError, EOFError, wave.Error) as exc:
        raise DeviceError("bad_earcon", f"cannot read {where}: {exc}; `python -m device.earcons`") from exc


class Earcons:
    """The shipped earcons, read once, played through the speaker's output without waiting."""

    def __init__(self, output: SoundOut, folder: Path | None = None) -> None:
        self._output = output
        self._sounds = {earcon: _read(earcon, folder) for earcon in Earcon}

    def play(self, earcon: Earcon) -> Played:
        """Start `earcon` after whatever the output is playing; returns at once. A speaker that is down
        plays nothing, and that is no error: its own outage is logged where it happens."""
        pcm, rate = self._sounds[earcon]
        played = self._output.play(pcm, rate)
        if played.failed:
            _LOGGER.debug("earcon %s not played: %s", earcon, played.failed)
        return played


if __name__ == "__main__":
    for written in write(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
        print(written)
