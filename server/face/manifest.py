"""The FER model manifest and the emotion vocabulary its labels are normalised into.

Any ONNX classifier can be swapped in: the manifest JSON beside it says how to feed it and what it outputs.
Its label names are mapped onto one vocabulary (the map lives in data/emotion_labels.toml), so records compare
across models and data sets.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.datafiles import DataFile, Invalid
from server.errors import ModelError

VOCABULARY = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt")

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


# --- labels -------------------------------------------------------------------------------------------------


def _label_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _parse_aliases(document: dict[str, Any]) -> dict[str, str]:
    aliases = document["aliases"]
    if not isinstance(aliases, dict):
        raise Invalid("[aliases] must be a table of name = label")
    for name, label in aliases.items():
        if label not in VOCABULARY:
            raise Invalid(f"aliases.{name} = {label!r}; expected one of {VOCABULARY}")
    return {_label_key(name): label for name, label in aliases.items()}


LABELS_FILE = DataFile("server/data/emotion_labels.toml", 1, "bad_labels", _parse_aliases, error=ModelError)
"""The label map: how each model's and data set's names read in TADBot's vocabulary."""


@functools.cache
def _aliases() -> dict[str, str]:
    return LABELS_FILE.load()


def normalize_label(name: str) -> str:
    """Map a model's or dataset's emotion name onto VOCABULARY ("Anger" -> "angry").

    Models and datasets spell emotions differently; records must compare across them. Raises ValueError for a
    name the label map does not know.
    """
    label = _aliases().get(_label_key(name))
    if label is None:
        raise ValueError(
            f"unknown emotion label {name!r}: use one of {VOCABULARY} or map it in {LABELS_FILE.shipped}"
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
    align_template: tuple[tuple[float, float], ...] | None
    """Where an aligned model's training faces had their five landmarks (eyes, nose tip, mouth corners), in
    input pixels; required when `aligned` is true."""
    source: str
    license: str

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3


def bad_manifest(path: Path, key: str, problem: str) -> ModelError:
    """The error for a manifest key that is missing, malformed or does not fit the model; names both."""
    return ModelError("bad_manifest", f"FER model manifest {path}: key {key!r} {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(raw: dict[str, Any], path: Path, key: str, choices: tuple[str, ...]) -> str:
    value = raw[key]
    if value not in choices:
        raise bad_manifest(path, key, f"is {value!r}; expected one of {', '.join(choices)}")
    return str(value)


def _text(raw: dict[str, Any], path: Path, key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise bad_manifest(path, key, "must be a non-empty string")
    return value


def _labels(raw: dict[str, Any], path: Path) -> tuple[str, ...]:
    value = raw["labels"]
    if not isinstance(value, list) or not value or not all(isinstance(name, str) for name in value):
        raise bad_manifest(path, "labels", "must be a non-empty list of strings")
    try:
        labels = tuple(normalize_label(name) for name in value)
    except ValueError as exc:
        raise bad_manifest(path, "labels", str(exc)) from exc
    if len(set(labels)) != len(labels):
        raise bad_manifest(path, "labels", f"names one emotion twice after normalising: {labels}")
    return labels


def _input_size(raw: dict[str, Any], path: Path) -> tuple[int, int]:
    value = raw["input_size"]
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in value)
    ):
        raise bad_manifest(path, "input_size", f"is {value!r}; expected [width, height] in positive pixels")
    return value[0], value[1]


def _per_channel(norm: dict[str, Any], path: Path, key: str, channels: int) -> tuple[float, ...]:
    value = norm.get(key)
    if (
        not isinstance(value, list)
        or len(value) not in (1, channels)
        or not all(_is_number(item) for item in value)
    ):
        raise bad_manifest(path, f"normalize.{key}", f"is {value!r}; expected 1 or {channels} numbers")
    return tuple(float(item) for item in value)


def _align_template(
    raw: dict[str, Any], path: Path, size: tuple[int, int]
) -> tuple[tuple[float, float], ...]:
    value = raw.get("align_template")
    expected = "expected 5 [x, y] points (eyes, nose tip, mouth corners) inside input_size"
    if not isinstance(value, list) or len(value) != 5:
        raise bad_manifest(path, "align_template", f"is {value!r}; {expected}")
    points = []
    for point in value:
        if not (isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)):
            raise bad_manifest(path, "align_template", f"has {point!r}; {expected}")
        x, y = float(point[0]), float(point[1])
        if not (0 <= x <= size[0] and 0 <= y <= size[1]):
            raise bad_manifest(path, "align_template", f"has {point!r} outside input_size; {expected}")
        points.append((x, y))
    return tuple(points)


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
            raise bad_manifest(path, key, "is missing")

    color = _choice(raw, path, "color", _COLORS)
    channels = 1 if color == "gray" else 3
    norm = raw["normalize"]
    if not isinstance(norm, dict):
        raise bad_manifest(path, "normalize", 'must be {"scale": number, "mean": [...], "std": [...]}')
    if not _is_number(norm.get("scale")):
        raise bad_manifest(path, "normalize.scale", f"is {norm.get('scale')!r}; expected a number")
    std = _per_channel(norm, path, "std", channels)
    if any(value == 0 for value in std):
        raise bad_manifest(path, "normalize.std", "must not contain 0")
    if not isinstance(raw["aligned"], bool):
        raise bad_manifest(path, "aligned", f"is {raw['aligned']!r}; expected true or false")
    input_size = _input_size(raw, path)
    return Manifest(
        path=path,
        labels=_labels(raw, path),
        input_size=input_size,
        color=color,
        layout=_choice(raw, path, "layout", _LAYOUTS),
        scale=float(norm["scale"]),
        mean=_per_channel(norm, path, "mean", channels),
        std=std,
        output=_choice(raw, path, "output", _OUTPUTS),
        aligned=raw["aligned"],
        align_template=_align_template(raw, path, input_size) if raw["aligned"] else None,
        source=_text(raw, path, "source"),
        license=_text(raw, path, "license"),
    )
