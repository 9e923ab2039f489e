"""The sound output: one long-lived `aplay` that plays everything the device says or chimes.

A USB speaker opened afresh for each sentence pops and clips the first syllable, so `aplay` is started once
and kept open for the daemon's life, across sentences and replies. Between sounds it is fed silence: the
card keeps running (and a USB amplifier does not doze off) instead of underrunning. Every sound is
converted here to the stream's one format, 48 kHz mono PCM16, whatever rate its voice makes. If `aplay`
dies (a speaker pulled out), it is opened again at once, and then with growing waits; the outage is
logged once, not once per sentence. Samples go to `aplay`'s standard input: no sound is written anywhere.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Protocol

from device.backoff import DELAYS_S, Backoff
from device.errors import SpeakerError

_LOGGER = logging.getLogger(__name__)

OUTPUT_RATE = 48_000
"""The stream's rate: what nearly every USB speaker and ALSA's dmix run at, so ALSA converts nothing."""

_CHUNK_BYTES = 2 * OUTPUT_RATE * 20 // 1000
"""20 ms a write: `stop` takes effect within one chunk."""
_BUFFER_US = 200_000
"""aplay's ALSA buffer: room for a busy Pi's hiccups, short enough that speech starts promptly."""
_PIPE_BYTES = 4096
"""The pipe into aplay, at its smallest (one page), so silence queued ahead of speech stays short."""
LATENCY_S = 1.25 * _BUFFER_US / 1e6 + _PIPE_BYTES / (2 * OUTPUT_RATE)
"""From a write to its sound: the ALSA buffer, the period aplay holds (a quarter buffer) and the pipe,
all kept full by the silence between sounds."""
_REOPEN_DELAYS_S = (0.0, *DELAYS_S)
"""The first reopen is at once (a crashed aplay is back straight away); a missing card waits longer."""
_STALLED_S = 5.0
"""An aplay that takes nothing for this long (it is fed all the time) is hung: it is killed and reopened."""
_RESAMPLE_STEP = 8192
"""Input samples per resampling step, which bounds the memory one step takes on a Pi."""
_SILENCE = bytes(_CHUNK_BYTES)


def aplay_command(aplay: str, rate: int, device: str = "", *, buffer_us: int = 0) -> list[str]:
    """`aplay` playing mono PCM16 at `rate` from its standard input, on `device` ("" is ALSA's default)."""
    command = [aplay, "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(rate)]
    if device:
        command += ["-D", device]
    if buffer_us:
        command.append(f"--buffer-time={buffer_us}")
    return [*command, "-"]


def aplay_error(lines: Sequence[str], code: int | None) -> str:
    """aplay's own line ("aplay: main:831: audio open error: ..."), not the ALSA chatter above it."""
    lines = [line.strip() for line in lines if line.strip()]
    own = [line for line in lines if line.startswith("aplay:")]
    return (own or lines or [f"aplay exited with {code}"])[-1]


def list_outputs(aplay: str) -> list[tuple[str, str]]:
    """ALSA's PCM names as `aplay -L` lists them, each with the first line of its description."""
    try:
        listed = subprocess.run(
            [aplay, "-L"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpeakerError("no_speaker", f"cannot list the sound outputs with `aplay -L`: {exc}") from exc
    if listed.returncode != 0:
        reason = aplay_error(listed.stderr.decode(errors="replace").splitlines(), listed.returncode)
        raise SpeakerError("no_speaker", f"cannot list the sound outputs with `aplay -L`: {reason}")
    outputs: list[tuple[str, str]] = []
    for line in listed.stdout.decode(errors="replace").splitlines():
        if line.strip() and not line[0].isspace():
            outputs.append((line.strip(), ""))
        elif line.strip() and outputs and not outputs[-1][1]:
            outputs[-1] = (outputs[-1][0], line.strip())
    return outputs


def suggested_outputs(outputs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The names worth giving `speaker_device`: the default, and each card with ALSA's conversions
    (plughw:), which take any rate and channel count; everything but `null` if there are none."""
    picked = [(n, d) for n, d in outputs if n == "default" or n.startswith("plughw:")]
    return picked or [(n, d) for n, d in outputs if n != "null"]


def resolve_output(aplay: str, wanted: str) -> str:
    """The ALSA name for `[device] speaker_device`: itself if `aplay -L` lists it, else the first listed
    output whose name or description contains it (any case), a plughw: one first; "" stays the default."""
    if not wanted:
        return ""
    outputs = list_outputs(aplay)
    if any(name == wanted for name, _ in outputs):
        return wanted
    lowered = wanted.lower()
    matches = [name for name, about in outputs if lowered in name.lower() or lowered in about.lower()]
    if matches:
        return next((name for name in matches if name.startswith("plughw:")), matches[0])
    listed = ", ".join(f"{name} ({about})" if about else name for name, about in suggested_outputs(outputs))
    raise SpeakerError(
        "no_speaker",
        f'[device] speaker_device = "{wanted}" matches no ALSA output; outputs: {listed or "none"} '
        "(`aplay -L` lists every name)",
    )


def convert(pcm: bytes, rate: int) -> bytes:
    """Mono PCM16 at `rate` as the stream's format (OUTPUT_RATE), by windowed-sinc resampling: the whole
    sound, with nothing held back at its end."""
    import numpy as np  # here, not at the top: the daemon's light modules must not load numpy

    from device.mic import StreamResampler

    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
    if rate == OUTPUT_RATE or samples.size == 0:
        return samples.tobytes()
    scaled = samples / 32768.0
    resampler = StreamResampler(rate, OUTPUT_RATE)
    steps = range(0, scaled.size, _RESAMPLE_STEP)
    pieces = [resampler.push(scaled[at : at + _RESAMPLE_STEP]) for at in steps]
    pieces.append(resampler.push(np.zeros(rate // 100)))  # 10 ms of silence pushes out the held-back tail
    out = np.concatenate(pieces)[: round(scaled.size * OUTPUT_RATE / rate)]
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype("<i2").tobytes()


class Played:
    """One sound handed to the output. `wait` returns once it has been heard, cut short or refused;
    `failed` then says why it was not heard ("" when it was, or was cut short on purpose)."""

    def __init__(self, pcm: bytes, failed: str = "") -> None:
        self.pcm = pcm
        self.failed = failed
        self.offset = 0
        """How much of `pcm` has been written; the output's lock guards it."""
        self._written = threading.Event()
        self._cut = threading.Event()
        self.heard_at = 0.0
        """When its last sample leaves the speaker (monotonic), once written."""
        if failed or not pcm:
            self._written.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the sound has been heard (its last sample has left the speaker); False if
        `timeout` passed before it was all written."""
        if not self._written.wait(timeout):
            return False
        remaining = self.heard_at - time.monotonic()
        if remaining > 0:
            self._cut.wait(remaining)
        return True

    def finished(self, heard_at: float) -> None:
        """All written (by the output's writer): heard at `heard_at`."""
        self.heard_at = heard_at
        self._written.set()

    def cut(self, failed: str = "") -> None:
        """Dropped before it was all written: stopped on purpose, or lost for the reason `failed`."""
        self.failed = failed
        self._cut.set()
        self._written.set()


class SoundOut(Protocol):
    """Somewhere sounds are played, one after another, without the caller waiting."""

    def play(self, pcm: bytes, rate: int) -> Played:
        """Queue mono PCM16 at `rate` after what is queued; returns at once."""
        ...


class Playback:
    """One `aplay` for the daemon's life, fed by the writer thread "speaker-out": queued sounds in order,
    silence between them. `play` and `stop` may be called from any thread."""

    def __init__(
        self, device: str = "", *, delays: Sequence[float] = _REOPEN_DELAYS_S, stalled_s: float = _STALLED_S
    ) -> None:
        aplay = shutil.which("aplay")
        if aplay is None:
            raise SpeakerError(
                "no_speaker",
                "speech is played with `aplay`, which is missing: `sudo apt install alsa-utils`, "
                "or write the speech to a file with --tts-out",
            )
        self.device = resolve_output(aplay, device)
        """The ALSA name played to ("" for the default), resolved from `[device] speaker_device`."""
        self._command = aplay_command(aplay, OUTPUT_RATE, self.device, buffer_us=_BUFFER_US)
        self._where = self.device or "ALSA's default output"
        self._lock = threading.Lock()
        self._sounds: collections.deque[Played] = collections.deque()
        self._tails: list[Played] = []  # written, not yet heard: `stop` still cuts their wait short
        self._closing = threading.Event()
        self._backoff = Backoff(delays, stop=self._closing)
        self._down = ""  # why sounds are refused at once, while waiting to reopen
        self._process: subprocess.Popen[bytes] | None = None
        self._errors: collections.deque[str] = collections.deque(maxlen=8)
        self._stderr_reader: threading.Thread | None = None
        self._written_since_open = 0
        self._stalled_s = stalled_s
        self.opens = 0
        """How many times aplay was started: once, unless it died."""
        self.last_write = time.monotonic()
        """When a write last went through (silence included): it stops moving if the card hangs."""
        self._thread = threading.Thread(target=self._run, name="speaker-out", daemon=True)
        self._thread.start()

    def play(self, pcm: bytes, rate: int) -> Played:
        """Queue mono PCM16 at `rate`, converted to the stream's format, after what is queued."""
        if self._closing.is_set():
            return Played(b"", failed="the speaker is closed")
        self._unstick()
        sound = Played(convert(pcm, rate))
        with self._lock:
            if self._down:
                return Played(b"", failed=self._down)
            if sound.pcm:
                self._sounds.append(sound)
        return sound

    def _unstick(self) -> None:
        """Kill an aplay that has stopped taking audio (a wedged card), so that the writer, blocked on it,
        reopens the output instead of every later sentence waiting out its time-out."""
        process, stalled = self._process, time.monotonic() - self.last_write
        if process is not None and stalled > self._stalled_s:
            _LOGGER.warning("the speaker has taken nothing for %.1f s; restarting aplay", stalled)
            process.kill()

    def stop(self) -> None:
        """Drop every queued sound and end their waits; what aplay already holds (`LATENCY_S`) plays out."""
        with self._lock:
            for sound in (*self._sounds, *self._tails):
                sound.cut()
            self._sounds.clear()
            self._tails.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Play what is queued, then let aplay drain and end; a writer that hangs is logged, aplay killed."""
        self._closing.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _LOGGER.warning("the speaker's writer did not stop within %g s; killing aplay", timeout)
            process = self._process
            if process is not None:
                process.kill()
            self._thread.join(1.0)

    def _run(self) -> None:
        while (chunk := self._next_chunk()) is not None:
            data, sound = chunk
            try:
                self._write(data)
            except (OSError, ValueError) as exc:  # BrokenPipe: aplay died; OSError: it could not start
                self._failed(exc, sound)
                continue
            if sound is not None and sound.offset >= len(sound.pcm):
                self._heard(sound)
        self._end_process()

    def _next_chunk(self) -> tuple[bytes, Played | None] | None:
        """The next 20 ms to write: of the first queued sound, else silence; None once closed and drained."""
        with self._lock:
            if self._sounds:
                sound = self._sounds[0]
                data = sound.pcm[sound.offset : sound.offset + _CHUNK_BYTES]
                sound.offset += len(data)
                if sound.offset >= len(sound.pcm):
                    self._sounds.popleft()
                return data, sound
        return None if self._closing.is_set() else (_SILENCE, None)

    def _heard(self, sound: Played) -> None:
        now = time.monotonic()
        with self._lock:
            self._tails = [s for s in self._tails if s.heard_at > now]
            self._tails.append(sound)
        sound.finished(now + LATENCY_S)

    def _write(self, data: bytes) -> None:
        process = self._process if self._process is not None else self._open()
        stdin = process.stdin
        if process.poll() is not None or stdin is None:
            raise BrokenPipeError("aplay has exited")
        view = memoryview(data)
        while view:
            view = view[stdin.write(view) :]
        self.last_write = time.monotonic()
        self._written_since_open += len(data)
        if self._written_since_open >= 2 * OUTPUT_RATE and self._backoff.failures:
            self._backoff.reset()  # a second of sound went through: the output works again

    def _open(self) -> subprocess.Popen[bytes]:
        """Start aplay; a thread of its own reads its complaints, so that they can never block it."""
        self._errors.clear()
        process = subprocess.Popen(
            self._command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            bufsize=0,
            pipesize=_PIPE_BYTES,
        )
        self._process, self._written_since_open = process, 0
        self.last_write = time.monotonic()  # a fresh aplay is not a stalled one
        self.opens += 1
        assert process.stderr is not None
        self._stderr_reader = threading.Thread(
            target=self._read_errors, args=(process.stderr,), name="speaker-stderr", daemon=True
        )
        self._stderr_reader.start()
        _LOGGER.info("speaker open (%s, %d Hz)", self._where, OUTPUT_RATE)
        return process

    def _read_errors(self, stream: IO[bytes]) -> None:
        """Keep aplay's last lines for the log, reading to the end so that a full pipe never blocks it."""
        with stream:
            for line in stream:
                text = line.decode(errors="replace").strip()
                if text:
                    self._errors.append(text)
                    _LOGGER.debug("aplay: %s", text)

    def _end_process(self, grace_s: float = LATENCY_S + 2.0) -> int | None:
        """Close aplay's input so it plays out what it holds and ends; killed if it does not."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.stdin is not None:
            with contextlib.suppress(OSError):  # already broken: aplay is gone
                process.stdin.close()
        try:
            code = process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if self._stderr_reader is not None:
            self._stderr_reader.join(1.0)
        return code

    def _failed(self, exc: OSError | ValueError, sound: Played | None) -> None:
        """aplay died or would not start: the sound in hand is lost, and the output is opened again."""
        code = self._end_process(grace_s=1.0)
        reason = aplay_error(list(self._errors), code) if code is not None else f"cannot start aplay: {exc}"
        reason = f"{reason} ({self._where})"
        if sound is not None:
            sound.cut(failed=reason)
        delay = self._backoff.failed()
        if self._backoff.failures == 1:
            _LOGGER.warning("the speaker's output failed (%s); opening it again", reason)
        elif self._backoff.worth_logging:
            _LOGGER.warning(
                "the speaker still cannot play (%s); retrying in %g s (failure %d in a row)",
                reason,
                delay,
                self._backoff.failures,
            )
        if delay <= 0:
            return
        with self._lock:  # while the output waits, nothing would be heard: refuse sounds at once
            self._down = reason
            for queued in self._sounds:
                queued.cut(failed=reason)
            self._sounds.clear()
        self._backoff.wait(delay)
        with self._lock:
            self._down = ""
