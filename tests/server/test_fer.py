"""Facial emotion recognition: manifest checks, safe decoding, detection and the reading of real faces."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from server import fer
from server.errors import FerError, ModelError
from tests.tiny_onnx import FER2013_LABELS, build_tiny_fer_onnx

ROOT = Path(__file__).parents[2]
FACES_DIR = ROOT.parent / "shared" / "data" / "faces-dev"


@pytest.fixture(scope="module")
def detector() -> fer.FaceDetector:
    return fer.FaceDetector()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_fer_onnx(tmp_path_factory.mktemp("fer") / "tiny.onnx")


@pytest.fixture(scope="module")
def pipeline(detector: fer.FaceDetector, tiny_model: Path) -> fer.FerPipeline:
    return fer.FerPipeline(detector, fer.EmotionClassifier(tiny_model))


@pytest.fixture(scope="module")
def faces() -> dict[str, str]:
    """Image name -> labelled emotion for the dev photos; skips where the shared data set is absent."""
    labels = FACES_DIR / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"face photos not found at {FACES_DIR}")
    with labels.open(newline="", encoding="utf-8") as fh:
        return {row["image"]: row["emotion"] for row in csv.DictReader(fh)}


def photo(name: str) -> np.ndarray:
    return fer.decode_image((FACES_DIR / "images" / name).read_bytes())


def rewrite_manifest(model: Path, **changes: object) -> None:
    manifest_path = model.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def test_import_is_cheap() -> None:
    """The CLI and the API import this module; OpenCV, numpy and onnxruntime load only with a model."""
    code = "import sys, server.fer; print(sorted({'cv2', 'numpy', 'onnxruntime'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


# --- labels -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("anger", "angry"),
        ("Fearful", "fear"),
        ("happiness", "happy"),
        ("sadness", "sad"),
        ("Surprised", "surprise"),
        ("disgusted", "disgust"),
        ("contempt", "contempt"),
        ("Neutral ", "neutral"),
    ],
)
def test_labels_normalise_into_the_vocabulary(name: str, label: str) -> None:
    assert fer.normalize_label(name) == label


def test_label_map_targets_only_the_vocabulary_and_covers_it() -> None:
    aliases = json.loads((Path(fer.__file__).parent / "data" / "emotion_labels.json").read_text())["aliases"]
    assert set(aliases.values()) == set(fer.VOCABULARY)


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="bored"):
        fer.normalize_label("bored")


# --- manifest -----------------------------------------------------------------------------------------------


def test_manifest_loads(tiny_model: Path) -> None:
    manifest = fer.load_manifest(tiny_model.with_suffix(".json"))
    assert manifest.labels == FER2013_LABELS
    assert (manifest.input_size, manifest.color, manifest.layout) == ((48, 48), "gray", "NCHW")
    assert manifest.channels == 1


@pytest.mark.parametrize(
    "key", ["labels", "input_size", "color", "layout", "normalize", "output", "aligned", "source", "license"]
)
def test_manifest_missing_key_is_named(tmp_path: Path, key: str) -> None:
    model = build_tiny_fer_onnx(tmp_path / "m.onnx")
    rewrite_manifest(model, **{key: None})
    with pytest.raises(ModelError) as info:
        fer.EmotionClassifier(model)
    assert info.value.code == "bad_manifest"
    assert repr(key) in info.value.message
    assert str(model.with_suffix(".json")) in info.value.message


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"labels": ["angry", "disgust", "fear", "happyish", "sad", "surprise", "neutral"]}, "labels"),
        ({"labels": ["angry", "anger", "fear", "happy", "sad", "surprise", "neutral"]}, "labels"),
        ({"color": "yuv"}, "color"),
        ({"layout": "CHW"}, "layout"),
        ({"input_size": [48]}, "input_size"),
        ({"output": "softmax"}, "output"),
        ({"aligned": "no"}, "aligned"),
        ({"license": ""}, "license"),
        ({"normalize": {"scale": 1, "mean": [0], "std": [0]}}, "normalize.std"),
        ({"normalize": {"scale": 1, "mean": [0, 0], "std": [1]}}, "normalize.mean"),
        ({"normalize": {"mean": [0], "std": [1]}}, "normalize.scale"),
    ],
)
def test_manifest_invalid_value_is_named(tmp_path: Path, changes: dict[str, object], key: str) -> None:
    model = build_tiny_fer_onnx(tmp_path / "m.onnx")
    rewrite_manifest(model, **changes)
    with pytest.raises(ModelError) as info:
        fer.load_manifest(model.with_suffix(".json"))
    assert info.value.code == "bad_manifest"
    assert repr(key) in info.value.message


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
    rewrite_manifest(model, **changes)
    fer.load_manifest(model.with_suffix(".json"))  # valid on its own; only the model shows the mismatch
    with pytest.raises(ModelError) as info:
        fer.EmotionClassifier(model)
    assert info.value.code == "bad_manifest"
    assert repr(key) in info.value.message


def test_manifest_that_is_not_json(tmp_path: Path) -> None:
    model = build_tiny_fer_onnx(tmp_path / "m.onnx")
    model.with_suffix(".json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="not readable JSON") as info:
        fer.EmotionClassifier(model)
    assert info.value.code == "bad_manifest"


def test_missing_manifest(tmp_path: Path) -> None:
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


# --- decoding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_decode_round_trip(ext: str) -> None:
    image = np.full((30, 40, 3), (255, 0, 0), np.uint8)
    decoded = fer.decode_image(encode(image, ext))
    assert decoded.shape == (30, 40, 3)
    assert decoded.dtype == np.uint8
    assert decoded[15, 20, 0] > 200 and decoded[15, 20, 2] < 50  # still blue: BGR order kept


def test_decode_gray_jpeg_gives_three_channels() -> None:
    assert fer.decode_image(encode(np.zeros((8, 8), np.uint8), ".jpg")).shape == (8, 8, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        np.random.default_rng(0).bytes(5000),
        b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(5000),  # JPEG magic, garbage after
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",  # a real format, but not one the API accepts
    ],
)
def test_undecodable_bytes_are_415(data: bytes) -> None:
    with pytest.raises(FerError) as info:
        fer.decode_image(data)
    assert (info.value.code, info.value.status) == ("bad_image", 415)
    assert "JPEG or PNG" in info.value.message


def test_truncated_png_is_415() -> None:
    data = encode(np.zeros((20, 20, 3), np.uint8), ".png")
    with pytest.raises(FerError) as info:
        fer.decode_image(data[:40])
    assert (info.value.code, info.value.status) == ("bad_image", 415)


@pytest.mark.parametrize(("ext", "shape"), [(".png", (10, 5000, 3)), (".jpg", (5000, 10, 3))])
def test_too_many_pixels_is_413(ext: str, shape: tuple[int, int, int]) -> None:
    with pytest.raises(FerError) as info:
        fer.decode_image(encode(np.zeros(shape, np.uint8), ext))
    assert (info.value.code, info.value.status) == ("image_too_large", 413)
    assert "5000" in info.value.message


def test_size_is_checked_from_the_header_before_decoding() -> None:
    """A PNG header claiming 100000x100000 (30 GB decoded) must be refused without decoding anything."""
    header = encode(np.zeros((1, 1, 3), np.uint8), ".png")
    bomb = bytearray(header)
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    with pytest.raises(FerError) as info:
        fer.decode_image(bytes(bomb))
    assert info.value.status == 413


def test_too_many_bytes_is_413() -> None:
    with pytest.raises(FerError) as info:
        fer.decode_image(b"\xff\xd8\xff" + bytes(11 * 1024 * 1024))
    assert (info.value.code, info.value.status) == ("image_too_large", 413)


# --- classification -----------------------------------------------------------------------------------------


def test_classifier_gives_probabilities_in_vocabulary_order(tiny_model: Path) -> None:
    probs = fer.EmotionClassifier(tiny_model).classify(np.full((100, 80, 3), 120, np.uint8))
    assert list(probs) == [label for label in fer.VOCABULARY if label in FER2013_LABELS]
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
        assert all(emotion.label in fer.VOCABULARY for emotion in reading.top3)
        scores = [emotion.score for emotion in reading.top3]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= score <= 1.0 for score in scores)
        assert sum(scores) <= 1.0
        ranked = sorted(reading.probs, key=reading.probs.__getitem__, reverse=True)
        assert [emotion.label for emotion in reading.top3] == ranked[:3]


@pytest.mark.usefixtures("faces")
def test_two_faces_read_the_larger(pipeline: fer.FerPipeline, detector: fer.FaceDetector) -> None:
    large = photo("Gerhard_Schroeder_0088.jpg")
    small = cv2.resize(photo("Hisao_Oguchi_0002.jpg"), None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    frame = np.full((500, 1000, 3), 128, np.uint8)
    frame[75 : 75 + small.shape[0], 75 : 75 + small.shape[1]] = small  # smaller face on the left, so that
    frame[75 : 75 + large.shape[0], 575 : 575 + large.shape[1]] = large  # "first found" would be wrong

    reading = pipeline.read(frame)
    boxes = detector.detect(frame)
    assert reading.faces == 2
    assert boxes[0].x >= 500 > boxes[1].x + boxes[1].w
    assert boxes[0].area > boxes[1].area
    larger = frame[boxes[0].y : boxes[0].y + boxes[0].h, boxes[0].x : boxes[0].x + boxes[0].w]
    smaller = frame[boxes[1].y : boxes[1].y + boxes[1].h, boxes[1].x : boxes[1].x + boxes[1].w]
    assert reading.probs == pipeline.classifier.classify(larger)
    assert reading.probs != pipeline.classifier.classify(smaller)


def test_haar_detection_rate_on_dev_photos(detector: fer.FaceDetector, faces: dict[str, str]) -> None:
    """Guards the detector settings: a change that loses faces on plain portraits shows up here.

    The set's one WebP file is left out: the API takes JPEG and PNG only.
    """
    decodable = [name for name in faces if (FACES_DIR / "images" / name).read_bytes()[:3] == b"\xff\xd8\xff"]
    found = sum(1 for name in decodable if detector.detect(photo(name)))
    assert found / len(decodable) >= 0.9, f"Haar found faces in {found} of {len(decodable)} photos"
