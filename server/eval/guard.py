"""`tadbot eval guard`: the output guard against replies labelled harmful or kind.

Each row is a reply as the model might write it, one or more sentences. It is split and cleaned the way the
engine splits a streamed reply, and each sentence is checked with the sentences before it, as the engine
does: a row counts as blocked when any of its sentences is. The goal is every harmful row blocked and no
kind row blocked: a false block costs the person a calm sentence in place of a kind one, a miss may cost
far more. The same figures for each sentence checked alone show what checking the reply so far adds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.conversation.sentences import SentenceSplitter, clean_for_speech
from server.eval.labelled import read_labelled_csv
from server.safety.guard import OutputGuard, Verdict

LABELS = ("harmful", "kind")


@dataclass(frozen=True)
class Row:
    line: int
    label: str
    category: str
    """For a harmful row, the guard category it belongs to; for a kind one, what it is about (optional)."""
    sentence: str


def read_rows(path: Path) -> list[Row]:
    """The CSV's rows (columns sentence,label and optionally category); a bad label is one clear error."""
    return [
        Row(line, row["label"].strip(), row.get("category", "").strip(), row["sentence"])
        for line, row in read_labelled_csv(path, ("sentence", "label"), labels=LABELS)
    ]


def spoken_sentences(reply: str) -> list[str]:
    """`reply` as the engine would speak it: split into sentences, each cleaned for speech."""
    splitter = SentenceSplitter()
    pieces = [*splitter.feed(reply), splitter.flush() or ""]
    return [spoken for piece in pieces if (spoken := clean_for_speech(piece))]


def verdict(guard: OutputGuard, reply: str, *, reply_so_far: bool = True) -> Verdict:
    """The first block among `reply`'s sentences, each checked with those before it when `reply_so_far`."""
    sentences = spoken_sentences(reply)
    for index, sentence in enumerate(sentences):
        found = guard.check(sentence, sentences[:index] if reply_so_far else ())
        if found.blocked:
            return found
    return Verdict(None, "", "")


def evaluate(rows: list[Row], guard: OutputGuard) -> dict[str, Any]:
    """Block rate on harmful rows, false-block rate on kind ones, per category, and each row it got wrong;
    `sentence_only` gives the first two with each sentence checked alone."""
    found = [verdict(guard, row.sentence) for row in rows]
    alone = [verdict(guard, row.sentence, reply_so_far=False) for row in rows]
    harmful = [i for i, row in enumerate(rows) if row.label == "harmful"]
    kind = [i for i, row in enumerate(rows) if row.label == "kind"]
    blocked = [i for i in harmful if found[i].blocked]
    errors = [
        {
            "line": row.line,
            "label": row.label,
            "category": row.category,
            "found": said.category,
            "matched": said.matched,
            "sentence": row.sentence,
        }
        for row, said in zip(rows, found, strict=True)
        if said.blocked != (row.label == "harmful")
    ]
    return {
        "n": len(rows),
        "harmful": len(harmful),
        "kind": len(kind),
        "block_rate": _rate(found, harmful),
        "false_block_rate": _rate(found, kind),
        "sentence_only": {"block_rate": _rate(alone, harmful), "false_block_rate": _rate(alone, kind)},
        "by_category": {
            category: _rate(found, [i for i in harmful if rows[i].category == category])
            for category in sorted({rows[i].category for i in harmful if rows[i].category})
        },
        "blocked_as": dict(sorted(Counter(str(found[i].category) for i in blocked).items())),
        "errors": errors,
    }


def _rate(verdicts: list[Verdict], among: list[int]) -> float | None:
    return round(sum(verdicts[i].blocked for i in among) / len(among), 4) if among else None
