"""`tadbot bench fer` on the tiny ONNX: the report that tools rely on, and a clear error without photos."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import tadbot
from tests.server.test_eval_fer import labelled_folder
from tests.tiny_onnx import (
    ALIGN_TEMPLATE_112,
    YUNET_FACE_SIDE,
    build_tiny_fer_onnx,
    build_tiny_yunet_onnx,
    rewrite_manifest,
)


def test_bench_fer_times_the_server_path_beside_the_bare_one(
    tmp_path: Path, tiny_fer: Path, face_jpeg: Path
) -> None:
    data = labelled_folder(tmp_path / "set", face_jpeg)
    done = tadbot("bench", "fer", "--data", str(data), "--model", str(tiny_fer), env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["model"] == str(tiny_fer) and report["frames"] == 6, "2 photos, 3 rounds"
    assert report["bare_p50_ms"] > 0 and report["server_p50_ms"] > 0
    assert abs(report["p50_ratio"] - report["server_p50_ms"] / report["bare_p50_ms"]) < 0.01
    assert report["fps"] > 0


def test_bench_fer_needs_photos(tmp_path: Path, tiny_fer: Path) -> None:
    done = tadbot("bench", "fer", "--model", str(tiny_fer), env=dict(os.environ))
    assert done.returncode == 1
    assert done.stderr.strip() == "tadbot: error: bench fer needs --data DIR, a folder with images/ of faces"
    (tmp_path / "images").mkdir()
    done = tadbot("bench", "fer", "--data", str(tmp_path), "--model", str(tiny_fer), env=dict(os.environ))
    assert done.returncode == 1 and "no .jpg or .png photos to time" in done.stderr


def test_bench_fer_with_yunet_and_an_aligned_model(tmp_path: Path) -> None:
    """The configured detector is the one timed, on both sides: YuNet, and alignment for an aligned model."""
    model = build_tiny_fer_onnx(tmp_path / "aligned.onnx")
    template = [[x * 48 / 112, y * 48 / 112] for x, y in ALIGN_TEMPLATE_112]
    rewrite_manifest(model.with_suffix(".json"), aligned=True, align_template=template)
    yunet = build_tiny_yunet_onnx(tmp_path / "yunet.onnx")
    images = tmp_path / "set" / "images"
    images.mkdir(parents=True)
    for index, corner in enumerate(((64, 32), (160, 96))):
        frame = np.zeros((240, 320, 3), np.uint8)
        frame[corner[1] : corner[1] + YUNET_FACE_SIDE, corner[0] : corner[0] + YUNET_FACE_SIDE] = 255
        cv2.imwrite(str(images / f"square{index}.png"), frame)
    env = {**os.environ, "TADBOT_FER__DETECTOR": "yunet", "TADBOT_FER__DETECTOR_PATH": str(yunet)}
    done = tadbot("bench", "fer", "--data", str(images.parent), "--model", str(model), env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert (report["detector"], report["frames"]) == ("yunet", 6)
    assert report["bare_p50_ms"] > 0 and report["server_p50_ms"] > 0
