"""The voice: pyttsx3 driving espeak-ng, either aloud or into one WAV file.

pyttsx3 2.99's espeak driver (Linux) synthesises in memory; `save_to_file` writes 22.05 kHz mono PCM16, and
`say` writes a temporary WAV and plays it with `aplay`. Its quirks shape this module:
- after one `save_to_file`, every later `say` of the same (process-wide, cached) engine is written to that
  file instead of being played, so only `save_to_file` is used here, and `aplay` is run directly;
- it speaks only the last text queued before `runAndWait`, so each call passes one text;
- `runAndWait` returns before espeak-ng (asynchronous) has finished, so each text waits for its end event;
- a bad voice or a failed `aplay` is printed, not raised, so both are checked here;
- it prints "Audio saved to ..." on stdout, which would mix into the transcript, so that goes to the log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from device.errors import SpeakerError

_LOGGER = logging.getLogger(__name__)

_WAV_HEADER_BYTES = 44


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


def _pick_voice(voices: list[Any], voice: str, language: str) -> str:
    """The id of `voice` (an id or a name), or of the best voice for `language` when `voice` is empty."""
    if voice:
        wanted = voice.lower()
        for candidate in voices:
            if wanted in (candidate.id.lower(), candidate.name.lower()):
                return str(candidate.id)
        raise SpeakerError(
            "bad_voice", f"TTS voice {voice!r} not found; list voices with `espeak-ng --voices`"
        )
    tag = language.lower()

    def languages(candidate: Any) -> list[str]:
        return [str(lang).lower() for lang in (candidate.languages or [])]

    # Exact tag ("en-us"), then espeak's base voice for it ("gmw/en"), then any regional variant ("en-gb").
    rules = (
        lambda c: tag in languages(c),
        lambda c: c.id.lower().rsplit("/", 1)[-1] == tag,
        lambda c: any(lang.startswith(tag + "-") for lang in languages(c)),
    )
    for rule in rules:
        for candidate in voices:
            if rule(candidate):
                return str(candidate.id)
    raise SpeakerError("bad_voice", f"no TTS voice for language {language!r}; set [device] tts_voice")


def _budget_s(text: str) -> float:
    """How long speaking `text` may take: playback is real time, so allow 5 characters a second and slack."""
    return 15.0 + 0.2 * len(text)


def _has_speech(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > _WAV_HEADER_BYTES


class _Engine:
    """pyttsx3's engine, used only through `save_to_file`, plus a wait for the end of each utterance.

    The espeak driver runs espeak-ng asynchronously: `runAndWait` returns once synthesis is queued and the
    file is written later, on espeak's own thread; pyttsx3's `finished-utterance` notification marks the end.
    """

    def __init__(self, voice: str, rate: int, volume: float, language: str) -> None:
        try:
            import pyttsx3

            self._engine = pyttsx3.init()
        except (ImportError, OSError, RuntimeError) as exc:
            raise SpeakerError(
                "no_tts",
                f"pyttsx3 cannot start espeak-ng ({exc}): install it with `sudo apt install espeak-ng`",
            ) from exc
        voice_id = _pick_voice(self._engine.getProperty("voices"), voice, language)
        self._engine.setProperty("voice", voice_id)
        self._engine.setProperty("rate", rate)
        self._engine.setProperty("volume", volume)
        self._finished = threading.Event()
        self._token = self._engine.connect("finished-utterance", self._on_finished)
        _LOGGER.info("TTS voice %s, rate %d wpm, volume %.2f", voice_id, rate, volume)

    def _on_finished(self, **_: Any) -> None:
        self._finished.set()

    def save(self, text: str, path: Path) -> None:
        """Write `text` as speech to the WAV `path` and return once the file is complete."""
        self._finished.clear()
        path.unlink(missing_ok=True)  # a stale file must not pass the check below
        self._engine.save_to_file(text, str(path))
        printed = io.StringIO()
        # pyttsx3 prints ("Audio saved to ...") from espeak's thread: keep it out of the transcript on stdout.
        deadline = time.monotonic() + _budget_s(text)
        with contextlib.redirect_stdout(printed):
            self._engine.runAndWait()
            finished = self._finished.wait(_budget_s(text))
            # A late notification from the utterance before can end the wait early: the file then follows.
            while finished and not _has_speech(path) and time.monotonic() < deadline:
                time.sleep(0.05)
        if printed.getvalue().strip():
            _LOGGER.debug("pyttsx3: %s", printed.getvalue().strip())
        if not finished or not _has_speech(path):
            raise SpeakerError("tts_failed", f"pyttsx3 did not write speech to {path}")

    def close(self) -> None:
        self._engine.disconnect(self._token)


class Pyttsx3Speaker:
    """Speaks aloud through the default ALSA device, one blocking `say` per sentence.

    Each sentence is synthesised to a WAV in a private scratch folder (in RAM where /dev/shm exists), played
    with `aplay`, and deleted: the same path pyttsx3's own `say` takes on Linux, minus its two bugs.
    """

    def __init__(self, voice: str = "", rate: int = 165, volume: float = 1.0, language: str = "en") -> None:
        aplay = shutil.which("aplay")
        if aplay is None:
            raise SpeakerError(
                "no_speaker",
                "speech is played with `aplay`, which is missing: `sudo apt install alsa-utils`, "
                "or write the speech to a file with --tts-out",
            )
        self._aplay = aplay
        self._engine = _Engine(voice, rate, volume, language)
        self._scratch = tempfile.TemporaryDirectory(
            prefix="tadbot-tts-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        self._wav = Path(self._scratch.name) / "sentence.wav"
        self._stopped = threading.Event()
        self._playing: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        if not text.strip():
            return
        self._stopped.clear()
        self._engine.save(text, self._wav)
        try:
            with self._lock:
                if self._stopped.is_set():
                    return
                playing = self._playing = subprocess.Popen(
                    [self._aplay, "-q", str(self._wav)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            try:
                _, errors = playing.communicate(timeout=_budget_s(text))
            except subprocess.TimeoutExpired:
                playing.kill()
                playing.communicate()
                _LOGGER.warning("aplay did not finish within %.0f s; skipping the sentence", _budget_s(text))
                return
        finally:
            with self._lock:
                self._playing = None
            self._wav.unlink(missing_ok=True)
        if playing.returncode != 0 and not self._stopped.is_set():
            # A missing or busy sound card must not end the conversation: the transcript still has the reply.
            reason = (errors.strip().splitlines() or ["aplay failed"])[-1]
            _LOGGER.warning("could not play speech: %s", reason)

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
        self._engine.close()
        self._scratch.cleanup()


class WavFileSpeaker:
    """Collects everything said and writes it at `close` as one WAV: for tests, demos and headless runs."""

    def __init__(
        self, path: str | Path, voice: str = "", rate: int = 165, volume: float = 1.0, language: str = "en"
    ) -> None:
        self.path = Path(path)
        folder = self.path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            # Checked now: pyttsx3 would only print the failure from its callback, after the conversation.
            raise SpeakerError(
                "bad_output", f"cannot write {self.path}: folder {folder} is missing or read-only"
            )
        self._engine = _Engine(voice, rate, volume, language)
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
            self._engine.save(" ".join(self._sentences), self.path)
            _LOGGER.info("wrote %d sentence(s) of speech to %s", len(self._sentences), self.path)
            self._sentences.clear()
        finally:
            self._engine.close()


class WavDirSpeaker:
    """Writes each reply as its own numbered WAV (reply-001.wav, ...) in a folder: `--mic-file` runs, where
    every turn's answer must be heard on its own."""

    def __init__(
        self, folder: str | Path, voice: str = "", rate: int = 165, volume: float = 1.0, language: str = "en"
    ) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpeakerError("bad_output", f"cannot create folder {self.folder}: {exc.strerror}") from exc
        if not os.access(self.folder, os.W_OK):
            raise SpeakerError("bad_output", f"cannot write to folder {self.folder}: it is read-only")
        self._engine = _Engine(voice, rate, volume, language)
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
        self._engine.save(" ".join(self._sentences), path)
        self._sentences.clear()
        self.written.append(path)
        _LOGGER.info("wrote %s", path)

    def stop(self) -> None:
        """A file cannot be talked over; what was said is kept."""

    def close(self) -> None:
        try:
            self.end_reply()
        finally:
            self._engine.close()
