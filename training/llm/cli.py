"""`tadbot train prepare` and `tadbot train generate`: flags and the runs. Progress and the counts go to
stderr; the last line of stdout is one JSON object (paths and counts) for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.llm.generate import GenerateConfig, run_generate
from training.llm.prepare import DEFAULT_PERSONA_NAME, PrepareConfig, run_prepare

_DEFAULTS = PrepareConfig(sources=("-",), out=Path())
_GENERATE = GenerateConfig(out=Path())


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `prepare` and `generate` to a `train` command's subparsers (argparse's private action type,
    hence Any)."""
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
        "--max-sentences",
        type=int,
        default=d.max_sentences,
        help="cut each counsel-chat answer to its first N sentences, nearer a spoken reply (default: whole)",
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
    add_generate_parser(subparsers)
    return prepare


def config_from(args: argparse.Namespace) -> PrepareConfig:
    return PrepareConfig(
        sources=tuple(args.source),
        out=args.out,
        answers=args.answers,
        max_answer_words=args.max_answer_words,
        max_sentences=args.max_sentences,
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


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    d = _GENERATE
    generate: argparse.ArgumentParser = subparsers.add_parser(
        "generate",
        help="ask an OpenAI-compatible endpoint for synthetic talk-down dialogs (Person A/B .txt)",
        description="Ask any OpenAI-compatible endpoint for synthetic talk-down dialogs, one per scenario x "
        "technique x length, and append the well-formed, new ones to a Person A/B .txt file that "
        "`prepare --source` reads. A rerun resumes from <out>.progress.json. Prints one JSON object on the "
        "last line of stdout.",
    )
    generate.add_argument("--out", type=Path, required=True, help="the dialogs .txt file (appended to)")
    generate.add_argument(
        "--base-url", default=d.base_url, help="the endpoint, up to /v1 (default %(default)s: llama.cpp)"
    )
    generate.add_argument("--model", help="the model name to send (hosted APIs need one)")
    generate.add_argument(
        "--api-key-env", metavar="VAR", help="environment variable holding the API key (default: no key)"
    )
    generate.add_argument(
        "--count", type=int, help="combinations to ask for (default: each of the prompt file's once)"
    )
    generate.add_argument("--seed", type=int, default=d.seed, help="order and sampling (default %(default)s)")
    generate.add_argument(
        "--rate-per-min",
        type=float,
        default=d.rate_per_min,
        help="requests per minute at most, retries included; 0 for no limit (default %(default)s)",
    )
    generate.add_argument(
        "--max-tokens", type=int, default=d.max_tokens, help="per reply (default %(default)s)"
    )
    generate.add_argument(
        "--temperature", type=float, default=d.temperature, help="sampling (default %(default)s)"
    )
    generate.add_argument(
        "--timeout", type=float, default=d.timeout_s, help="seconds per request (default %(default)s)"
    )
    generate.add_argument(
        "--retries",
        type=int,
        default=d.retries,
        help="tries again on 429, 5xx or a lost connection, with doubling back-off (default %(default)s)",
    )
    generate.add_argument(
        "--no-progress", dest="progress_bar", action="store_false", help="no progress bar on stderr"
    )
    generate.set_defaults(run=run_generate_command, command_line="")
    return generate


def run_generate_command(args: argparse.Namespace) -> int:
    """Generate, then a summary line on stderr and the counts as the last line of stdout; exit 1 when the
    run stopped early (what is done is kept: rerun to resume)."""
    summary = run_generate(
        GenerateConfig(
            out=args.out,
            base_url=args.base_url,
            model=args.model,
            api_key_env=args.api_key_env,
            count=args.count,
            seed=args.seed,
            rate_per_min=args.rate_per_min,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            timeout_s=args.timeout,
            retries=args.retries,
            progress_bar=args.progress_bar,
        )
    )
    print(
        f"train generate: {summary['written']} dialogs in {summary['out']} of {summary['requested']} "
        f"requested ({summary['rejected_unparseable']} unparseable, {summary['duplicates']} duplicates, "
        f"{summary['failed']} failed this run, {summary['pending']} pending)",
        file=sys.stderr,
    )
    print(json.dumps(summary, ensure_ascii=False))
    if "stopped" in summary:
        print(f"tadbot: error: stopped: {summary['stopped']}; rerun to resume", file=sys.stderr)
        return 1
    return 0
