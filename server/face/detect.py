"""Face detection: where the faces are in a frame, and which one to read.

Two detectors share one contract. YuNet (OpenCV Zoo, through `cv2.FaceDetectorYN`) also gives five landmarks,
which aligned classifiers need; it is used when its model file is present. The Haar cascade ships inside the
opencv wheel, so detection works offline with nothing pulled. Frames stay in memory: nothing here writes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from server.errors import ModelError

if TYPE_CHECKING:
    import numpy as np

_LOGGER = logging.getLogger(__name__)

POLICIES = ("largest", "central")
"""Which face to read when several are in view: the largest (nearest the camera) or the most central."""

DETECTORS = ("auto", "yunet", "haar")


@dataclass(frozen=True)
class Box:
    """A face rectangle in image pixels."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


Landmarks = tuple[tuple[float, float], ...]
"""Right eye, left eye, nose tip, right and left mouth corners, in image pixels (YuNet's order)."""


@dataclass(frozen=True)
class Face:
    """One face found in a frame; `landmarks` is None from a detector that gives boxes only."""

    box: Box
    landmarks: Landmarks | None = None


class Detector(Protocol):
    """Finds faces; the first face returned is the one to read."""

    @property
    def name(self) -> str: ...

    @property
    def gives_landmarks(self) -> bool: ...

    def detect(self, image: np.ndarray) -> list[Face]: ...


def order_faces(faces: list[Face], policy: str, width: int, height: int) -> list[Face]:
    """Faces in the order the policy reads them: the one to read first."""
    if policy == "central":

        def off_centre(face: Face) -> float:
            box = face.box
            return (box.x + box.w / 2 - width / 2) ** 2 + (box.y + box.h / 2 - height / 2) ** 2

        return sorted(faces, key=off_centre)
    return sorted(faces, key=lambda face: face.box.area, reverse=True)


def _check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown face policy {policy!r}; expected one of {POLICIES}")
    return policy


class HaarDetector:
    """OpenCV's Haar frontal-face cascade: ships inside the opencv wheel, so it works offline and on a Pi."""

    name = "haar"
    gives_landmarks = False

    def __init__(
        self,
        *,
        policy: str = "largest",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face: float = 0.1,
        detect_side: int = 640,
        pad: float = 0.2,
    ) -> None:
        """`detect_side` caps the longest side the cascade scans. `min_face` skips faces narrower than that
        fraction of the shorter side: the small scales cost the most, and 0.1 of a 640x480 webcam frame still
        finds a face about 1.5 m away. `pad` adds a black border of that fraction of the longest side: a face
        that fills the frame, as when someone leans into the camera, is otherwise missed (faces found in the
        dev photos: 72% unpadded, 93% at 0.2)."""
        self._policy = _check_policy(policy)
        import cv2

        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelError(
                "model_missing",
                f"The Haar cascade {path} could not be loaded; install opencv-python-headless>=4.10,<5, "
                "whose wheel ships it.",
            )
        self._scale_factor = scale_factor
        self._min_neighbors = min_neighbors
        self._min_face = min_face
        self._detect_side = detect_side
        self._pad = pad
        # CascadeClassifier keeps scratch state per instance; OpenCV does not promise it is re-entrant.
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR image, in policy order."""
        import cv2

        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        factor = min(1.0, self._detect_side / max(gray.shape))
        if factor < 1.0:
            gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        height, width = gray.shape
        pad = round(self._pad * max(height, width))
        min_side = round(self._min_face * min(height, width))
        padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        with self._lock:
            found = self._cascade.detectMultiScale(
                padded,
                scaleFactor=self._scale_factor,
                minNeighbors=self._min_neighbors,
                minSize=(min_side, min_side),
            )
        faces = []
        for x, y, w, h in found:
            # Back to image coordinates, clipped: a box around a face at the edge reaches into the border.
            left, top = max(int(x) - pad, 0), max(int(y) - pad, 0)
            right, bottom = min(int(x + w) - pad, width), min(int(y + h) - pad, height)
            if right > left and bottom > top:
                box = Box(
                    round(left / factor),
                    round(top / factor),
                    round((right - left) / factor),
                    round((bottom - top) / factor),
                )
                faces.append(Face(box))
        return order_faces(faces, self._policy, image.shape[1], image.shape[0])


class YuNetDetector:
    """YuNet through `cv2.FaceDetectorYN`: faces with five landmarks, for models trained on aligned faces."""

    name = "yunet"
    gives_landmarks = True

    def __init__(
        self,
        model_path: Path,
        *,
        policy: str = "largest",
        score_threshold: float = 0.9,
        nms_threshold: float = 0.3,
        detect_side: int = 640,
    ) -> None:
        """`detect_side` caps the longest side YuNet sees: its cost grows with pixels, and a face at webcam
        distance is still tens of pixels wide at 640. The thresholds are OpenCV Zoo's demo defaults."""
        self._policy = _check_policy(policy)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(
                "model_missing",
                f"The face detector {model_path} is missing: run `tadbot models pull`, or set "
                'fer.detector = "haar" to use OpenCV\'s built-in cascade.',
            )
        import cv2

        try:
            self._yunet = cv2.FaceDetectorYN.create(
                str(model_path), "", (320, 320), score_threshold, nms_threshold, 50
            )
        except cv2.error as exc:
            raise ModelError(
                "model_corrupt",
                f"The face detector {model_path} could not be loaded ({exc.err}); "
                "run `tadbot models verify`.",
            ) from exc
        self._detect_side = detect_side
        self._size: tuple[int, int] | None = None
        # One FaceDetectorYN holds one network and its input size: calls must not interleave.
        self._lock = threading.Lock()
        _LOGGER.info("face detector: YuNet %s policy=%s", model_path, policy)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR image, in policy order, with landmarks."""
        import cv2

        height, width = image.shape[:2]
        factor = min(1.0, self._detect_side / max(height, width))
        scaled = image
        if factor < 1.0:
            scaled = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        size = (scaled.shape[1], scaled.shape[0])
        with self._lock:
            if size != self._size:
                self._yunet.setInputSize(size)
                self._size = size
            _, found = self._yunet.detect(scaled)
        faces = []
        for row in () if found is None else found:
            left, top = max(float(row[0]), 0.0), max(float(row[1]), 0.0)
            right, bottom = min(float(row[0] + row[2]), size[0]), min(float(row[1] + row[3]), size[1])
            if right <= left or bottom <= top:
                continue
            box = Box(
                round(left / factor),
                round(top / factor),
                round((right - left) / factor),
                round((bottom - top) / factor),
            )
            points = tuple((float(row[4 + 2 * i]) / factor, float(row[5 + 2 * i]) / factor) for i in range(5))
            faces.append(Face(box, points))
        return order_faces(faces, self._policy, width, height)


def open_detector(kind: str, model_path: Path, *, policy: str = "largest") -> Detector:
    """The configured detector. "auto" takes YuNet when its model is there, else the Haar cascade."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown face detector {kind!r}; expected one of {DETECTORS}")
    if kind == "yunet" or (kind == "auto" and Path(model_path).is_file()):
        return YuNetDetector(model_path, policy=policy)
    if kind == "auto":
        _LOGGER.info("face detector: Haar cascade (no YuNet model at %s) policy=%s", model_path, policy)
    return HaarDetector(policy=policy)
