"""Where speech goes: aloud through `aplay`, or into WAV files for tests, demos and headless runs.

The voice itself (Piper, or espeak-ng as the fallback) is made by synth.py, one sentence at a time, in
memory. Aloud, the samples are piped to `aplay` on its standard input, so no sound is written anywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import wave
from pathlib import Path
from typing import Protocol

from device.errors import SpeakerError
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


def aplay_command(aplay: str, rate: int) -> list[str]:
    """`aplay` playing mono PCM16 at `rate` from its standard input: no sound file is ever written."""
    return [aplay, "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(rate), "-"]


def _budget_s(speech: Speech) -> float:
    """How long playing `speech` may take: real time, and slack for a busy sound card."""
    return speech.seconds + 15.0


class AloudSpeaker:
    """Speaks through the default ALSA device, one blocking `say` per sentence."""

    def __init__(self, synth: Synthesiser) -> None:
        aplay = shutil.which("aplay")
        if aplay is None:
            raise SpeakerError(
                "no_speaker",
                "speech is played with `aplay`, which is missing: `sudo apt install alsa-utils`, "
                "or write the speech to a file with --tts-out",
            )
        self._aplay = aplay
        self._synth = synth
        self._stopped = threading.Event()
        self._playing: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        if not text.strip():
            return
        self._stopped.clear()
        speech = self._synth.synthesize(text)
        try:
            with self._lock:
                if self._stopped.is_set():
                    return
                playing = self._playing = subprocess.Popen(
                    aplay_command(self._aplay, speech.rate),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            try:
                _, errors = playing.communicate(speech.pcm, timeout=_budget_s(speech))
            except subprocess.TimeoutExpired:
                playing.kill()
                playing.communicate()
                _LOGGER.warning(
                    "aplay did not finish within %.0f s; skipping the sentence", _budget_s(speech)
                )
                return
        finally:
            with self._lock:
                self._playing = None
        if playing.returncode != 0 and not self._stopped.is_set():
            # A missing or busy sound card must not end the conversation: the transcript still has the reply.
            lines = errors.decode(errors="replace").strip().splitlines()
            _LOGGER.warning("could not play speech: %s", (lines or ["aplay failed"])[-1])

    def pause(self, seconds: float) -> None:
        self._stopped.wait(seconds)

    def end_reply(self, name: str = "") -> None:
        """Sentences are played as they come; there is nothing to close."""

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            if self._playing is not None:
                self._playing.terminate()

    def close(self) -> None:
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
