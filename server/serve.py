"""Runs the app under gunicorn: one worker (the model is loaded once), threads for streaming turns."""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from server.config import Settings
from server.errors import ConfigError
from server.notify import HealthWatchdog

_LOGGER = logging.getLogger(__name__)

# gunicorn's code for "worker failed to boot": the master stops instead of restarting the worker forever.
WORKER_BOOT_ERROR = 3


class TadbotGunicorn(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        server = settings.server
        self.watchdog = HealthWatchdog(server.host, server.port, scheme=server.scheme)
        super().__init__()

    def load_config(self) -> None:
        server = self.settings.server
        options: dict[str, Any] = {
            "bind": f"{server.host}:{server.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": server.threads,
            "timeout": 120,
            "graceful_timeout": 10,
            "keepalive": 5,
            "loglevel": server.log_level.lower(),
            "accesslog": None,
            "errorlog": "-",
            "proc_name": "tadbot-server",
            # In the master process, which is the one systemd watches (see server.notify).
            "when_ready": lambda _arbiter: self.watchdog.start(),
            "on_exit": lambda _arbiter: self.watchdog.stop(),
        }
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 24 opens a control socket under $HOME; nothing here uses it, and systemd's
            # ProtectHome would refuse it.
            options["control_socket_disable"] = True
        if server.certfile:  # checked at start-up: keyfile is set too, and the pair loads
            options["certfile"] = server.certfile
            options["keyfile"] = server.keyfile
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from server.app import create_app

        try:
            return create_app(self.settings)
        except ConfigError as exc:
            _LOGGER.error("tadbot: error: %s", exc.message)
            sys.exit(WORKER_BOOT_ERROR)


def serve(settings: Settings) -> None:
    TadbotGunicorn(settings).run()
