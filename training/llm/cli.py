"""`tadbot train prepare`: flags and the run. Progress and the split counts go to stderr; the last line
of stdout is one JSON object (paths and counts) for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.llm.prepare import DEFAULT_PERSONA_NAME, PrepareConfig, run_prepare

_DEFAULTS = PrepareConfig(sources=("-",), out=Path())


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `prepare` to a `train` command's subparsers (argparse's private action type, hence Any)."""
    d = _DEFAULTS
    prepare: argparse.ArgumentParser = subparsers.add_parser(
        "prepare",
        help="clean and split conversation data (counsel-chat, chat JSONL, dialogs) into chat JSONL",
        description="Clean conversation data and split it by question into train/val/test chat JSONL for "
        "the companion's fine-tune, with a data card. Prints one JSON object on the last line of stdout.",
    )
    prepare.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="PATH|HUB",
        help="counsel-chat .csv, chat .jsonl ({'messages': [...]}), Person A/B dialogs .txt, or a hub set: "
        "nbertagnolli/counsel-chat, empathetic_dialogues, daily_dialog (needs `datasets`); repeatable",
    )
    prepare.add_argument(
        "--out", type=Path, required=True, help="folder for the JSONL files and the data card"
    )
    prepare.add_argument(
        "--answers",
        default=d.answers,
        help="counsel-chat answers per question: best (most upvoted; ties: the longer) or K (default best)",
    )
    prepare.add_argument(
        "--max-answer-words",
        type=int,
        default=d.max_answer_words,
        help="drop longer counsel-chat answers, counted after cleaning (default %(default)s)",
    )
    prepare.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of question groups for val when the sources give no val split (default %(default)s)",
    )
    prepare.add_argument(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        help="share of question groups for test when the sources give no test split (default %(default)s)",
    )
    prepare.add_argument(
        "--seed", type=int, default=d.seed, help="for the drawn splits (default %(default)s)"
    )
    prepare.add_argument(
        "--system-file", type=Path, help="persona text (default: the server's server/prompts/system.txt)"
    )
    prepare.add_argument(
        "--no-system",
        dest="system",
        action="store_false",
        help="leave the persona out of the first user turn",
    )
    prepare.add_argument(
        "--persona-name",
        default=DEFAULT_PERSONA_NAME,
        help="the persona's {name}, as [persona] name in the server's config (default %(default)s)",
    )
    prepare.add_argument(
        "--tokenizer",
        type=Path,
        help="a tokenizer.json (e.g. Gemma's) for the card's token lengths (default: words are counted)",
    )
    prepare.set_defaults(run=run, command_line="")
    return prepare


def config_from(args: argparse.Namespace) -> PrepareConfig:
    return PrepareConfig(
        sources=tuple(args.source),
        out=args.out,
        answers=args.answers,
        max_answer_words=args.max_answer_words,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        system_file=args.system_file,
        system=args.system,
        persona_name=args.persona_name,
        tokenizer=args.tokenizer,
        command_line=args.command_line,
    )


def run(args: argparse.Namespace) -> int:
    """Prepare, then the counts on stderr and the summary as the last line of stdout."""
    summary = run_prepare(config_from(args))
    counts = ", ".join(
        f"{split} {summary['examples'][split]} examples / {summary['questions'][split]} questions"
        for split in ("train", "val", "test")
    )
    print(f"train prepare: {counts}; data card {summary['data_card']}", file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False))
    return 0
