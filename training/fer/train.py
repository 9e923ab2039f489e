"""The training run: data, class weights, AdamW on a cosine schedule, the best epoch by validation, export.

The epoch kept is the one with the best validation macro recall. The test split, when the dataset has one,
is evaluated once at the very end with those weights; nothing is chosen on it.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from server.for_training import ConfigError
from training.fer.config import TrainConfig
from training.fer.data import Sample, Splits, decode_face, read_dataset, split_dataset
from training.fer.export import export_onnx, write_manifest
from training.fer.model import build_model
from training.fer.report import Metrics, write_report
from training.fer.transforms import InputSpec, augment, preprocess

_LOGGER = logging.getLogger(__name__)

CHECK_FACES = 8
"""Validation faces run through both torch and onnxruntime to check the export."""


class FaceTensors(Dataset[tuple[torch.Tensor, int]]):
    """Samples as (tensor, class index). With `augment_seed` each image is varied, differently every epoch
    but the same on every run: the variation is seeded by (seed, epoch, index), not by worker timing."""

    def __init__(
        self, samples: Sequence[Sample], labels: Sequence[str], spec: InputSpec, augment_seed: int | None
    ) -> None:
        self.samples = list(samples)
        self.index = {label: i for i, label in enumerate(labels)}
        self.spec = spec
        self.augment_seed = augment_seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[item]
        face = decode_face(sample.path)
        if face is None:  # it decoded when the dataset was read; something changed it since
            raise OSError(f"{sample.path} no longer decodes")
        if self.augment_seed is not None:
            face = augment(face, np.random.default_rng((self.augment_seed, self.epoch, item)))
        return torch.from_numpy(preprocess(face, self.spec)), self.index[sample.label]


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_recall: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class Fit:
    history: list[EpochStats]
    best_epoch: int
    best_state: dict[str, torch.Tensor]


def class_weights(train: Sequence[Sample], labels: Sequence[str]) -> list[float]:
    """Inverse class frequency, scaled so the average training image weighs 1 (n / (classes * n_class)):
    a rare emotion counts as much in the loss as a common one."""
    counts = Counter(s.label for s in train)
    return [len(train) / (len(labels) * counts[label]) for label in labels]


def seed_everything(seed: int) -> None:
    """Same seed, same run on the CPU; on CUDA cuDNN is asked for deterministic kernels (a little slower)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bad_option", "--device 'cuda': torch sees no CUDA GPU here; use --device cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def evaluate(
    model: nn.Module, loader: DataLoader[Any], labels: Sequence[str], device: torch.device
) -> Metrics:
    model.eval()
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    loss_sum, seen = 0.0, 0
    with torch.no_grad():
        for inputs, targets in loader:
            logits = model(inputs.to(device))
            targets = targets.to(device)
            loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            seen += len(targets)
            np.add.at(confusion, (targets.cpu().numpy(), logits.argmax(1).cpu().numpy()), 1)
    return Metrics(
        tuple(labels), tuple(tuple(int(n) for n in row) for row in confusion), loss_sum / max(seen, 1)
    )


def fit(
    model: nn.Module,
    train_loader: DataLoader[Any],
    val_loader: DataLoader[Any],
    weights: Sequence[float],
    labels: Sequence[str],
    config: TrainConfig,
    device: torch.device,
) -> Fit:
    """Train for config.epochs (or until `patience` epochs bring no better validation macro recall), keeping
    the weights of the best epoch. Ties keep the earlier epoch. Only validation data is passed in."""
    criterion = nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=device),
        label_smoothing=config.label_smoothing,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * len(train_loader)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=config.lr / 100)
    faces = train_loader.dataset
    assert isinstance(faces, FaceTensors)
    history: list[EpochStats] = []
    best_epoch, best_state = 0, {}
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        faces.epoch = epoch
        model.train()
        loss_sum, seen = 0.0, 0
        lr = optimizer.param_groups[0]["lr"]
        for inputs, targets in train_loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(targets)
            seen += len(targets)
        val = evaluate(model, val_loader, labels, device)
        stats = EpochStats(
            epoch,
            loss_sum / seen,
            val.loss,
            val.accuracy,
            val.macro_recall,
            lr,
            time.perf_counter() - started,
        )
        history.append(stats)
        _LOGGER.info(
            "epoch %d/%d: train_loss=%.4f val_loss=%.4f val_accuracy=%.4f val_macro_recall=%.4f "
            "lr=%.2e (%.1f s)",
            epoch,
            config.epochs,
            stats.train_loss,
            stats.val_loss,
            stats.val_accuracy,
            stats.val_macro_recall,
            lr,
            stats.seconds,
        )
        if not best_epoch or stats.val_macro_recall > history[best_epoch - 1].val_macro_recall:
            best_epoch = epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        elif config.patience is not None and epoch - best_epoch >= config.patience:
            _LOGGER.info("stopping early: no better validation macro recall for %d epochs", config.patience)
            break
    return Fit(history, best_epoch, best_state)


def _loader(faces: FaceTensors, config: TrainConfig, device: torch.device, *, train: bool) -> DataLoader[Any]:
    """Training batches are shuffled, and a last partial batch is dropped when a full one exists: batch norm
    cannot train on a batch of one."""
    return DataLoader(
        faces,
        batch_size=config.batch_size,
        shuffle=train,
        drop_last=train and len(faces) >= config.batch_size,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )


def run_training(config: TrainConfig) -> dict[str, Any]:
    """The whole run: everything goes to config.out; returns the summary the CLI prints as its last line."""
    faces = read_dataset(config.data, limit=config.limit, seed=config.seed, workers=max(config.workers, 1))
    splits = split_dataset(faces, config.val_fraction, config.seed)
    device = pick_device(config.device)
    try:  # now, not after hours of training
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("bad_option", f"--out {config.out}: cannot create it ({exc})") from exc
    seed_everything(config.seed)
    _describe(splits, faces.layout, device)
    spec = InputSpec(size=config.input_size)
    weights = class_weights(splits.train, splits.labels)
    model = build_model(config.arch, len(splits.labels), pretrained=config.pretrained).to(device)

    def loader(samples: Sequence[Sample], *, train: bool = False) -> DataLoader[Any]:
        faces = FaceTensors(samples, splits.labels, spec, augment_seed=config.seed if train else None)
        return _loader(faces, config, device, train=train)

    val_loader = loader(splits.val)
    result = fit(model, loader(splits.train, train=True), val_loader, weights, splits.labels, config, device)
    model.load_state_dict(result.best_state)
    final_val = evaluate(model, val_loader, splits.labels, device)
    final_test = evaluate(model, loader(splits.test), splits.labels, device) if splits.test else None

    exported = _export(model, splits, spec, config, faces.layout)
    torch.save(
        {
            "arch": config.arch,
            "labels": list(splits.labels),
            "input_size": spec.size,
            "state_dict": result.best_state,
        },
        exported.checkpoint,
    )
    report = {
        "dataset": {
            "path": str(config.data),
            "layout": faces.layout,
            "images": len(faces.samples),
            "unreadable": len(faces.unreadable),
            "unreadable_files": [str(p) for p in faces.unreadable[:50]],
            "val_from": splits.val_from,
        },
        "labels": list(splits.labels),
        "counts": splits.counts(),
        "class_weights": {label: round(w, 5) for label, w in zip(splits.labels, weights, strict=True)},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "device": str(device),
        "selection": "the epoch with the best validation macro recall (mean per-class recall); "
        "the test split is evaluated once at the end and never used to choose",
        "best_epoch": result.best_epoch,
        "best": asdict(result.history[result.best_epoch - 1]),
        "history": [asdict(stats) for stats in result.history],
        "final": {"val": final_val.as_dict(), "test": final_test.as_dict() if final_test else None},
        "export": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(exported).items()},
    }
    panels = [(f"validation, best epoch {result.best_epoch}", final_val)]
    if final_test:
        panels.append(("test, once with those weights", final_test))
    paths = write_report(config.out, report, panels)
    return {
        "onnx": str(exported.onnx),
        "manifest": str(exported.manifest),
        "report": str(paths["json"]),
        "labels": list(splits.labels),
        "best_epoch": result.best_epoch,
        "val_macro_recall": round(final_val.macro_recall, 4),
        "val_accuracy": round(final_val.accuracy, 4),
        "test_macro_recall": round(final_test.macro_recall, 4) if final_test else None,
        "test_accuracy": round(final_test.accuracy, 4) if final_test else None,
        "unreadable": len(faces.unreadable),
    }


@dataclass(frozen=True)
class Exported:
    onnx: Path
    manifest: Path
    checkpoint: Path
    max_abs_diff: float
    """Largest difference between onnxruntime's and torch's logits on the check faces."""


def _export(model: nn.Module, splits: Splits, spec: InputSpec, config: TrainConfig, layout: str) -> Exported:
    """ONNX, checked against torch on a few validation faces, and its manifest beside it."""
    stem = config.out / f"fer-{config.arch}"
    faces = FaceTensors(splits.val[:CHECK_FACES], splits.labels, spec, augment_seed=None)
    check = torch.stack([faces[i][0] for i in range(len(faces))])
    onnx_path = stem.with_suffix(".onnx")
    diff = export_onnx(copy.deepcopy(model), onnx_path, spec, check)
    pretrained = "ImageNet-pretrained " if config.pretrained else ""
    write_manifest(
        stem.with_suffix(".json"),
        splits.labels,
        spec,
        source=f"{pretrained}torchvision {config.arch} fine-tuned by `tadbot train fer` on "
        f"{config.data.name} ({layout} layout), {date.today().isoformat()}",
        license=config.license,
    )
    return Exported(onnx_path, stem.with_suffix(".json"), stem.with_suffix(".pt"), diff)


def _describe(splits: Splits, layout: str, device: torch.device) -> None:
    counts = splits.counts()
    _LOGGER.info(
        "%s layout: %d train, %d val (held out by %s), %d test images; emotions %s; device %s",
        layout,
        len(splits.train),
        len(splits.val),
        splits.val_from,
        len(splits.test),
        ", ".join(f"{label}={counts['train'][label]}" for label in splits.labels),
        device,
    )
