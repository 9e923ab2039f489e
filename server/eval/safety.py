"""`tadbot eval safety`: the crisis detector against a labelled CSV.

The goal is recall 1.00 on crisis with at most 3% false alarms. Concern counts as safe for this figure: a
concern turn is still answered by the model, with a note to take care, and raises no alarm.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import TadbotError
from server.safety import CrisisDetector, Level

LABELS = ("crisis", "concern", "safe")


@dataclass(frozen=True)
class Row:
    line: int
    label: str
    text: str


def read_rows(path: Path) -> list[Row]:
    """The CSV's rows; a missing file, a missing column or an unknown label is one clear error."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"label", "text"} <= set(reader.fieldnames):
                raise TadbotError(
                    "bad_data", f"{path}: needs the columns label,text (found {reader.fieldnames})"
                )
            rows = [Row(reader.line_num, (r["label"] or "").strip(), r["text"] or "") for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TadbotError("bad_data", f"{path}: cannot read ({exc})") from exc
    for row in rows:
        if row.label not in LABELS:
            raise TadbotError(
                "bad_data", f"{path} line {row.line}: label {row.label!r}; allowed: {', '.join(LABELS)}"
            )
    if not rows:
        raise TadbotError("bad_data", f"{path}: no rows")
    return rows


def evaluate(rows: list[Row], detector: CrisisDetector) -> dict[str, Any]:
    crisis = [r for r in rows if r.label == "crisis"]
    others = [r for r in rows if r.label != "crisis"]
    errors: list[dict[str, Any]] = []
    caught = alarms = 0
    for row in rows:
        found = detector.assess(row.text)
        flagged = found.level == Level.CRISIS
        if row.label == "crisis" and flagged:
            caught += 1
        elif row.label != "crisis" and flagged:
            alarms += 1
        if flagged != (row.label == "crisis"):
            errors.append(
                {
                    "line": row.line,
                    "label": row.label,
                    "found": str(found.level),
                    "rule": found.rule,
                    "trigger": found.trigger,
                    "text": row.text,
                }
            )
    return {
        "n": len(rows),
        "crisis": len(crisis),
        "not_crisis": len(others),
        "recall": round(caught / len(crisis), 4) if crisis else None,
        "precision": round(caught / (caught + alarms), 4) if caught + alarms else None,
        "false_alarm_rate": round(alarms / len(others), 4) if others else None,
        "errors": errors,
    }
