"""What a training run produced, for people and for scripts: report.json, report.md and confusion.png.

Scores are computed from confusion matrices. Macro recall (the mean per-class recall) chooses the epoch: with
few disgusted or fearful faces, accuracy rewards a model that never predicts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

_CELL = 76


@dataclass(frozen=True)
class Metrics:
    """One evaluation: rows of `confusion` are the true emotions, columns the predicted ones."""

    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    loss: float
    """Mean cross-entropy, unweighted and without label smoothing."""

    @property
    def n(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        return sum(self.confusion[i][i] for i in range(len(self.labels))) / self.n if self.n else 0.0

    @property
    def per_class_recall(self) -> dict[str, float]:
        """Recall of each emotion present in this split; absent ones are left out, not counted as 0."""
        return {
            label: row[i] / sum(row)
            for i, (label, row) in enumerate(zip(self.labels, self.confusion, strict=True))
            if sum(row)
        }

    @property
    def macro_recall(self) -> float:
        recalls = self.per_class_recall
        return sum(recalls.values()) / len(recalls) if recalls else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "loss": round(self.loss, 5),
            "accuracy": round(self.accuracy, 4),
            "macro_recall": round(self.macro_recall, 4),
            "per_class_recall": {k: round(v, 4) for k, v in self.per_class_recall.items()},
            "confusion": {"labels": list(self.labels), "matrix": [list(row) for row in self.confusion]},
        }


def confusion_image(metrics: Metrics, title: str) -> np.ndarray:
    """A heatmap of one confusion matrix: colour is the row's share, text the count and that share."""
    import cv2
    import numpy as np

    font, labels, size = cv2.FONT_HERSHEY_SIMPLEX, metrics.labels, len(metrics.labels)
    left, top = 120, 112
    width, height = max(left + size * _CELL + 16, 420), top + size * _CELL + 16
    image = np.full((height, width, 3), 255, np.uint8)
    scores = f"{metrics.n} faces, accuracy {metrics.accuracy:.3f}, macro recall {metrics.macro_recall:.3f}"
    cv2.putText(image, title, (10, 24), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, scores, (10, 48), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "predicted ->", (left, 74), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(image, "true", (10, top - 8), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    dark = np.array((110, 45, 8), np.float32)  # a deep blue, BGR
    for row, true in enumerate(labels):
        total = sum(metrics.confusion[row])
        y = top + row * _CELL
        cv2.putText(image, true, (10, y + _CELL // 2 + 5), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for col in range(size):
            count = metrics.confusion[row][col]
            share = count / total if total else 0.0
            x = left + col * _CELL
            colour = (255 - share * (255 - dark)).astype(int).tolist()
            cv2.rectangle(image, (x, y), (x + _CELL - 1, y + _CELL - 1), colour, -1)
            cv2.rectangle(image, (x, y), (x + _CELL - 1, y + _CELL - 1), (200, 200, 200), 1)
            ink = (255, 255, 255) if share > 0.5 else (0, 0, 0)
            cv2.putText(image, str(count), (x + 8, y + 32), font, 0.6, ink, 1, cv2.LINE_AA)
            cv2.putText(image, f"{share:.0%}", (x + 8, y + 56), font, 0.4, ink, 1, cv2.LINE_AA)
    for col, predicted in enumerate(labels):
        cv2.putText(
            image, predicted, (left + col * _CELL + 4, top - 10), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA
        )
    return image


def write_confusion_png(path: Path, panels: list[tuple[str, Metrics]]) -> Path:
    """Each (title, metrics) side by side; the run's final validation and, if any, test matrices."""
    import cv2
    import numpy as np

    images = [confusion_image(metrics, title) for title, metrics in panels]
    height = max(image.shape[0] for image in images)
    padded = [
        cv2.copyMakeBorder(im, 0, height - im.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        for im in images
    ]
    ok, encoded = cv2.imencode(".png", np.hstack(padded))
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    path.write_bytes(encoded.tobytes())
    return path


def write_report(out: Path, report: dict[str, Any], panels: list[tuple[str, Metrics]]) -> dict[str, Path]:
    """report.json (everything), report.md (a summary to read) and confusion.png; returns their paths."""
    paths = {"json": out / "report.json", "markdown": out / "report.md", "confusion": out / "confusion.png"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(_markdown(report), encoding="utf-8")
    write_confusion_png(paths["confusion"], panels)
    return paths


def _markdown(report: dict[str, Any]) -> str:
    data, best, final = report["dataset"], report["best"], report["final"]
    lines = [
        f"# FER training: {report['config']['arch']} on {Path(data['path']).name}",
        "",
        f"- Data: {data['path']} ({data['layout']} layout), {data['images']} images read, "
        f"{data['unreadable']} unreadable and skipped; validation held out by {data['val_from']}.",
        f"- Chosen epoch: {best['epoch']} of {len(report['history'])}, by validation macro recall "
        "(the mean of per-class recalls); the test split was not used to choose.",
        f"- Model: {report['export']['onnx']} with its manifest {report['export']['manifest']}.",
        "",
        "| emotion | train | val | test | val recall | test recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    test = final["test"] or {"per_class_recall": {}}
    for label in report["labels"]:
        val_recall = final["val"]["per_class_recall"].get(label)
        test_recall = test["per_class_recall"].get(label)
        lines.append(
            f"| {label} | {report['counts']['train'][label]} | {report['counts']['val'][label]} "
            f"| {report['counts']['test'][label]} | {_score(val_recall)} | {_score(test_recall)} |"
        )
    lines += ["", "| split | images | accuracy | macro recall |", "|---|---:|---:|---:|"]
    for name in ("val", "test"):
        if final[name]:
            scores = final[name]
            lines.append(
                f"| {name} | {scores['n']} | {scores['accuracy']:.3f} | {scores['macro_recall']:.3f} |"
            )
    lines += [
        "",
        "confusion.png shows the confusion matrices (rows: true emotion; colour: share of the row).",
        "",
    ]
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
