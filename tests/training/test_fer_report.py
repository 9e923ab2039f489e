"""Scores from confusion matrices, and reports whose numbers agree with each other."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.training.conftest import TrainedRun
from training.fer.report import Metrics, confusion_image


def test_metrics_from_a_confusion_matrix() -> None:
    metrics = Metrics(
        ("angry", "fear", "happy"),
        ((8, 2, 0), (1, 1, 0), (0, 0, 0)),  # nobody happy in this split
        0.5,
    )
    assert metrics.n == 12
    assert metrics.accuracy == pytest.approx(9 / 12)
    assert metrics.per_class_recall == {"angry": 0.8, "fear": 0.5}
    assert metrics.macro_recall == pytest.approx(0.65)  # accuracy flatters the majority class; this does not
    as_dict = metrics.as_dict()
    assert as_dict["confusion"] == {
        "labels": ["angry", "fear", "happy"],
        "matrix": [[8, 2, 0], [1, 1, 0], [0, 0, 0]],
    }
    assert (as_dict["accuracy"], as_dict["macro_recall"]) == (0.75, 0.65)


def test_confusion_matrices_agree_with_the_counts(trained: TrainedRun) -> None:
    report = trained.report
    labels = report["labels"]
    for split in ("val", "test"):
        final = report["final"][split]
        assert final["confusion"]["labels"] == labels
        matrix = np.array(final["confusion"]["matrix"])
        assert matrix.sum(axis=1).tolist() == [report["counts"][split][label] for label in labels]
        assert final["n"] == matrix.sum()
        assert final["accuracy"] == round(np.trace(matrix) / matrix.sum(), 4)
        recalls = {label: matrix[i, i] / matrix[i].sum() for i, label in enumerate(labels)}
        assert final["per_class_recall"] == pytest.approx(recalls, abs=1e-4)
        assert final["macro_recall"] == pytest.approx(np.mean(list(recalls.values())), abs=1e-4)
    weights = report["class_weights"]
    assert set(weights) == set(labels) and all(w == pytest.approx(1.0) for w in weights.values())


def test_confusion_png_shows_both_splits(trained: TrainedRun) -> None:
    image = cv2.imread(str(trained.out / "confusion.png"))
    assert image is not None
    height, width = image.shape[:2]
    one = confusion_image(Metrics(tuple(trained.report["labels"]), ((1, 0, 0, 0),) * 4, 0.0), "x")
    assert height == one.shape[0] and width == 2 * one.shape[1]  # validation and test, side by side
    assert 300 <= height <= 1000 and 600 <= width <= 2000
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, "cells, colours and text, not a blank image"


def test_confusion_cells_are_coloured_by_row_share() -> None:
    image = confusion_image(Metrics(("angry", "sad"), ((9, 1), (0, 0)), 0.0), "t")
    cell, left, top = 76, 120, 112
    full, light, empty = (
        image[top + 70, left + 70],
        image[top + 70, left + cell + 70],
        image[top + cell + 70, left + 70],
    )
    assert full.sum() < light.sum() < 3 * 255  # 90% of the row is darker than 10%
    assert tuple(empty) == (255, 255, 255)  # a row without faces stays white


def test_markdown_summary(trained: TrainedRun) -> None:
    text = (trained.out / "report.md").read_text(encoding="utf-8")
    best = trained.report["best_epoch"]
    assert f"Chosen epoch: {best} of 6, by validation macro recall" in text
    assert "| angry | 30 | 10 | 10 |" in text
    assert "1 unreadable and skipped" in text
