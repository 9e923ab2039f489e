"""Where an utterance starts and ends: WebRTC's voice detector, checked against the room's noise floor.

WebRTC VAD alone calls a steady fan, a hum or road noise speech. So a frame only counts as speech when the
VAD says so AND it is louder than the room by a margin. The room's level is the quietest frame of the
last few seconds: pauses between words keep it down while someone talks, and a fan switched on lifts it
once it has run for a whole window.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass

import numpy as np

from device.audio import SAMPLE_RATE
from device.errors import AudioInputError

_LOGGER = logging.getLogger(__name__)

_SILENCE_DBFS = 20 * math.log10(0.5 / 32768)
"""The level of digital silence: half a least significant bit, so log10 never sees zero."""


@dataclass(frozen=True)
class EndpointConfig:
    """How utterances are cut out of the microphone's stream."""

    frame_ms: int = 30
    """Length of each frame fed to the endpointer; WebRTC VAD takes 10, 20 or 30 ms."""
    pre_roll_s: float = 0.8
    """Audio kept from before speech starts: a first syllable starts quietly and STT needs it whole."""
    end_silence_s: float = 0.7
    """Non-speech that ends an utterance; a breath between sentences is shorter."""
    min_speech_s: float = 0.3
    """Voiced audio an utterance needs to be kept: coughs, clicks and knocks are shorter."""
    max_utterance_s: float = 30.0
    """Longest utterance, pre-roll included: the server refuses longer audio, so longer speech is cut."""
    aggressiveness: int = 2
    """WebRTC VAD mode from 0 to 3: higher rejects more noise, and some quiet speech."""
    start_s: float = 0.12
    """Run of speech frames that starts an utterance, so a single loud frame does not."""
    noise_margin_db: float = 6.0
    """How far above the noise floor a frame must be to count as speech."""
    floor_window_s: float = 5.0
    """The noise floor is the quietest frame this far back: how long a new steady noise takes to be learnt."""

    def __post_init__(self) -> None:
        problems = []
        if self.frame_ms not in (10, 20, 30):
            problems.append(f"frame_ms must be 10, 20 or 30, not {self.frame_ms}")
        if self.aggressiveness not in (0, 1, 2, 3):
            problems.append(f"aggressiveness must be 0 to 3, not {self.aggressiveness}")
        for name in ("end_silence_s", "start_s", "floor_window_s"):
            if getattr(self, name) < self.frame_ms / 1000:
                problems.append(f"{name} must be at least one frame ({self.frame_ms} ms)")
        if self.pre_roll_s < 0 or self.min_speech_s < 0 or self.noise_margin_db < 0:
            problems.append("pre_roll_s, min_speech_s and noise_margin_db must not be negative")
        if self.max_utterance_s <= self.pre_roll_s + self.start_s:
            problems.append("max_utterance_s must be longer than pre_roll_s + start_s")
        if problems:
            raise ValueError("EndpointConfig: " + "; ".join(problems))

    @property
    def frame_bytes(self) -> int:
        """Bytes in one frame of 16 kHz mono PCM16."""
        return SAMPLE_RATE * self.frame_ms // 1000 * 2

    def frames(self, seconds: float) -> int:
        """Whole frames in `seconds`, rounded to the nearest."""
        return round(seconds * 1000 / self.frame_ms)


def level_dbfs(frame: bytes) -> float:
    """RMS level of PCM16 audio in dB below full scale; digital silence is about -96."""
    samples = np.frombuffer(frame, dtype="<i2").astype(np.float64)
    rms = math.sqrt(float(np.mean(samples**2))) if samples.size else 0.0
    return max(_SILENCE_DBFS, 20 * math.log10(max(rms, 1e-9) / 32768))


class Endpointer:
    """Turns a stream of frames into utterances: pure logic, fed one frame at a time, no threads, no I/O."""

    def __init__(self, config: EndpointConfig | None = None) -> None:
        try:
            import webrtcvad
        except ImportError as exc:
            raise AudioInputError(
                "no_vad", "voice detection needs webrtcvad: run `pip install webrtcvad-wheels`"
            ) from exc
        self.config = config or EndpointConfig()
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self._pre_frames = self.config.frames(self.config.pre_roll_s)
        self._start_frames = self.config.frames(self.config.start_s)
        self._end_frames = self.config.frames(self.config.end_silence_s)
        self._min_frames = self.config.frames(self.config.min_speech_s)
        # Rounded down: the server refuses audio over its limit.
        self._max_frames = math.floor(self.config.max_utterance_s * 1000 / self.config.frame_ms + 1e-9)
        self._levels: collections.deque[float] = collections.deque(
            maxlen=self.config.frames(self.config.floor_window_s)
        )
        self._before: collections.deque[bytes] = collections.deque(
            maxlen=self._pre_frames + self._start_frames
        )
        self._utterance: list[bytes] = []
        self._voiced_run = 0
        self._voiced = 0
        self._silent_run = 0
        self.in_speech = False
        """True from the moment an utterance starts until it ends, is flushed or reset; a cut goes on."""
        self.last_speech_s = 0.0
        """Voiced seconds in the utterance last returned by `feed` or `flush`."""

    @property
    def noise_floor_db(self) -> float | None:
        """The room's level in dBFS, or None before any frame was heard."""
        return min(self._levels) if self._levels else None

    def calibrate(self, frames: list[bytes]) -> None:
        """Learn the room from frames known to hold no speech, replacing what was learnt before."""
        self._levels.clear()
        self._levels.extend(level_dbfs(frame) for frame in frames)
        _LOGGER.debug("noise floor %s dBFS from %d frames", _db(self.noise_floor_db), len(frames))

    def _is_speech(self, frame: bytes) -> bool:
        """This frame's verdict: the VAD hears a voice and it stands out from the room. Learns the room."""
        if len(frame) != self.config.frame_bytes:
            raise ValueError(
                f"a frame is {self.config.frame_bytes} bytes of 16 kHz mono PCM16, not {len(frame)}"
            )
        level, floor = level_dbfs(frame), self.noise_floor_db
        self._levels.append(level)
        loud = floor is None or level > floor + self.config.noise_margin_db
        return loud and self._vad.is_speech(frame, SAMPLE_RATE)

    def feed(self, frame: bytes) -> bytes | None:
        """Take one frame; returns a finished utterance's PCM16 (pre-roll included), or None."""
        speech = self._is_speech(frame)
        if not self.in_speech:
            self._before.append(frame)
            self._voiced_run = self._voiced_run + 1 if speech else 0
            if self._voiced_run >= self._start_frames:
                self._start()
            return None
        self._utterance.append(frame)
        if speech:
            self._voiced += 1
            self._silent_run = 0
        else:
            self._silent_run += 1
        if self._silent_run >= self._end_frames:
            return self._finish("ended")
        if len(self._utterance) >= self._max_frames:
            return self._cut()
        return None

    def flush(self) -> bytes | None:
        """End of stream: the utterance in progress if it has enough speech; the endpointer starts afresh."""
        if not self.in_speech:
            self.reset()
            return None
        return self._finish("flushed")

    def reset(self) -> None:
        """Drop everything in progress (the microphone was muted); what was learnt of the room stays."""
        self._before.clear()
        self._voiced_run = 0
        self._utterance = []
        self.in_speech = False

    def _start(self) -> None:
        self._utterance = list(self._before)
        self._voiced = self._voiced_run
        self._silent_run = 0
        self._before.clear()
        self._voiced_run = 0
        self.in_speech = True
        _LOGGER.debug("speech started (noise floor %s dBFS)", _db(self.noise_floor_db))

    def _finish(self, how: str) -> bytes | None:
        utterance, voiced = self._utterance, self._voiced
        self.reset()
        return self._keep(utterance, voiced, how)

    def _cut(self) -> bytes | None:
        """At max_utterance_s: hand over what there is and go on listening to the same speaker at once."""
        utterance, voiced = self._utterance, self._voiced
        self._utterance, self._voiced = [], 0
        return self._keep(utterance, voiced, "cut at max_utterance_s")

    def _keep(self, utterance: list[bytes], voiced: int, how: str) -> bytes | None:
        frame_s = self.config.frame_ms / 1000
        seconds, voiced_s = len(utterance) * frame_s, voiced * frame_s
        if voiced < self._min_frames:
            _LOGGER.debug("dropped %.2f s of sound, %.2f s voiced (%s): too short", seconds, voiced_s, how)
            return None
        _LOGGER.debug("utterance %s: %.2f s, %.2f s voiced", how, seconds, voiced_s)
        self.last_speech_s = voiced_s
        return b"".join(utterance)


def _db(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"
