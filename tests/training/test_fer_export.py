"""The export: ONNX that matches torch, a manifest the server accepts, and a model the server reads alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from server.errors import ModelError
from server.face.fer import EmotionClassifier
from server.face.manifest import load_manifest
from tests.training.conftest import COLOURS, TrainedRun, draw_face
from training.fer.export import OPSET, export_onnx, verify_onnx
from training.fer.model import build_model
from training.fer.transforms import InputSpec, preprocess


def _torch_model(trained: TrainedRun) -> torch.nn.Module:
    checkpoint = torch.load(trained.out / "fer-mobilenet_v3_small.pt")
    model = build_model(checkpoint["arch"], len(checkpoint["labels"]), pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def test_manifest_passes_the_servers_loader(trained: TrainedRun) -> None:
    path = trained.out / "fer-mobilenet_v3_small.json"
    assert trained.summary["manifest"] == str(path)
    manifest = load_manifest(path)
    assert manifest.labels == ("angry", "happy", "neutral", "sad")
    assert (manifest.input_size, manifest.color, manifest.layout, manifest.output) == (
        (32, 32),
        "rgb",
        "NCHW",
        "logits",
    )
    assert manifest.scale == pytest.approx(1 / 255)
    assert manifest.mean == (0.485, 0.456, 0.406) and manifest.std == (0.229, 0.224, 0.225)
    assert manifest.aligned is False
    assert "mobilenet_v3_small" in manifest.source and "faces" in manifest.source
    assert manifest.license == "see the training data's licence"
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert (raw["input_name"], raw["output_name"]) == ("input", "logits")


def test_onnx_has_a_dynamic_batch_and_opset_17(trained: TrainedRun) -> None:
    model = onnx.load(str(trained.out / "fer-mobilenet_v3_small.onnx"))
    assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [OPSET]
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "input" and dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert trained.report["export"]["max_abs_diff"] < 1e-4


def test_the_server_reads_faces_as_torch_does(trained: TrainedRun) -> None:
    classifier = EmotionClassifier(trained.out / "fer-mobilenet_v3_small.onnx")
    model = _torch_model(trained)
    rng = np.random.default_rng(42)
    right = 0
    for label in COLOURS:
        for _ in range(3):
            crop = draw_face(label, rng, side=int(rng.integers(40, 90)))
            probs = classifier.classify(crop)
            with torch.no_grad():
                logits = model(torch.from_numpy(preprocess(crop, InputSpec(size=32)))[None])[0]
            expected = dict(zip(classifier.manifest.labels, torch.softmax(logits, 0).tolist(), strict=True))
            assert max(probs, key=probs.__getitem__) == max(expected, key=expected.__getitem__)
            assert probs == pytest.approx(expected, abs=1e-5)
            right += max(probs, key=probs.__getitem__) == label
    assert right >= 10  # of 12 fresh faces: the server's reading is the trained model's, and it is right


def test_a_mismatched_export_fails_loudly(trained: TrainedRun) -> None:
    torch.manual_seed(99)
    stranger = build_model("mobilenet_v3_small", 4, pretrained=False).eval()
    check = torch.randn(2, 3, 32, 32)
    with pytest.raises(ModelError, match=r"onnxruntime and torch differ by .* must not be used") as raised:
        verify_onnx(stranger, trained.out / "fer-mobilenet_v3_small.onnx", check)
    assert raised.value.code == "export_mismatch"


def test_export_checks_itself(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", 3, pretrained=False)
    diff = export_onnx(model, tmp_path / "m.onnx", InputSpec(size=32), torch.randn(3, 3, 32, 32))
    assert 0 <= diff < 1e-4
    assert not model.training, "exported in eval mode: dropout and batch statistics off"
