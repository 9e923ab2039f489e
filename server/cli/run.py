"""The commands that start processes: `tadbot serve`, `run` (server and device on one box), and the hand-overs
to other packages' own processes: `device`, `train` and `install` (install.sh).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from server.cli.extras import require
from server.cli.settings import settings_for
from server.config import Settings
from server.errors import TadbotError

LOCAL_DEVICE = "local"
LOCAL_CLIENT = "client"
"""Whom `tadbot run` talks to when no --client is given: one person at one box."""
# device/settings.py's env override for [device] token (the two packages never import each other).
DEVICE_TOKEN_ENV = "TADBOT_DEVICE__TOKEN"


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_for(args, host=args.host, port=args.port)
    require("server")
    from server.serve import serve

    serve(settings)
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    require("device")
    config = ["--config", args.config] if args.config else []
    os.execv(sys.executable, [sys.executable, "-m", "device", *config, *args.rest])


def cmd_run(args: argparse.Namespace) -> int:
    """Server and device on one box: start the server, wait for it, then run the device against it."""
    settings = settings_for(args, host=args.host, port=args.port)
    require("server")
    require("device")
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


def cmd_train(args: argparse.Namespace) -> int:
    """`tadbot train` runs `python -m training` (fer, prepare, ..., eval) in its own process, as
    `tadbot device` runs the device: the server never imports training, and the CLI starts without torch."""
    verbose = ["--verbose"] if args.verbose else []
    return subprocess.call([sys.executable, "-m", "training", *verbose, *args.rest])


def cmd_install(args: argparse.Namespace) -> int:
    """`tadbot install` runs install.sh, which the wheel carries as server/systemd/ and a checkout keeps in
    systemd/. TADBOT_PYTHON lets it render the config template with this Python."""
    here = Path(__file__).resolve().parents[1]  # server/, whose parent is a checkout's root
    for script in (here / "systemd" / "install.sh", here.parent / "systemd" / "install.sh"):
        if script.is_file():
            env = {**os.environ, "TADBOT_PYTHON": sys.executable}
            return subprocess.call(["bash", str(script), *args.rest], env=env)
    raise TadbotError("install_missing", f"install.sh is not in {here / 'systemd'}: reinstall tadbot")
