"""Face detection and alignment: YuNet through OpenCV's own FaceDetectorYN, the policy for several faces,
the choice of detector, and five-point alignment feeding an aligned classifier."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from server.errors import ModelError
from server.face.align import align_face, similarity_transform
from server.face.detect import Box, Face, HaarDetector, YuNetDetector, open_detector, order_faces
from server.face.fer import EmotionClassifier, FerPipeline, build_pipeline
from tests.tiny_onnx import (
    ALIGN_TEMPLATE_112,
    YUNET_FACE_SIDE,
    build_tiny_fer_onnx,
    build_tiny_yunet_onnx,
    rewrite_manifest,
)

SIDE = YUNET_FACE_SIDE


@pytest.fixture(scope="module")
def yunet_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_yunet_onnx(tmp_path_factory.mktemp("yunet") / "yunet.onnx")


@pytest.fixture(scope="module")
def yunet(yunet_path: Path) -> YuNetDetector:
    return YuNetDetector(yunet_path)


def square_frame(width: int, height: int, *corners: tuple[int, int], value: int = 255) -> np.ndarray:
    """A dark frame with a bright "face" square (what the tiny YuNet finds) at each top-left corner."""
    frame = np.zeros((height, width, 3), np.uint8)
    for x, y in corners:
        frame[y : y + SIDE, x : x + SIDE] = value
    return frame


def expected_landmarks(x: float, y: float, side: float) -> list[tuple[float, float]]:
    return [(x + px * side / 112, y + py * side / 112) for px, py in ALIGN_TEMPLATE_112]


def test_yunet_finds_the_face_and_its_landmarks(yunet: YuNetDetector) -> None:
    (face,) = yunet.detect(square_frame(320, 240, (64, 32)))
    assert face.box == Box(64, 32, SIDE, SIDE)
    assert face.landmarks is not None
    np.testing.assert_allclose(face.landmarks, expected_landmarks(64, 32, SIDE), atol=1e-3)


def test_yunet_maps_a_large_frame_back_to_its_pixels(yunet: YuNetDetector) -> None:
    """Frames above 640 px are shrunk for detection; boxes and landmarks come back in frame pixels."""
    frame = cv2.resize(square_frame(640, 480, (256, 128)), (1280, 960), interpolation=cv2.INTER_NEAREST)
    (face,) = yunet.detect(frame)
    assert face.box == Box(512, 256, 2 * SIDE, 2 * SIDE)
    assert face.landmarks is not None
    np.testing.assert_allclose(face.landmarks, expected_landmarks(512, 256, 2 * SIDE), atol=1e-2)


def test_yunet_gives_nothing_for_an_empty_frame(yunet: YuNetDetector) -> None:
    assert yunet.detect(np.zeros((240, 320, 3), np.uint8)) == []


def test_yunet_reads_the_policy_face_first(yunet_path: Path) -> None:
    frame = square_frame(640, 480, (32, 32), (288, 192))  # the second sits at the centre of the frame
    largest = YuNetDetector(yunet_path, policy="largest").detect(frame)
    central = YuNetDetector(yunet_path, policy="central").detect(frame)
    assert len(largest) == len(central) == 2
    assert central[0].box == Box(288, 192, SIDE, SIDE)
    assert {face.box for face in largest} == {face.box for face in central}


def test_order_faces_by_policy() -> None:
    near = Face(Box(0, 0, 200, 200))
    middle = Face(Box(270, 190, 100, 100))
    far = Face(Box(540, 380, 90, 90))
    assert order_faces([middle, far, near], "largest", 640, 480) == [near, middle, far]
    assert order_faces([near, far, middle], "central", 640, 480) == [middle, near, far]


def test_unknown_policy_is_refused(yunet_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown face policy 'loudest'"):
        YuNetDetector(yunet_path, policy="loudest")
    with pytest.raises(ValueError, match="unknown face policy"):
        HaarDetector(policy="loudest")


def test_missing_or_corrupt_yunet_is_a_clear_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        YuNetDetector(tmp_path / "yunet.onnx")
    assert info.value.code == "model_missing"
    assert "tadbot models pull" in info.value.message and 'fer.detector = "haar"' in info.value.message
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ModelError) as info:
        YuNetDetector(corrupt)
    assert info.value.code == "model_corrupt" and str(corrupt) in info.value.message


def test_open_detector_chooses_by_config_and_model(tmp_path: Path, yunet_path: Path) -> None:
    assert open_detector("auto", yunet_path).name == "yunet"
    assert open_detector("auto", tmp_path / "absent.onnx").name == "haar"
    assert open_detector("haar", yunet_path).name == "haar"
    with pytest.raises(ModelError):
        open_detector("yunet", tmp_path / "absent.onnx")
    with pytest.raises(ValueError, match="unknown face detector"):
        open_detector("mtcnn", yunet_path)


# --- alignment ----------------------------------------------------------------------------------------------


def test_similarity_transform_recovers_a_known_motion() -> None:
    angle, scale, shift = math.radians(12), 1.7, (5.0, -3.0)
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    source = [(30.0, 40.0), (70.0, 41.0), (50.0, 60.0), (35.0, 80.0), (66.0, 79.0)]
    target = [(a * x - b * y + shift[0], b * x + a * y + shift[1]) for x, y in source]
    np.testing.assert_allclose(
        similarity_transform(source, target), [[a, -b, shift[0]], [b, a, shift[1]]], atol=1e-9
    )


def test_similarity_transform_never_mirrors() -> None:
    """A mirrored face is fitted by the closest rotation and scale, not flipped back."""
    source = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)]
    mirrored = [(-x, y) for x, y in source]
    matrix = similarity_transform(source, mirrored)
    assert np.linalg.det(matrix[:, :2]) >= 0


def test_similarity_transform_refuses_coincident_points() -> None:
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform([(5.0, 5.0)] * 5, list(ALIGN_TEMPLATE_112))
    with pytest.raises(ValueError, match="matching"):
        similarity_transform([(1.0, 2.0)] * 5, [(1.0, 2.0)] * 4)


def test_align_face_puts_each_landmark_on_the_template() -> None:
    """Marks drawn at the landmarks of a turned, shifted face land on the template after alignment."""
    angle, scale = math.radians(-20), 1.6
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    landmarks = [(a * x - b * y + 150, b * x + a * y + 90) for x, y in ALIGN_TEMPLATE_112]
    frame = np.zeros((400, 400, 3), np.uint8)
    for index, (x, y) in enumerate(landmarks):
        cv2.circle(frame, (round(x), round(y)), 4, (0, 0, 50 * (index + 1)), -1)
    aligned = align_face(frame, landmarks, ALIGN_TEMPLATE_112, (112, 112))
    assert aligned.shape == (112, 112, 3)
    for index, (x, y) in enumerate(ALIGN_TEMPLATE_112):
        assert abs(int(aligned[round(y), round(x), 2]) - 50 * (index + 1)) <= 2


# --- the pipeline with an aligned model ---------------------------------------------------------------------


@pytest.fixture
def aligned_model(tmp_path: Path) -> Path:
    """The tiny classifier (48 px, grey), its manifest saying it was trained on aligned faces."""
    model = build_tiny_fer_onnx(tmp_path / "aligned.onnx")
    template = [[x * 48 / 112, y * 48 / 112] for x, y in ALIGN_TEMPLATE_112]
    rewrite_manifest(model.with_suffix(".json"), aligned=True, align_template=template)
    return model


def test_pipeline_feeds_an_aligned_model_the_aligned_face(aligned_model: Path, yunet_path: Path) -> None:
    pipeline = build_pipeline(
        aligned_model, detector="auto", detector_path=yunet_path, policy="largest", threads=1
    )
    frame = square_frame(320, 240, (64, 32))
    cv2.circle(frame, (112, 93), 6, (0, 0, 0), -1)  # a dark nose, so the crop is not uniform
    (face,) = pipeline.detector.detect(frame)
    crop = pipeline.crop(frame, face)
    assert crop.shape[:2] == (48, 48)
    np.testing.assert_array_equal(
        crop,
        align_face(frame, face.landmarks or (), pipeline.classifier.manifest.align_template or (), (48, 48)),
    )
    assert crop[31, 24].max() < 60, "the nose lands where the template puts it (24, 30.7)"
    reading = pipeline.read(frame)
    assert reading.faces == 1
    assert reading.probs == pipeline.classifier.classify(crop)


def test_box_crop_when_the_model_is_not_aligned(tiny_fer: Path, yunet_path: Path) -> None:
    pipeline = build_pipeline(
        tiny_fer, detector="yunet", detector_path=yunet_path, policy="largest", threads=1
    )
    frame = square_frame(320, 240, (64, 32))
    (face,) = pipeline.detector.detect(frame)
    np.testing.assert_array_equal(pipeline.crop(frame, face), frame[32 : 32 + SIDE, 64 : 64 + SIDE])


def test_aligned_model_with_haar_warns_and_reads_the_box(
    aligned_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="server.face.fer"):
        pipeline = FerPipeline(HaarDetector(), EmotionClassifier(aligned_model))
    assert "expects landmark-aligned faces" in caplog.text
    frame = np.full((200, 200, 3), 90, np.uint8)
    face = Face(Box(20, 30, 100, 120))
    np.testing.assert_array_equal(pipeline.crop(frame, face), frame[30:150, 20:120])
