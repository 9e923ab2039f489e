"""A session log as a file a therapist can keep: JSON, CSV (one row per event) or plain text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else ""


def _emotions(top3: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e['label']} {e['score']:.2f}" for e in top3)


UNSURE = 0.5
"""A spoken word recognised with less probability than this is marked "(?)" in the export."""


def _words(turn: dict[str, Any]) -> str:
    """The turn's words, each one speech recognition was unsure of marked "(?)"."""
    text = str(turn["text"])
    marked, at = [], 0
    for word, probability in (turn.get("confidence") or {}).get("words") or []:
        found = text.find(word, at)
        if found < 0:
            continue
        end = found + len(word)
        marked.append(text[at:end] + ("(?)" if probability < UNSURE else ""))
        at = end
    return "".join(marked) + text[at:]


def _unsure(turn: dict[str, Any]) -> str:
    words = (turn.get("confidence") or {}).get("words") or []
    return " ".join(w for w, p in words if p < UNSURE)


def _heard_as(event: dict[str, Any]) -> str:
    if not event.get("heard_as"):
        return ""
    return f"read as '{event['heard_as']}' (speech hypothesis {event['hypothesis']})"


def _timeline(log: dict[str, Any]) -> list[tuple[float, str, dict[str, Any]]]:
    rows = [(t["created_at"], "turn", t) for t in log["turns"]]
    rows += [(e["t"], "emotion", e) for e in log["emotion_samples"]]
    rows += [(s["t"], "safety", s) for s in log["safety_events"]]
    return sorted(rows, key=lambda r: r[0])


def to_json(log: dict[str, Any]) -> tuple[str, str]:
    return json.dumps(log, indent=2, ensure_ascii=False), "application/json"


def to_csv(log: dict[str, Any]) -> tuple[str, str]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "time",
            "kind",
            "role_or_source",
            "text",
            "unsure_words",
            "faces",
            "emotions",
            "safety_level",
            "safety_trigger",
            "heard_as",
        ]
    )
    for t, kind, row in _timeline(log):
        if kind == "turn":
            cut = " [cut off]" if row["timings"].get("interrupted") else ""
            text = row["text"] + cut
            writer.writerow([_when(t), kind, row["role"], text, _unsure(row), "", "", "", "", ""])
        elif kind == "emotion":
            emotions = _emotions(row["top3"])
            writer.writerow([_when(t), kind, row["source"], "", "", row["faces"], emotions, "", "", ""])
        else:
            safety = [row["level"], row["trigger"], row["heard_as"]]
            writer.writerow([_when(t), kind, "", row["message"], "", "", "", *safety])
    return out.getvalue(), "text/csv"


def to_text(log: dict[str, Any]) -> tuple[str, str]:
    lines = [
        f"TADBot session {log['session_id']}",
        f"client: {log['client']}",
        f"started: {_when(log['started_at'])}   ended: {_when(log['ended_at']) or 'still open'}",
        "",
    ]
    if any(_unsure(turn) for turn in log["turns"]):
        lines += [f"(?) follows a word speech recognition was unsure of (probability under {UNSURE}).", ""]
    for t, kind, row in _timeline(log):
        stamp = _when(t)[11:19]
        if kind == "turn":
            who = "client" if row["role"] == "user" else "companion"
            cut = " [cut off]" if row["timings"].get("interrupted") else ""
            lines.append(f"[{stamp}] {who}: {_words(row)}{cut}")
        elif kind == "emotion":
            face = _emotions(row["top3"]) if row["faces"] else "no face seen"
            lines.append(f"[{stamp}]   face ({row['source']}): {face}")
        else:
            heard = f"; {_heard_as(row)}" if row.get("heard_as") else ""
            lines.append(
                f"[{stamp}] !! SAFETY {row['level'].upper()}: {row['message']} ({row['trigger']}{heard})"
            )
    if log["summary"]:
        lines += ["", f"summary: {log['summary']}"]
    return "\n".join(lines) + "\n", "text/plain"


EXPORTERS: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "json": to_json,
    "csv": to_csv,
    "txt": to_text,
}
