"""Where speech goes: aloud through the device's one sound output, or into WAV files for tests, demos and
headless runs.

The voice itself (Piper, or espeak-ng as the fallback) is made by synth.py, one sentence at a time, in
memory. Aloud, the samples go to device.playback's long-lived `aplay`, so no sound is written anywhere.
"""

from __future__ import annotations

import logging
import os
import threading
import wave
from pathlib import Path
from typing import Protocol

from device.errors import SpeakerError
from device.playback import Playback
from device.synth import Speech, Synthesiser

_LOGGER = logging.getLogger(__name__)

_GAP_S = 0.35
"""Silence between sentences in a written reply, as a person pauses between them."""


class Speaker(Protocol):
    """Something that speaks to the person."""

    def say(self, text: str) -> None:
        """Speak `text` (one sentence or so); blocks until spoken so the microphone never hears it."""
        ...

    def pause(self, seconds: float) -> None:
        """Keep quiet for `seconds`: the pacing of a guided exercise ("Breathe in." then four seconds)."""
        ...

    def end_reply(self, name: str = "") -> None:
        """One reply is complete: a speaker that keeps replies apart (one file each) closes this one.
        `name` marks a part that is not an answer to the person ("greeting")."""
        ...

    def stop(self) -> None:
        """Cut the sentence or pause in progress short (barge-in, "be quiet"); callable from any thread."""
        ...

    def close(self) -> None:
        """Finish: flush any output and release the engine."""
        ...


def _budget_s(speech: Speech) -> float:
    """How long playing `speech` may take: real time, and slack for a busy sound card."""
    return speech.seconds + 15.0


class AloudSpeaker:
    """Speaks through the one long-lived output (device.playback), one blocking `say` per sentence."""

    def __init__(self, synth: Synthesiser, output: Playback) -> None:
        self._synth = synth
        self.output = output
        """The sound output, open across sentences and replies; earcons play through it too."""
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # a `stop` never lands between the check and the sound's queueing

    def say(self, text: str) -> None:
        if not text.strip():
            return
        self._stopped.clear()
        speech = self._synth.synthesize(text)
        with self._lock:
            if self._stopped.is_set():
                return
            played = self.output.play(speech.pcm, speech.rate)
        if not played.wait(_budget_s(speech)):
            self.output.stop()
            _LOGGER.warning(
                "the speaker did not play a sentence within %.0f s; skipping it", _budget_s(speech)
            )
            return
        if played.failed:
            raise SpeakerError("speaker_failed", f"cannot play speech: {played.failed}")

    def pause(self, seconds: float) -> None:
        self._stopped.wait(seconds)

    def end_reply(self, name: str = "") -> None:
        """The output stays open across replies; there is nothing to close."""

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            self.output.stop()

    def close(self) -> None:
        try:
            self.output.close()
        finally:
            self._synth.close()


def _writable_folder(folder: Path, what: str) -> None:
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise SpeakerError("bad_output", f"cannot write {what}: folder {folder} is missing or read-only")


def _write_wav(path: Path, synth: Synthesiser, texts: list[str]) -> None:
    """Speak `texts` into one WAV. Made here, not as each is said: a file has no listener to keep the
    microphone muted for, so a `--mic-file` run hears the same room as before the voice was written."""
    sentences = [synth.synthesize(text) for text in texts]
    rate = sentences[0].rate
    gap = bytes(2 * round(_GAP_S * rate))
    try:
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(gap.join(s.pcm for s in sentences))
    except OSError as exc:
        raise SpeakerError("bad_output", f"cannot write {path}: {exc.strerror}") from exc


class WavFileSpeaker:
    """Collects everything said and writes it at `close` as one WAV."""

    def __init__(self, path: str | Path, synth: Synthesiser) -> None:
        self.path = Path(path)
        # Checked now, not after the conversation: a reply must not be lost to a typo in the path.
        _writable_folder(self.path.parent, str(self.path))
        self._synth = synth
        self._sentences: list[str] = []

    def say(self, text: str) -> None:
        if text.strip():
            self._sentences.append(text.strip())

    def pause(self, seconds: float) -> None:
        """Nobody waits on a file, so an exercise's pauses are left out of it."""

    def end_reply(self, name: str = "") -> None:
        """Everything said goes into the one file, written at close."""

    def stop(self) -> None:
        """A file cannot be talked over; what was said is kept."""

    def close(self) -> None:
        try:
            if not self._sentences:
                _LOGGER.warning("nothing was said; %s not written", self.path)
                return
            _write_wav(self.path, self._synth, self._sentences)
            _LOGGER.info("wrote %d sentence(s) of speech to %s", len(self._sentences), self.path)
            self._sentences.clear()
        finally:
            self._synth.close()


class WavDirSpeaker:
    """Writes each reply as its own numbered WAV (reply-001.wav, ...) in a folder: `--mic-file` runs, where
    every turn's answer must be heard on its own."""

    def __init__(self, folder: str | Path, synth: Synthesiser) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpeakerError("bad_output", f"cannot create folder {self.folder}: {exc.strerror}") from exc
        _writable_folder(self.folder, "the replies")
        self._synth = synth
        self._sentences: list[str] = []
        self._replies = 0
        self.written: list[Path] = []

    def say(self, text: str) -> None:
        if text.strip():
            self._sentences.append(text.strip())

    def pause(self, seconds: float) -> None:
        """Nobody waits on a file, so an exercise's pauses are left out of it."""

    def end_reply(self, name: str = "") -> None:
        """Write what was said since the last reply: `<name>.wav`, else the next reply-NNN.wav."""
        if not self._sentences:
            return
        if not name:
            self._replies += 1
        path = self.folder / (f"{name}.wav" if name else f"reply-{self._replies:03d}.wav")
        _write_wav(path, self._synth, self._sentences)
        self._sentences.clear()
        self.written.append(path)
        _LOGGER.info("wrote %s", path)

    def stop(self) -> None:
        """A file cannot be talked over; what was said is kept."""

    def close(self) -> None:
        try:
            self.end_reply()
        finally:
            self._synth.close()
