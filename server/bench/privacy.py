"""The privacy proof: no raw audio or image is kept under a data dir, and no spoken word reaches a log.

The server decodes uploads in memory and keeps only words, emotion scores and timings. These checks look
for the evidence that would break that promise: a file that is, or carries inside it, a WAV, FLAC, Ogg,
JPEG, PNG, GIF or WebP (a blob in SQLite counts too), and a log line holding a word the person said.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

_MEDIA = (
    ("WAV", re.compile(rb"RIFF.{4}WAVE", re.DOTALL)),
    ("WebP", re.compile(rb"RIFF.{4}WEBP", re.DOTALL)),
    ("JPEG", re.compile(rb"\xff\xd8\xff[\xe0-\xef].{2}(?:JFIF|Exif)\x00", re.DOTALL)),
    ("PNG", re.compile(rb"\x89PNG\r\n\x1a\n")),
    ("GIF", re.compile(rb"GIF8[79]a")),
    ("FLAC", re.compile(rb"fLaC\x00")),
    ("Ogg", re.compile(rb"OggS\x00")),
)
"""Signatures strong enough to mean a real file, wherever they sit: at the start, or inside a blob."""
_STARTS = (
    ("RIFF", b"RIFF"),
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG"),
    ("GIF", b"GIF8"),
    ("FLAC", b"fLaC"),
    ("Ogg", b"OggS"),
)
"""A file that merely starts like media counts too: a truncated upload is still an upload."""

WORD = re.compile(r"[A-Za-z]{6,}")
"""Words long enough to say something of what the person said; short ones ('I', 'the') prove nothing."""
RECORD = "tadbot.sqlite3"


def media_files(root: Path) -> list[tuple[Path, str]]:
    """Every file under `root` that is, starts like, or carries audio or an image, with what it looks like."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        kind = next((name for name, magic in _STARTS if data.startswith(magic)), None)
        kind = kind or next((name for name, pattern in _MEDIA if pattern.search(data)), None)
        if kind is not None:
            found.append((path, kind))
    return found


def said_in(data_dir: Path) -> list[str]:
    """What the people in this data dir's record said, turn by turn (nothing if it has no record)."""
    path = data_dir / RECORD
    if not path.is_file():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [text for (text,) in db.execute("SELECT text FROM turns WHERE role = 'user'")]


def code_words() -> set[str]:
    """Every word the server's own code and data files contain: a log line may name those by itself
    ('session', 'breathing'), so finding one proves nothing."""
    root = Path(__file__).resolve().parents[1]
    words: set[str] = set()
    for path in root.rglob("*"):
        if path.suffix in {".py", ".toml", ".csv", ".json", ".txt", ".sql", ".md"}:
            words |= {w.lower() for w in WORD.findall(path.read_text(encoding="utf-8", errors="replace"))}
    return words


def leaked_words(log_text: str, said: Iterable[str], known: set[str]) -> dict[str, str]:
    """The person's words (those the code could not have written itself) found in the log, each with the
    first line that holds it."""
    words = {w.lower() for text in said for w in WORD.findall(text)} - known
    leaked: dict[str, str] = {}
    for line in log_text.splitlines():
        for word in words & {w.lower() for w in WORD.findall(line)}:
            leaked.setdefault(word, line)
    return leaked
