"""The device's error hierarchy: each error has a stable machine code and a message that says what to do.

It mirrors the server's shape on purpose but shares no code with it: the HTTP contract is the only seam.
"""

from __future__ import annotations


class DeviceError(Exception):
    """An error the person running the device can act on; `message` says how."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DeviceConfigError(DeviceError):
    """A setting is invalid; raised once at start-up, before any hardware or network is touched."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_config", message)


class AudioInputError(DeviceError):
    """The microphone or an audio file cannot be used."""


class CameraError(DeviceError):
    """An image file or folder cannot be used as the frame source."""


class SpeakerError(DeviceError):
    """Text-to-speech cannot start or could not write its output."""


_TRANSIENT_CODES = frozenset({"server_unreachable", "server_timeout", "stream_broken", "stream_truncated"})
"""Transport failures that a server coming back up cures by itself."""


class ServerError(DeviceError):
    """The server refused a request, broke a stream, or could not be reached.

    `status` is the HTTP status when the server answered, else None.
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth retrying later: the server is down, restarting or overloaded, not refusing this device."""
        if self.status is None:
            return self.code in _TRANSIENT_CODES
        return self.status >= 500
