"""The device's own copy of the guided exercises, spoken when the server cannot be reached.

A person in a panic attack must not be met with silence because a cable came loose or the server is
restarting. `exercises.toml` ships here byte for byte as it ships in the server, and the device reads only
what it needs to speak offline: the steady talk-down words and each exercise's steps, with their pauses.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.datafiles import read_versioned
from device.errors import DeviceError

VERSION = 1
MAX_PAUSE_MS = 20_000
MAX_ROUNDS = 10


@dataclass(frozen=True)
class Step:
    """One sentence to say, then a silence of `pause_ms`."""

    text: str
    pause_ms: int


@dataclass(frozen=True)
class OfflineExercises:
    """The talk-down steps and the exercises in the file's order, the default one first."""

    talk_down: tuple[Step, ...]
    exercises: tuple[tuple[str, tuple[Step, ...]], ...]

    def rotation(self) -> Iterator[tuple[str, tuple[Step, ...]]]:
        """Exercises in turn, default first: a long outage does not repeat one exercise over and over."""
        return itertools.cycle(self.exercises)


def _steps(raw: Any, where: str) -> tuple[Step, ...]:
    if not isinstance(raw, list):
        raise DeviceError("bad_exercises", f"{where} must be a list of steps")
    steps = []
    for item in raw:
        text, pause = (item.get("text"), item.get("pause_ms", 0)) if isinstance(item, dict) else (None, None)
        if not isinstance(text, str) or not text.strip() or not isinstance(pause, int):
            raise DeviceError("bad_exercises", f"{where}: each step needs text and an integer pause_ms")
        if not 0 <= pause <= MAX_PAUSE_MS:
            raise DeviceError("bad_exercises", f"{where}: pause_ms {pause} is outside 0..{MAX_PAUSE_MS}")
        steps.append(Step(text.strip(), pause))
    return tuple(steps)


def load_exercises(path: Path | None = None) -> OfflineExercises:
    """Read the packaged exercises.toml (or `path`); a bad file is one DeviceError naming what is wrong."""
    document, where = read_versioned("exercises.toml", path, "bad_exercises", VERSION)
    tables = {key: value for key, value in document.items() if isinstance(value, dict)}
    default = document.get("default")
    if default not in tables:
        raise DeviceError("bad_exercises", f"{where}: default {default!r} names no exercise")
    exercises = []
    for key, table in sorted(tables.items(), key=lambda item: item[0] != default):
        rounds = table.get("rounds", 1)
        if not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
            raise DeviceError("bad_exercises", f"{where}: [{key}] rounds must be 1..{MAX_ROUNDS}")
        steps = (
            _steps(table.get("intro", []), f"{where}: [{key}] intro")
            + _steps(table.get("steps", []), f"{where}: [{key}] steps") * rounds
            + _steps(table.get("closing", []), f"{where}: [{key}] closing")
        )
        if not steps:
            raise DeviceError("bad_exercises", f"{where}: [{key}] has no steps")
        exercises.append((key, steps))
    return OfflineExercises(_steps(document.get("talk_down", []), f"{where}: talk_down"), tuple(exercises))
