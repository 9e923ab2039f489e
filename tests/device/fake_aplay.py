"""A stand-in for `aplay`, because there is no sound card here.

`install` puts an `aplay` on PATH that runs this file. Like the real one it takes raw PCM16 on its standard
input and consumes it in real time at the rate its `-r` names, so a writer blocks as it would on a card;
`aplay -L` prints a Pi's listing (`LISTING`). What it does goes to files in its folder: `opens` gets one
line per start (its arguments) and `played.raw` everything it read, silence included, across starts.
The environment sets the scene: FAKE_APLAY_DIE_AFTER=N makes the first start fail after N bytes, as a USB
speaker pulled out does (later starts play on); FAKE_APLAY_HANG_AFTER=N makes the first start stop taking
audio after N bytes, as a wedged card does; FAKE_APLAY_NO_CARD=1 makes every start fail at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stand-in itself starts with nothing heavy to import, as aplay starts at once
    import numpy as np
    import pytest

LISTING = """null
    Discard all samples (playback) or generate zero samples (capture)
default
    Default ALSA Output (currently PipeWire Media Server)
sysdefault:CARD=Headphones
    bcm2835 Headphones, bcm2835 Headphones
    Default Audio Device
plughw:CARD=Headphones,DEV=0
    bcm2835 Headphones, bcm2835 Headphones
    Hardware device with all software conversions
hw:CARD=Device,DEV=0
    USB Audio Device, USB Audio
    Direct hardware device without any conversions
plughw:CARD=Device,DEV=0
    USB Audio Device, USB Audio
    Hardware device with all software conversions
"""
UNPLUGGED = "aplay: pcm_write:2127: write error: No such device"
NO_CARD = "aplay: main:850: audio open error: No such file or directory"


class FakeAplay:
    """The stand-in's folder, as a test reads it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def opens(self) -> list[list[str]]:
        """The arguments of each start, in order."""
        path = self.folder / "opens"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def played(self) -> bytes:
        path = self.folder / "played.raw"
        return path.read_bytes() if path.exists() else b""

    def samples(self) -> np.ndarray:
        import numpy as np

        data = self.played()
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0


def install(folder: Path, monkeypatch: pytest.MonkeyPatch) -> FakeAplay:
    """Put the stand-in first on PATH; its records go to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    command = folder / "bin" / "aplay"
    command.parent.mkdir(exist_ok=True)
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__)}" "$@"\n', encoding="utf-8")
    command.chmod(0o755)
    monkeypatch.setenv("PATH", f"{command.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_APLAY_DIR", str(folder))
    return FakeAplay(folder)


def _play(argv: list[str], folder: Path) -> int:
    with (folder / "opens").open("a", encoding="utf-8") as opens:
        opens.write(" ".join(argv) + "\n")
    if os.environ.get("FAKE_APLAY_NO_CARD"):
        print("ALSA lib confmisc.c:855:(parse_card) cannot find card '0'", file=sys.stderr)
        print(NO_CARD, file=sys.stderr)
        return 1
    rate = int(argv[argv.index("-r") + 1])
    die_after = int(os.environ.get("FAKE_APLAY_DIE_AFTER", "0"))
    dies = die_after > 0 and not (folder / "died").exists()
    hang_after = int(os.environ.get("FAKE_APLAY_HANG_AFTER", "0"))
    hangs = hang_after > 0 and not (folder / "hung").exists()
    started, total = time.monotonic(), 0
    with (folder / "played.raw").open("ab") as out:
        while data := os.read(0, 4096):
            out.write(data)
            out.flush()
            total += len(data)
            if dies and total >= die_after:
                (folder / "died").touch()
                print(UNPLUGGED, file=sys.stderr)
                return 1
            if hangs and total >= hang_after:
                (folder / "hung").touch()
                time.sleep(3600)  # until killed
            time.sleep(max(0.0, started + total / (2 * rate) - time.monotonic()))
    return 0


if __name__ == "__main__":
    if "-L" in sys.argv[1:]:
        print(LISTING, end="")
        sys.exit(0)
    sys.exit(_play(sys.argv[1:], Path(os.environ["FAKE_APLAY_DIR"])))
