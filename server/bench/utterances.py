"""What a simulated device says in the crash and load benches: typed lines, and spoken ones as WAVs.

Each line names things the server's own code never writes (two words drawn from the embedder's English
vocabulary that appear nowhere in server/), so that the privacy check, which ignores words the code could
have logged by itself, has the person's words to look for in the server's log. Spoken lines are the same
kind of line said by espeak-ng and sent as a device sends them (16 kHz mono PCM16), or a labelled set of
speech (`tadbot bench spoken` writes one).
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

from server.errors import TadbotError

_TEMPLATES = (
    "I keep worrying about the {0} and the {1}.",
    "Last night I could not stop thinking about my {0} and the {1}.",
    "My chest gets tight whenever someone mentions the {0} or the {1}.",
    "Talking about the {0} helps a little, but the {1} still scares me.",
)
_MIN_LETTERS = 6
"""As long as the privacy check's words: shorter ones prove nothing."""


@dataclass(frozen=True)
class Utterance:
    text: str
    """What is said: sent as the turn's text when there is no `wav`."""
    wav: bytes = b""
    """The spoken turn's WAV; empty for a typed one."""

    @property
    def spoken(self) -> bool:
        return bool(self.wav)


def private_words(rng: random.Random, count: int) -> list[str]:
    """`count` English words that nothing under server/ contains."""
    from server.bench.gemma_vocab import english_words
    from server.bench.privacy import code_words
    from server.models.catalogue import models_dir

    known = code_words()
    candidates = sorted(
        {
            word
            for word in english_words(models_dir())
            if word.isascii() and word.isalpha() and word.islower() and len(word) >= _MIN_LETTERS
        }
        - known
    )
    return rng.sample(candidates, count)


def typed_lines(rng: random.Random, count: int) -> list[Utterance]:
    """`count` lines, each naming two private words."""
    words = private_words(rng, 2 * count)
    return [
        Utterance(_TEMPLATES[index % len(_TEMPLATES)].format(words[2 * index], words[2 * index + 1]))
        for index in range(count)
    ]


def spoken_lines(rng: random.Random, count: int, folder: Path | None = None) -> list[Utterance]:
    """The clips of `folder` (WAVs listed in index.csv), else `count` typed lines said by espeak-ng."""
    if folder is not None:
        from server.eval.stt import read_clips

        return [Utterance(clip.text, clip.path.read_bytes()) for clip in read_clips(folder)]
    if shutil.which("espeak-ng") is None:
        raise TadbotError(
            "bad_data",
            "speaking the turns needs espeak-ng (apt-get install espeak-ng), or give --data DIR: WAVs with "
            "an index.csv, as `tadbot bench spoken` writes",
        )
    return [Utterance(line.text, speak(line.text)) for line in typed_lines(rng, count)]


def speak(text: str) -> bytes:
    """`text` said by espeak-ng, as the device sends an utterance: a 16 kHz mono PCM16 WAV, in memory."""
    import numpy as np

    from server.speech.stt import read_wav
    from server.speech.whisper import SAMPLE_RATE, to_16k

    said = subprocess.run(
        ["espeak-ng", "--stdout", "-s", "150", text], capture_output=True, timeout=60, check=True
    ).stdout
    samples = to_16k(read_wav(said, max_seconds=60))
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(np.round(samples * 32768).clip(-32768, 32767).astype("<i2").tobytes())
    return out.getvalue()
