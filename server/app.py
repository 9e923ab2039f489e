"""The Flask app factory: engines are built once here and kept on `app.extensions`."""

from __future__ import annotations

import atexit
import io
import logging
from typing import IO

from flask import Flask, Request, redirect, url_for

from server.access.accounts import Accounts, LoginPolicy
from server.access.policy import Access
from server.config import Settings, load_settings
from server.conversation.components import Components, ComponentStatus, build_components
from server.conversation.engine import Companion
from server.conversation.prompt import Prompts
from server.safety.care import Care

_LOGGER = logging.getLogger(__name__)


class InMemoryRequest(Request):
    """Uploads stay in memory: Werkzeug would otherwise spool large files to a temp file on disk."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def create_app(settings: Settings | None = None, components: Components | None = None) -> Flask:
    from server.api import device, errors, public, therapist
    from server.dashboard import pages

    settings = settings or load_settings()
    prompts = Prompts.load(settings.persona.name, settings.persona.prompt_file)
    components = components or build_components(settings)
    components.records.hold()
    app = Flask("server", static_folder=None)
    app.request_class = InMemoryRequest
    max_bytes = int(settings.server.max_upload_mb * 1024 * 1024)
    app.config.update(MAX_CONTENT_LENGTH=max_bytes, MAX_FORM_MEMORY_SIZE=max_bytes, JSON_SORT_KEYS=False)
    care = Care.load(
        settings.safety,
        embedder=components.embedder,
        cache_dir=settings.data_path / "cache",
    )
    components.status["safety"] = ComponentStatus(
        "ok", "rules and similar examples" if care.examples else "rules only (no text embedder)"
    )
    engine = Companion(components, settings, prompts, care)
    app.extensions["tadbot"] = engine
    app.extensions["tadbot.access"] = Access(engine.records)
    app.extensions["tadbot.accounts"] = Accounts(engine.records, _login_policy(settings))
    # Stops the background summaries before the interpreter tears down the model they may be using.
    atexit.register(engine.close)
    errors.register(app)
    for bp in (public.bp, device.bp, therapist.bp, pages.bp):
        app.register_blueprint(bp)
    app.add_url_rule("/", "home", lambda: redirect(url_for("dashboard.clients")))
    return app


def _login_policy(settings: Settings) -> LoginPolicy:
    board = settings.dashboard
    return LoginPolicy(
        idle_s=board.idle_minutes * 60,
        max_s=board.max_hours * 3600,
        lockout_failures=board.lockout_failures,
        lockout_s=board.lockout_minutes * 60,
    )


def companion() -> Companion:
    from flask import current_app

    engine: Companion = current_app.extensions["tadbot"]
    return engine


def access() -> Access:
    from flask import current_app

    found: Access = current_app.extensions["tadbot.access"]
    return found
