"""Conversation sources, each read into counsel-chat rows or dialogs of alternating user/assistant turns.

- counsel-chat: a local CSV, or `nbertagnolli/counsel-chat` from the Hugging Face hub;
- chat JSONL in OpenAI's shape, one `{"messages": [{"role", "content"}, ...]}` per line;
- generated dialogs: a .txt file of `Person A:` (the user) / `Person B:` (the companion) lines, one dialog
  per blank-line-separated block;
- `empathetic_dialogues` and `daily_dialog` from the hub.
The hub needs the `datasets` library, imported only when a hub name is given. Row mapping is kept apart from
loading, so it can be checked on hand-made rows.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.for_training import ConfigError, TadbotError

COUNSEL_COLUMNS = ("questionID", "questionTitle", "questionText", "answerText", "upvotes")
"""The columns prepare needs; topic, therapistInfo and split are used when present."""
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
COUNSEL_CHAT_LICENSE = "MIT (github.com/nbertagnolli/counsel-chat)"
NO_TOPIC = "(none)"


@dataclass(frozen=True)
class HubSet:
    repo: str
    kind: str
    license: str


HUB = {
    "nbertagnolli/counsel-chat": HubSet(
        "nbertagnolli/counsel-chat",
        "counsel-chat",
        COUNSEL_CHAT_LICENSE + "; the hub's dataset card names none, check it",
    ),
    "empathetic_dialogues": HubSet(
        "facebook/empathetic_dialogues", "empathetic_dialogues", "CC BY-NC 4.0 (non-commercial)"
    ),
    "daily_dialog": HubSet(
        "li2017dailydialog/daily_dialog", "daily_dialog", "CC BY-NC-SA 4.0 (non-commercial, share-alike)"
    ),
}
"""Licences as the datasets' hub cards state them (checked for this release)."""
HUB |= {hub.repo: hub for hub in list(HUB.values())}


class DataError(ConfigError):
    """A source cannot be prepared: bad input, found before anything is written, so a ConfigError."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_data", message)


@dataclass(frozen=True)
class CounselRow:
    """One therapist's answer to one question, as the source has it."""

    where: str
    """File and line (or hub row) for messages."""
    question_id: str
    title: str
    text: str
    answer: str
    upvotes: int
    topic: str
    split: str | None
    signer: str
    """therapistInfo: the author's name and title, for finding their signature."""


Turn = tuple[str, str]
"""(role, content), role "user" or "assistant"."""


@dataclass(frozen=True)
class Dialog:
    """A conversation that starts with the user and ends with the companion, turns alternating."""

    turns: tuple[Turn, ...]
    topic: str = NO_TOPIC
    split: str | None = None


@dataclass
class Source:
    """One --source as read."""

    name: str
    kind: str
    license: str
    rows: list[CounselRow] = field(default_factory=list)
    dialogs: list[Dialog] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    """Dialogs (or turns) left out while reading, by reason."""


def read_source(spec: str) -> Source:
    """A local file by its suffix (.csv, .jsonl, .txt), else a hub name."""
    path = Path(spec).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        license_text = _license_beside(path)
        if suffix == ".csv":
            return Source(
                spec, "counsel-chat", license_text or COUNSEL_CHAT_LICENSE, rows=read_counsel_csv(path)
            )
        if suffix == ".jsonl":
            return _dialog_source(spec, "chat-jsonl", license_text, read_chat_jsonl(path))
        if suffix == ".txt":
            return _dialog_source(spec, "person-dialogs", license_text, read_person_dialogs(path))
        raise DataError(
            f"--source {spec}: expected a .csv (counsel-chat), .jsonl (chat) or .txt (Person A/B)"
        )
    if spec in HUB:
        return _read_hub(spec, HUB[spec])
    if path.suffix.lower() in (".csv", ".jsonl", ".txt"):
        raise DataError(f"--source {spec}: no such file")
    raise DataError(f"--source {spec}: not a file, nor one of the hub sets {', '.join(sorted(HUB))}")


def _license_beside(path: Path) -> str:
    """The first line of a LICENSE file next to the source, where there is one."""
    for candidate in sorted(path.parent.glob("LICEN[CS]E*")):
        if candidate.is_file():
            lines = candidate.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            if lines:
                return f"{lines[0].strip()} ({candidate.name} beside the source)"
    return ""


def _dialog_source(
    spec: str, kind: str, license_text: str, read: tuple[list[Dialog], Counter[str]]
) -> Source:
    dialogs, dropped = read
    return Source(
        spec, kind, license_text or "not stated: check where the file came from", [], dialogs, dropped
    )


def read_counsel_csv(path: Path) -> list[CounselRow]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            _check_columns(path, reader.fieldnames or ())
            rows = []
            for record in reader:
                rows.append(counsel_row(record, f"{path} line {reader.line_num}"))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 CSV ({exc})") from exc


def _check_columns(where: object, columns: Iterable[str]) -> None:
    missing = [c for c in COUNSEL_COLUMNS if c not in set(columns)]
    if missing:
        raise DataError(
            f"{where}: no column {', '.join(repr(c) for c in missing)}; counsel-chat needs "
            f"{', '.join(COUNSEL_COLUMNS)}"
        )


def counsel_row(record: Mapping[str, Any], where: str) -> CounselRow:
    """One CSV or hub record; a bad upvotes or split value names the row and column."""

    def text(key: str) -> str:
        value = record.get(key)
        return "" if value is None else str(value)

    upvotes = text("upvotes").strip() or "0"
    try:
        votes = int(float(upvotes))
    except (ValueError, OverflowError):
        raise DataError(f"{where}: column 'upvotes' is {upvotes!r}, not a number") from None
    return CounselRow(
        where=where,
        question_id=text("questionID").strip(),
        title=text("questionTitle"),
        text=text("questionText"),
        answer=text("answerText"),
        upvotes=votes,
        topic=text("topic").strip() or NO_TOPIC,
        split=split_name(text("split"), where),
        signer=text("therapistInfo"),
    )


def split_name(value: str, where: str) -> str | None:
    value = value.strip().lower()
    if not value:
        return None
    if value not in SPLIT_NAMES:
        raise DataError(f"{where}: column 'split' is {value!r}; expected train, val or test")
    return SPLIT_NAMES[value]


def normalise_turns(turns: Iterable[Turn]) -> tuple[Turn, ...]:
    """Into the shape a Gemma chat takes: consecutive turns of one role merged, leading companion turns
    and a trailing user turn (nothing to learn from) dropped. Empty when no companion turn is left."""
    merged: list[Turn] = []
    for role, content in turns:
        content = content.strip()
        if not content:
            continue
        if merged and merged[-1][0] == role:
            merged[-1] = (role, f"{merged[-1][1]}\n\n{content}")
        else:
            merged.append((role, content))
    while merged and merged[0][0] != "user":
        merged.pop(0)
    if merged and merged[-1][0] == "user":
        merged.pop()
    return tuple(merged)


def read_chat_jsonl(path: Path) -> tuple[list[Dialog], Counter[str]]:
    """OpenAI-style chat lines. System messages are left out: prepare puts the companion's persona there."""
    dialogs: list[Dialog] = []
    dropped: Counter[str] = Counter()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 ({exc})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg})") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list):
            raise DataError(f'{where}: expected {{"messages": [{{"role", "content"}}, ...]}}')
        turns: list[Turn] = []
        for message in messages:
            role = message.get("role") if isinstance(message, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise DataError(
                    f"{where}: each message needs a role (system, user, assistant) and text content"
                )
            if role == "system":
                dropped["system messages replaced by the persona"] += 1
            else:
                turns.append((role, content))
        _keep(dialogs, dropped, normalise_turns(turns))
    return dialogs, dropped


def _keep(dialogs: list[Dialog], dropped: Counter[str], turns: tuple[Turn, ...], **extra: Any) -> None:
    if turns:
        dialogs.append(Dialog(turns, **extra))
    else:
        dropped["dialogs without a companion turn after a user turn"] += 1


PERSON_LINE = re.compile(r"^\s*Person\s+([AB])\s*:\s*(.*)$", re.IGNORECASE)


def read_person_dialogs(path: Path) -> tuple[list[Dialog], Counter[str]]:
    """`Person A:` (user) / `Person B:` (companion) lines; a line without a label continues the turn
    before it; a blank line ends the dialog."""
    dialogs: list[Dialog] = []
    dropped: Counter[str] = Counter()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 ({exc})") from exc
    turns: list[Turn] = []
    for number, line in enumerate([*lines, ""], 1):
        if not line.strip():
            if turns:
                _keep(dialogs, dropped, normalise_turns(turns))
            turns = []
            continue
        match = PERSON_LINE.match(line)
        if match:
            turns.append(("user" if match[1].upper() == "A" else "assistant", match[2]))
        elif turns:
            turns[-1] = (turns[-1][0], f"{turns[-1][1]} {line.strip()}")
        else:
            raise DataError(f"{path} line {number}: a dialog must start with 'Person A:' or 'Person B:'")
    return dialogs, dropped


def empathetic_dialogues(
    rows: Iterable[Mapping[str, Any]], split: str | None
) -> tuple[list[Dialog], Counter[str]]:
    """Hub rows are utterances (conv_id, utterance_idx, speaker_idx, utterance, context). The speaker
    who opens, telling of a situation, is the user; the listener is the companion. The topic is the
    emotion the situation was written for; "_comma_" is the set's escaped comma."""
    conversations: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        conversations[str(row["conv_id"])].append(row)
    dialogs: list[Dialog] = []
    dropped: Counter[str] = Counter()
    for conv_id in sorted(conversations):
        utterances = sorted(conversations[conv_id], key=lambda r: int(r["utterance_idx"]))
        opener = utterances[0]["speaker_idx"]
        turns = [
            (
                "user" if u["speaker_idx"] == opener else "assistant",
                str(u["utterance"]).replace("_comma_", ","),
            )
            for u in utterances
        ]
        topic = str(utterances[0].get("context") or NO_TOPIC)
        _keep(dialogs, dropped, normalise_turns(turns), topic=topic, split=split)
    return dialogs, dropped


_SPACE_BEFORE = re.compile(r"\s+([,.!?;:%])")
_SPACED_APOSTROPHE = re.compile(r"\s*’\s*")


def daily_dialog(rows: Iterable[Mapping[str, Any]], split: str | None) -> tuple[list[Dialog], Counter[str]]:
    """Hub rows hold a whole dialog (`dialog`: its utterances in order); speakers alternate, the first is
    the user. The set's tokenised spacing ("it ’ s fine .") is undone."""
    dialogs: list[Dialog] = []
    dropped: Counter[str] = Counter()
    for row in rows:
        utterances = [_SPACED_APOSTROPHE.sub("’", _SPACE_BEFORE.sub(r"\1", str(u))) for u in row["dialog"]]
        turns = [("user" if i % 2 == 0 else "assistant", u) for i, u in enumerate(utterances)]
        _keep(dialogs, dropped, normalise_turns(turns), split=split)
    return dialogs, dropped


def _load_hub(repo: str) -> Any:
    """The hub set through `datasets`; its absence or a failed download is one line."""
    try:
        import datasets
    except ImportError:
        raise TadbotError(
            "missing_dependencies",
            f"reading {repo} from the hub needs the datasets library: pip install datasets",
        ) from None
    try:
        return datasets.load_dataset(repo)
    except Exception as exc:
        raise TadbotError("hub_failed", f"cannot load {repo} from the hub: {exc}".splitlines()[0]) from exc


def _read_hub(spec: str, hub: HubSet) -> Source:
    loaded = _load_hub(hub.repo)
    source = Source(spec, hub.kind, hub.license)
    for split_key in sorted(loaded):
        rows = loaded[split_key]
        if hub.kind == "counsel-chat":
            _check_columns(f"{hub.repo} ({split_key})", rows.column_names)
            # The hub's one split is "train" for the whole set, not a split made by question.
            source.rows += [
                counsel_row({**row, "split": ""}, f"{hub.repo} {split_key} row {n}")
                for n, row in enumerate(rows, 1)
            ]
            continue
        split = split_name(split_key, f"{hub.repo} split {split_key!r}")
        mapper = empathetic_dialogues if hub.kind == "empathetic_dialogues" else daily_dialog
        dialogs, dropped = mapper(rows, split)
        source.dialogs += dialogs
        source.dropped += dropped
    return source
