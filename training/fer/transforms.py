"""Face crop to model input, the same way the server does it, plus the augmentation used on training images.

`preprocess` mirrors server.face.fer.EmotionClassifier.preprocess step for step (colour, resize, normalise,
layout), and a test holds the two equal: a model works as well in the server as in training only if it is
fed alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How a face becomes a tensor; the manifest carries it, so the server feeds the model the same way.

    RGB, NCHW, and ImageNet's normalisation: what the torchvision backbones were pretrained on.
    """

    size: int = 112
    scale: float = 1 / 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "rgb"
    layout: str = "NCHW"

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "input_size": [self.size, self.size],
            "color": self.color,
            "layout": self.layout,
            "normalize": {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)},
        }


def preprocess(face: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A BGR face crop as the (3, size, size) float32 tensor the model sees (the server adds a batch axis)."""
    import cv2
    import numpy as np

    pixels = cv2.cvtColor(face, cv2.COLOR_BGR2RGB)
    shrinking = pixels.shape[0] > spec.size or pixels.shape[1] > spec.size
    pixels = cv2.resize(
        pixels, (spec.size, spec.size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    tensor = (pixels.astype(np.float32) * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / (
        np.asarray(spec.std, np.float32)
    )
    return np.ascontiguousarray(tensor.transpose(2, 0, 1), dtype=np.float32)


def augment(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A lightly varied BGR copy: crop, tilt, mirror, light. Small enough that the expression stays readable;
    no colour shifts, since skin tone is not what the model should learn."""
    import cv2
    import numpy as np

    height, width = face.shape[:2]
    keep = rng.uniform(0.85, 1.0)
    crop_h, crop_w = max(1, round(height * keep)), max(1, round(width * keep))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    out = face[top : top + crop_h, left : left + crop_w]
    turn = cv2.getRotationMatrix2D((crop_w / 2, crop_h / 2), float(rng.uniform(-10, 10)), 1.0)
    out = cv2.warpAffine(out, turn, (crop_w, crop_h), borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        out = cv2.flip(out, 1)
    gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-16, 16)
    return np.clip(out.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
