"""`tadbot eval safety`: the crisis check against a labelled CSV.

The goal is recall 1.00 on crisis with at most 3% false alarms, for the rules alone and for the whole check
(rules, then the nearest labelled examples). Concern counts as safe here: a concern turn is still answered
by the model, with a note to take care, and raises no alarm. An example identical to a row being scored is
left out of that row's neighbours, so scoring the examples themselves is not a lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.eval.labelled import read_labelled_csv
from server.safety.crisis import Assessment, Level

LABELS = ("crisis", "concern", "safe")


@dataclass(frozen=True)
class Row:
    line: int
    label: str
    text: str


def read_rows(path: Path) -> list[Row]:
    """The CSV's rows; a missing file, a missing column or an unknown label is one clear error."""
    return [
        Row(line, row["label"].strip(), row["text"])
        for line, row in read_labelled_csv(path, ("label", "text"), labels=LABELS)
    ]


def evaluate(
    rows: list[Row], assess: Callable[[str], Assessment], rules: Callable[[str], Assessment] | None = None
) -> dict[str, Any]:
    """Figures for `assess`, the whole check; with `rules`, the same for the rules alone beside them."""
    report = _score(rows, assess)
    if rules is not None:
        alone = _score(rows, rules)
        report["rules_only"] = {k: alone[k] for k in ("recall", "precision", "false_alarm_rate")}
    return report


def _score(rows: list[Row], assess: Callable[[str], Assessment]) -> dict[str, Any]:
    crisis = [r for r in rows if r.label == "crisis"]
    others = [r for r in rows if r.label != "crisis"]
    errors: list[dict[str, Any]] = []
    caught = alarms = 0
    for row in rows:
        found = assess(row.text)
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
