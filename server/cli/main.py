"""The `tadbot` command line.

Server commands run here; `tadbot device` hands over to the device package in its own process
(`python -m device`), so the two packages never import each other and the Pi needs no server libraries.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from server.config import Settings, describe, load_settings
from server.errors import ConfigError, TadbotError, exit_code

_LOGGER = logging.getLogger(__name__)

# Before anything imports NumPy: its BLAS threads fight llama.cpp and each other for a Pi's four cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Before anything imports onnxruntime: its telemetry uploader must never start in a private appliance.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

LOCAL_DEVICE = "local"
LOCAL_CLIENT = "client"
"""Whom `tadbot run` talks to when no --client is given: one person at one box."""
# device/settings.py's env override for [device] token (the two packages never import each other).
DEVICE_TOKEN_ENV = "TADBOT_DEVICE__TOKEN"


def _settings(args: argparse.Namespace, **server: object) -> Settings:
    overrides = {"server": {k: v for k, v in server.items() if v is not None}}
    return load_settings(Path(args.config) if args.config else None, overrides=overrides)


EXTRAS = {
    "server": ("flask", "gunicorn", "llama_cpp", "onnxruntime", "cv2", "chromadb", "speech_recognition"),
    "device": ("numpy", "requests", "cv2", "pyttsx3", "speech_recognition"),
}


def _require(extra: str) -> None:
    """A missing extra is one clear line, not an ImportError traceback from deep inside a module."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise TadbotError(
            "missing_dependencies",
            f"the {extra} needs {', '.join(missing)}: install it with pip install 'tadbot[{extra}]'",
        )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, port=args.port)
    _require("server")
    from server.serve import serve

    serve(settings)
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    _require("device")
    config = ["--config", args.config] if args.config else []
    os.execv(sys.executable, [sys.executable, "-m", "device", *config, *args.rest])


def cmd_doctor(args: argparse.Namespace) -> int:
    """`tadbot doctor` is the device's check of the box (device/doctor.py), in its own process: the server
    package imports nothing from the device. Where the box runs the server, the LLM is first loaded and
    decoded here, in a child process of its own, and the crisis check's second opinion is loaded; the device's
    doctor reports those checks with the rest."""
    _require("device")
    config = ["--config", args.config] if args.config else []
    role = argparse.ArgumentParser(add_help=False)
    role.add_argument("--role", default="device")
    earlier = []
    if role.parse_known_args(args.rest)[0].role in ("server", "both") and "-h" not in args.rest:
        settings = _settings(args)
        earlier = ["--result", json.dumps(_doctor_llm(settings))]
        earlier += ["--result", json.dumps(_doctor_second_opinion(settings))]
    return subprocess.call([sys.executable, "-m", "device.doctor", *config, *args.rest, *earlier])


def _doctor_llm(settings: Settings) -> dict[str, str]:
    """The doctor's `llm` line: the configured GGUF loaded and decoded in a child, as the server would."""
    from server.conversation.components import LLM_VERDICTS
    from server.conversation.llm_check import check_decode, remember
    from server.models.catalogue import resolve_model_path

    llm = settings.llm
    if llm.backend != "llama_cpp":
        return {"name": "llm", "state": "skip", "detail": f"not decoded here: backend {llm.backend}"}
    path = resolve_model_path(llm.model_path)
    sizes = {"n_ctx": llm.n_ctx, "n_threads": llm.n_threads, "n_batch": llm.n_batch}
    found = check_decode(path, **sizes, timeout_s=llm.check_timeout_s)
    remember(settings.data_path / LLM_VERDICTS, path, found, **sizes)
    return {"name": "llm", "state": "pass" if found.ok else "fail", "detail": found.detail}


SECOND_OPINION_PROBE = "tonight is the night I finally end it"
"""Asked of the second opinion so that the model itself runs: the examples' vectors may be cached."""


def _doctor_second_opinion(settings: Settings) -> dict[str, str]:
    """The doctor's `second_opinion` line: the crisis check's nearest labelled examples, loaded as the server
    loads them (the text embedder apart from the memory, conversation/components.py) and asked once.
    Without them the server still runs, and the crisis rules alone read every turn, catching fewer crises
    (README)."""
    from server.conversation.components import build_embedder
    from server.safety.examples import CrisisExamples

    try:
        embedder = build_embedder(settings)
        examples = CrisisExamples.load(embedder, settings.data_path / "cache")
        examples.nearest(SECOND_OPINION_PROBE)
    except TadbotError as exc:
        detail = f"{exc.message.rstrip('.')}; the rules alone decide"
        return {"name": "second_opinion", "state": "fail", "detail": detail}
    except Exception as exc:  # a broken model file must still be one line, not a traceback
        detail = f"{type(exc).__name__}: {exc}; the rules alone decide"
        return {"name": "second_opinion", "state": "fail", "detail": " ".join(detail.split())}
    detail = f"all-MiniLM-L6-v2 from {embedder.model_dir}, {len(examples)} labelled examples"
    return {"name": "second_opinion", "state": "pass", "detail": detail}


def cmd_train(args: argparse.Namespace) -> int:
    """`tadbot train` runs `python -m training` (fer, prepare, ..., eval) in its own process, as
    `tadbot device` runs the device: the server never imports training, and the CLI starts without torch."""
    verbose = ["--verbose"] if args.verbose else []
    return subprocess.call([sys.executable, "-m", "training", *verbose, *args.rest])


def cmd_install(args: argparse.Namespace) -> int:
    """`tadbot install` runs install.sh, which the wheel carries as server/systemd/ and a checkout keeps in
    systemd/. TADBOT_PYTHON lets it render the config template with this Python."""
    here = Path(__file__).resolve().parent
    for script in (here / "systemd" / "install.sh", here.parent / "systemd" / "install.sh"):
        if script.is_file():
            env = {**os.environ, "TADBOT_PYTHON": sys.executable}
            return subprocess.call(["bash", str(script), *args.rest], env=env)
    raise TadbotError("install_missing", f"install.sh is not in {here / 'systemd'}: reinstall tadbot")


def cmd_run(args: argparse.Namespace) -> int:
    """Server and device on one box: start the server, wait for it, then run the device against it."""
    settings = _settings(args, host=args.host, port=args.port)
    _require("server")
    _require("device")
    from server.access.policy import Access
    from server.records.store import Records

    # This box's own device, enrolled for the client it names (--client) or the default one.
    access = Access(Records(settings.data_path / "tadbot.sqlite3"))
    token = access.add("device", LOCAL_DEVICE, actor="tadbot run", replace=True)
    access.enroll(LOCAL_DEVICE, [_local_client(args, settings)], actor="tadbot run")
    server_cmd = [sys.executable, "-m", "server", "serve"]
    if args.config:
        server_cmd[3:3] = ["--config", args.config]
    if args.host:
        server_cmd += ["--host", args.host]
    if args.port:
        server_cmd += ["--port", str(args.port)]
    url = f"{settings.server.scheme}://{settings.server.host}:{settings.server.port}"
    server = subprocess.Popen(server_cmd)
    try:
        _wait_healthy(url, server, timeout_s=args.wait)
        # The token goes in the environment, never argv: any local user can read another's /proc/*/cmdline.
        device_cmd = [sys.executable, "-m", "device", "--server", url, *args.rest]
        return subprocess.call(device_cmd, env={**os.environ, DEVICE_TOKEN_ENV: token})
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def _local_client(args: argparse.Namespace, settings: Settings) -> str:
    """The client `tadbot run`'s device will ask for: its --client, else [device] client from the
    environment or the shared config file, else LOCAL_CLIENT."""
    flag = argparse.ArgumentParser(add_help=False)
    flag.add_argument("--client")
    asked = flag.parse_known_args(args.rest)[0].client or os.environ.get("TADBOT_DEVICE__CLIENT")
    if not asked and settings.source != "defaults":
        device = tomllib.loads(Path(settings.source).read_text(encoding="utf-8")).get("device", {})
        asked = device.get("client") if isinstance(device, dict) else None
    return str(asked or LOCAL_CLIENT)


def _wait_healthy(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait for `server`, the child just started, to answer. Over https its certificate is not checked,
    for the reason in own_server_context: this only asks our own child whether it is up yet."""
    from server.notify import own_server_context

    context = own_server_context() if url.startswith("https:") else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise TadbotError("server_failed", f"the server exited with code {server.returncode}; see above")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2, context=context):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TadbotError("server_timeout", f"the server did not answer at {url} within {timeout_s:.0f} s")


def cmd_admin(args: argparse.Namespace) -> int:
    from server.cli import admin

    return admin.run(args)


def _existing_memory(settings: Settings) -> Any:
    """The server's own memory store; None where none was ever made (the server can run without one)."""
    if not (settings.data_path / "memory").exists():
        return None
    from server.conversation.components import open_memory

    return open_memory(settings)


def cmd_purge(args: argparse.Namespace) -> int:
    """`tadbot admin purge`: the retention pass (records/retention.py); unreached memories exit 1."""
    from server.records import retention

    days = None if args.older_than_config else retention.parse_days("--older-than", args.older_than)
    settings = _settings(args)
    if days is None:
        days = settings.retention.days
        if days == 0:
            print("retention is off (retention.days = 0); nothing purged")
            return 0
    report = retention.purge_data_dir(
        settings, days, lambda: _existing_memory(settings), dry_run=args.dry_run
    )
    print(report.line())
    if report.memory_error:
        raise TadbotError("memory_unavailable", report.memory_error)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(describe(settings))
    device_cmd = [sys.executable, "-m", "device", "--print-config"]
    if args.config:
        device_cmd += ["--config", args.config]
    shown = subprocess.run(device_cmd, capture_output=True, text=True, check=False)
    if shown.returncode == 0:
        print()
        print(shown.stdout.rstrip())
    else:
        print(f"\n# [device]: {shown.stderr.strip() or 'device package unavailable'}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from server.models import catalogue as models

    catalogue = models.load_catalogue()
    directory = models.models_dir()
    if args.action == "list":
        print(f"{'role':<9} {'name':<54} {'size':>9}  {'here':<4}  license")
        for row in models.list_models(catalogue, directory):
            mark = ("yes" if row.present else "no") + ("*" if row.default else "")
            print(f"{row.role:<9} {row.name:<54} {row.size / 1e6:>7.1f}MB  {mark:<4}  {row.license}")
        print(f"(* = pulled by default; models dir: {directory})")
        return 0
    if args.action == "pull":
        for pulled in models.pull(catalogue, directory, roles=args.roles or None):
            print(f"{pulled.status:<10} {pulled.model}: {pulled.path}")
        return 0
    results = models.verify(catalogue, directory, roles=args.roles or None)
    for result in results:
        detail = f" ({result.detail})" if result.detail else ""
        print(f"{result.state:<24} {result.model}: {result.path}{detail}")
    return 0 if all(r.state == models.VerifyState.OK for r in results) else 1


def cmd_bench(args: argparse.Namespace) -> int:
    """Prints progress on stderr and the report as one JSON object on the last line of stdout."""
    if args.target in DEVICE_BENCHES:
        return _device_bench(args)
    _require("server")
    import json

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

        settings = _settings(args)
        model = _fer_model(models[0] if models else settings.fer.model_path)
        print(json.dumps(run_fer_bench(FerBenchOptions(Path(args.data), model, fer_options(settings)))))
        return 0
    if args.target == "stt":
        from server.bench.stt import SttBenchOptions, engines_to_compare, run_stt_bench

        if not args.data:
            raise TadbotError(
                "bad_data",
                "bench stt needs --data DIR: WAVs and an index.csv (`tadbot bench spoken` makes one)",
            )
        settings = _settings(args)
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
    settings = _settings(args)
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
    _require("device")
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

    llm = _settings(args).llm
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


def cmd_eval(args: argparse.Namespace) -> int:
    """The figures on stderr for a person, then one JSON object on the last line of stdout."""
    import json

    _require("server")
    evaluate = {"fer": _eval_fer, "guard": _eval_guard, "safety": _eval_safety, "stt": _eval_stt}[args.target]
    report = evaluate(args)
    print(json.dumps(report, ensure_ascii=False))
    return 0


def _eval_fer(args: argparse.Namespace) -> dict[str, object]:
    from server.conversation.components import fer_options
    from server.eval.fer import evaluate, read_photos
    from server.face.fer import build_pipeline

    settings = _settings(args)
    model = _fer_model(args.model or settings.fer.model_path)
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

    settings = _settings(args)
    clips = read_clips(Path(args.data))
    transcriber = build_transcriber(settings.stt)
    limit = settings.server.max_audio_s
    heard = [
        transcriber.transcribe(read_clip_audio(clip, clip.path.read_bytes(), limit)).text for clip in clips
    ]
    report: dict[str, object] = {"engine": engine_label(settings.stt), **score(clips, heard)}
    print(f"stt ({report['engine']}): WER {report['wer']} over {report['words']} words", file=sys.stderr)
    return report


def _fer_model(chosen: str) -> Path:
    """An .onnx path, or a catalogue name or role whose .onnx has been pulled into the models dir."""
    from server.models.catalogue import load_catalogue, models_dir, resolve_model_path

    if chosen.endswith(".onnx") or Path(chosen).is_file():
        return resolve_model_path(chosen)
    (entry,) = load_catalogue().select([chosen])
    dests = [f.dest for f in entry.files if f.dest.endswith(".onnx")] + (
        [entry.pypi.dest] if entry.pypi else []
    )
    if not dests:
        raise TadbotError("unknown_model", f"--model {chosen}: that catalogue entry has no .onnx file")
    path = models_dir() / dests[0]
    if not path.is_file():
        raise TadbotError(
            "model_missing", f"--model {chosen}: {path} is missing; run `tadbot models pull {chosen}`"
        )
    return path


def _eval_safety(args: argparse.Namespace) -> dict[str, object]:
    from server.config import SafetySection
    from server.eval.safety import evaluate, read_rows
    from server.memory.embedding import MiniLMEmbedder, find_embedder_dir
    from server.models.catalogue import models_dir
    from server.safety.care import Care

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


def _build_progress(say: Callable[[str], None]) -> Callable[[str, int, int], None]:
    """A line every tenth of each build step: the step takes minutes and is worth watching."""
    shown: dict[str, int] = {}

    def progress(step: str, done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if shown.get(step) != tenth:
            shown[step] = tenth
            say(f"{step}: {tenth * 10}%")

    return progress


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tadbot", description="TADBot: a private voice companion for anxiety."
    )
    parser.add_argument(
        "--config", help="config file (default: $TADBOT_CONFIG, /etc/tadbot/tadbot.toml, ./tadbot.toml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    serve = add("serve", cmd_serve, "run the HTTP server under gunicorn")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)

    device = sub.add_parser(
        "device", add_help=False, help="run the device daemon (see `tadbot device --help`)"
    )
    device.set_defaults(func=cmd_device)

    run = add("run", cmd_run, "run server and device together on this box; other flags go to the device")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--wait", type=float, default=300, help="seconds to wait for the server to load")

    admin = add(
        "admin", cmd_admin, "devices, accounts and who may reach which client; logins; audit log; purge"
    )
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    from server.cli.admin import add_actions

    add_actions(actions)
    purge = actions.add_parser(
        "purge",
        help="delete sessions last active before a cutoff, with their turns, emotions, safety events "
        "and memories; prints one summary line",
        description="Delete sessions last active before local midnight DAYS days ago, with their turns, "
        "emotion samples, safety events and vector memories. Newer sessions, devices, therapists and the "
        "audit log stay.",
    )
    purge.set_defaults(func=cmd_purge)
    cutoff = purge.add_mutually_exclusive_group(required=True)
    cutoff.add_argument("--older-than", metavar="DAYS", help="a whole number of days, 1 to 36500")
    cutoff.add_argument(
        "--older-than-config",
        action="store_true",
        help="use retention.days, as tadbot-retention.timer does; 0 (the default) purges nothing",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")

    config = add("config", cmd_config, "show the effective configuration, secrets masked")
    config.add_argument("action", choices=("show",))

    models = add("models", cmd_models, "list, download and verify model files")
    models.add_argument("action", choices=("list", "pull", "verify"))
    models.add_argument(
        "roles", nargs="*", help="roles or model names to pull (default: every default model)"
    )

    bench = add("bench", cmd_bench, "measure speed; prints one JSON object on the last line of stdout")
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

    evaluation = add("eval", cmd_eval, "measure quality on labelled data; one JSON object on the last line")
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

    train = sub.add_parser(
        "train", add_help=False, help="prepare data, train a model and export it (see `tadbot train --help`)"
    )
    train.set_defaults(func=cmd_train)
    doctor = sub.add_parser(
        "doctor", add_help=False, help="check mic, speaker, camera, server, models, disk and memory"
    )
    doctor.set_defaults(func=cmd_doctor)
    install = sub.add_parser(
        "install", add_help=False, help="install as systemd services (see `tadbot install --help`)"
    )
    install.set_defaults(func=cmd_install)
    return parser


PASS_THROUGH = ("device", "run", "train", "doctor", "install")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in PASS_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return exit_code(lambda: args.func(args))
