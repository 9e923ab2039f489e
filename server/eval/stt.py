"""Speech recognition on labelled speech: the word error rate of what an engine heard.

A set is a folder of WAVs and an index.csv with the columns file,text, and optionally voice and label, as
`tadbot bench spoken` writes one. Both sides are normalised alike before words are compared: lower case,
hyphens as spaces, every character but letters, digits and apostrophes dropped, and the common
contractions spelled out, so "Breathe." and "breathe", "I'm" and "I am" are the same words. Numbers are
compared as written: "five" and "5" differ.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import TadbotError
from server.eval.labelled import read_labelled_csv
from server.safety.plain import lowered
from server.speech.stt import WavAudio, read_wav

_NOT_A_WORD = re.compile(r"[^a-z0-9' ]+")
_SPELLED_OUT = {
    "i'm": "i am",
    "i've": "i have",
    "i'll": "i will",
    "i'd": "i would",
    "it's": "it is",
    "that's": "that is",
    "there's": "there is",
    "you're": "you are",
    "don't": "do not",
    "doesn't": "does not",
    "can't": "can not",
    "cannot": "can not",
    "couldn't": "could not",
    "won't": "will not",
    "isn't": "is not",
}


@dataclass(frozen=True)
class Clip:
    """One utterance of a set: its WAV, what was said, in which voice, and its label (crisis, safe, "")."""

    path: Path
    text: str
    voice: str = ""
    label: str = ""


def read_clips(folder: Path) -> list[Clip]:
    """The clips of `folder`/index.csv; a missing index, column or WAV is one error naming it."""
    index = folder / "index.csv"
    clips = []
    for line, row in read_labelled_csv(index, ("file", "text"), "a set needs index.csv"):
        path = folder / row["file"]
        if not row["file"] or not path.is_file():
            raise TadbotError("bad_data", f"{index} line {line}: no such file {path}")
        clips.append(Clip(path, row["text"], row.get("voice", ""), row.get("label", "")))
    return clips


def read_clip_audio(clip: Clip, data: bytes, max_seconds: float) -> WavAudio:
    """The clip's WAV bytes read as the server reads an upload; one it would refuse is named."""
    try:
        return read_wav(data, max_seconds=max_seconds)
    except TadbotError as exc:
        raise TadbotError("bad_data", f"{clip.path}: {exc.message}") from exc


def words(text: str) -> list[str]:
    """`text` as the words that are compared."""
    plain = _NOT_A_WORD.sub(" ", lowered(text).replace("-", " "))
    found = (_SPELLED_OUT.get(word, word) for word in (w.strip("'") for w in plain.split()) if word)
    return " ".join(found).split()


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions, deletions and insertions that turn `reference` into `hypothesis` (Levenshtein)."""
    previous = list(range(len(hypothesis) + 1))
    for i, said in enumerate(reference, start=1):
        current = [i]
        for j, heard in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (said != heard)))
        previous = current
    return previous[-1]


def score(clips: list[Clip], heard: list[str]) -> dict[str, Any]:
    """Word error rate over the whole set (errors over reference words), per voice, and each clip that
    was not heard word for word."""
    errors = total = 0
    by_voice: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misheard = []
    for clip, text in zip(clips, heard, strict=True):
        said = words(clip.text)
        wrong = word_errors(said, words(text))
        errors, total = errors + wrong, total + len(said)
        by_voice[clip.voice][0] += wrong
        by_voice[clip.voice][1] += len(said)
        if wrong:
            misheard.append({"file": clip.path.name, "said": clip.text, "heard": text})
    report: dict[str, Any] = {
        "wer": _rate(errors, total),
        "words": total,
        "word_errors": errors,
        "exact": len(clips) - len(misheard),
    }
    if set(by_voice) != {""}:
        report["wer_by_voice"] = {voice: _rate(*counts) for voice, counts in sorted(by_voice.items())}
    report["misheard"] = misheard
    return report


def _rate(errors: int, total: int) -> float:
    return round(errors / total, 4) if total else 0.0
