"""Facial emotion recognition: find the face in a frame, classify its expression, keep the top three.

Frames are decoded, read and dropped in memory; nothing here writes to disk, since raw images are never kept.
Any ONNX classifier can be swapped in: the manifest JSON beside it says how to feed it and what it outputs.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from server.errors import FerError, ModelError

if TYPE_CHECKING:
    import numpy as np

_LOGGER = logging.getLogger(__name__)

VOCABULARY = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt")

_LABELS_FILE = Path(__file__).with_name("data") / "emotion_labels.json"
_MANIFEST_KEYS = (
    "labels",
    "input_size",
    "color",
    "layout",
    "normalize",
    "output",
    "aligned",
    "source",
    "license",
)
_COLORS = ("gray", "rgb", "bgr")
_LAYOUTS = ("NCHW", "NHWC")
_OUTPUTS = ("logits", "probs")
_POLICIES = ("largest",)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))


# --- labels -------------------------------------------------------------------------------------------------


def _label_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


@functools.cache
def _aliases() -> dict[str, str]:
    with _LABELS_FILE.open(encoding="utf-8") as fh:
        aliases: dict[str, str] = json.load(fh)["aliases"]
    return {_label_key(name): label for name, label in aliases.items()}


def normalize_label(name: str) -> str:
    """Map a model's or dataset's emotion name onto VOCABULARY ("Anger" -> "angry").

    Models and datasets spell emotions differently; records must compare across them. Raises ValueError for a
    name the label map does not know.
    """
    label = _aliases().get(_label_key(name))
    if label is None:
        raise ValueError(
            f"unknown emotion label {name!r}: use one of {VOCABULARY} or map it in {_LABELS_FILE}"
        )
    return label


# --- manifest -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """How to feed one ONNX classifier; it lives in the JSON beside the model, so models swap without code."""

    path: Path
    labels: tuple[str, ...]
    """The model's outputs in order, already normalised to VOCABULARY."""
    input_size: tuple[int, int]
    """(width, height) of the face crop the model takes."""
    color: str
    """The channel order the model was trained on: gray, rgb or bgr."""
    layout: str
    """NCHW or NHWC."""
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Pixels become (x * scale - mean) / std, per channel in `color` order (one value applies to all)."""
    output: str
    """logits (softmax is applied here) or probs (the model already ends in a softmax)."""
    aligned: bool
    """True if the model was trained on landmark-aligned faces; a box-only detector then costs accuracy."""
    source: str
    license: str

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3


def _bad_manifest(path: Path, key: str, problem: str) -> ModelError:
    return ModelError("bad_manifest", f"FER model manifest {path}: key {key!r} {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(raw: dict[str, Any], path: Path, key: str, choices: tuple[str, ...]) -> str:
    value = raw[key]
    if value not in choices:
        raise _bad_manifest(path, key, f"is {value!r}; expected one of {', '.join(choices)}")
    return str(value)


def _text(raw: dict[str, Any], path: Path, key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise _bad_manifest(path, key, "must be a non-empty string")
    return value


def _labels(raw: dict[str, Any], path: Path) -> tuple[str, ...]:
    value = raw["labels"]
    if not isinstance(value, list) or not value or not all(isinstance(name, str) for name in value):
        raise _bad_manifest(path, "labels", "must be a non-empty list of strings")
    try:
        labels = tuple(normalize_label(name) for name in value)
    except ValueError as exc:
        raise _bad_manifest(path, "labels", str(exc)) from exc
    if len(set(labels)) != len(labels):
        raise _bad_manifest(path, "labels", f"names one emotion twice after normalising: {labels}")
    return labels


def _input_size(raw: dict[str, Any], path: Path) -> tuple[int, int]:
    value = raw["input_size"]
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in value)
    ):
        raise _bad_manifest(path, "input_size", f"is {value!r}; expected [width, height] in positive pixels")
    return value[0], value[1]


def _per_channel(norm: dict[str, Any], path: Path, key: str, channels: int) -> tuple[float, ...]:
    value = norm.get(key)
    if (
        not isinstance(value, list)
        or len(value) not in (1, channels)
        or not all(_is_number(item) for item in value)
    ):
        raise _bad_manifest(path, f"normalize.{key}", f"is {value!r}; expected 1 or {channels} numbers")
    return tuple(float(item) for item in value)


def load_manifest(path: Path) -> Manifest:
    """Read and check a model manifest; a bad one stops start-up with the file and key named."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(
            "bad_manifest",
            f"FER model manifest {path} is missing; it belongs beside the model (`tadbot models pull`)",
        ) from exc
    except (OSError, ValueError) as exc:
        raise ModelError("bad_manifest", f"FER model manifest {path} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelError("bad_manifest", f"FER model manifest {path} must hold a JSON object")
    for key in _MANIFEST_KEYS:
        if key not in raw:
            raise _bad_manifest(path, key, "is missing")

    color = _choice(raw, path, "color", _COLORS)
    channels = 1 if color == "gray" else 3
    norm = raw["normalize"]
    if not isinstance(norm, dict):
        raise _bad_manifest(path, "normalize", 'must be {"scale": number, "mean": [...], "std": [...]}')
    if not _is_number(norm.get("scale")):
        raise _bad_manifest(path, "normalize.scale", f"is {norm.get('scale')!r}; expected a number")
    std = _per_channel(norm, path, "std", channels)
    if any(value == 0 for value in std):
        raise _bad_manifest(path, "normalize.std", "must not contain 0")
    if not isinstance(raw["aligned"], bool):
        raise _bad_manifest(path, "aligned", f"is {raw['aligned']!r}; expected true or false")
    return Manifest(
        path=path,
        labels=_labels(raw, path),
        input_size=_input_size(raw, path),
        color=color,
        layout=_choice(raw, path, "layout", _LAYOUTS),
        scale=float(norm["scale"]),
        mean=_per_channel(norm, path, "mean", channels),
        std=std,
        output=_choice(raw, path, "output", _OUTPUTS),
        aligned=raw["aligned"],
        source=_text(raw, path, "source"),
        license=_text(raw, path, "license"),
    )


# --- decoding -----------------------------------------------------------------------------------------------


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, walking segment lengths from the SOI marker."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in _JPEG_STANDALONE:
            pos += 2
        elif marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        else:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if length < 2:
                return None
            pos += 2 + length
    return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG IHDR or a JPEG SOF header; None if the bytes are neither."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_size(data)
    return None


def _check_side(width: int, height: int, max_side: int) -> None:
    if max(width, height) > max_side:
        raise FerError(
            "image_too_large",
            f"The image is {width}x{height} pixels; the longest side may be {max_side}. Send a smaller one.",
            413,
        )


def decode_image(data: bytes, *, max_bytes: int = 10 * 1024 * 1024, max_side: int = 4096) -> np.ndarray:
    """Decode a JPEG or PNG frame in memory into a BGR uint8 array; nothing touches disk.

    The size is read from the file header before decoding, so a small file that claims a huge image (a
    decompression bomb) is refused before it can allocate gigabytes on a 4 GB Pi. Only JPEG and PNG pass: the
    API promises those, and it keeps OpenCV's rarer decoders (TIFF, JPEG 2000, ...) away from network input.
    """
    if len(data) > max_bytes:
        raise FerError(
            "image_too_large",
            f"The image is {len(data)} bytes; the limit is {max_bytes}. Send a smaller JPEG or PNG.",
            413,
        )
    size = _header_size(data)
    if size is None or 0 in size:
        raise FerError("bad_image", "The frame is not a readable image: send a JPEG or PNG.", 415)
    _check_side(*size, max_side)

    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FerError("bad_image", "The frame could not be decoded: send a complete JPEG or PNG.", 415)
    # The header parser and the decoder could disagree on a crafted file; the decoded size is what counts.
    _check_side(image.shape[1], image.shape[0], max_side)
    return image


# --- detection ----------------------------------------------------------------------------------------------


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


class Detector(Protocol):
    """Finds faces; the first box returned is the one to read."""

    def detect(self, image: np.ndarray) -> list[Box]: ...


class FaceDetector:
    """OpenCV's Haar frontal-face cascade: ships inside the opencv wheel, so it works offline and on a Pi."""

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
        if policy not in _POLICIES:
            raise ValueError(f"unknown face policy {policy!r}; expected one of {_POLICIES}")
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

    def detect(self, image: np.ndarray) -> list[Box]:
        """Faces in a BGR image, largest first: the person talking sits closest to the camera."""
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
        boxes = []
        for x, y, w, h in found:
            # Back to image coordinates, clipped: a box around a face at the edge reaches into the border.
            left, top = max(int(x) - pad, 0), max(int(y) - pad, 0)
            right, bottom = min(int(x + w) - pad, width), min(int(y + h) - pad, height)
            if right > left and bottom > top:
                boxes.append(
                    Box(
                        round(left / factor),
                        round(top / factor),
                        round((right - left) / factor),
                        round((bottom - top) / factor),
                    )
                )
        return sorted(boxes, key=lambda box: box.area, reverse=True)


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
        raise _bad_manifest(manifest.path, "layout", problem)
    for (key, want), got in zip(wanted, shape[1:], strict=True):
        if isinstance(got, int) and got != want:
            raise _bad_manifest(manifest.path, key, problem)
    classes = outputs[0].shape[-1] if outputs[0].shape else None
    if isinstance(classes, int) and classes != len(manifest.labels):
        raise _bad_manifest(
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
            raise _bad_manifest(
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


@dataclass(frozen=True)
class FaceReading:
    """What one frame showed: how many faces, and the top three emotions of the face that was read."""

    faces: int
    top3: tuple[Emotion, ...]
    probs: dict[str, float]


class FerPipeline:
    """Detect, pick the first face the detector offers, classify: the whole read of one frame."""

    def __init__(self, detector: Detector, classifier: EmotionClassifier) -> None:
        self.detector = detector
        self.classifier = classifier
        if classifier.manifest.aligned:
            _LOGGER.warning(
                "FER model %s expects landmark-aligned faces but the detector gives boxes only; "
                "readings will be less accurate",
                classifier.manifest.path,
            )

    def read(self, image: np.ndarray) -> FaceReading:
        """Read a BGR frame. No face is an ordinary answer (faces=0), not an error: people look away."""
        started = time.perf_counter()
        boxes = self.detector.detect(image)
        detected = time.perf_counter()
        if not boxes:
            _LOGGER.debug("FER read: faces=0 detect_ms=%.1f", (detected - started) * 1000)
            return FaceReading(0, (), {})
        box = boxes[0]
        probs = self.classifier.classify(image[box.y : box.y + box.h, box.x : box.x + box.w])
        ranked = sorted(probs.items(), key=lambda item: item[1], reverse=True)
        # Rounded down, not to nearest: three scores rounded up could sum past 1, and readers would wonder.
        top3 = tuple(Emotion(label, math.floor(score * 1000) / 1000) for label, score in ranked[:3])
        _LOGGER.debug(
            "FER read: faces=%d top=%s detect_ms=%.1f classify_ms=%.1f",
            len(boxes),
            top3[0].label,
            (detected - started) * 1000,
            (time.perf_counter() - detected) * 1000,
        )
        return FaceReading(len(boxes), top3, probs)
