"""The device's side of the HTTP contract (v1): the only thing it knows about the server.

Turn answers are NDJSON streams. They are read with `read1` rather than `iter_lines`, because `iter_lines`
waits for 512 bytes before yielding anything when the server ends the body by closing the connection
(HTTP/1.0, as Werkzeug's single-threaded server does): the first sentence would be spoken after the last.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from device.errors import ServerError

_LOGGER = logging.getLogger(__name__)

API = "/api/v1"
_CONNECT_TIMEOUT_S = 10.0
"""Connecting is quick or it fails; only the answer may take the long `timeout`."""
_END_EVENTS = frozenset({"done", "error"})


def _root_cause(exc: BaseException) -> str:
    """The innermost OS-level reason ("Connection refused"), not urllib3's nested wrapper text."""
    seen: BaseException | None = exc
    reason, visited = str(exc), set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.strerror:
            reason = seen.strerror
        nested = getattr(seen, "reason", None)
        if isinstance(nested, BaseException) and nested is not seen:
            seen = nested
        elif isinstance(seen.args[0] if seen.args else None, BaseException):
            seen = seen.args[0]
        else:
            seen = seen.__cause__ or seen.__context__
    return reason


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line, so a log or stderr line stays one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


class ServerClient:
    """A thin, blocking client: one method per endpoint the device uses; every failure is a ServerError."""

    def __init__(self, base_url: str, token: str, timeout: float = 120.0, ca_file: str = "") -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self._timeout = (min(timeout, _CONNECT_TIMEOUT_S), timeout)
        self._http = requests.Session()
        # Private audio goes to `base_url` and nowhere else: no proxy from HTTP(S)_PROXY/ALL_PROXY, and no
        # credentials from ~/.netrc replacing the device token.
        self._http.trust_env = False
        if ca_file:  # a clinic's own certificate or CA, in place of the public authorities
            self._http.verify = ca_file
        self._http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, *, stream: bool = False, **kwargs: Any) -> Any:
        """POST and return the response, mapping every transport failure and error answer to ServerError."""
        return self._request("POST", path, stream=stream, **kwargs)

    def _request(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> Any:
        import urllib3
        from requests import exceptions as failed

        url = f"{self.base_url}{API}{path}"
        try:
            response = self._http.request(method, url, timeout=self._timeout, stream=stream, **kwargs)
            if response.status_code >= 400:
                raise self._error_from(response)
        except (
            failed.InvalidURL,
            failed.MissingSchema,
            failed.InvalidSchema,
            urllib3.exceptions.LocationValueError,  # urllib3's own parser, on hosts requests let through
        ) as exc:
            raise ServerError(
                "bad_url",
                f"the server URL {self.base_url} is not valid ({_one_line(exc)}); fix [device] server_url",
            ) from exc
        except failed.ConnectionError as exc:
            raise ServerError(
                "server_unreachable", f"cannot reach the server at {self.base_url}: {_root_cause(exc)}"
            ) from exc
        except failed.Timeout as exc:
            raise ServerError(
                "server_timeout",
                f"the server at {self.base_url} did not answer within {self._timeout[1]:g} s",
            ) from exc
        # Anything else (a redirect loop, a body that will not decode) is one line too, never a traceback.
        except (failed.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise ServerError(
                "request_failed", f"{method} {API}{path} to {self.base_url} failed: {_one_line(exc)}"
            ) from exc
        return response

    @staticmethod
    def _error_from(response: Any) -> ServerError:
        """The contract's `{"error": {"code", "message"}}`, or a plain description when a proxy answered."""
        try:
            body = response.json()
            error = body["error"]
            return ServerError(str(error["code"]), str(error["message"]), response.status_code)
        except (ValueError, KeyError, TypeError):
            return ServerError(
                f"http_{response.status_code}",
                f"the server answered {response.status_code} {response.reason} without an error body",
                response.status_code,
            )
        finally:
            response.close()

    def _json(self, path: str, *, method: str = "POST", **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError as exc:
            raise ServerError("bad_response", f"{path} answered with something that is not JSON") from exc
        if not isinstance(body, dict):
            raise ServerError("bad_response", f"{path} answered with JSON that is not an object")
        return body

    def health(self) -> dict[str, Any]:
        """`{"status": "ok"|"degraded", "components": {...}, "version"}` for a valid token, as this session
        sends; only `{"status"}` without one."""
        return self._json("/health", method="GET")

    def start_session(self, client: str) -> tuple[str, str]:
        """Open a session for the pseudonym `client`, or with "" for the client the server has this device
        enrolled for; returns (session_id, greeting to speak)."""
        body = self._json("/sessions", json={"client": client} if client else {})
        try:
            return str(body["session_id"]), str(body.get("greeting", ""))
        except KeyError as exc:
            raise ServerError("bad_response", "POST /sessions answered without a session_id") from exc

    def turn(
        self,
        session_id: str,
        *,
        audio: bytes | None = None,
        text: str | None = None,
        frames: Sequence[bytes] = (),
        key: str = "",
    ) -> Generator[dict[str, Any], None, None]:
        """Send one utterance (WAV `audio` or typed `text`) with frames; yield each event as it arrives.

        The stream must end with a `done` or `error` event: a stream cut short raises ServerError instead of
        passing for a finished turn. `key` goes as the `Idempotency-Key` header: the same utterance sent
        again with it is answered from the server's record, not by running the model twice.
        """
        if (audio is None) == (text is None):
            raise ValueError("a turn takes exactly one of audio or text")
        files: list[tuple[str, tuple[Any, ...]]] = []
        if audio is not None:
            files.append(("audio", ("utterance.wav", audio, "audio/wav")))
        else:
            files.append(("text", (None, text)))  # no filename: a plain form field, still multipart
        files += [("frame", (f"frame{i}.jpg", frame, "image/jpeg")) for i, frame in enumerate(frames)]
        headers = {"Idempotency-Key": key} if key else {}
        response = self._post(f"/sessions/{session_id}/turns", files=files, headers=headers, stream=True)
        try:
            for line in self._lines(response):
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise ServerError(
                        "bad_response", f"the turn stream sent a non-JSON line: {line[:80]!r}"
                    ) from exc
                if not isinstance(event, dict) or "type" not in event:
                    raise ServerError(
                        "bad_response", f"the turn stream sent an event without a type: {line[:80]!r}"
                    )
                yield event
                if event["type"] in _END_EVENTS:
                    return
        finally:
            response.close()
        raise ServerError(
            "stream_truncated", "the server ended the turn stream without a done or error event"
        )

    def _lines(self, response: Any) -> Iterator[bytes]:
        """Split the body into lines as bytes arrive; each `read1` returns whatever one socket read gave."""
        import urllib3

        pending = b""
        try:
            while chunk := response.raw.read1(65536, decode_content=True):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                yield from (line for line in complete if line.strip())
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise ServerError(
                "server_timeout", f"the turn stream stalled for more than {self._timeout[1]:g} s"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerError("stream_broken", f"the turn stream broke: {_root_cause(exc)}") from exc
        if pending.strip():
            yield pending

    def post_frame(self, session_id: str, frame: bytes) -> dict[str, Any]:
        """Send one frame between turns for the emotion timeline; returns `{"faces", "top3"}`."""
        return self._json(
            f"/sessions/{session_id}/frames", files=[("frame", ("frame.jpg", frame, "image/jpeg"))]
        )

    def end_session(self, session_id: str) -> dict[str, Any]:
        """End the session so the server writes its summary; returns `{"session_id", "turns", "summary"}`."""
        return self._json(f"/sessions/{session_id}/end")
