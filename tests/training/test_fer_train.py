"""The training run: it learns, it chooses on validation only, and rare emotions weigh more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.conftest import TrainedRun, write_csv_dataset
from training.fer.config import TrainConfig
from training.fer.data import Sample, read_dataset, split_dataset
from training.fer.model import build_model
from training.fer.train import FaceTensors, class_weights, fit, pick_device
from training.fer.transforms import InputSpec


def test_the_model_learns_the_synthetic_emotions(trained: TrainedRun) -> None:
    """Chance is 0.25 on four balanced emotions; the discs are easy, so a working loop gets far above it."""
    assert trained.summary["labels"] == ["angry", "happy", "neutral", "sad"]
    assert trained.summary["val_accuracy"] >= 0.8
    assert trained.summary["val_macro_recall"] >= 0.8
    assert trained.summary["test_accuracy"] >= 0.8
    history = trained.report["history"]
    assert len(history) == 6
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_the_best_epoch_is_chosen_on_validation_alone(trained: TrainedRun) -> None:
    report = trained.report
    recalls = [epoch["val_macro_recall"] for epoch in report["history"]]
    assert report["best_epoch"] == trained.summary["best_epoch"] == recalls.index(max(recalls)) + 1
    best = report["history"][report["best_epoch"] - 1]
    assert report["best"] == best
    # the saved weights are that epoch's: evaluating them again gives its validation scores exactly
    assert report["final"]["val"]["macro_recall"] == round(best["val_macro_recall"], 4)
    assert report["final"]["val"]["accuracy"] == round(best["val_accuracy"], 4)
    assert report["final"]["test"]["n"] == 40
    assert "test split is evaluated once at the end and never used to choose" in report["selection"]


def test_identity_split_in_a_real_run(trained: TrainedRun) -> None:
    """Ten people, two of them the dataset's test split; validation takes two of the other eight."""
    report = trained.report
    assert report["dataset"]["val_from"] == "identity"
    sizes = {name: sum(counts.values()) for name, counts in report["counts"].items()}
    assert sizes == {"train": 120, "val": 40, "test": 40}  # 20 images a person, 2 people held out
    assert report["dataset"]["unreadable"] == 1
    assert report["dataset"]["unreadable_files"] == [str(trained.data / "images" / "corrupt.jpg")]


def test_class_weights_are_inverse_frequency() -> None:
    train = [
        Sample(Path(f"/{label}{k}"), label)
        for label, n in (("happy", 60), ("fear", 10), ("sad", 30))
        for k in range(n)
    ]
    weights = dict(zip(("fear", "happy", "sad"), class_weights(train, ("fear", "happy", "sad")), strict=True))
    assert weights["fear"] / weights["happy"] == pytest.approx(6.0)
    assert weights["sad"] / weights["happy"] == pytest.approx(2.0)
    # scaled so the average training image weighs 1: each class contributes the same total weight
    assert weights == pytest.approx({"fear": 100 / 30, "happy": 100 / 180, "sad": 100 / 90})
    assert sum(weights[s.label] for s in train) == pytest.approx(len(train))


def test_augmented_tensors_are_the_same_every_run_and_differ_by_epoch(tmp_path: Path) -> None:
    write_csv_dataset(tmp_path, people=1, per_class={"happy": 2, "sad": 2}, test_people=0)
    samples = read_dataset(tmp_path).samples
    spec = InputSpec(size=32)
    faces, again = (FaceTensors(samples, ("happy", "sad"), spec, augment_seed=5) for _ in range(2))
    tensor, index = faces[2]
    assert tensor.shape == (3, 32, 32) and index == 1
    assert torch.equal(tensor, again[2][0])
    faces.epoch = 1
    assert not torch.equal(tensor, faces[2][0])
    plain = FaceTensors(samples, ("happy", "sad"), spec, augment_seed=None)
    assert torch.equal(plain[2][0], plain[2][0]) and not torch.equal(plain[2][0], tensor)


def test_patience_stops_and_ties_keep_the_earlier_epoch(tmp_path: Path) -> None:
    """With a learning rate too small to change anything, no epoch beats the first: stop after `patience`."""
    write_csv_dataset(tmp_path, people=4, per_class={"happy": 2, "sad": 2}, test_people=0)
    splits = split_dataset(read_dataset(tmp_path), 0.25, seed=0)
    config = TrainConfig(
        data=tmp_path, out=tmp_path / "out", epochs=5, batch_size=4, lr=1e-12, patience=2, workers=0
    )
    spec = InputSpec(size=32)
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", 2, pretrained=False)
    loaders = [
        torch.utils.data.DataLoader(FaceTensors(part, splits.labels, spec, seed), batch_size=4)
        for part, seed in ((splits.train, 0), (splits.val, None))
    ]
    result = fit(model, *loaders, [1.0, 1.0], splits.labels, config, pick_device("cpu"))
    assert [stats.epoch for stats in result.history] == [1, 2, 3]
    assert result.best_epoch == 1
    assert set(result.best_state) == set(model.state_dict())
    first = result.history[0]
    assert all(stats.val_macro_recall <= first.val_macro_recall for stats in result.history)
    assert np.isfinite([stats.train_loss for stats in result.history]).all()
