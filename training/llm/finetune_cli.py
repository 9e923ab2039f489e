"""`tadbot train sft | merge | fetch-converter | export | eval`: the fine-tune after `prepare`, one step per
command so a long GPU run can stop and go on between them. Each prints a one-line summary on stderr and one
JSON object as the last line of stdout."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.for_training import QUANT_TYPES


def add_parsers(subparsers: Any) -> None:
    sft = subparsers.add_parser(
        "sft",
        help="LoRA fine-tune of the companion's model on prepared chat JSONL (QLoRA on a CUDA GPU)",
        description="Train LoRA adapters on DATA/train.jsonl, scored on DATA/val.jsonl, with the loss on the "
        "assistant's turns only. Writes OUT/adapter, checkpoints, metrics.csv and sft.json.",
    )
    sft.add_argument("--data", type=Path, required=True, help="the folder `tadbot train prepare` wrote")
    sft.add_argument(
        "--out", type=Path, required=True, help="folder for checkpoints, metrics and the adapter"
    )
    sft.add_argument(
        "--config", type=Path, help="a YAML file laid over the shipped training/llm/sft.yaml (same groups)"
    )
    sft.add_argument("--model", help="base model: hub name or local folder (overrides model_name)")
    sft.add_argument(
        "--max-steps", type=int, help="stop after this many optimiser steps (overrides the config)"
    )
    sft.add_argument("--resume", action="store_true", help="go on from the last checkpoint in --out")
    sft.set_defaults(run=_run_sft)

    merge = subparsers.add_parser(
        "merge",
        help="fold a LoRA adapter into its base model and save a Hugging Face folder",
        description="Merge the adapter into the base weights; the folder keeps the tokenizer and chat "
        "template.",
    )
    merge.add_argument("--adapter", type=Path, required=True, help="OUT/adapter from `tadbot train sft`")
    merge.add_argument("--out", type=Path, required=True, help="new folder for the merged model")
    merge.add_argument("--base", help="base model (default: the one the adapter names)")
    merge.set_defaults(run=_run_merge)

    fetch = subparsers.add_parser(
        "fetch-converter",
        help="get llama.cpp's HF→GGUF converter from the llama-cpp-python sdist (once)",
        description="Fetch the installed llama-cpp-python version's sdist with pip (or use --sdist) and keep "
        "llama.cpp's convert_hf_to_gguf.py with its packages, for `tadbot train export`.",
    )
    fetch.add_argument(
        "--sdist", type=Path, help="a llama_cpp_python-*.tar.gz you already have (no download)"
    )
    fetch.add_argument(
        "--dest", type=Path, help="where to keep it (default: $TADBOT_CONVERTER_DIR or the venv)"
    )
    fetch.set_defaults(run=_run_fetch)

    export = subparsers.add_parser(
        "export",
        help="merged model → GGUF → quantised, checked by loading it as the server does",
        description="Convert with llama.cpp's own converter, quantise with llama.cpp's quantiser, then load "
        "the file with the server's model class and stream one reply.",
    )
    export.add_argument("--model", type=Path, required=True, help="the folder `tadbot train merge` wrote")
    export.add_argument("--out", type=Path, required=True, help="the .gguf file to write")
    export.add_argument(
        "--quant", choices=QUANT_TYPES, default="Q4_K_M", help="quantisation (default %(default)s, for a Pi)"
    )
    export.add_argument(
        "--keep-unquantised",
        action="store_true",
        help="keep the 16-bit GGUF beside it (OUT.unquantised.gguf)",
    )
    export.add_argument("--threads", type=int, default=0, help="quantiser threads; 0: all cores")
    export.set_defaults(run=_run_export)

    evaluation = subparsers.add_parser(
        "eval",
        help="perplexity base vs fine-tuned, talk-down answers side by side, crisis prompts through the "
        "safety layer",
        description="Writes OUT/eval.md and OUT/eval.json.",
    )
    evaluation.add_argument("--base", required=True, help="base model: hub name or local folder")
    evaluation.add_argument("--model", required=True, help="the merged fine-tune's folder")
    evaluation.add_argument("--data", type=Path, required=True, help="held-out chat JSONL (DATA/test.jsonl)")
    evaluation.add_argument("--out", type=Path, required=True, help="folder for the report")
    evaluation.add_argument(
        "--gguf", type=Path, help="the exported GGUF, for the crisis prompts (else skipped)"
    )
    evaluation.add_argument(
        "--crisis-csv", type=Path, help="label,text CSV whose crisis rows replace the shipped crisis prompts"
    )
    evaluation.add_argument(
        "--max-new-tokens", type=int, default=80, help="longest answer per prompt (default %(default)s)"
    )
    evaluation.set_defaults(run=_run_eval)


def _run_sft(args: argparse.Namespace) -> int:
    from training.llm.sft import SftRun, run_sft
    from training.llm.sft_config import load_config

    overrides: dict[str, Any] = {}
    if args.model:
        overrides["model_name"] = args.model
    if args.max_steps is not None:
        overrides["training_arguments.max_steps"] = args.max_steps
    config = load_config(args.config, overrides)
    summary = run_sft(SftRun(config, args.data, args.out, args.resume, args.command_line))
    return _done(
        summary,
        lambda s: (
            f"train sft: {s['steps']} steps ({s['mode']}, {s['device']}), loss {_loss(s['first_loss'])} → "
            f"{_loss(s['last_loss'])}; adapter in {s['adapter']}"
        ),
    )


def _loss(value: float | None) -> str:
    return "not logged" if value is None else f"{value:.4f}"


def _run_merge(args: argparse.Namespace) -> int:
    from training.llm.merge import MergeRun, run_merge

    summary = run_merge(MergeRun(args.adapter, args.out, args.base, args.command_line))
    return _done(summary, lambda s: f"train merge: {s['base_model']} + {s['adapter']} → {s['out']}")


def _run_fetch(args: argparse.Namespace) -> int:
    from training.llm.converter import fetch_converter

    summary = fetch_converter(args.sdist, args.dest)
    return _done(
        summary, lambda s: f"train fetch-converter: {s['converter']} (from {s['sdist']}, {s['fetched']})"
    )


def _run_export(args: argparse.Namespace) -> int:
    from training.llm.export import ExportRun, run_export

    summary = run_export(
        ExportRun(args.model, args.out, args.quant, args.keep_unquantised, args.threads, args.command_line)
    )
    return _done(
        summary,
        lambda s: f"train export: {s['gguf']} ({s['quant']}, {s['bytes'] / 1e6:.1f} MB), loads in the server",
    )


def _run_eval(args: argparse.Namespace) -> int:
    from training.llm.evaluate import EvalRun, run_eval

    report = run_eval(
        EvalRun(
            args.base,
            args.model,
            args.data,
            args.out,
            args.gguf,
            args.crisis_csv,
            args.max_new_tokens,
            command_line=args.command_line,
        )
    )

    crisis = report["crisis"]
    summary = {
        "report": str(args.out / "eval.md"),
        "report_json": str(args.out / "eval.json"),
        "perplexity": {role: figures["perplexity"] for role, figures in report["perplexity"].items()},
        "crisis": {k: crisis[k] for k in ("prompts", "intercepted", "all_intercepted")} if crisis else None,
        "seconds": report["seconds"],
    }

    def line(s: dict[str, Any]) -> str:
        safety = f"; crisis prompts intercepted {crisis['intercepted']}/{crisis['prompts']}" if crisis else ""
        return (
            f"train eval: perplexity {s['perplexity']['base']} (base) → {s['perplexity']['fine_tuned']} "
            f"(fine-tuned){safety}; report in {s['report']}"
        )

    code = _done(summary, line)
    if crisis is not None and not crisis["all_intercepted"]:
        print("tadbot: error: a crisis prompt reached the model: see the report", file=sys.stderr)
        return 1
    return code


def _done(summary: dict[str, Any], line: Callable[[dict[str, Any]], str]) -> int:
    print(line(summary), file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False))
    return 0
