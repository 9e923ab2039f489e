"""Facial emotion recognition: find the face in a frame, classify its expression, keep the top three.

Frames arrive decoded in memory (face.images) and nothing here writes to disk: raw images are never kept.
The classifier is fed as the manifest beside it says (server.face.manifest), so models swap without code.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import ModelError
from server.face.align import align_face
from server.face.detect import Detector, Face, open_detector
from server.face.manifest import VOCABULARY, Manifest, bad_manifest, load_manifest

if TYPE_CHECKING:
    import numpy as np

_LOGGER = logging.getLogger(__name__)


# --- classification -----------------------------------------------------------------------------------------


def _check_io(manifest: Manifest, model_path: Path, session: Any) -> tuple[str, str]:
    """Compare the model's input and output shapes with the manifest; symbolic dimensions pass."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise ModelError(
            "bad_model",
            f"FER model {model_path} must take one float32 tensor; it takes {[i.type for i in inputs]}",
        )
    width, height = manifest.input_size
    wanted = (
        [("color", manifest.channels), ("input_size", height), ("input_size", width)]
        if manifest.layout == "NCHW"
        else [("input_size", height), ("input_size", width), ("color", manifest.channels)]
    )
    shape = inputs[0].shape
    problem = (
        f"does not fit model {model_path}: its input shape is {shape}, but the manifest says layout "
        f"{manifest.layout}, color {manifest.color}, input_size {list(manifest.input_size)}"
    )
    if len(shape) != 4:
        raise bad_manifest(manifest.path, "layout", problem)
    for (key, want), got in zip(wanted, shape[1:], strict=True):
        if isinstance(got, int) and got != want:
            raise bad_manifest(manifest.path, key, problem)
    classes = outputs[0].shape[-1] if outputs[0].shape else None
    if isinstance(classes, int) and classes != len(manifest.labels):
        raise bad_manifest(
            manifest.path,
            "labels",
            f"lists {len(manifest.labels)} labels but model {model_path} gives {classes} outputs",
        )
    return inputs[0].name, outputs[0].name


class EmotionClassifier:
    """An ONNX expression classifier, fed as its manifest says; one session, created once and shared."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        """`threads` bounds onnxruntime's intra-op pool so the classifier leaves cores to the LLM and STT."""
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(
                "model_missing",
                f"The FER model {model_path} is missing: run `tadbot models pull`, or set fer.model_path "
                "(env TADBOT_FER__MODEL_PATH) to an .onnx file with its manifest beside it.",
            )
        self.manifest = load_manifest(model_path.with_suffix(".json"))

        # Also set by the CLI at start; repeated here for library use. Without it onnxruntime starts its
        # telemetry uploader and leaves a session file in TMPDIR.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail, ...)
            raise ModelError(
                "model_corrupt",
                f"The FER model {model_path} could not be loaded ({exc}); run `tadbot models verify`.",
            ) from exc
        self._input, self._output = _check_io(self.manifest, model_path, session)
        self._session = session
        _LOGGER.info(
            "FER classifier loaded: model=%s labels=%s input=%s color=%s threads=%d",
            model_path,
            ",".join(self.manifest.labels),
            self.manifest.input_size,
            self.manifest.color,
            threads,
        )

    def preprocess(self, face: np.ndarray) -> np.ndarray:
        """The tensor the model sees for a BGR face crop; public so tests and evaluation can check it."""
        import cv2
        import numpy as np

        m = self.manifest
        if m.color == "gray":
            pixels = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
        elif m.color == "rgb":
            pixels = cv2.cvtColor(face, cv2.COLOR_BGR2RGB)
        else:
            pixels = face
        width, height = m.input_size
        shrinking = pixels.shape[0] > height or pixels.shape[1] > width
        pixels = cv2.resize(
            pixels, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
        tensor: np.ndarray = pixels.astype(np.float32).reshape(height, width, m.channels)
        tensor = (tensor * np.float32(m.scale) - np.asarray(m.mean, np.float32)) / np.asarray(
            m.std, np.float32
        )
        if m.layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        return np.ascontiguousarray(tensor[np.newaxis], dtype=np.float32)

    def classify(self, face: np.ndarray) -> dict[str, float]:
        """Probability per emotion the model knows, in VOCABULARY order; others are left out, not set to 0."""
        import numpy as np

        (raw,) = self._session.run([self._output], {self._input: self.preprocess(face)})
        scores = np.asarray(raw, dtype=np.float64).reshape(-1)
        if scores.size != len(self.manifest.labels):
            raise bad_manifest(
                self.manifest.path,
                "labels",
                f"lists {len(self.manifest.labels)} labels but the model gave {scores.size} scores",
            )
        if self.manifest.output == "logits":
            exp = np.exp(scores - scores.max())
            probs = exp / exp.sum()
        else:
            probs = np.clip(scores, 0.0, 1.0)
        by_label = dict(zip(self.manifest.labels, probs.tolist(), strict=True))
        return {label: by_label[label] for label in VOCABULARY if label in by_label}


# --- pipeline -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Emotion:
    """One emotion from VOCABULARY and its probability, rounded down to 3 decimals for records and the API."""

    label: str
    score: float


def rank_top3(probs: Mapping[str, float]) -> tuple[Emotion, ...]:
    """The three most probable emotions, highest first, each rounded down to 3 decimals.

    Rounded down, not to nearest: three scores rounded up could sum past 1, and readers would wonder.
    Ties keep the order of `probs`.
    """
    ranked = sorted(probs.items(), key=lambda item: item[1], reverse=True)
    # The epsilon keeps a score that already has 3 decimals (0.3 is 299.99999... thousandths) as it is.
    return tuple(Emotion(label, math.floor(score * 1000 + 1e-6) / 1000) for label, score in ranked[:3])


@dataclass(frozen=True)
class FaceReading:
    """What one frame showed: how many faces, and the top three emotions of the face that was read."""

    faces: int
    top3: tuple[Emotion, ...]
    probs: dict[str, float]


class FerPipeline:
    """Detect, pick the face the detector offers first, align it if the model wants that, classify."""

    def __init__(self, detector: Detector, classifier: EmotionClassifier) -> None:
        self.detector = detector
        self.classifier = classifier
        if classifier.manifest.aligned and not detector.gives_landmarks:
            _LOGGER.warning(
                "FER model %s expects landmark-aligned faces but the Haar detector gives boxes only; "
                "readings will be less accurate. `tadbot models pull` fetches YuNet, which gives landmarks.",
                classifier.manifest.path,
            )

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        """What the classifier reads: the aligned face when the model and detector allow, else the box."""
        template = self.classifier.manifest.align_template
        if template is not None and face.landmarks is not None:
            return align_face(image, face.landmarks, template, self.classifier.manifest.input_size)
        box = face.box
        return image[box.y : box.y + box.h, box.x : box.x + box.w]

    def read(self, image: np.ndarray) -> FaceReading:
        """Read a BGR frame. No face is an ordinary answer (faces=0), not an error: people look away."""
        started = time.perf_counter()
        faces = self.detector.detect(image)
        detected = time.perf_counter()
        if not faces:
            _LOGGER.debug("FER read: faces=0 detect_ms=%.1f", (detected - started) * 1000)
            return FaceReading(0, (), {})
        probs = self.classifier.classify(self.crop(image, faces[0]))
        top3 = rank_top3(probs)
        _LOGGER.debug(
            "FER read: faces=%d top=%s detect_ms=%.1f classify_ms=%.1f",
            len(faces),
            top3[0].label,
            (detected - started) * 1000,
            (time.perf_counter() - detected) * 1000,
        )
        return FaceReading(len(faces), top3, probs)


def build_pipeline(
    model_path: Path, *, detector: str, detector_path: Path, policy: str, threads: int
) -> FerPipeline:
    """The pipeline as configured; the server, `eval fer` and `bench fer` all read faces through this."""
    return FerPipeline(
        open_detector(detector, detector_path, policy=policy), EmotionClassifier(model_path, threads=threads)
    )
