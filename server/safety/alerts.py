"""The optional crisis alert: a JSON POST to a webhook the clinic runs, sent beside the reply, never first.

Off unless `safety.alert_url` is set. It carries who and when, never the person's words: the therapist
reads those in the session log. A slow or failing webhook is logged and given up; the person's reply never
waits for it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request

_LOGGER = logging.getLogger(__name__)


class CrisisAlerts:
    def __init__(self, url: str, timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s
        # The clinic's webhook sits on its own network; a proxy from the environment must not see it.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._sending: list[threading.Thread] = []

    def send(self, *, client: str, session_id: str, level: str, rule: str) -> None:
        """Post in a background thread; the caller goes on at once."""
        if not self._url:
            return
        payload = {"client": client, "session_id": session_id, "level": level, "rule": rule, "t": time.time()}
        thread = threading.Thread(target=self._post, args=(payload,), name="crisis-alert", daemon=True)
        self._sending = [t for t in self._sending if t.is_alive()] + [thread]
        thread.start()

    def wait(self, timeout_s: float) -> bool:
        """Wait for the alerts still being sent (at shutdown); False if some are still going."""
        for thread in list(self._sending):
            thread.join(timeout_s)
        return not any(t.is_alive() for t in self._sending)

    def _post(self, payload: dict[str, object]) -> None:
        request = urllib.request.Request(
            self._url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as answer:
                _LOGGER.info("crisis alert for session %s sent (%d)", payload["session_id"], answer.status)
        except (OSError, ValueError) as exc:
            _LOGGER.error("crisis alert for session %s failed: %s", payload["session_id"], exc)
