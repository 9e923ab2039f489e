"""`tadbot train generate`: synthetic talk-down dialogs from any OpenAI-compatible endpoint.

Each combination of scenario × technique × length (generate_prompts.toml) is one POST /chat/completions. The
reply is read as Person A / Person B lines, checked (alternating, Person A first, at least two exchanges),
deduplicated, and appended to a .txt file in the format readers.py reads, so `tadbot train prepare --source`
takes it. A sidecar `<out>.progress.json` records what is done after every dialog: a run that was stopped
continues where it left off and never writes a dialog twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from server.for_training import ConfigError, DataFile, Invalid, TadbotError
from training.llm.readers import PERSON_LINE, DataError, Turn, normalise_turns, read_person_dialogs

_LOGGER = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
"""llama.cpp's server (or `python -m llama_cpp.server`) on its default port."""
MIN_EXCHANGES = 2
GIVE_UP_AFTER = 3
"""Combinations failed in a row (after their retries) before the run stops: the endpoint is down."""
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _bad(key: str, value: object, expected: str) -> None:
    raise ConfigError("bad_argument", f"--{key.replace('_', '-')} {value}: expected {expected}")


@dataclass(frozen=True)
class GenerateConfig:
    """One `tadbot train generate` run; each field is the command-line flag of the same name."""

    out: Path
    """The Person A/B .txt file dialogs are appended to; `<out>.progress.json` sits beside it."""
    base_url: str = DEFAULT_BASE_URL
    """The endpoint's base URL, up to and including /v1."""
    model: str | None = None
    """Sent as `model`; hosted APIs need it, a one-model llama.cpp server does not."""
    api_key_env: str | None = None
    """The environment variable holding the API key (sent as a Bearer token), so no key sits in argv."""
    count: int | None = None
    """Combinations to ask for; None is each once. More than there are goes round again in a new order."""
    seed: int = 0
    """The order of the combinations, and the per-request seed sent to the endpoint."""
    rate_per_min: float = 30.0
    """Requests per minute at most, retries included; 0 is no limit."""
    max_tokens: int = 800
    temperature: float = 0.9
    timeout_s: float = 120.0
    """Per request: a slow local model writing 800 tokens needs a while."""
    retries: int = 4
    """Extra tries per request on 429, 5xx, a timeout or a lost connection."""
    backoff_s: float = 2.0
    """The first retry's wait, doubled for each one after (a Retry-After header wins, up to 60 s)."""
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if not re.match(r"^https?://\S+$", self.base_url):
            _bad("base_url", self.base_url, "an http:// or https:// URL, such as " + DEFAULT_BASE_URL)
        if self.count is not None and self.count < 1:
            _bad("count", self.count, "1 or more")
        if self.rate_per_min < 0:
            _bad("rate_per_min", self.rate_per_min, "0 (no limit) or more")
        if self.max_tokens < 16:
            _bad("max_tokens", self.max_tokens, "16 or more")
        if not 0 <= self.temperature <= 2:
            _bad("temperature", self.temperature, "from 0 to 2")
        if self.timeout_s <= 0:
            _bad("timeout", self.timeout_s, "more than 0 seconds")
        if self.retries < 0 or self.backoff_s < 0:
            _bad("retries", self.retries, "0 or more, with a back-off of 0 s or more")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            _bad("api_key_env", self.api_key_env, "the name of a set, non-empty environment variable")


@dataclass(frozen=True)
class Prompts:
    instruction: str
    scenarios: dict[str, str]
    techniques: dict[str, str]
    lengths: dict[str, int]

    @classmethod
    def load(cls) -> Prompts:
        """generate_prompts.toml, shipped beside this module; a file that strays from its layout is a bug."""
        return DataFile("training/llm/generate_prompts.toml", 1, "bad_prompts", cls.parse).load()

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Prompts:
        prompts = cls(data["instruction"].strip(), data["scenarios"], data["techniques"], data["lengths"])
        if not all((prompts.scenarios, prompts.techniques, prompts.lengths)):
            raise Invalid("expected scenarios, techniques, lengths")
        if not all(isinstance(n, int) and 2 <= n <= 12 for n in prompts.lengths.values()):
            raise Invalid("each length is 2 to 12 exchanges")
        return prompts

    def combinations(self) -> list[tuple[str, str, str]]:
        return [(s, t, n) for s in self.scenarios for t in self.techniques for n in self.lengths]

    def render(self, scenario: str, technique: str, length: str) -> str:
        exchanges = self.lengths[length]
        return self.instruction.format(
            scenario=self.scenarios[scenario],
            technique=self.techniques[technique],
            exchanges=exchanges,
            turns=2 * exchanges,
        )


@dataclass(frozen=True)
class Job:
    key: str
    """`scenario/technique/length`, with `#round` from the second round on: what the progress file records."""
    prompt: str
    seed: int


def jobs(prompts: Prompts, count: int | None, seed: int) -> Iterator[Job]:
    """The first `count` combinations in a seeded order: each once per round, rounds drawn one after another,
    so the same seed gives the same keys whatever the count."""
    combos = prompts.combinations()
    total = len(combos) if count is None else count
    rng = random.Random(seed)
    emitted = 0
    round_number = 0
    while emitted < total:
        order = combos[:]
        rng.shuffle(order)
        for scenario, technique, length in order[: total - emitted]:
            key = f"{scenario}/{technique}/{length}" + (f"#{round_number + 1}" if round_number else "")
            yield Job(key, prompts.render(scenario, technique, length), seed * 1_000_003 + emitted)
            emitted += 1
        round_number += 1


_LABEL = re.compile(r"^[\s>*_#-]*Person\s*([AB])\b\s*[*_]*\s*[:\-–—]\s*[*_]*\s*(.*)$", re.IGNORECASE)
"""A turn's label with the variations models write: bold or italic markers, a bullet, a dash for the colon."""


def parse_dialog(reply: str, truncated: bool = False) -> tuple[Turn, ...] | None:
    """The reply as alternating (user, assistant) turns, or None when it is not a usable dialog.

    Lines are put into the readers' `Person X: text` form and read with their pattern. Anything before the
    first Person A line goes (a preamble); an unlabelled line continues the turn above it, unless a blank
    line came between (a closing remark: the dialog ends there). A `truncated` reply (cut at max_tokens)
    loses its last, unfinished turn. At least two exchanges, alternating from Person A, or None."""
    turns: list[Turn] = []
    after_blank = False
    for raw in reply.splitlines():
        if not raw.strip():
            after_blank = True
            continue
        label = _LABEL.match(raw)
        match = PERSON_LINE.match(f"Person {label[1]}: {label[2]}") if label else None
        if match:
            text = match[2].strip().strip("*_").strip()
            if len(text) >= 2 and text[0] == text[-1] == '"':
                text = text[1:-1].strip()
            turns.append(("user" if match[1].upper() == "A" else "assistant", text))
        elif turns and not after_blank:
            turns[-1] = (turns[-1][0], f"{turns[-1][1]} {raw.strip()}")
        elif turns:
            break
        after_blank = False
    while turns and turns[0][0] != "user":
        turns.pop(0)
    if truncated and turns:
        turns.pop()
    if any(not text for _, text in turns) or any(
        role != ("user" if i % 2 == 0 else "assistant") for i, (role, _) in enumerate(turns)
    ):
        return None
    kept = normalise_turns(turns)
    return kept if len(kept) >= 2 * MIN_EXCHANGES else None


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def dialog_hash(turns: tuple[Turn, ...]) -> str:
    """Equal for dialogs that differ only in case, punctuation and spacing."""
    joined = "\n".join(f"{role}:{_normalised(text)}" for role, text in turns)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:32]


def opener_hash(turns: tuple[Turn, ...]) -> str:
    """The first Person A line: a second dialog opening the same way adds little."""
    return hashlib.sha256(_normalised(turns[0][1]).encode("utf-8")).hexdigest()[:32]


def format_dialog(turns: tuple[Turn, ...]) -> str:
    return "\n".join(f"Person {'A' if role == 'user' else 'B'}: {text}" for role, text in turns) + "\n"


@dataclass
class Progress:
    """What `<out>.progress.json` holds: done keys, dedup hashes, the counts so far and the size of the
    output file after the last recorded dialog (anything past it was written by a run that died before
    recording it, and is cut off on resume)."""

    path: Path
    done: set[str] = field(default_factory=set)
    hashes: set[str] = field(default_factory=set)
    openers: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(
        default_factory=lambda: {"written": 0, "rejected_unparseable": 0, "duplicates": 0}
    )
    size: int = 0

    @classmethod
    def open(cls, out: Path) -> Progress:
        progress = cls(out.with_name(out.name + ".progress.json"))
        if progress.path.exists():
            try:
                data = json.loads(progress.path.read_text(encoding="utf-8"))
                progress.done, progress.hashes = set(data["done"]), set(data["hashes"])
                progress.openers, progress.size = set(data["openers"]), int(data["size"])
                progress.counts.update({k: int(data["counts"][k]) for k in progress.counts})
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    "bad_progress", f"{progress.path}: unreadable ({exc}); delete it to start over"
                ) from exc
            progress._reconcile(out)
        elif out.exists() and out.stat().st_size:
            progress._adopt(out)
        return progress

    def _reconcile(self, out: Path) -> None:
        size = out.stat().st_size if out.exists() else 0
        if size < self.size:
            raise ConfigError(
                "bad_progress",
                f"{out} is shorter than {self.path} records ({size} < {self.size} bytes): it was edited or "
                "replaced; delete the progress file to start over",
            )
        if size > self.size:
            _LOGGER.warning("%s: cutting %d unrecorded bytes a stopped run wrote", out, size - self.size)
            with out.open("r+b") as handle:
                handle.truncate(self.size)

    def _adopt(self, out: Path) -> None:
        """An existing dialog file without progress: new dialogs are appended, never repeating its own."""
        try:
            dialogs, _ = read_person_dialogs(out)
        except DataError as exc:
            raise ConfigError("bad_output", f"--out {out}: exists and is not a Person A/B file") from exc
        for dialog in dialogs:
            self.hashes.add(dialog_hash(dialog.turns))
            self.openers.add(opener_hash(dialog.turns))
        with out.open("ab") as handle:
            if not out.read_bytes().endswith(b"\n"):
                handle.write(b"\n")
            self.size = handle.tell()
        _LOGGER.info("%s: appending to its %d dialogs", out, len(dialogs))

    def save(self) -> None:
        data = {
            "version": 1,
            "done": sorted(self.done),
            "hashes": sorted(self.hashes),
            "openers": sorted(self.openers),
            "counts": self.counts,
            "size": self.size,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


class EndpointError(TadbotError):
    """The endpoint refused, was unreachable, or answered something that is not a chat completion.
    `retryable` ones (429, 5xx, a timeout, a lost connection) are tried again; the rest end the run, since
    every request would fail the same way (a wrong URL, a bad key, an unknown model)."""

    def __init__(self, message: str, retryable: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__("endpoint_failed", message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Client:
    """POST /chat/completions with a rate limit (a minimum interval between requests) and bounded retries."""

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.session = requests.Session()
        if config.api_key_env:
            self.session.headers["Authorization"] = f"Bearer {os.environ[config.api_key_env]}"
        self.interval_s = 60.0 / config.rate_per_min if config.rate_per_min else 0.0
        self.last_start = -float("inf")
        self.answered = False
        """Whether any request has been answered: before that, a refused connection means a wrong URL."""

    def close(self) -> None:
        self.session.close()

    def complete(self, prompt: str, seed: int) -> tuple[str, bool]:
        """The reply's text and whether it was cut at max_tokens."""
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "seed": seed,
        }
        if self.config.model:
            body["model"] = self.config.model
        attempt = 0
        while True:
            try:
                return self._post(body)
            except EndpointError as exc:
                if not exc.retryable or attempt == self.config.retries:
                    raise
                wait = exc.retry_after_s or self.config.backoff_s * 2**attempt
                _LOGGER.info("%s; retrying in %.1f s", exc.message, wait)
                time.sleep(wait)
                attempt += 1

    def _post(self, body: dict[str, Any]) -> tuple[str, bool]:
        time.sleep(max(0.0, self.last_start + self.interval_s - time.monotonic()))
        self.last_start = time.monotonic()
        try:
            answer = self.session.post(self.url, json=body, timeout=self.config.timeout_s)
        except requests.ConnectionError as exc:
            raise EndpointError(
                f"cannot reach {self.url}: {type(exc).__name__}"
                + ("" if self.answered else "; is the server running? (--base-url)"),
                retryable=self.answered,
            ) from exc
        except requests.Timeout as exc:
            raise EndpointError(f"{self.url}: no answer in {self.config.timeout_s:g} s", True) from exc
        self.answered = True
        if answer.status_code != 200:
            status = answer.status_code
            retry_after = answer.headers.get("Retry-After", "")
            hint = " (check the key in --api-key-env)" if status in (401, 403) else ""
            raise EndpointError(
                f"{self.url} answered HTTP {status}: {_detail(answer)}{hint}",
                retryable=status in _RETRY_STATUSES,
                retry_after_s=min(float(retry_after), 60.0)
                if retry_after.replace(".", "", 1).isdigit()
                else None,
            )
        try:
            choice = answer.json()["choices"][0]
            return str(choice["message"]["content"] or ""), choice.get("finish_reason") == "length"
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"{self.url}: the answer is not a chat completion") from exc


def _detail(answer: requests.Response) -> str:
    text = " ".join(answer.text.split())
    return text[:200] or answer.reason or "no details"


def run_generate(config: GenerateConfig) -> dict[str, Any]:
    """Ask for each pending combination, keep the good, new dialogs, and record progress after each one.
    The summary's counts are for the output file as a whole (every run so far); `failed` is this run's
    combinations that got no answer, left pending for the next run. `stopped` says why the run ended early."""
    prompts = Prompts.load()
    config.out.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress.open(config.out)
    planned = list(jobs(prompts, config.count, config.seed))
    pending = [job for job in planned if job.key not in progress.done]
    failed = in_a_row = 0
    stopped: str | None = None
    client = Client(config)
    bar = tqdm(
        total=len(planned),
        initial=len(planned) - len(pending),
        desc="dialogs",
        unit="dialog",
        file=sys.stderr,
        disable=not config.progress_bar,
    )
    try:
        for job in pending:
            try:
                reply, truncated = client.complete(job.prompt, job.seed)
            except EndpointError as exc:
                if not exc.retryable:
                    raise
                failed += 1
                in_a_row += 1
                _LOGGER.warning("%s: %s", job.key, exc.message)
                if in_a_row >= GIVE_UP_AFTER:
                    stopped = f"{in_a_row} requests failed in a row, the last: {exc.message}"
                    break
                continue
            in_a_row = 0
            _keep(config.out, progress, job.key, parse_dialog(reply, truncated))
            bar.update(1)
    finally:
        bar.close()
        client.close()
    counts = progress.counts
    summary: dict[str, Any] = {
        "out": str(config.out),
        "progress": str(progress.path),
        "requested": len(planned),
        **counts,
        "failed": failed,
        "pending": len([job for job in planned if job.key not in progress.done]),
    }
    if stopped:
        summary["stopped"] = stopped
    return summary


def _keep(out: Path, progress: Progress, key: str, turns: tuple[Turn, ...] | None) -> None:
    """Append a new dialog, then record the key (and the file's new size) in one atomic write."""
    if turns is None:
        progress.counts["rejected_unparseable"] += 1
    elif dialog_hash(turns) in progress.hashes or opener_hash(turns) in progress.openers:
        progress.counts["duplicates"] += 1
    else:
        with out.open("ab") as handle:
            handle.write((("\n" if progress.size else "") + format_dialog(turns)).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            progress.size = handle.tell()
        progress.hashes.add(dialog_hash(turns))
        progress.openers.add(opener_hash(turns))
        progress.counts["written"] += 1
    progress.done.add(key)
    progress.save()
