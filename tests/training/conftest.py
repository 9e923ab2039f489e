"""Tiny face-expression datasets drawn with OpenCV, and one real `tadbot train fer` run shared by the tests.

Each emotion is a disc of its own colour on grey noise, so a from-scratch network learns it within a few
dozen steps: the tests can then demand that the model learned, not only that the plumbing ran.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.conftest import tadbot

COLOURS = {"angry": (40, 40, 220), "happy": (40, 200, 40), "sad": (220, 60, 40), "neutral": (200, 200, 200)}
"""BGR disc colour per emotion: obvious to a network, unlike real expressions."""

TRAIN_ARGS = (
    "--no-pretrained",
    "--epochs=6",
    "--input-size=32",
    "--batch-size=8",
    "--lr=3e-3",
    "--val-fraction=0.25",
    "--workers=0",
    "--seed=0",
)
"""From scratch, batch norm needs about 60 steps before eval mode reads its statistics well: 6 epochs of 15
batches."""


def draw_face(label: str, rng: np.random.Generator, side: int = 64) -> np.ndarray:
    image = rng.integers(60, 120, (side, side, 3), dtype=np.uint8)
    colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[label])
    centre = (
        int(rng.integers(side * 3 // 8, side * 5 // 8)),
        int(rng.integers(side * 3 // 8, side * 5 // 8)),
    )
    cv2.circle(image, centre, int(rng.integers(side // 4, side * 3 // 8)), colour, -1)
    return image


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(encoded.tobytes())


def write_csv_dataset(
    root: Path,
    *,
    people: int = 10,
    per_class: dict[str, int] | None = None,
    test_people: int = 2,
    seed: int = 0,
    identity_column: str | None = "identity",
) -> list[dict[str, str]]:
    """images/ + labels.csv; person p shows each emotion per_class[label] times; the last `test_people` people
    form the test split. Returns the rows written."""
    counts = per_class or dict.fromkeys(COLOURS, 5)
    rng = np.random.default_rng(seed)
    rows = []
    for person in range(people):
        for label, count in counts.items():
            for k in range(count):
                name = f"p{person}_{label}_{k}.png"
                write_image(root / "images" / name, draw_face(label, rng))
                row = {"image": name, "emotion": label.upper(), "split": "train"}
                if person >= people - test_people:
                    row["split"] = "test"
                if identity_column:
                    row[identity_column] = f"p{person}"
                rows.append(row)
    write_labels(root, rows)
    return rows


def write_labels(root: Path, rows: list[dict[str, str]]) -> None:
    with (root / "labels.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@dataclass(frozen=True)
class TrainedRun:
    data: Path
    out: Path
    summary: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.out / "report.json").read_text(encoding="utf-8"))
        return loaded


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """`tadbot train fer` as a user runs it, once: a CSV dataset with identities, a test split and one
    corrupt image among the training rows."""
    root = tmp_path_factory.mktemp("fer-train")
    data, out = root / "faces", root / "out"
    rows = write_csv_dataset(data)
    (data / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_labels(data, [*rows, {**rows[0], "image": "corrupt.jpg"}])
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = tadbot("train", "fer", f"--data={data}", f"--out={out}", *TRAIN_ARGS, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return TrainedRun(data, out, summary, done.stdout, done.stderr)
