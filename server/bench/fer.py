"""`tadbot bench fer`: the server's face reading per frame, beside bare OpenCV and onnxruntime doing the same.

The server's path is the one a frame takes in a turn: checked decode in memory, shrink, Haar detection,
crop, the manifest's preprocessing, onnxruntime, top-3 and the session's smoothing. The bare path does the
same detection and classification with nothing around it: `cv2.imdecode`, the cascade on the same
geometry, a resize and `InferenceSession.run`. Each photo goes through both, alternately, in one run, so
the ratio survives a noisy machine.
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
    threads: int


def run_fer_bench(options: FerBenchOptions) -> dict[str, Any]:
    from server.fer import EmotionClassifier, FaceDetector, FerPipeline
    from server.fer_smoothing import EmotionSmoother

    photos = sorted(
        p for p in (options.data / "images").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    if not photos:
        raise TadbotError("bad_data", f"{options.data / 'images'}: no .jpg or .png photos to time")
    frames = [p.read_bytes() for p in photos]
    pipeline = FerPipeline(FaceDetector(), EmotionClassifier(options.model, threads=options.threads))
    smoother = EmotionSmoother(0.5)
    bare = _Bare(options.model, options.threads, pipeline.classifier.manifest)
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
        "frames": len(served),
        "threads": options.threads,
        "server_p50_ms": round(server_p50, 2),
        "bare_p50_ms": round(bare_p50, 2),
        "p50_ratio": round(server_p50 / bare_p50, 3),
        "fps": round(1000 / server_p50, 1),
    }


def _served(pipeline: Any, smoother: Any, data: bytes) -> None:
    from server.images import decode_image, shrink

    reading = pipeline.read(shrink(decode_image(data)))
    if reading.faces:
        smoother.update("bench", reading.probs)


def _time(work: Any) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000


class _Bare:
    """The same detection and classification with nothing around it."""

    def __init__(self, model: Path, threads: int, manifest: Any) -> None:
        import cv2
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(str(path))
        self._m = manifest

    def read(self, data: bytes) -> None:
        import cv2
        import numpy as np

        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        factor = min(1.0, 640 / max(gray.shape))
        small = (
            cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA) if factor < 1 else gray
        )
        pad = round(0.2 * max(small.shape))
        padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        side = round(0.1 * min(small.shape))
        found = self._cascade.detectMultiScale(padded, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        if len(found) == 0:
            return
        x, y, w, h = max(found, key=lambda box: box[2] * box[3])
        left, top = max(int(x) - pad, 0), max(int(y) - pad, 0)
        face = image[
            round(top / factor) : round((top + h) / factor), round(left / factor) : round((left + w) / factor)
        ]
        m = self._m
        pixels = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if m.color == "gray" else face
        pixels = (
            cv2.resize(pixels, tuple(m.input_size))
            .astype(np.float32)
            .reshape(m.input_size[1], m.input_size[0], -1)
        )
        tensor = (pixels * m.scale - np.asarray(m.mean, np.float32)) / np.asarray(m.std, np.float32)
        if m.layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        self._session.run(None, {self._input: tensor[np.newaxis].astype(np.float32)})
