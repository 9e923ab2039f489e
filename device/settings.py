"""Device settings: one frozen dataclass, checked once at start-up and passed explicitly.

Sources, lowest to highest precedence: field defaults, the `[device]` section of the shared TOML file,
the `TADBOT_DEVICE__<KEY>` environment variables, then command-line flags. A bad value stops start-up with
one line that names the key, the value and what is allowed, so a typo is obvious in `journalctl`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tomllib
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from device.errors import DeviceConfigError

_LOGGER = logging.getLogger(__name__)

SECTION = "device"
ENV_PREFIX = "TADBOT_DEVICE__"
DEFAULT_CONFIG_PATHS = (Path("/etc/tadbot/tadbot.toml"), Path("tadbot.toml"))
SECRET_KEYS = frozenset({"token"})


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class DeviceSettings:
    """Everything the device daemon can be told; defaults suit a Pi talking to a server on the same box."""

    server_url: str = field(default="http://127.0.0.1:8710", metadata=_doc("Base URL of the TADBot server."))
    token: str = field(default="", metadata=_doc("Device bearer token from `tadbot admin add-device`."))
    ca_file: str = field(
        default="",
        metadata=_doc(
            "PEM certificate (or CA) to trust for an https server_url, as for a self-signed or local-CA "
            "server; empty: the public authorities only."
        ),
    )
    client: str = field(
        default="",
        metadata=_doc(
            "Pseudonym of the person; no real names. Empty: the client the server has this device enrolled "
            "for (`tadbot admin enroll`); name one only when it is enrolled for several."
        ),
    )
    tts_engine: str = field(
        default="piper", metadata=_doc("piper (a neural voice) or espeak; piper falls back to espeak.")
    )
    piper_voice: str = field(
        default="en_US-joe-medium",
        metadata=_doc("Piper voice: a name in voices_dir or installed, or an .onnx path."),
    )
    voices_dir: str = field(
        default="models/voices", metadata=_doc("Piper voices (`tadbot models pull voice` puts them there).")
    )
    tts_voice: str = field(
        default="", metadata=_doc("espeak-ng voice id or name; empty picks one for `language`.")
    )
    tts_rate: int = field(default=165, metadata=_doc("Speaking rate in words per minute; slower is calmer."))
    tts_volume: float = field(default=1.0, metadata=_doc("TTS volume from 0.0 to 1.0."))
    speaker_device: str = field(
        default="",
        metadata=_doc(
            "ALSA output: a name from `aplay -L` (plughw:CARD=Device,DEV=0) or part of one or of its "
            "description; empty: ALSA's default."
        ),
    )
    earcons: bool = field(
        default=True,
        metadata=_doc("Soft chimes: 'heard' as an utterance is sent, 'offline' when the server is away."),
    )
    camera_index: int = field(default=0, metadata=_doc("Webcam index (/dev/videoN); -1 disables the camera."))
    mic_index: int = field(default=-1, metadata=_doc("PortAudio microphone index; -1 is the default one."))
    mic_device: str = field(
        default="",
        metadata=_doc(
            "Part of the microphone's PortAudio name (`tadbot doctor` lists them), which survives "
            "reboots where an index may not; empty: use mic_index."
        ),
    )
    mic_calibration_s: float = field(
        default=1.0, metadata=_doc("Seconds of room noise heard to set the threshold.")
    )
    max_utterance_s: float = field(
        default=30.0, metadata=_doc("Longest utterance (s), at most the server's 60; longer speech is cut.")
    )
    request_timeout_s: float = field(
        default=120.0, metadata=_doc("Seconds to wait for each part of an answer.")
    )
    language: str = field(default="en", metadata=_doc("Language tag (en, en-GB, ...) picking the TTS voice."))
    locale: str = field(
        default="US",
        metadata=_doc(
            "Country whose crisis line the device's own crisis reply gives when a turn breaks (US, CA, GB, "
            "IE, AU, NZ; any other gets findahelpline.com); keep it equal to the server's [safety] locale."
        ),
    )
    vad_aggressiveness: int = field(
        default=2,
        metadata=_doc("WebRTC VAD aggressiveness, 0-3: higher ignores more noise, and some speech."),
    )
    pre_roll_s: float = field(
        default=0.8, metadata=_doc("Audio kept from before speech starts, so the first word is whole.")
    )
    end_silence_s: float = field(
        default=0.7,
        metadata=_doc("Silence that ends an utterance; raise it for people who pause mid-thought."),
    )
    min_speech_s: float = field(
        default=0.3, metadata=_doc("Shorter bursts of sound (a cough, a click) are not sent.")
    )
    mute_tail_s: float = field(
        default=0.3, metadata=_doc("The microphone stays muted this long after the device stops speaking.")
    )
    barge_in: bool = field(
        default=False,
        metadata=_doc("Listen while speaking and stop when the person talks; needs echo cancellation."),
    )
    camera_fps: float = field(
        default=2.0, metadata=_doc("Frames grabbed per second; only the latest is kept.")
    )
    frame_interval_s: float = field(
        default=5.0,
        metadata=_doc("Between turns, send a frame for the emotion timeline this often; 0: never."),
    )
    think_ack_s: float = field(
        default=3.0,
        metadata=_doc("Say a short 'one moment' after this much silence from the server; 0: never."),
    )
    idle_end_s: float = field(
        default=600.0,
        metadata=_doc("End the session after this much silence (its timeline samples stop); 0: never."),
    )
    wake_word: str = field(
        default="",
        metadata=_doc("Wake word: a model name in wake_models_dir, or an .onnx path; empty: none."),
    )
    wake_models_dir: str = field(
        default="models/wakeword",
        metadata=_doc("openWakeWord's models (`tadbot models pull wakeword` puts them there)."),
    )
    wake_threshold: float = field(
        default=0.5, metadata=_doc("Wake word score (0 to 1) that wakes it; higher: fewer false wakes.")
    )
    wake_window_s: float = field(
        default=60.0,
        metadata=_doc("After the wake word, stay awake this long after each utterance, so it is said once."),
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            check_value(spec.name, getattr(self, spec.name))


TTS_ENGINES = ("piper", "espeak")
PIPER_VOICE_RE = re.compile(r"[a-z]{2,3}_[A-Z]{2}-[A-Za-z0-9_]+-(x_low|low|medium|high)")
"""Piper's voice names: language_REGION-name-quality, as the voices are published."""


def models_path(configured: str | Path) -> Path:
    """A relative path under `models/` follows $TADBOT_MODELS_DIR, as the server's model paths do."""
    path = Path(configured).expanduser()
    root = os.environ.get("TADBOT_MODELS_DIR")
    if root and not path.is_absolute() and path.parts[:1] == ("models",):
        return Path(root).joinpath(*path.parts[1:])
    return path


SERVER_MAX_AUDIO_S = 60.0
"""The server's default cap on one utterance ([server] max_audio_s); longer audio is refused with 413."""


def _is_server_url(value: str) -> bool:
    """http(s), a host, and a port that parses: what requests can reach, checked before anything is sent."""
    if any(c.isspace() for c in value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number from 0 to 65535)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_device_name(value: str) -> bool:
    """A sound device's name, or part of one: printable, no edge spaces, not absurdly long."""
    return value == value.strip() and value.isprintable() and len(value) <= 128


# Per key: a predicate on the typed value and the words that say what is allowed.
_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_CHECKS: dict[str, tuple[Callable[[typing.Any], bool], str]] = {
    "server_url": (_is_server_url, "an http:// or https:// URL with a host and a valid port"),
    "ca_file": (
        lambda v: v == "" or (os.access(v, os.R_OK) and os.path.isfile(v)),
        "empty, or a readable PEM file",
    ),
    "token": (
        lambda v: v.isascii() and not any(c.isspace() for c in v),
        "a token of ASCII characters without spaces",
    ),
    "client": (
        lambda v: re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", v) is not None,
        "empty, or 1-64 of A-Z a-z 0-9 _ . -",
    ),
    "tts_engine": (lambda v: v in TTS_ENGINES, " or ".join(TTS_ENGINES)),
    "piper_voice": (
        lambda v: v.endswith(".onnx") or PIPER_VOICE_RE.fullmatch(v) is not None,
        "a Piper voice name such as en_US-joe-medium, or the path of an .onnx file",
    ),
    "voices_dir": (lambda v: bool(v.strip()), "the path of a folder"),
    "tts_voice": (lambda v: True, "any voice id or name"),
    "tts_rate": (lambda v: 50 <= v <= 400, "an integer from 50 to 400"),
    "tts_volume": (lambda v: 0.0 <= v <= 1.0, "a number from 0.0 to 1.0"),
    "speaker_device": (_is_device_name, '"" (the default output), or an ALSA output name or part of one'),
    "earcons": (lambda v: True, "true or false"),
    "camera_index": (lambda v: v >= -1, "an integer >= -1 (-1 disables the camera)"),
    "mic_index": (lambda v: v >= -1, "an integer >= -1 (-1 is the default microphone)"),
    "mic_device": (_is_device_name, '"" (use mic_index), or part of a microphone\'s name'),
    "mic_calibration_s": (lambda v: 0.0 <= v <= 10.0, "a number of seconds from 0 to 10"),
    "max_utterance_s": (
        lambda v: 1.0 <= v <= SERVER_MAX_AUDIO_S,
        f"a number of seconds from 1 to {SERVER_MAX_AUDIO_S:g} (the server refuses longer audio)",
    ),
    "request_timeout_s": (lambda v: 1.0 <= v <= 3600.0, "a number of seconds from 1 to 3600"),
    "language": (lambda v: _LANGUAGE_RE.fullmatch(v) is not None, "a language tag such as en or en-GB"),
    "locale": (
        lambda v: re.fullmatch(r"[A-Za-z]{2}", v) is not None,
        "a two-letter country code such as US or GB",
    ),
    "vad_aggressiveness": (lambda v: 0 <= v <= 3, "an integer from 0 to 3"),
    "pre_roll_s": (lambda v: 0.0 <= v <= 2.0, "a number of seconds from 0 to 2"),
    "end_silence_s": (lambda v: 0.3 <= v <= 3.0, "a number of seconds from 0.3 to 3"),
    "min_speech_s": (lambda v: 0.05 <= v <= 2.0, "a number of seconds from 0.05 to 2"),
    "mute_tail_s": (lambda v: 0.0 <= v <= 2.0, "a number of seconds from 0 to 2"),
    "barge_in": (lambda v: True, "true or false"),
    "camera_fps": (lambda v: 0.2 <= v <= 15.0, "a number of frames per second from 0.2 to 15"),
    "frame_interval_s": (lambda v: v == 0.0 or 1.0 <= v <= 600.0, "0 (never) or seconds from 1 to 600"),
    "think_ack_s": (lambda v: v == 0.0 or 1.0 <= v <= 60.0, "0 (never) or seconds from 1 to 60"),
    "idle_end_s": (lambda v: v == 0.0 or 30.0 <= v <= 86400.0, "0 (never) or seconds from 30 to 86400"),
    "wake_word": (
        lambda v: v == "" or v.endswith(".onnx") or re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v) is not None,
        '"" (none), a model name such as hey_jarvis, or the path of an .onnx file',
    ),
    "wake_models_dir": (lambda v: bool(v.strip()), "the path of a folder"),
    "wake_threshold": (lambda v: 0.0 < v < 1.0, "a number between 0 and 1, such as 0.5"),
    "wake_window_s": (lambda v: 5.0 <= v <= 3600.0, "a number of seconds from 5 to 3600"),
}


_TYPES: dict[str, type] = typing.get_type_hints(DeviceSettings)


def _bad(key: str, value: object, allowed: str, source: str) -> DeviceConfigError:
    shown = "***" if key in SECRET_KEYS else repr(value)
    return DeviceConfigError(f"invalid [{SECTION}] {key} = {shown} (from {source}): expected {allowed}")


def check_value(key: str, value: object, source: str = "settings") -> None:
    """Raise DeviceConfigError unless `value` is allowed for `key` (already of the field's type)."""
    predicate, allowed = _CHECKS[key]
    if not predicate(value):
        raise _bad(key, value, allowed, source)


def _coerce(key: str, value: object, source: str) -> object:
    """Give `value` the field's type: env strings are parsed, TOML values must already fit."""
    kind = _TYPES[key]
    allowed = _CHECKS[key][1]
    if isinstance(value, str) and kind is bool:
        flag = value.strip().lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise _bad(key, value, allowed, source)
        return flag in ("true", "1", "yes")
    if isinstance(value, str) and kind is not str:
        try:
            return kind(value.strip())
        except ValueError:
            raise _bad(key, value, allowed, source) from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise _bad(key, value, allowed, source)
    return value


def find_config_file(explicit: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The file to read: `explicit`, else $TADBOT_CONFIG, else the first default path that exists.

    A file named explicitly (flag or env) must exist: silently running on defaults after a typo would hide it.
    """
    env = os.environ if env is None else env
    named = explicit if explicit is not None else env.get("TADBOT_CONFIG") or None
    if named is not None:
        path = Path(named)
        if not path.is_file():
            raise DeviceConfigError(
                f"config file {path} does not exist (named by --config or $TADBOT_CONFIG)"
            )
        return path
    return next((path for path in DEFAULT_CONFIG_PATHS if path.is_file()), None)


def _read_section(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeviceConfigError(f"cannot read config file {path}: {exc}") from exc
    section = document.get(SECTION, {})
    if not isinstance(section, dict):
        raise DeviceConfigError(f"[{SECTION}] in {path} must be a table")
    return section


def _unknown_key(key: str, source: str) -> DeviceConfigError:
    known = ", ".join(_CHECKS)
    return DeviceConfigError(f"unknown [{SECTION}] key {key!r} (from {source}); known keys: {known}")


def load_settings(
    config_path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> DeviceSettings:
    """Merge defaults, the TOML file, `TADBOT_DEVICE__*` env vars and `overrides` (CLI flags), in that order.

    `overrides` values of None mean "flag not given". Any bad value raises DeviceConfigError naming the key.
    """
    env = os.environ if env is None else env
    values: dict[str, tuple[object, str]] = {}
    path = find_config_file(config_path, env)
    if path is not None:
        _LOGGER.info("reading [%s] from %s", SECTION, path)
        for key, value in _read_section(path).items():
            if key not in _CHECKS:
                raise _unknown_key(key, str(path))
            values[key] = (value, str(path))
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower()
            if key not in _CHECKS:
                raise _unknown_key(key, name)
            values[key] = (value, name)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = (value, "the command line")
    typed: dict[str, object] = {}
    for key, (value, source) in values.items():
        typed[key] = _coerce(key, value, source)
        check_value(key, typed[key], source)
    return DeviceSettings(**typed)  # type: ignore[arg-type]


def settings_to_toml(settings: DeviceSettings) -> str:
    """The effective settings as a `[device]` TOML section, secrets masked, each key's doc as a comment."""
    lines = [f"[{SECTION}]"]
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if spec.name in SECRET_KEYS and value:
            value = "********"
        lines.append(f"# {spec.metadata['doc']}")
        # A JSON string is a valid TOML basic string; ints and finite floats print the same in both.
        lines.append(f"{spec.name} = {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"
