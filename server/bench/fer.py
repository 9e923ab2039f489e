"""`tadbot bench fer`: the server's face reading per frame, beside bare OpenCV and onnxruntime doing the same.

The server's path is the one a frame takes in a turn: checked decode in memory, shrink, the configured
detector (YuNet or Haar), crop or five-point alignment, the manifest's preprocessing, onnxruntime, top-3 and
the session's smoothing. The bare path does the same detection and classification with nothing around it:
`cv2.imdecode`, the same detector on the same geometry, OpenCV's own similarity fit for alignment, a resize
and `InferenceSession.run`. Each photo goes through both, alternately, in one run, so the ratio survives a
noisy machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import TadbotError

_ROUNDS = 3


@dataclass(frozen=True)
class FerBenchOptions:
    data: Path
    model: Path
    pipeline: dict[str, Any]
    """The keyword arguments of `face.fer.build_pipeline` besides the model: detector, policy, threads."""


def run_fer_bench(options: FerBenchOptions) -> dict[str, Any]:
    from server.face.fer import build_pipeline
    from server.face.smoothing import EmotionSmoother

    photos = sorted(
        p for p in (options.data / "images").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    if not photos:
        raise TadbotError("bad_data", f"{options.data / 'images'}: no .jpg or .png photos to time")
    frames = [p.read_bytes() for p in photos]
    pipeline = build_pipeline(options.model, **options.pipeline)
    threads = options.pipeline["threads"]
    smoother = EmotionSmoother(0.5)
    yunet = options.pipeline["detector_path"] if pipeline.detector.name == "yunet" else None
    bare = _Bare(options.model, threads, pipeline.classifier.manifest, yunet)
    served: list[float] = []
    raw: list[float] = []
    for _ in range(_ROUNDS):
        for data in frames:
            try:
                served.append(_time(lambda data=data: _served(pipeline, smoother, data)))
            except TadbotError:
                continue  # a file the server refuses (not JPEG or PNG) is not timed on either side
            raw.append(_time(lambda data=data: bare.read(data)))
    server_p50, bare_p50 = statistics.median(served), statistics.median(raw)
    return {
        "model": str(options.model),
        "detector": pipeline.detector.name,
        "frames": len(served),
        "threads": threads,
        "server_p50_ms": round(server_p50, 2),
        "bare_p50_ms": round(bare_p50, 2),
        "p50_ratio": round(server_p50 / bare_p50, 3),
        "fps": round(1000 / server_p50, 1),
    }


def _served(pipeline: Any, smoother: Any, data: bytes) -> None:
    from server.face.images import decode_image, shrink

    reading = pipeline.read(shrink(decode_image(data)))
    if reading.faces:
        smoother.update("bench", reading.probs)


def _time(work: Any) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000


class _Bare:
    """The same detection and classification with nothing around it."""

    def __init__(self, model: Path, threads: int, manifest: Any, yunet: Path | None) -> None:
        import cv2
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(str(path))
        self._yunet = None
        if yunet is not None:
            self._yunet = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320), 0.9, 0.3)
        self._m = manifest

    def read(self, data: bytes) -> None:
        import cv2
        import numpy as np

        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return
        factor = min(1.0, 640 / max(image.shape[:2]))
        small = image
        if factor < 1:
            small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        find = self._yunet_face if self._yunet else self._haar_face
        face = find(image, small, factor)
        if face is None:
            return
        m = self._m
        pixels = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if m.color == "gray" else face
        if m.color == "rgb":
            pixels = cv2.cvtColor(face, cv2.COLOR_BGR2RGB)
        pixels = (
            cv2.resize(pixels, tuple(m.input_size))
            .astype(np.float32)
            .reshape(m.input_size[1], m.input_size[0], -1)
        )
        tensor = (pixels * m.scale - np.asarray(m.mean, np.float32)) / np.asarray(m.std, np.float32)
        if m.layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        self._session.run(None, {self._input: tensor[np.newaxis].astype(np.float32)})

    def _haar_face(self, image: Any, small: Any, factor: float) -> Any:
        import cv2

        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        pad = round(0.2 * max(gray.shape))
        padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        side = round(0.1 * min(gray.shape))
        found = self._cascade.detectMultiScale(padded, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        if len(found) == 0:
            return None
        x, y, w, h = max(found, key=lambda box: box[2] * box[3])
        left, top = max(int(x) - pad, 0), max(int(y) - pad, 0)
        return image[
            round(top / factor) : round((top + h) / factor), round(left / factor) : round((left + w) / factor)
        ]

    def _yunet_face(self, image: Any, small: Any, factor: float) -> Any:
        import cv2
        import numpy as np

        assert self._yunet is not None
        self._yunet.setInputSize((small.shape[1], small.shape[0]))
        _, found = self._yunet.detect(small)
        if found is None:
            return None
        row = max(found, key=lambda face: face[2] * face[3])
        if self._m.align_template is None:
            x, y, w, h = (max(int(v / factor), 0) for v in row[:4])
            return image[y : y + h, x : x + w]
        points = row[4:14].reshape(5, 2) / factor
        matrix, _ = cv2.estimateAffinePartial2D(points, np.asarray(self._m.align_template), method=cv2.LMEDS)
        return cv2.warpAffine(image, matrix, tuple(self._m.input_size))
