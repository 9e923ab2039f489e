"""The frame seam: a `FrameSource` gives the latest picture of the person as JPEG bytes, or None.

Frames live only in memory; nothing here writes to disk. A missing or broken camera never stops a
conversation: talking matters more than the emotion timeline.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from device.errors import CameraError
from device.liveness import Beat

_LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_JPEG_QUALITY = 90
_GRAB_SLACK_S = 30.0
"""On top of the wait between grabs: one grab and one reopening, which V4L2 may take seconds over."""


class FrameSource(Protocol):
    """Where pictures of the person come from."""

    def latest(self) -> bytes | None:
        """The most recent frame as JPEG bytes, or None when there is none to give."""
        ...

    def close(self) -> None:
        """Release the device, if any."""
        ...


def _to_jpeg(cv2: Any, image: Any) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise CameraError("bad_image", "OpenCV could not encode a frame as JPEG")
    return bytes(encoded.tobytes())


class ImageFileSource:
    """One image, or a folder whose images are given in name order, round and round: a stand-in webcam.

    Every image is decoded and re-encoded as JPEG at construction, so a bad file fails before the session
    opens and the server always receives the same format a real camera would send.
    """

    def __init__(self, path: str | Path) -> None:
        import cv2
        import numpy as np

        self.path = Path(path)
        if self.path.is_dir():
            files = sorted(
                p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise CameraError(
                    "bad_image", f"folder {self.path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
        elif self.path.is_file():
            files = [self.path]
        else:
            raise CameraError("bad_image", f"image file or folder {self.path} does not exist")
        frames = []
        for file in files:
            try:
                data = file.read_bytes()
            except OSError as exc:
                raise CameraError("bad_image", f"cannot read image {file}: {exc.strerror}") from exc
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise CameraError(
                    "bad_image", f"{file} is not an image OpenCV can read (JPEG, PNG, BMP, WebP)"
                )
            frames.append(_to_jpeg(cv2, image))
        _LOGGER.info("frame source %s: %d image(s)", self.path, len(frames))
        self._frames = itertools.cycle(frames)

    def latest(self) -> bytes | None:
        return next(self._frames)

    def close(self) -> None:
        """Nothing to release: the images are already in memory."""


class CameraSource:
    """A webcam through OpenCV, grabbed on demand when a turn is sent.

    A camera that is absent or fails is logged once and yields None: the conversation goes on without frames.
    """

    def __init__(self, index: int) -> None:
        import cv2

        self._cv2 = cv2
        self.index = index
        self._warned = False
        self._capture = self._open()

    def _open(self) -> Any:
        cv2 = self._cv2
        capture = cv2.VideoCapture(self.index)
        self._capture = capture
        if not capture.isOpened():
            self._warn(
                "cannot open camera %d (is a webcam plugged in? try `ls /dev/video*`); going on without it"
            )
        else:
            # Keep the driver queue short so an on-demand grab is recent, not a frame from seconds ago.
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            _LOGGER.info("camera %d opened", self.index)
        return capture

    def reopen(self) -> bool:
        """Try the device again (it was unplugged, or never there); True once it gives frames."""
        self._capture.release()
        return bool(self._open().isOpened())

    def _warn(self, message: str) -> None:
        if not self._warned:
            _LOGGER.warning(message, self.index)
            self._warned = True

    def latest(self) -> bytes | None:
        if not self._capture.isOpened():
            return None
        ok, image = self._capture.read()
        if not ok or image is None:
            self._warn("camera %d gave no frame; going on without it")
            return None
        self._warned = False
        return _to_jpeg(self._cv2, image)

    def close(self) -> None:
        self._capture.release()


class CameraWatcher:
    """Grabs frames at a low rate in its own thread and keeps only the latest, in memory.

    A turn then sends a frame from the last half second instead of waiting for a grab, and a camera that
    is unplugged mid-run is retried every `retry_s` while the conversation goes on without pictures.
    It beats once a grab, so a V4L2 read that never returns is seen (device.liveness).
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        fps: float = 2.0,
        retry_s: float = 10.0,
        reopen: Callable[[], bool] | None = None,
        beat: Beat | None = None,
    ) -> None:
        self._source = source
        self._interval = 1.0 / fps
        self._retry_s = retry_s
        self._reopen = reopen
        self._beat = beat or Beat("camera")
        self._latest: bytes | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.grabbed = 0
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()

    def latest(self) -> bytes | None:
        with self._lock:
            return self._latest

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._source.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat.beat("grabbing", self._retry_s + _GRAB_SLACK_S)
            try:
                frame = self._source.latest()
            except CameraError as exc:
                _LOGGER.warning("camera: %s", exc.message)
                frame = None
            except Exception:  # a driver fault must not end the watcher: the camera may come back
                _LOGGER.exception("camera grab failed")
                frame = None
            with self._lock:
                self._latest = frame
            if frame is not None:
                self.grabbed += 1
                self._stop.wait(self._interval)
                continue
            if self._stop.wait(self._retry_s):
                return
            if self._reopen is not None and self._reopen():
                _LOGGER.warning("camera is back")
