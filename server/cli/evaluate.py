"""`tadbot eval`: quality on labelled data (safety, guard, face reading, speech), one JSON report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from server.cli.extras import require
from server.cli.models import fer_model
from server.cli.settings import settings_for


def cmd_eval(args: argparse.Namespace) -> int:
    """The figures on stderr for a person, then one JSON object on the last line of stdout."""
    require("server")
    evaluate = {"fer": _eval_fer, "guard": _eval_guard, "safety": _eval_safety, "stt": _eval_stt}[args.target]
    report = evaluate(args)
    print(json.dumps(report, ensure_ascii=False))
    return 0


def _eval_fer(args: argparse.Namespace) -> dict[str, object]:
    from server.conversation.components import fer_options
    from server.eval.fer import evaluate, read_photos
    from server.face.fer import build_pipeline

    settings = settings_for(args)
    model = fer_model(args.model or settings.fer.model_path)
    photos = read_photos(Path(args.data))
    pipeline = build_pipeline(model, **fer_options(settings))
    report: dict[str, object] = {
        "model": str(model),
        "detector": pipeline.detector.name,
        **evaluate(photos, pipeline),
    }
    print(
        f"fer: {report['n']} photos, a face found in {report['face_found_rate']}, "
        f"accuracy {report['accuracy']} on those",
        file=sys.stderr,
    )
    return report


def _eval_stt(args: argparse.Namespace) -> dict[str, object]:
    """The configured speech engine (stt.*) on labelled speech: the words it got wrong."""
    from server.bench.stt import engine_label
    from server.conversation.components import build_transcriber
    from server.eval.stt import read_clip_audio, read_clips, score

    settings = settings_for(args)
    clips = read_clips(Path(args.data))
    transcriber = build_transcriber(settings.stt)
    limit = settings.server.max_audio_s
    heard = [
        transcriber.transcribe(read_clip_audio(clip, clip.path.read_bytes(), limit)).text for clip in clips
    ]
    report: dict[str, object] = {"engine": engine_label(settings.stt), **score(clips, heard)}
    print(f"stt ({report['engine']}): WER {report['wer']} over {report['words']} words", file=sys.stderr)
    return report


def _eval_safety(args: argparse.Namespace) -> dict[str, object]:
    from server.eval.safety import evaluate, read_rows
    from server.memory.embedding import MiniLMEmbedder, find_embedder_dir
    from server.models.catalogue import models_dir
    from server.safety.care import Care
    from server.sections import SafetySection

    rows = read_rows(Path(args.data))
    found = find_embedder_dir("", models_dir())
    care = Care.load(SafetySection(), MiniLMEmbedder(found) if found else None)
    report = evaluate(rows, lambda text: care.assess(text, skip_identical=True), care.detector.assess)
    report["checks"] = "rules and similar examples" if care.examples else "rules only (no text embedder)"
    alone = report["rules_only"]
    print(
        f"safety ({report['checks']}): recall {report['recall']} on {report['crisis']} crisis rows, "
        f"false alarms {report['false_alarm_rate']} on {report['not_crisis']} others; rules alone: "
        f"recall {alone['recall']}, false alarms {alone['false_alarm_rate']}",
        file=sys.stderr,
    )
    return report


def _eval_guard(args: argparse.Namespace) -> dict[str, object]:
    from server.eval.guard import evaluate, read_rows
    from server.safety.guard import OutputGuard

    report = evaluate(read_rows(Path(args.data)), OutputGuard.load())
    alone = report["sentence_only"]
    print(
        f"guard: blocked {report['block_rate']} of {report['harmful']} harmful replies, "
        f"false blocks {report['false_block_rate']} on {report['kind']} kind ones; each sentence alone: "
        f"blocked {alone['block_rate']}, false blocks {alone['false_block_rate']}",
        file=sys.stderr,
    )
    for category, rate in report["by_category"].items():
        print(f"  {category}: blocked {rate}", file=sys.stderr)
    return report


def add_arguments(evaluation: argparse.ArgumentParser) -> None:
    """`tadbot eval`'s target and flags."""
    evaluation.add_argument("target", choices=("safety", "guard", "fer", "stt"))
    evaluation.add_argument(
        "--data",
        required=True,
        help="safety: a CSV with columns label,text (crisis, concern or safe); "
        "guard: a CSV with columns sentence,label (harmful or kind) and optionally category; "
        "fer: a folder with images/ and labels.csv (image,emotion); "
        "stt: a folder of WAVs with index.csv (file,text), as `tadbot bench spoken` writes",
    )
    evaluation.add_argument(
        "--model", help="fer: an .onnx path or a catalogue name (default: fer.model_path)"
    )
