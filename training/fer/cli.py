"""`tadbot train fer`: flags, the run, and errors as one line.

`tadbot train ...` hands over to `python -m training` in its own process, as `tadbot device` does, so the
server never imports this package or torch. Progress goes to stderr; the last line of stdout is one JSON
object (paths, chosen epoch, scores) for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.fer.config import ARCHITECTURES, DEFAULT_LICENSE, DEVICES, TrainConfig

_DEFAULTS = TrainConfig(data=Path(), out=Path())


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `fer` to a `train` command's subparsers (argparse's private action type, hence Any)."""
    d = _DEFAULTS
    fer: argparse.ArgumentParser = subparsers.add_parser(
        "fer",
        help="fine-tune an ImageNet backbone on labelled faces; export ONNX + manifest for fer.model_path",
        description="Fine-tune a torchvision backbone on labelled faces and export ONNX with the manifest "
        "the server loads. Prints one JSON object on the last line of stdout.",
    )
    fer.add_argument(
        "--data",
        type=Path,
        required=True,
        help="images/ + labels.csv (image,emotion[,identity|subject][,split]), <emotion>/ folders "
        "(optionally under train/ val/ test/), or RAF-DB's basic layout",
    )
    fer.add_argument("--out", type=Path, required=True, help="folder for the model, manifest and report")
    fer.add_argument("--arch", choices=ARCHITECTURES, default=d.arch, help="backbone (default %(default)s)")
    fer.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    fer.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    fer.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help="peak AdamW learning rate, cosine schedule (default %(default)s)",
    )
    fer.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default %(default)s")
    fer.add_argument(
        "--input-size", type=int, default=d.input_size, help="side of the square input (default %(default)s)"
    )
    fer.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of training images held out for validation, by identity when the data names people "
        "(default %(default)s)",
    )
    fer.add_argument("--seed", type=int, default=d.seed, help="default %(default)s")
    fer.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=d.pretrained,
        help="start from torchvision's ImageNet weights, downloaded once into torch's cache (default on)",
    )
    fer.add_argument(
        "--device", choices=DEVICES, default=d.device, help="auto: CUDA when there is a GPU (default auto)"
    )
    fer.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="image-loading processes, 0 for none (default %(default)s)",
    )
    fer.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="default %(default)s")
    fer.add_argument("--limit", type=int, help="use at most N images, each emotion keeping its share")
    fer.add_argument(
        "--patience", type=int, help="stop after N epochs without a better validation macro recall"
    )
    fer.add_argument(
        "--license", default=DEFAULT_LICENSE, help="licence to write into the manifest (default: %(default)r)"
    )
    fer.set_defaults(run=run)
    return fer


def config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        out=args.out,
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        input_size=args.input_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        pretrained=args.pretrained,
        device=args.device,
        workers=args.workers,
        label_smoothing=args.label_smoothing,
        limit=args.limit,
        patience=args.patience,
        license=args.license,
    )


def run(args: argparse.Namespace) -> int:
    """Train, export, report; the summary is the last line of stdout. Torch is imported only here."""
    config = config_from(args)
    from training.fer.train import run_training

    summary = run_training(config)
    print(
        f"train fer: kept epoch {summary['best_epoch']}: validation macro recall "
        f"{summary['val_macro_recall']}, accuracy {summary['val_accuracy']}; "
        f"test accuracy {summary['test_accuracy']}; model {summary['onnx']}",
        file=sys.stderr,
    )
    print(json.dumps(summary, ensure_ascii=False))
    return 0
