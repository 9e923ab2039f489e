"""Five-point face alignment: turn, scale and shift a face so its eyes, nose and mouth sit where the
classifier's training faces had them. Models trained on aligned faces read a plain box crop markedly worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

Points = Sequence[tuple[float, float]]


def similarity_transform(source: Points, target: Points) -> np.ndarray:
    """The 2x3 rotation + uniform scale + shift that best maps `source` onto `target` (least squares).

    No reflection and no shear: a face is never mirrored or squashed to fit the template.
    """
    import numpy as np

    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching lists of at least 2 points; got {src.shape} and {dst.shape}")
    # Unknowns (a, b, tx, ty) of x' = a*x - b*y + tx and y' = b*x + a*y + ty.
    ones, zeros = np.ones(len(src)), np.zeros(len(src))
    rows = np.vstack(
        [
            np.column_stack([src[:, 0], -src[:, 1], ones, zeros]),
            np.column_stack([src[:, 1], src[:, 0], zeros, ones]),
        ]
    )
    (a, b, tx, ty), _, rank, _ = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    if rank < 4:
        raise ValueError("the landmarks coincide; no transform can align them")
    return np.array([[a, -b, tx], [b, a, ty]], dtype=np.float64)


def align_face(image: np.ndarray, landmarks: Points, template: Points, size: tuple[int, int]) -> np.ndarray:
    """The face warped so its landmarks land on `template`, as a crop of `size` (width, height) pixels."""
    import cv2

    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
