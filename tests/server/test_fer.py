"""Facial emotion recognition: the classifier and its model, detection, ranking, and reading real faces."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from server.errors import ModelError
from server.face import fer
from server.face.detect import HaarDetector
from server.face.images import decode_image
from server.face.manifest import VOCABULARY, load_manifest
from tests.conftest import FACE_PHOTOS, FACES
from tests.tiny_onnx import FER2013_LABELS, build_tiny_fer_onnx, rewrite_manifest


@pytest.fixture(scope="module")
def detector() -> HaarDetector:
    return HaarDetector()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_fer_onnx(tmp_path_factory.mktemp("fer") / "tiny.onnx")


@pytest.fixture(scope="module")
def pipeline(detector: HaarDetector, tiny_model: Path) -> fer.FerPipeline:
    return fer.FerPipeline(detector, fer.EmotionClassifier(tiny_model))


@pytest.fixture(scope="module")
def faces() -> dict[str, str]:
    """Image name -> labelled emotion for the dev photos; skips where the shared data set is absent."""
    labels = FACES / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"face photos not found at {FACES}")
    with labels.open(newline="", encoding="utf-8") as fh:
        return {row["image"]: row["emotion"] for row in csv.DictReader(fh)}


def photo(name: str) -> np.ndarray:
    return decode_image((FACES / "images" / name).read_bytes())


# --- the model and its manifest -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"input_size": [64, 64]}, "input_size"),
        ({"labels": ["angry", "disgust", "fear", "happy", "sad", "surprise"]}, "labels"),
        ({"color": "rgb"}, "color"),
        ({"layout": "NHWC"}, "input_size"),
    ],
)
def test_manifest_that_disagrees_with_the_model_is_named(
    tmp_path: Path, changes: dict[str, object], key: str
) -> None:
    model = build_tiny_fer_onnx(tmp_path / "m.onnx")
    rewrite_manifest(model.with_suffix(".json"), **changes)
    load_manifest(model.with_suffix(".json"))  # valid on its own; only the model shows the mismatch
    with pytest.raises(ModelError) as info:
        fer.EmotionClassifier(model)
    assert info.value.code == "bad_manifest"
    assert repr(key) in info.value.message


def test_classifier_needs_its_manifest_beside_it(tmp_path: Path) -> None:
    model = build_tiny_fer_onnx(tmp_path / "m.onnx")
    model.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="beside the model") as info:
        fer.EmotionClassifier(model)
    assert info.value.code == "bad_manifest"


def test_missing_model_says_how_to_fix_it(tmp_path: Path) -> None:
    model = tmp_path / "absent.onnx"
    with pytest.raises(ModelError) as info:
        fer.EmotionClassifier(model)
    assert info.value.code == "model_missing"
    for needle in (str(model), "fer.model_path", "tadbot models pull"):
        assert needle in info.value.message


def test_corrupt_model(tmp_path: Path) -> None:
    model = build_tiny_fer_onnx(tmp_path / "m.onnx")
    model.write_bytes(b"not a model")
    with pytest.raises(ModelError) as info:
        fer.EmotionClassifier(model)
    assert info.value.code == "model_corrupt"


# --- classification -----------------------------------------------------------------------------------------


def test_classifier_gives_probabilities_in_vocabulary_order(tiny_model: Path) -> None:
    probs = fer.EmotionClassifier(tiny_model).classify(np.full((100, 80, 3), 120, np.uint8))
    assert list(probs) == [label for label in VOCABULARY if label in FER2013_LABELS]
    assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-6)
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probs.values())


def test_probs_output_is_not_softmaxed_twice(tmp_path: Path) -> None:
    face = np.random.default_rng(2).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    logits_model = build_tiny_fer_onnx(tmp_path / "logits.onnx")
    probs_model = build_tiny_fer_onnx(tmp_path / "probs.onnx", output="probs")
    from_logits = fer.EmotionClassifier(logits_model).classify(face)
    from_probs = fer.EmotionClassifier(probs_model).classify(face)
    assert from_probs == pytest.approx(from_logits, abs=1e-6)


def test_rgb_and_bgr_manifests_feed_different_channels(tmp_path: Path) -> None:
    blue = np.zeros((48, 48, 3), np.uint8)
    blue[..., 0] = 255
    rgb = fer.EmotionClassifier(build_tiny_fer_onnx(tmp_path / "rgb.onnx", color="rgb"))
    bgr = fer.EmotionClassifier(build_tiny_fer_onnx(tmp_path / "bgr.onnx", color="bgr"))
    rgb_in, bgr_in = rgb.preprocess(blue), bgr.preprocess(blue)
    assert rgb_in.shape == bgr_in.shape == (1, 3, 48, 48)
    assert rgb_in[0, 2].min() == 1.0 and rgb_in[0, 0].max() == 0.0  # blue is the last channel in RGB
    assert bgr_in[0, 0].min() == 1.0 and bgr_in[0, 2].max() == 0.0
    assert rgb.classify(blue) != bgr.classify(blue)  # same weights, so only the channel order differs


def test_nhwc_gray_input_shape(tmp_path: Path) -> None:
    classifier = fer.EmotionClassifier(build_tiny_fer_onnx(tmp_path / "m.onnx", layout="NHWC", size=64))
    tensor = classifier.preprocess(np.zeros((200, 150, 3), np.uint8))
    assert tensor.shape == (1, 64, 64, 1)
    assert tensor.dtype == np.float32


# --- ranking ------------------------------------------------------------------------------------------------


def test_rank_top3_orders_by_probability() -> None:
    probs = {"angry": 0.1, "happy": 0.45, "neutral": 0.25, "sad": 0.2}
    assert [e.label for e in fer.rank_top3(probs)] == ["happy", "neutral", "sad"]


def test_rank_top3_ties_keep_the_given_order() -> None:
    assert [e.label for e in fer.rank_top3({"sad": 0.3, "fear": 0.3, "angry": 0.4})] == [
        "angry",
        "sad",
        "fear",
    ]


def test_rank_top3_rounds_down_to_3_decimals() -> None:
    top3 = fer.rank_top3({"happy": 2 / 3, "sad": 0.2229, "fear": 0.1105})
    assert [(e.label, e.score) for e in top3] == [("happy", 0.666), ("sad", 0.222), ("fear", 0.11)]
    exact = fer.rank_top3({"neutral": 0.3, "sad": 0.29, "fear": 0.57})
    assert [e.score for e in exact] == [0.57, 0.3, 0.29]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7])
def test_rank_top3_keeps_at_most_three(size: int) -> None:
    probs = dict(zip(VOCABULARY, [1 / max(size, 1)] * size, strict=False))
    assert len(fer.rank_top3(probs)) == min(size, 3)


def test_rank_top3_never_sums_past_one() -> None:
    """Three scores just over a third would reach 1.001 rounded to nearest; rounded down they cannot."""
    assert sum(e.score for e in fer.rank_top3({"happy": 0.3335, "sad": 0.3335, "fear": 0.333})) <= 1.0
    rng = np.random.default_rng(3)
    for concentration in (0.05, 0.3, 1.0, 5.0):
        for probs in rng.dirichlet(np.full(len(VOCABULARY), concentration), size=500):
            top3 = fer.rank_top3(dict(zip(VOCABULARY, probs.tolist(), strict=True)))
            assert sum(e.score for e in top3) <= 1.0


# --- pipeline -----------------------------------------------------------------------------------------------


def test_blank_image_has_no_face(pipeline: fer.FerPipeline) -> None:
    assert pipeline.read(np.full((480, 640, 3), 200, np.uint8)) == fer.FaceReading(0, (), {})


def test_real_faces_are_read(pipeline: fer.FerPipeline, faces: dict[str, str]) -> None:
    first: dict[str, str] = {}
    for name, emotion in faces.items():
        first.setdefault(emotion, name)  # a handful of photos that covers every labelled emotion
    sample = list(first.values())
    readings = [pipeline.read(photo(name)) for name in sample]
    found = [reading for reading in readings if reading.faces >= 1]
    assert len(found) >= len(sample) - 2, f"faces found in {len(found)} of {len(sample)}"
    for reading in found:
        assert len(reading.top3) == 3
        assert all(emotion.label in VOCABULARY for emotion in reading.top3)
        scores = [emotion.score for emotion in reading.top3]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= score <= 1.0 for score in scores)
        assert sum(scores) <= 1.0
        ranked = sorted(reading.probs, key=reading.probs.__getitem__, reverse=True)
        assert [emotion.label for emotion in reading.top3] == ranked[:3]


def test_each_shipped_photo_has_one_face_and_a_licence(pipeline: fer.FerPipeline) -> None:
    """The photos every clone's end-to-end tests read: real faces the detector finds, with their sources."""
    readme = (FACE_PHOTOS / "README.md").read_text("utf-8")
    photos = sorted(FACE_PHOTOS.glob("*.jpg"))
    assert len(photos) == 2
    for path in photos:
        assert f"| {path.name} |" in readme and "public domain" in readme, f"{path.name} has no licence line"
        reading = pipeline.read(decode_image(path.read_bytes()))
        assert reading.faces == 1, path.name
        assert len(reading.top3) == 3


def test_two_faces_read_the_larger(pipeline: fer.FerPipeline, detector: HaarDetector) -> None:
    large = decode_image((FACE_PHOTOS / "grace_hopper.jpg").read_bytes())
    small = cv2.resize(
        decode_image((FACE_PHOTOS / "eileen_collins.jpg").read_bytes()),
        None,
        fx=0.6,
        fy=0.6,
        interpolation=cv2.INTER_AREA,
    )
    frame = np.full((500, 1000, 3), 128, np.uint8)
    frame[75 : 75 + small.shape[0], 75 : 75 + small.shape[1]] = small  # smaller face on the left, so that
    frame[75 : 75 + large.shape[0], 575 : 575 + large.shape[1]] = large  # "first found" would be wrong

    reading = pipeline.read(frame)
    boxes = [face.box for face in detector.detect(frame)]
    assert reading.faces == 2
    assert boxes[0].x >= 500 > boxes[1].x + boxes[1].w
    assert boxes[0].area > boxes[1].area
    larger = frame[boxes[0].y : boxes[0].y + boxes[0].h, boxes[0].x : boxes[0].x + boxes[0].w]
    smaller = frame[boxes[1].y : boxes[1].y + boxes[1].h, boxes[1].x : boxes[1].x + boxes[1].w]
    assert reading.probs == pipeline.classifier.classify(larger)
    assert reading.probs != pipeline.classifier.classify(smaller)


def test_haar_detection_rate_on_dev_photos(detector: HaarDetector, faces: dict[str, str]) -> None:
    """Guards the detector settings: a change that loses faces on plain portraits shows up here.

    The set's one WebP file is left out: the API takes JPEG and PNG only.
    """
    decodable = [name for name in faces if (FACES / "images" / name).read_bytes()[:3] == b"\xff\xd8\xff"]
    found = sum(1 for name in decodable if detector.detect(photo(name)))
    assert found / len(decodable) >= 0.9, f"Haar found faces in {found} of {len(decodable)} photos"
