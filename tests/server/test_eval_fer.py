"""`tadbot eval fer` on a labelled folder: the figures tools read, and clear errors for a bad folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import FACES, tadbot


def labelled_folder(root: Path, face_jpeg: Path) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    shutil.copy(face_jpeg, images / "face.jpg")
    cv2.imwrite(str(images / "wall.png"), np.full((120, 160, 3), 200, dtype=np.uint8))
    (root / "labels.csv").write_text("image,emotion\nface.jpg,happiness\nwall.png,anger\n", encoding="utf-8")
    return root


def test_eval_fer_reports_faces_found_accuracy_and_recall_per_class(
    tmp_path: Path, tiny_fer: Path, face_jpeg: Path
) -> None:
    data = labelled_folder(tmp_path / "set", face_jpeg)
    done = tadbot("eval", "fer", "--data", str(data), "--model", str(tiny_fer), env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["model"] == str(tiny_fer)
    assert (report["n"], report["face_found_rate"]) == (2, 0.5), "the blank wall has no face"
    assert report["accuracy"] in (0.0, 1.0)
    assert list(report["per_class_recall"]) == ["happy"], "dataset labels are mapped to the vocabulary"
    assert sum(report["confusion"].values()) == 1


def test_eval_fer_on_the_reference_photos(tiny_fer: Path) -> None:
    if not FACES.is_dir():
        pytest.skip(f"{FACES} is absent")
    done = tadbot("eval", "fer", "--data", str(FACES), "--model", str(tiny_fer), env=dict(os.environ))
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["n"] == 194 and report["face_found_rate"] > 0.8
    assert set(report["per_class_recall"]) <= {
        "angry",
        "contempt",
        "disgust",
        "fear",
        "happy",
        "neutral",
        "sad",
        "surprise",
    }


def test_eval_fer_names_what_is_wrong_with_the_folder(tmp_path: Path, tiny_fer: Path) -> None:
    done = tadbot("eval", "fer", "--data", str(tmp_path), "--model", str(tiny_fer), env=dict(os.environ))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"tadbot: error: {tmp_path / 'labels.csv'}: cannot read")
    (tmp_path / "labels.csv").write_text("image,emotion\na.jpg,boredom\n", encoding="utf-8")
    done = tadbot("eval", "fer", "--data", str(tmp_path), "--model", str(tiny_fer), env=dict(os.environ))
    assert done.returncode == 1 and "line 2: unknown emotion label 'boredom'" in done.stderr
