"""The frame seam: a `FrameSource` gives the latest picture of the person as JPEG bytes, or None.

Frames live only in memory; nothing here writes to disk. A missing or broken camera never stops a
conversation: talking matters more than the emotion timeline.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Protocol

from device.errors import CameraError

_LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_JPEG_QUALITY = 90


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
        self._capture = cv2.VideoCapture(index)
        self._warned = False
        if not self._capture.isOpened():
            self._warn(
                "cannot open camera %d (is a webcam plugged in? try `ls /dev/video*`); going on without it"
            )
        else:
            # Keep the driver queue short so an on-demand grab is recent, not a frame from seconds ago.
            self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            _LOGGER.info("camera %d opened", index)

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
