"""`tadbot doctor`: the device's check of the box, with the server's own checks (the LLM decoded in a child,
the crisis check's second opinion) added first where the box runs the server.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from server.cli.extras import require
from server.cli.settings import settings_for
from server.config import Settings
from server.errors import TadbotError


def cmd_doctor(args: argparse.Namespace) -> int:
    """`tadbot doctor` is the device's check of the box (device/doctor.py), in its own process: the server
    package imports nothing from the device. Where the box runs the server, the LLM is first loaded and
    decoded here, in a child process of its own, and the crisis check's second opinion is loaded; the device's
    doctor reports those checks with the rest."""
    require("device")
    config = ["--config", args.config] if args.config else []
    role = argparse.ArgumentParser(add_help=False)
    role.add_argument("--role", default="device")
    earlier = []
    if role.parse_known_args(args.rest)[0].role in ("server", "both") and "-h" not in args.rest:
        settings = settings_for(args)
        earlier = ["--result", json.dumps(_doctor_llm(settings))]
        earlier += ["--result", json.dumps(_doctor_second_opinion(settings))]
    return subprocess.call([sys.executable, "-m", "device.doctor", *config, *args.rest, *earlier])


def _doctor_llm(settings: Settings) -> dict[str, str]:
    """The doctor's `llm` line: the configured GGUF loaded and decoded in a child, as the server would."""
    from server.conversation.components import LLM_VERDICTS
    from server.conversation.llm.check import check_decode, remember
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
