"""ONNX export with the manifest beside it, checked against torch before anyone relies on it."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from server.for_training import ModelError
from training.fer.transforms import InputSpec

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-4


def export_onnx(model: nn.Module, path: Path, spec: InputSpec, check: torch.Tensor) -> float:
    """Write `model` as ONNX with a dynamic batch axis; return how far it strays from torch on `check`."""
    model = model.eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, spec.size, spec.size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript; the legacy
        # one still writes the opset-17 graph older onnxruntime releases (the Pi's) load.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return verify_onnx(model, path, check)


def verify_onnx(model: nn.Module, path: Path, check: torch.Tensor) -> float:
    """The largest difference between onnxruntime's and torch's logits on `check`, as a batch and alone.

    Raises ModelError at TOLERANCE or more: such a file would read faces differently in the server than the
    report says it does.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(check.cpu()).numpy()
    batch = session.run([OUTPUT_NAME], {INPUT_NAME: check.cpu().numpy()})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: check[:1].cpu().numpy()})[0]
    diff = float(max(np.abs(batch - expected).max(), np.abs(single - expected[:1]).max()))
    if not diff < TOLERANCE:
        raise ModelError(
            "export_mismatch",
            f"{path}: onnxruntime and torch differ by {diff:.2e} on the same faces (tolerance {TOLERANCE}); "
            "the export is wrong and must not be used",
        )
    return diff


def write_manifest(
    path: Path,
    labels: tuple[str, ...],
    spec: InputSpec,
    *,
    source: str,
    license: str,
) -> dict[str, Any]:
    """The manifest server.face.manifest.load_manifest reads, saved at `path` (the model's stem, .json).

    `aligned` is false: the server then feeds the detector's box crop, as the trainer fed its images. A
    model trained on RAF-DB's aligned images still reads box crops well, as those are tight face crops;
    the server's five-point alignment follows a template of its own, which the training images do not.
    """
    manifest = {
        "labels": list(labels),
        **spec.manifest_fields(),
        "output": "logits",
        "aligned": False,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "source": source,
        "license": license,
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
