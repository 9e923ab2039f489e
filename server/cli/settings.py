"""The settings a command runs with (its --config and flags over the file), and `tadbot config show`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from server.config import Settings, describe, load_settings


def settings_for(args: argparse.Namespace, **server: object) -> Settings:
    overrides = {"server": {k: v for k, v in server.items() if v is not None}}
    return load_settings(Path(args.config) if args.config else None, overrides=overrides)


def cmd_config(args: argparse.Namespace) -> int:
    settings = settings_for(args)
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
