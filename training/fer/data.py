"""Labelled faces for training: three dataset layouts read into one list, and a split that keeps test out.

Layouts, detected from what the folder holds:
- rafdb: RAF-DB's basic set, EmoLabel/list_patition_label.txt with Image/aligned/ (or Image/original/);
- csv: images/ + labels.csv (image,emotion; optional identity or subject, and split), as `tadbot eval fer`;
- folder: <emotion>/ folders of images, optionally inside train/, val/ and test/.
Every label goes through server.face.manifest.normalize_label, so "Happiness" in a dataset is "happy" here.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.for_training import VOCABULARY, ConfigError, normalize_label

if TYPE_CHECKING:
    import numpy as np

_LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset((".jpg", ".jpeg", ".png", ".webp", ".bmp"))
RAFDB_LIST = Path("EmoLabel") / "list_patition_label.txt"
# RAF-DB's basic-emotion codes, from the dataset's README.
RAFDB_CODES = {
    "1": "Surprise",
    "2": "Fear",
    "3": "Disgust",
    "4": "Happiness",
    "5": "Sadness",
    "6": "Anger",
    "7": "Neutral",
}
# Split names datasets use, FER2013's among them (its PublicTest is the set meant for validation).
SPLIT_NAMES = {
    "": "train",
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "publictest": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
}


class DatasetError(ConfigError):
    """The --data folder cannot be trained on: bad input, found before training starts, so a ConfigError."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_data", message)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    """Already normalised to server.face.manifest.VOCABULARY."""
    identity: str | None = None
    """The person shown, where the dataset says: validation then holds out whole people."""
    split: str | None = None
    """train, val or test where the dataset assigns one."""


@dataclass(frozen=True)
class Faces:
    """A dataset as read: the images that decode, and the files that did not."""

    root: Path
    layout: str
    samples: tuple[Sample, ...]
    unreadable: tuple[Path, ...]


@dataclass(frozen=True)
class Splits:
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...]
    labels: tuple[str, ...]
    """The emotions seen in training, in VOCABULARY order: the model's output order."""
    val_from: str
    """How validation was chosen: given (by the dataset), identity (whole people) or stratified."""

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per emotion in each split, every label listed (0 where absent)."""
        return {
            name: {label: sum(s.label == label for s in split) for label in self.labels}
            for name, split in (("train", self.train), ("val", self.val), ("test", self.test))
        }


def decode_face(path: Path) -> np.ndarray | None:
    """BGR pixels, or None when the file is missing or not an image.

    Decoded from bytes by content, not by name: datasets ship WebP files named .jpg.
    """
    import cv2
    import numpy as np

    try:
        data = path.read_bytes()
    except OSError:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    return image if image is not None and image.size else None


# --- layouts ------------------------------------------------------------------------------------------------


def detect_layout(root: Path) -> str:
    if not root.is_dir():
        raise DatasetError(f"--data {root}: no such folder")
    if (root / RAFDB_LIST).is_file():
        return "rafdb"
    if (root / "labels.csv").is_file():
        return "csv"
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return "folder"
    raise DatasetError(
        f"--data {root}: expected images/ + labels.csv, <emotion>/ folders of images, "
        f"or RAF-DB's {RAFDB_LIST}"
    )


def _label(name: str, where: str) -> str:
    try:
        return normalize_label(name)
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from exc


def _split(name: str, where: str) -> str:
    split = SPLIT_NAMES.get(name.strip().lower())
    if split is None:
        raise DatasetError(f"{where}: split {name!r} is not one of train, val or test")
    return split


def _read_csv(root: Path) -> list[Sample]:
    labels = root / "labels.csv"
    try:
        with labels.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{labels}: cannot read ({exc})") from exc
    if not {"image", "emotion"} <= columns:
        raise DatasetError(f"{labels}: needs the columns image,emotion (it has {','.join(sorted(columns))})")
    person = next((name for name in ("identity", "subject") if name in columns), None)
    samples = []
    for line, row in enumerate(rows, start=2):
        where = f"{labels} line {line}"
        if not row["image"]:
            raise DatasetError(f"{where}: the image column is empty")
        samples.append(
            Sample(
                root / "images" / row["image"],
                _label(row["emotion"] or "", where),
                (row[person] or None) if person else None,
                _split(row["split"] or "", where) if "split" in columns else None,
            )
        )
    return samples


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folders(root: Path) -> list[Sample]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in folders if p.name.lower() in SPLIT_NAMES]
    samples = []
    for split_dir in split_dirs or [root]:
        split = _split(split_dir.name, str(split_dir)) if split_dirs else None
        for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = _label(folder.name, f"folder {folder}")
            samples += [Sample(path, label, None, split) for path in _images_in(folder)]
    return samples


def _read_rafdb(root: Path) -> list[Sample]:
    listing = root / RAFDB_LIST
    aligned = root / "Image" / "aligned"
    images = aligned if aligned.is_dir() else root / "Image" / "original"
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{listing}: cannot read ({exc})") from exc
    samples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{listing} line {number}"
        parts = line.split()
        if len(parts) != 2 or parts[1] not in RAFDB_CODES:
            raise DatasetError(f"{where}: expected '<image> <code 1-7>', got {line.strip()!r}")
        name, code = parts
        stem, suffix = Path(name).stem, Path(name).suffix
        path = images / (f"{stem}_aligned{suffix}" if images == aligned else name)
        split = "test" if name.startswith("test") else "train"
        samples.append(Sample(path, _label(RAFDB_CODES[code], where), None, split))
    _LOGGER.info("RAF-DB: reading %s images from %s", images.name, images)
    return samples


_READERS = {"rafdb": _read_rafdb, "csv": _read_csv, "folder": _read_folders}


def _subset(samples: Sequence[Sample], limit: int, seed: int) -> list[Sample]:
    """At most `limit` samples, each emotion keeping its share: every class interleaved by rank."""
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_label[sample.label].append(sample)
    rng = random.Random(seed)
    ranked = []
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        ranked += [((rank + 0.5) / len(members), label, sample) for rank, sample in enumerate(members)]
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [sample for _, _, sample in ranked[:limit]]


def read_dataset(root: Path, *, limit: int | None = None, seed: int = 0, workers: int = 4) -> Faces:
    """Read the labels, then decode every image once: a file that does not decode is counted and skipped."""
    layout = detect_layout(root)
    samples = _READERS[layout](root)
    if limit is not None and len(samples) > limit:
        samples = _subset(samples, limit, seed)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV decodes without holding the GIL
        readable = list(pool.map(lambda s: decode_face(s.path) is not None, samples))
    unreadable = tuple(s.path for s, ok in zip(samples, readable, strict=True) if not ok)
    if unreadable:
        _LOGGER.warning(
            "%d of %d images are missing or do not decode and are skipped, e.g. %s",
            len(unreadable),
            len(samples),
            ", ".join(str(p) for p in unreadable[:3]),
        )
    kept = tuple(s for s, ok in zip(samples, readable, strict=True) if ok)
    if not kept:
        raise DatasetError(f"--data {root} ({layout} layout): no labelled image could be read")
    return Faces(root, layout, kept, unreadable)


# --- splits -------------------------------------------------------------------------------------------------


def _labels_in(samples: Iterable[Sample]) -> tuple[str, ...]:
    present = {s.label for s in samples}
    return tuple(label for label in VOCABULARY if label in present)


def _stratified(pool: Sequence[Sample], fraction: float, rng: random.Random) -> set[Path]:
    held: set[Path] = set()
    for label in _labels_in(pool):
        members = sorted((s for s in pool if s.label == label), key=lambda s: str(s.path))
        if len(members) < 2:
            raise DatasetError(
                f"emotion {label!r} has {_count(len(members), 'training image')}: too few to hold one out "
                "for validation; add images of it or remove it"
            )
        rng.shuffle(members)
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held |= {s.path for s in members[:count]}
    return held


def _by_identity(pool: Sequence[Sample], fraction: float, rng: random.Random) -> set[Path]:
    """Whole people go to validation, in seeded order, while some emotion they show is short of its share.

    A person whose move would leave an emotion with no training image stays in training.
    """
    people: dict[str, list[Sample]] = defaultdict(list)
    for sample in pool:
        people[sample.identity or f"file:{sample.path}"].append(sample)
    total = Counter(s.label for s in pool)
    wanted = {label: fraction * n for label, n in total.items()}
    held_counts: Counter[str] = Counter()
    held: set[Path] = set()
    order = sorted(people)
    rng.shuffle(order)
    for person in order:
        shows = Counter(s.label for s in people[person])
        short = any(held_counts[label] < wanted[label] for label in shows)
        keeps_training = all(held_counts[label] + n < total[label] for label, n in shows.items())
        if short and keeps_training:
            held_counts.update(shows)
            held |= {s.path for s in people[person]}
    for label in _labels_in(pool):
        if not held_counts[label]:
            people_showing = sum(any(s.label == label for s in group) for group in people.values())
            raise DatasetError(
                f"emotion {label!r} has {_count(total[label], 'training image')} from "
                f"{_count(people_showing, 'identity', 'identities')}: too few to keep some for training and "
                "hold others out for validation; add people showing it or remove it"
            )
    return held


def _count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def split_dataset(faces: Faces, val_fraction: float, seed: int) -> Splits:
    """Train, validation and test. Validation comes from the dataset's val split, else is carved from train;
    the test split is only ever evaluated, never chosen on."""
    test = tuple(s for s in faces.samples if s.split == "test")
    given_val = tuple(s for s in faces.samples if s.split == "val")
    pool = tuple(s for s in faces.samples if s.split in (None, "train"))
    labels = _labels_in(pool)
    if len(labels) < 2:
        raise DatasetError(
            f"--data {faces.root}: training needs at least two emotions; its training images show "
            f"{', '.join(labels) or 'none'}"
        )
    if given_val:
        val_from, val = "given", given_val
        train = pool
    else:
        rng = random.Random(seed)
        with_identity = any(s.identity for s in pool)
        held = (_by_identity if with_identity else _stratified)(pool, val_fraction, rng)
        val_from = "identity" if with_identity else "stratified"
        train = tuple(s for s in pool if s.path not in held)
        val = tuple(s for s in pool if s.path in held)
    training_people = {s.identity for s in train if s.identity}
    for name, split in (("val", val), ("test", test)):
        shared = training_people & {s.identity for s in split if s.identity}
        if shared:
            _LOGGER.warning(
                "the dataset's %s split shares %s with training (e.g. %s): its scores will flatter the model",
                name,
                _count(len(shared), "identity", "identities"),
                sorted(shared)[0],
            )
        unknown = sorted({s.label for s in split} - set(labels))
        if unknown:
            raise DatasetError(
                f"--data {faces.root}: the {name} split has images of {', '.join(unknown)}, "
                "which no training image shows"
            )
    return Splits(train, val, test, labels, val_from)
