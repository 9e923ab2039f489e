"""Training feeds the network exactly as the server will, and augmentation varies faces reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from server.face.fer import EmotionClassifier
from tests.training.conftest import TrainedRun, draw_face
from training.fer.transforms import InputSpec, augment, preprocess


@pytest.mark.parametrize("shape", [(64, 64), (20, 30), (32, 32), (90, 41)])
def test_preprocess_is_the_servers_to_the_bit(trained: TrainedRun, shape: tuple[int, int]) -> None:
    """Larger crops shrink (INTER_AREA), smaller ones grow (INTER_LINEAR), one is already the input size."""
    classifier = EmotionClassifier(trained.out / "fer-mobilenet_v3_small.onnx")
    face = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = preprocess(face, InputSpec(size=32))
    assert ours.shape == (3, 32, 32) and ours.dtype == np.float32
    np.testing.assert_array_equal(classifier.preprocess(face)[0], ours)


def test_preprocess_normalises_with_imagenet_statistics() -> None:
    white = np.full((10, 10, 3), 255, np.uint8)
    tensor = preprocess(white, InputSpec(size=8))
    expected = [(1 - mean) / std for mean, std in zip(InputSpec.mean, InputSpec.std, strict=True)]
    np.testing.assert_allclose(tensor[:, 0, 0], expected, rtol=1e-6)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 2] = 255  # BGR: red is the last channel here and the first after conversion
    assert preprocess(red, InputSpec(size=8))[0, 0, 0] == pytest.approx((1 - 0.485) / 0.229)


def test_augment_is_seeded_varied_and_keeps_the_face_readable() -> None:
    face = draw_face("happy", np.random.default_rng(0))
    first = augment(face, np.random.default_rng((0, 1, 7)))
    again = augment(face, np.random.default_rng((0, 1, 7)))
    other_epoch = augment(face, np.random.default_rng((0, 2, 7)))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_epoch)
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert 54 <= first.shape[0] <= 64 and 54 <= first.shape[1] <= 64  # a crop of at least 85% a side
    # the disc's colour survives: green stays the strongest channel on average
    assert first[..., 1].mean() > first[..., 0].mean() and first[..., 1].mean() > first[..., 2].mean()
