"""`tadbot bench`: speed and fault benches; the device's own benches run in its process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from server.cli.extras import require
from server.cli.models import fer_model
from server.cli.settings import settings_for
from server.config import Settings
from server.errors import ConfigError, TadbotError


def cmd_bench(args: argparse.Namespace) -> int:
    """Prints progress on stderr and the report as one JSON object on the last line of stdout."""
    if args.target in DEVICE_BENCHES:
        return _device_bench(args)
    require("server")

    def say(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    models = args.model or []
    if len(models) > 1 and args.target != "stt":
        raise ConfigError("bad_args", f"bench {args.target} takes one --model; only stt compares several")
    threads = args.threads or os.cpu_count() or 4
    if args.target == "fer":
        from server.bench.fer import FerBenchOptions, run_fer_bench

        if not args.data:
            raise TadbotError("bad_data", "bench fer needs --data DIR, a folder with images/ of faces")
        from server.conversation.components import fer_options

        settings = settings_for(args)
        model = fer_model(models[0] if models else settings.fer.model_path)
        print(json.dumps(run_fer_bench(FerBenchOptions(Path(args.data), model, fer_options(settings)))))
        return 0
    if args.target == "stt":
        from server.bench.stt import SttBenchOptions, engines_to_compare, run_stt_bench

        if not args.data:
            raise TadbotError(
                "bad_data",
                "bench stt needs --data DIR: WAVs and an index.csv (`tadbot bench spoken` makes one)",
            )
        settings = settings_for(args)
        engines = engines_to_compare(settings.stt, args.engine or [], models)
        repeats = max(1, args.repeats or 1)
        stt = SttBenchOptions(Path(args.data), engines, repeats, settings.server.max_audio_s)
        print(json.dumps(run_stt_bench(stt, say)))
        return 0
    if args.target in FAULT_BENCHES:
        return _fault_bench(args, models[0] if models else None, threads, say)
    model = _bench_model(models[0] if models else None, say)
    if args.target == "safety":
        from server.bench.safety import SafetyBenchOptions, run_safety_bench

        spoken = Path(args.data) if args.data else None
        report = run_safety_bench(SafetyBenchOptions(model, threads, args.n_ctx, spoken), say)
    else:
        from server.bench.llm import SPEAKING_WPM, BenchOptions, run_llm_bench

        options = BenchOptions(
            model=model,
            turns=args.turns or 20,
            n_threads=threads,
            n_ctx=args.n_ctx,
            max_tokens=args.max_tokens,
            speaking_wpm=0 if args.no_pause else SPEAKING_WPM,
        )
        report = run_llm_bench(options, say)
    print(json.dumps(report))
    return 0


FAULT_BENCHES = ("crash", "load")
"""Benches that pass or fail: their report's `passed` is their exit status."""


def _fault_bench(
    args: argparse.Namespace, chosen: str | None, threads: int, say: Callable[[str], None]
) -> int:
    """`bench crash` and `bench load`: the real server on the configured model, or a tiny random one (what
    they measure is what the server does around the model, not its speed); exit 1 when anything failed."""
    for flag in ("kills", "devices", "turns"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError("bad_args", f"--{flag} must be at least 1")
    if args.soak < 0:
        raise ConfigError("bad_args", "--soak must be 0 or more")
    settings = settings_for(args)
    model = _model_or_tiny(chosen, settings, say)
    if args.target == "crash":
        from server.bench.crash import CrashOptions, run_crash_bench

        crash = CrashOptions(
            model, args.kills, args.seed, threads, args.n_ctx, args.max_tokens, settings.stt.model
        )
        report = run_crash_bench(crash, say)
    else:
        from server.bench.load import LoadOptions, run_load_bench

        load = LoadOptions(
            model,
            devices=args.devices,
            turns=args.turns or 50,
            soak=args.soak,
            n_threads=threads,
            n_ctx=args.n_ctx,
            max_tokens=args.max_tokens,
            stt_model=settings.stt.model,
            data=Path(args.data) if args.data else None,
            seed=args.seed,
        )
        report = run_load_bench(load, say)
    print(json.dumps(report))
    return 0 if report["passed"] else 1


def _model_or_tiny(chosen: str | None, settings: Settings, say: Callable[[str], None]) -> Path:
    """--model, else llm.model_path where that file exists, else the tests' tiny random-weight Gemma-2,
    built once under models/bench/."""
    if chosen:
        return _bench_model(chosen, say)
    from server.models.catalogue import models_dir, resolve_model_path

    configured = resolve_model_path(settings.llm.model_path)
    if settings.llm.backend == "llama_cpp" and configured.is_file():
        return configured
    from server.bench.gemma_gguf import TINY, ensure_bench_gemma

    say(f"no model at {configured}: building (or reusing) a tiny random one under models/bench/")
    return ensure_bench_gemma(models_dir(), _build_progress(say), spec=TINY, words=())


DEVICE_BENCHES = ("tts", "spoken", "turn")
"""Benches run by the device package in its own process: its voices (device/bench.py) and a whole turn as
the device waits for it (device/bench_turn.py)."""


def _device_bench(args: argparse.Namespace) -> int:
    require("device")
    if args.target == "turn":
        command = [sys.executable, "-m", "device.bench_turn", *_turn_args(args)]
    else:
        command = [sys.executable, "-m", "device.bench", args.target]
        command += ["--out", args.out] if args.out else []
    command += ["--config", args.config] if args.config else []
    command += ["--repeats", str(args.repeats)] if args.repeats is not None else []
    return subprocess.call(command)


def _turn_args(args: argparse.Namespace) -> list[str]:
    """`bench turn`'s own flags. Its loopback server runs the configured model, or, when that file is
    missing, the random-weight Gemma-2-2B that `bench llm` uses: the same size, so the same speed."""
    if len(args.model or []) > 1:
        raise ConfigError("bad_args", "bench turn takes one --model")
    flags = ["--server", args.server, "--token", args.token or ""] if args.server else []
    flags += [f"--engine={engine}" for engine in args.engine or []]
    flags += [f"--voice={voice}" for voice in args.voice or []]
    if args.server:
        return flags
    if args.model:
        return [*flags, "--model", args.model[0]]
    from server.models.catalogue import resolve_model_path

    llm = settings_for(args).llm
    if llm.backend == "llama_cpp" and not resolve_model_path(llm.model_path).is_file():
        model = _bench_model(None, lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
        flags += ["--model", str(model)]
    return flags


def _bench_model(chosen: str | None, say: Callable[[str], None]) -> Path:
    if chosen:
        model = Path(chosen)
        if not model.is_file():
            raise TadbotError("model_missing", f"--model {model}: no such file")
        return model
    from server.bench.gemma_gguf import ensure_bench_gemma
    from server.models.catalogue import models_dir

    say("building (or reusing) a full-size random-weight Gemma-2-2B Q4_K_M under models/bench/")
    return ensure_bench_gemma(models_dir(), _build_progress(say))


def _build_progress(say: Callable[[str], None]) -> Callable[[str, int, int], None]:
    """A line every tenth of each build step: the step takes minutes and is worth watching."""
    shown: dict[str, int] = {}

    def progress(step: str, done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if shown.get(step) != tenth:
            shown[step] = tenth
            say(f"{step}: {tenth * 10}%")

    return progress


def add_arguments(bench: argparse.ArgumentParser) -> None:
    """`tadbot bench`'s target and flags; most apply to some targets only, as their help says."""
    bench.add_argument(
        "target",
        choices=("llm", "safety", "fer", "stt", "tts", "spoken", "turn", "crash", "load"),
        help="llm: reply speed; safety: how soon a crisis reply starts; fer: face reading per frame; "
        "stt: speech engines side by side (words wrong, speed, memory); tts: Piper against espeak-ng; "
        "spoken: write a labelled set of speech in both voices, for stt and safety; turn: the wait from "
        "the end of speech to the first sound, stage by stage, per speech engine and voice; crash: the "
        "server killed mid-turn, then every acknowledged turn checked in its record; load: several devices "
        "at once, then a soak, counting lost and hung turns, memory and file descriptors, and what reached "
        "the disk or the log (crash and load exit 1 when anything failed)",
    )
    bench.add_argument(
        "--model",
        action="append",
        help="llm, safety: a GGUF (default: a full-size random-weight Gemma-2-2B Q4_K_M, built once); "
        "crash, load: a GGUF (default: llm.model_path, else a tiny random-weight Gemma-2, built once); "
        "turn: the loopback server's GGUF (default: llm.model_path, else that random-weight one); "
        "fer: an .onnx path or catalogue name (default: fer.model_path); stt: a Whisper model, a "
        "catalogue name or folder (default: stt.model; give it more than once to compare several)",
    )
    bench.add_argument(
        "--data",
        help="fer: a folder with images/ of faces; stt: a folder of WAVs with index.csv (file,text); "
        "safety: such a folder whose label column says crisis or safe, to say its lines aloud; "
        "load: such a folder, whose clips the devices say (default: lines espeak-ng says)",
    )
    bench.add_argument(
        "--engine",
        action="append",
        choices=("faster_whisper", "sphinx"),
        help="stt, turn: an engine to compare (default: both); give it more than once",
    )
    bench.add_argument(
        "--voice",
        action="append",
        choices=("piper", "espeak"),
        help="turn: a device voice to compare (default: both); give it more than once",
    )
    bench.add_argument("--server", help="turn: a running server's URL (default: start one on loopback)")
    bench.add_argument("--token", help="turn: a device token for --server")
    bench.add_argument(
        "--repeats",
        type=int,
        help="stt: rounds over the clips (default 1); tts: (default 5); turn: (default 3)",
    )
    bench.add_argument("--out", help="spoken: the folder to write the WAVs and index.csv into")
    bench.add_argument(
        "--turns",
        type=int,
        help="llm: turns in the measured conversation (default 20); load: per device (50)",
    )
    bench.add_argument("--kills", type=int, default=20, help="crash: times the server is killed")
    bench.add_argument(
        "--seed", type=int, default=1, help="crash, load: seeds where kills fall and what is said"
    )
    bench.add_argument("--devices", type=int, default=4, help="load: devices talking at once")
    bench.add_argument(
        "--soak", type=int, default=1000, help="load: turns sent one at a time after the load, memory sampled"
    )
    bench.add_argument("--threads", type=int, default=0, help="llama.cpp threads (default: all cores)")
    bench.add_argument("--n-ctx", type=int, default=2048, help="context window, as llm.n_ctx")
    bench.add_argument("--max-tokens", type=int, default=120, help="longest reply, as llm.max_tokens")
    bench.add_argument(
        "--no-pause",
        action="store_true",
        help="send each turn at once, instead of after the time the last reply takes to say aloud",
    )
