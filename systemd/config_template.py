"""Prints the commented /etc/tadbot/tadbot.toml that install.sh writes where there is none.

It is rendered from the settings classes themselves, each key with the doc that `tadbot config show` prints,
so a key added to the code appears here with no one editing a template. Every key is commented out at its
default: the file documents the defaults without pinning them, so a later release's default still applies.
It needs only the standard library, so install.sh runs it before any venv exists (PYTHONPATH set to the
folder that holds server/ and device/).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from typing import Any

from device.settings import SECTION as DEVICE_SECTION
from device.settings import DeviceSettings
from server.config import SECTION_TYPES

HEADER = """\
# TADBot configuration. install.sh wrote it because there was none, and never overwrites it: edit freely.
# Each key is commented out at its default; uncomment one to change it, then restart the services
# (sudo systemctl restart tadbot-server tadbot-device). Secrets, such as the device token, belong in
# /etc/tadbot/tadbot.env as TADBOT_<SECTION>__<KEY>=value, which also overrides any key here.
# `tadbot config show` prints the configuration in effect.
"""


def _section(name: str, defaults: Any) -> list[str]:
    lines = ["", f"[{name}]"]
    for spec in dataclasses.fields(defaults):
        lines += textwrap.wrap(spec.metadata["doc"], 106, initial_indent="# ", subsequent_indent="# ")
        # A JSON string, number or boolean is written the same way in TOML.
        lines.append(f"#{spec.name} = {json.dumps(getattr(defaults, spec.name), ensure_ascii=False)}")
    return lines


def render() -> str:
    lines = [HEADER.rstrip("\n")]
    for name, section in SECTION_TYPES.items():
        lines += _section(name, section())
    lines += _section(DEVICE_SECTION, DeviceSettings())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
