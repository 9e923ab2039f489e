"""`tadbot eval fer`: face reading against a labelled folder of photos.

The folder holds `images/` and `labels.csv` (`image,emotion`). Each photo goes through the server's own
path (decode in memory, detect, classify) with the configured detector and the chosen model. Labels on
both sides are mapped to TADBot's vocabulary first, so "happiness" in a dataset meets "happy" in a model.
Accuracy counts only photos where a face was found; how often that was is its own figure. A file the
server would refuse (not a JPEG or PNG) is listed as unreadable and left out of both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import TadbotError
from server.eval.labelled import read_labelled_csv


@dataclass(frozen=True)
class Photo:
    path: Path
    label: str


def read_photos(folder: Path) -> list[Photo]:
    from server.face.manifest import normalize_label

    labels = folder / "labels.csv"
    rows = read_labelled_csv(labels, ("image", "emotion"), "--data needs images/ and labels.csv")
    photos = []
    for line, row in rows:
        try:
            label = normalize_label(row["emotion"])
        except ValueError as exc:
            raise TadbotError("bad_data", f"{labels} line {line}: {exc}") from exc
        photos.append(Photo(folder / "images" / row["image"], label))
    return photos


def evaluate(photos: list[Photo], pipeline: Any) -> dict[str, Any]:
    """`pipeline` is the server's FerPipeline: read(image) -> FaceReading."""
    from server.face.images import decode_image

    found = correct = 0
    unreadable: list[str] = []
    seen: Counter[str] = Counter()
    right: Counter[str] = Counter()
    confusion: Counter[tuple[str, str]] = Counter()
    for photo in photos:
        try:
            image = decode_image(photo.path.read_bytes())
        except OSError as exc:
            raise TadbotError("bad_data", f"{photo.path}: cannot read ({exc})") from exc
        except TadbotError:
            unreadable.append(photo.path.name)
            continue
        reading = pipeline.read(image)
        if not reading.faces:
            continue
        found += 1
        guess = max(reading.probs, key=lambda label: reading.probs[label])
        seen[photo.label] += 1
        confusion[(photo.label, guess)] += 1
        if guess == photo.label:
            correct += 1
            right[photo.label] += 1
    readable = len(photos) - len(unreadable)
    return {
        "n": len(photos),
        "unreadable": unreadable,
        "face_found_rate": round(found / readable, 4) if readable else None,
        "accuracy": round(correct / found, 4) if found else None,
        "per_class_recall": {label: round(right[label] / seen[label], 4) for label in sorted(seen)},
        "confusion": {f"{truth}->{guess}": n for (truth, guess), n in sorted(confusion.items())},
    }
