"""Server settings: one TOML file, `TADBOT_SECTION__KEY` env overrides, documented defaults.

Everything is checked once at start-up; a bad value stops the server with one line that names the key,
the value and what is allowed, so it never runs half-configured.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfoNotFoundError

from server.errors import ConfigError
from server.sections import (
    DashboardSection,
    FerSection,
    LlmSection,
    MemorySection,
    PersonaSection,
    RetentionSection,
    SafetySection,
    ServerSection,
    SttSection,
)

SECRET_KEYS = frozenset({"token", "api_key", "password"})
# URLs can carry a secret in user:password@, the path (webhook tokens) or the query: shown as scheme://host.
URL_KEYS = frozenset({"alert_url", "base_url"})
# Sections read by other programs sharing the same file (the Pi daemon owns [device]).
FOREIGN_SECTIONS = frozenset({"device"})


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
