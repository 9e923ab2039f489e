"""Frames between turns, for the therapist's emotion timeline.

A turn carries its own frame; in between, this thread posts the latest one every few seconds, so the
timeline shows how the face looked while the person listened, too. It uses its own HTTP client: the main
loop's is busy reading a turn's stream. Frames exist only in memory, here as everywhere on the device.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from device.camera import FrameSource
from device.client import ServerClient
from device.errors import CameraError, ServerError
from device.liveness import Beat

_LOGGER = logging.getLogger(__name__)


class FramePoster:
    """Posts `frames.latest()` to the open session every `interval_s`, except during a turn."""

    def __init__(
        self,
        client: ServerClient,
        frames: FrameSource,
        session_id: Callable[[], str],
        in_turn: Callable[[], bool],
        interval_s: float,
        beat: Beat | None = None,
    ) -> None:
        self._client = client
        self._frames = frames
        self._session_id = session_id
        self._in_turn = in_turn
        self._interval_s = interval_s
        self._beat = beat or Beat("frames")
        self._stop = threading.Event()
        self._failing = False
        self.posted = 0
        self._thread = threading.Thread(target=self._run, name="frames", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._client.close()

    def _run(self) -> None:
        """Beats once a round (device.liveness): its deadline is the wait and one post."""
        while not self._stop.wait(self._interval_s):
            self._beat.beat("posting")
            session_id = self._session_id()
            if not session_id or self._in_turn():
                continue
            try:
                frame = self._frames.latest()
                if frame is None:
                    continue
                self._client.post_frame(session_id, frame)
            except (CameraError, ServerError) as exc:
                # The session may have just ended, or the server be away: the next post will tell.
                if not self._failing:
                    _LOGGER.warning("could not post a frame for the timeline (%s: %s)", exc.code, exc.message)
                self._failing = True
                continue
            self._failing = False
            self.posted += 1
