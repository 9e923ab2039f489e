"""The labelled CSV files the evaluations and speech benches read: one way to open them, one error each."""

from __future__ import annotations

import csv
from pathlib import Path

from server.errors import TadbotError


def read_labelled_csv(
    path: Path, columns: tuple[str, ...], needs: str = "", labels: tuple[str, ...] = ()
) -> list[tuple[int, dict[str, str]]]:
    """Each row of `path` with its line number. A file that cannot be read, lacks one of `columns`, has
    no rows or, when `labels` are given, a `label` outside them is one TadbotError naming it; `needs` says
    what the command's --data must hold."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not set(columns) <= set(reader.fieldnames):
                raise TadbotError(
                    "bad_data", f"{path}: needs the columns {','.join(columns)} (found {reader.fieldnames})"
                )
            rows = [(reader.line_num, {k: v or "" for k, v in row.items()}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TadbotError("bad_data", f"{path}: cannot read ({exc}){'; ' + needs if needs else ''}") from exc
    if not rows:
        raise TadbotError("bad_data", f"{path}: no rows")
    if labels:
        for line, row in rows:
            label = row["label"].strip()
            if label not in labels:
                allowed = ", ".join(labels)
                raise TadbotError("bad_data", f"{path} line {line}: label {label!r}; allowed: {allowed}")
    return rows
