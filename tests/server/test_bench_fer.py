"""`tadbot bench fer` on the tiny ONNX: the report that tools rely on, and a clear error without photos."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import tadbot
from tests.server.test_eval_fer import labelled_folder


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
