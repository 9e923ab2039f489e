"""The data card written beside the JSONL: where the data came from, under which licence, what was left
out and why, how the splits were made, and how long the examples are. data_card.json holds the figures;
DATA_CARD.md says the same for people.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.llm.clean import rules_version
from training.llm.readers import DataError, Source
from training.llm.split import SPLITS

if TYPE_CHECKING:
    from training.llm.prepare import Example, PrepareConfig

Messages = list[dict[str, str]]
_WITH_TOKENIZER = "the whole example in Gemma's turn markup"
_WITHOUT_TOKENIZER = "the words of all its turns, persona included (no tokenizer given: words, not tokens)"


def gemma_text(messages: Messages) -> str:
    """A chat in Gemma's turn markup, as the fine-tune will see it."""
    turns = (
        f"<start_of_turn>{'model' if m['role'] == 'assistant' else 'user'}\n{m['content']}<end_of_turn>\n"
        for m in messages
    )
    return "<bos>" + "".join(turns)


class LengthCounter:
    """Tokens of the Gemma-rendered example with a tokenizer.json, else words of its turns' text."""

    def __init__(self, tokenizer: Path | None) -> None:
        self.tokenizer = tokenizer
        self.unit = "words" if tokenizer is None else "tokens"
        self._count: Callable[[Messages], int] = _words
        if tokenizer is not None:
            from tokenizers import Tokenizer

            try:
                loaded = Tokenizer.from_file(str(tokenizer))
            except Exception as exc:
                raise DataError(f"--tokenizer {tokenizer}: not a tokenizer.json ({exc})") from exc
            self._count = lambda messages: len(loaded.encode(gemma_text(messages), add_special_tokens=False))

    def __call__(self, messages: Messages) -> int:
        return self._count(messages)


def _words(messages: Messages) -> int:
    return sum(len(m["content"].split()) for m in messages)


def length_counter(tokenizer: Path | None) -> LengthCounter:
    return LengthCounter(tokenizer)


def length_stats(lengths: Sequence[int]) -> dict[str, float | int]:
    """min, median, 95th percentile (nearest rank) and max; zeros when there is nothing to measure."""
    if not lengths:
        return {"n": 0, "min": 0, "median": 0, "p95": 0, "max": 0}
    ordered = sorted(lengths)
    return {
        "n": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
    }


def write(
    *,
    config: PrepareConfig,
    sources: Sequence[Source],
    examples: Sequence[Example],
    rendered: Mapping[str, Sequence[Messages]],
    counter: LengthCounter,
    dropped: Mapping[str, Counter[str]],
    split_stats: Mapping[str, int],
    files: Mapping[str, Path],
) -> dict[str, Any]:
    """Write data_card.json and DATA_CARD.md; return the run's summary (paths and counts)."""
    lengths = {split: [counter(m) for m in rendered[split]] for split in SPLITS}
    topics: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for example in examples:
        topics[example.topic][example.split] += 1
    splits = {
        split: {
            "examples": sum(1 for e in examples if e.split == split),
            "questions": len({e.question for e in examples if e.split == split}),
            "file": str(files[split]),
        }
        for split in SPLITS
    }
    data = {
        "created_by": "tadbot train prepare",
        "command": config.command_line,
        "seed": config.seed,
        "sources": [
            {
                "source": s.name,
                "kind": s.kind,
                "license": s.license,
                "rows_read": len(s.rows) if s.kind == "counsel-chat" else len(s.dialogs),
            }
            for s in sources
        ],
        "options": {
            "answers": config.answers,
            "max_answer_words": config.max_answer_words,
            "max_sentences": config.max_sentences,
            "cleaning_rules_version": rules_version(),
            "val_fraction": config.val_fraction,
            "test_fraction": config.test_fraction,
        },
        "persona": {
            "folded_into_first_user_turn": config.system,
            "file": str(config.system_file) if config.system_file else "server/prompts/system.txt",
            "name": config.persona_name,
        },
        "splits": splits,
        "topics": {topic: topics[topic] for topic in sorted(topics)},
        "dropped": {
            kind: {r: n for r, n in sorted(reasons.items()) if n} for kind, reasons in dropped.items()
        },
        "duplicates": dict(split_stats),
        "length": {
            "unit": counter.unit,
            "tokenizer": str(counter.tokenizer) if counter.tokenizer else None,
            "measured_on": _WITH_TOKENIZER if counter.tokenizer else _WITHOUT_TOKENIZER,
            **{split: length_stats(lengths[split]) for split in SPLITS},
            "all": length_stats([n for split in SPLITS for n in lengths[split]]),
        },
    }
    json_path, md_path = config.out / "data_card.json", config.out / "DATA_CARD.md"
    json_path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(data), encoding="utf-8")
    return {
        **{split: str(files[split]) for split in SPLITS},
        "data_card": str(md_path),
        "data_card_json": str(json_path),
        "examples": {split: splits[split]["examples"] for split in SPLITS},
        "questions": {split: splits[split]["questions"] for split in SPLITS},
    }


def markdown(data: Mapping[str, Any]) -> str:
    """DATA_CARD.md: the figures of data_card.json, in sentences and tables."""
    lines = ["# Data card: conversation data for the companion's fine-tune", ""]
    lines += [f"Made by `{data['command'] or 'tadbot train prepare'}` with seed {data['seed']}.", ""]
    lines += [
        "## Sources and licences",
        "",
        "| source | kind | rows or dialogs read | licence |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['source']} | {s['kind']} | {s['rows_read']} | {s['license']} |" for s in data["sources"]]
    if any("non-commercial" in s["license"].lower() for s in data["sources"]):
        lines += [
            "",
            "**Non-commercial data is included: a model fine-tuned on it carries that restriction.**",
        ]
    persona = data["persona"]
    lines += ["", "## Format", ""]
    lines += [
        'One `{"messages": [...]}` per line, user and assistant turns alternating, starting with the user. '
        + (
            f"The persona ({persona['file']}, {{name}} = {persona['name']}) is folded into the first user "
            "turn, as the server folds it: Gemma has no system role."
            if persona["folded_into_first_user_turn"]
            else "No persona text (--no-system)."
        ),
        "",
    ]
    lines += [
        "## Splits",
        "",
        "Split by question: no question, nor a near-duplicate of it, is in two splits.",
        "",
    ]
    lines += ["| split | examples | distinct questions | file |", "|---|---|---|---|"]
    lines += [
        f"| {split} | {s['examples']} | {s['questions']} | {Path(s['file']).name} |"
        for split, s in data["splits"].items()
    ]
    dup = data["duplicates"]
    lines += [
        "",
        f"{dup['questions']} distinct questions in {dup['split_groups']} split groups.",
        "",
        f"- {dup['duplicate_questions_merged']} questions appeared more than once (under several ids, or "
        "reworded with a word-set Jaccard similarity of 0.9 or more) and were merged into one.",
        f"- {dup['groups_joined_by_shared_ids']} groups hold several questions that the source gave one id.",
        f"- {dup['groups_straddling_given_splits']} groups straddled the source's splits and went to their "
        f"majority split (a tie to train): {dup['questions_moved']} questions "
        f"({dup['rows_moved']} rows) moved.",
        f"- Drawn with the seed (only for a split the sources do not give): {dup['groups_carved_for_val']} "
        f"groups for val, {dup['groups_carved_for_test']} for test.",
        "",
    ]
    lines += [
        "## Topics (examples)",
        "",
        "| topic | " + " | ".join(SPLITS) + " |",
        "|---|" + "---|" * len(SPLITS),
    ]
    lines += [
        f"| {topic} | " + " | ".join(str(counts[s]) for s in SPLITS) + " |"
        for topic, counts in data["topics"].items()
    ]
    lines += ["", "## Left out", ""]
    for kind, reasons in data["dropped"].items():
        lines += [f"- {kind}: {n} ({reason})" for reason, n in reasons.items()]
    if not any(data["dropped"].values()):
        lines.append("- nothing")
    length = data["length"]
    lines += ["", f"## Length, in {length['unit']}", "", f"Measured on {length['measured_on']}."]
    if length["tokenizer"]:
        lines.append(f"Tokenizer: {length['tokenizer']}.")
    lines += ["", "| split | n | min | median | p95 | max |", "|---|---|---|---|---|---|"]
    for split in (*SPLITS, "all"):
        s = length[split]
        lines.append(f"| {split} | {s['n']} | {s['min']} | {s['median']} | {s['p95']} | {s['max']} |")
    return "\n".join(lines) + "\n"
