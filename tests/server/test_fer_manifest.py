"""The FER model manifest and label normalisation: every bad key is refused with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import ModelError
from server.face import manifest as fer_manifest
from tests.tiny_onnx import FER2013_LABELS, build_tiny_fer_onnx, rewrite_manifest


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    """The manifest of a freshly built tiny model, free for a test to rewrite."""
    return build_tiny_fer_onnx(tmp_path / "m.onnx").with_suffix(".json")


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
    assert fer_manifest.normalize_label(name) == label


def test_label_map_targets_only_the_vocabulary_and_covers_it() -> None:
    aliases = fer_manifest.LABELS_FILE.load()
    assert set(aliases.values()) == set(fer_manifest.VOCABULARY)
    assert aliases["anger"] == "angry"


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="bored"):
        fer_manifest.normalize_label("bored")


# --- manifest -----------------------------------------------------------------------------------------------


def test_manifest_loads(manifest_path: Path) -> None:
    manifest = fer_manifest.load_manifest(manifest_path)
    assert manifest.path == manifest_path
    assert manifest.labels == FER2013_LABELS
    assert (manifest.input_size, manifest.color, manifest.layout) == ((48, 48), "gray", "NCHW")
    assert manifest.channels == 1


@pytest.mark.parametrize(
    "key", ["labels", "input_size", "color", "layout", "normalize", "output", "aligned", "source", "license"]
)
def test_manifest_missing_key_is_named(manifest_path: Path, key: str) -> None:
    rewrite_manifest(manifest_path, **{key: None})
    with pytest.raises(ModelError) as info:
        fer_manifest.load_manifest(manifest_path)
    assert info.value.code == "bad_manifest"
    assert repr(key) in info.value.message
    assert str(manifest_path) in info.value.message


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
        ({"aligned": True}, "align_template"),
        ({"aligned": True, "align_template": [[10, 10]] * 4}, "align_template"),
        ({"aligned": True, "align_template": [[10, 10]] * 4 + [[10, 60]]}, "align_template"),
        ({"aligned": True, "align_template": [[10, 10]] * 4 + [["10", 20]]}, "align_template"),
    ],
)
def test_manifest_invalid_value_is_named(manifest_path: Path, changes: dict[str, object], key: str) -> None:
    rewrite_manifest(manifest_path, **changes)
    with pytest.raises(ModelError) as info:
        fer_manifest.load_manifest(manifest_path)
    assert info.value.code == "bad_manifest"
    assert repr(key) in info.value.message


def test_aligned_manifest_keeps_its_template(manifest_path: Path) -> None:
    template = [[13.1, 17.7], [34.9, 17.6], [24.0, 29.1], [14.8, 39.6], [33.3, 39.5]]
    rewrite_manifest(manifest_path, aligned=True, align_template=template)
    manifest = fer_manifest.load_manifest(manifest_path)
    assert manifest.aligned and manifest.align_template == tuple(tuple(point) for point in template)
    rewrite_manifest(manifest_path, aligned=False)
    assert fer_manifest.load_manifest(manifest_path).align_template is None


def test_manifest_that_is_not_json(manifest_path: Path) -> None:
    manifest_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="not readable JSON") as info:
        fer_manifest.load_manifest(manifest_path)
    assert info.value.code == "bad_manifest"


def test_missing_manifest(manifest_path: Path) -> None:
    manifest_path.unlink()
    with pytest.raises(ModelError, match="beside the model") as info:
        fer_manifest.load_manifest(manifest_path)
    assert info.value.code == "bad_manifest"
