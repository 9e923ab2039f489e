"""The `tadbot` command line: the parser, and main(), which runs the chosen command as one line on failure.

Server commands run here; `tadbot device` hands over to the device package in its own process
(`python -m device`), so the two packages never import each other and the Pi needs no server libraries.
Each command family lives in its own module here (run, doctor, purge, models, bench, evaluate); each keeps
its heavy imports inside its functions, so that `tadbot --help` loads none of them.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence

from server.cli.bench import add_arguments as bench_arguments
from server.cli.bench import cmd_bench
from server.cli.doctor import cmd_doctor
from server.cli.evaluate import add_arguments as eval_arguments
from server.cli.evaluate import cmd_eval
from server.cli.models import cmd_models
from server.cli.purge import add_parser as add_purge
from server.cli.run import cmd_device, cmd_install, cmd_run, cmd_serve, cmd_train
from server.cli.settings import cmd_config
from server.errors import exit_code

_LOGGER = logging.getLogger(__name__)

# Before anything imports NumPy: its BLAS threads fight llama.cpp and each other for a Pi's four cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Before anything imports onnxruntime: its telemetry uploader must never start in a private appliance.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def cmd_admin(args: argparse.Namespace) -> int:
    from server.cli import admin

    return admin.run(args)


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
    add_purge(actions)

    config = add("config", cmd_config, "show the effective configuration, secrets masked")
    config.add_argument("action", choices=("show",))

    models = add("models", cmd_models, "list, download and verify model files")
    models.add_argument("action", choices=("list", "pull", "verify"))
    models.add_argument(
        "roles", nargs="*", help="roles or model names to pull (default: every default model)"
    )

    bench = add("bench", cmd_bench, "measure speed; prints one JSON object on the last line of stdout")
    bench_arguments(bench)

    evaluation = add("eval", cmd_eval, "measure quality on labelled data; one JSON object on the last line")
    eval_arguments(evaluation)

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
