"""Reading the three dataset layouts, skipping what does not decode, and splits that keep people apart."""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.training.conftest import draw_face, write_csv_dataset, write_image, write_labels
from training.fer.data import DatasetError, Faces, Sample, read_dataset, split_dataset


def test_csv_layout_reads_labels_identities_and_splits(tmp_path: Path) -> None:
    rows = write_csv_dataset(tmp_path, people=3, per_class={"angry": 2, "happy": 1}, test_people=1)
    faces = read_dataset(tmp_path)
    assert faces.layout == "csv"
    assert len(faces.samples) == len(rows) == 9
    first = faces.samples[0]
    assert (first.path, first.label, first.identity, first.split) == (
        tmp_path / "images" / "p0_angry_0.png",
        "angry",  # written as ANGRY: labels are normalised
        "p0",
        "train",
    )
    assert Counter(s.split for s in faces.samples) == {"train": 6, "test": 3}


def test_subject_column_counts_as_identity(tmp_path: Path) -> None:
    write_csv_dataset(tmp_path, people=2, per_class={"sad": 1, "happy": 1}, identity_column="subject")
    assert {s.identity for s in read_dataset(tmp_path).samples} == {"p0", "p1"}


def test_folder_layout_with_and_without_split_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("Happiness/a.png", "Happiness/b.jpg", "sad/c.png"):
        write_image(tmp_path / "flat" / name, draw_face("sad", rng))
    (tmp_path / "flat" / "sad" / "notes.txt").write_text("not an image", "utf-8")
    (tmp_path / "flat" / ".cache").mkdir()
    flat = read_dataset(tmp_path / "flat")
    assert flat.layout == "folder"
    assert sorted((s.path.name, s.label, s.split) for s in flat.samples) == [
        ("a.png", "happy", None),
        ("b.jpg", "happy", None),
        ("c.png", "sad", None),
    ]
    for name in ("train/angry/a.png", "train/fear/b.png", "Test/angry/c.png", "val/fear/d.png"):
        write_image(tmp_path / "split" / name, draw_face("angry", rng))
    nested = read_dataset(tmp_path / "split")
    assert sorted((s.path.name, s.label, s.split) for s in nested.samples) == [
        ("a.png", "angry", "train"),
        ("b.png", "fear", "train"),
        ("c.png", "angry", "test"),
        ("d.png", "fear", "val"),
    ]


@pytest.mark.parametrize("images", ["aligned", "original"])
def test_rafdb_layout_maps_its_codes(tmp_path: Path, images: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="training.fer.data")
    listing = tmp_path / "EmoLabel" / "list_patition_label.txt"
    listing.parent.mkdir()
    codes = {f"train_0000{code}.jpg": code for code in range(1, 8)} | {"test_0001.jpg": 4}
    listing.write_text("".join(f"{name} {code}\n" for name, code in codes.items()) + "\n", "utf-8")
    rng = np.random.default_rng(0)
    for name in codes:
        stem = Path(name).stem
        file = f"{stem}_aligned.jpg" if images == "aligned" else name
        write_image(tmp_path / "Image" / images / file, draw_face("happy", rng))
    faces = read_dataset(tmp_path)
    assert faces.layout == "rafdb"
    by_name = {s.path.name: (s.label, s.split) for s in faces.samples}
    suffix = "_aligned" if images == "aligned" else ""
    assert by_name == {
        f"train_00001{suffix}.jpg": ("surprise", "train"),
        f"train_00002{suffix}.jpg": ("fear", "train"),
        f"train_00003{suffix}.jpg": ("disgust", "train"),
        f"train_00004{suffix}.jpg": ("happy", "train"),
        f"train_00005{suffix}.jpg": ("sad", "train"),
        f"train_00006{suffix}.jpg": ("angry", "train"),
        f"train_00007{suffix}.jpg": ("neutral", "train"),
        f"test_0001{suffix}.jpg": ("happy", "test"),
    }
    assert f"reading {images} images" in caplog.text


def test_rafdb_code_outside_1_to_7_names_the_line(tmp_path: Path) -> None:
    listing = tmp_path / "EmoLabel" / "list_patition_label.txt"
    listing.parent.mkdir()
    listing.write_text("train_00001.jpg 1\ntrain_00002.jpg 8\n", "utf-8")
    with pytest.raises(DatasetError, match=r"list_patition_label.txt line 2: .*'train_00002.jpg 8'"):
        read_dataset(tmp_path)


def test_unreadable_and_missing_images_are_counted_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = write_csv_dataset(tmp_path, people=1, per_class={"angry": 2, "happy": 2}, test_people=0)
    ok, webp = cv2.imencode(".webp", draw_face("happy", np.random.default_rng(1)))
    assert ok
    (tmp_path / "images" / "webp_named.jpg").write_bytes(webp.tobytes())
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "images" / "empty.png").write_bytes(b"")
    extra = [{**rows[0], "image": name} for name in ("webp_named.jpg", "broken.jpg", "empty.png", "gone.png")]
    write_labels(tmp_path, rows + extra)
    faces = read_dataset(tmp_path)
    assert sorted(p.name for p in faces.unreadable) == ["broken.jpg", "empty.png", "gone.png"]
    assert len(faces.samples) == 5
    assert "webp_named.jpg" in {s.path.name for s in faces.samples}
    assert "3 of 8 images are missing or do not decode" in caplog.text


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"image": "a.png", "emotion": "bored"}], r"labels.csv line 2: unknown emotion label 'bored'"),
        ([{"image": "a.png", "feeling": "sad"}], r"labels.csv: needs the columns image,emotion"),
        ([{"image": "a.png", "emotion": "sad", "split": "holdout"}], r"line 2: split 'holdout'"),
        ([{"image": "missing.png", "emotion": "sad"}], r"no labelled image could be read"),
    ],
)
def test_bad_csv_rows_name_the_file_and_line(
    tmp_path: Path, rows: list[dict[str, str]], message: str
) -> None:
    write_labels(tmp_path, rows)
    with pytest.raises(DatasetError, match=message):
        read_dataset(tmp_path)


def test_unknown_folder_name_is_named(tmp_path: Path) -> None:
    write_image(tmp_path / "bored" / "a.png", draw_face("sad", np.random.default_rng(0)))
    with pytest.raises(DatasetError, match=r"folder .*bored: unknown emotion label 'bored'"):
        read_dataset(tmp_path)


def test_missing_or_empty_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"--data .*nowhere: no such folder"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"expected images/ \+ labels.csv"):
        read_dataset(tmp_path)


def _faces(samples: list[Sample]) -> Faces:
    return Faces(Path("/data"), "csv", tuple(samples), ())


def _people(count: int, per_class: dict[str, int], seed: int = 0) -> list[Sample]:
    """`count` people; person i shows each emotion per_class times (images need not exist to split)."""
    return [
        Sample(Path(f"/data/p{person}_{label}_{k}.png"), label, f"p{person}")
        for person in range(count)
        for label, n in per_class.items()
        for k in range(n)
    ]


def test_identity_split_never_puts_one_person_in_two_splits() -> None:
    samples = _people(12, {"angry": 3, "happy": 2, "sad": 4})
    test = [
        Sample(s.path.with_name("t" + s.path.name), s.label, "x" + s.identity, "test") for s in samples[:9]
    ]
    splits = split_dataset(_faces(samples + test), 0.2, seed=3)
    assert splits.val_from == "identity"
    people = {
        name: {s.identity for s in part}
        for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
    assert people["train"] and people["val"] and people["test"] == {"xp0"}
    assert not people["train"] & people["val"]
    assert not (people["train"] | people["val"]) & people["test"]
    assert len(splits.train) + len(splits.val) == len(samples)
    # about a fifth held out, in whole people of 9 images: 2 or 3 of 12
    assert len(splits.val) in (18, 27)
    assert splits == split_dataset(_faces(samples + test), 0.2, seed=3), "a seed gives the same split"


def test_people_shared_by_train_and_the_given_test_split_are_flagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    samples = _people(4, {"happy": 2, "sad": 2})
    test = [Sample(Path("/data/t.png"), "sad", "p3", "test")]
    split_dataset(_faces(samples + test), 0.25, seed=0)
    assert "test split shares 1 identity with training (e.g. p3)" in caplog.text
    assert "val split" not in caplog.text, "validation carved by identity shares nobody"


def test_stratified_split_holds_out_every_emotion() -> None:
    samples = [
        Sample(Path(f"/d/{label}{k}.png"), label)
        for label, n in (("fear", 40), ("happy", 10))
        for k in range(n)
    ]
    splits = split_dataset(_faces(samples), 0.25, seed=0)
    assert splits.val_from == "stratified"
    assert splits.labels == ("fear", "happy")
    assert splits.counts()["val"] == {"fear": 10, "happy": 2}
    assert not {s.path for s in splits.train} & {s.path for s in splits.val}
    shuffled = random.Random(1).sample(samples, len(samples))
    assert {s.path for s in split_dataset(_faces(shuffled), 0.25, seed=0).val} == {s.path for s in splits.val}


def test_a_given_val_split_is_used_as_is() -> None:
    samples = _people(3, {"angry": 1, "sad": 1})
    given = [Sample(Path("/data/v.png"), "sad", "p0", "val")]
    splits = split_dataset(_faces(samples + given), 0.5, seed=0)
    assert (splits.val_from, splits.val, len(splits.train)) == ("given", tuple(given), 6)


def test_too_few_images_to_split_names_the_emotion() -> None:
    samples = [Sample(Path(f"/d/h{k}.png"), "happy") for k in range(5)] + [Sample(Path("/d/f.png"), "fear")]
    with pytest.raises(DatasetError, match=r"emotion 'fear' has 1 training image"):
        split_dataset(_faces(samples), 0.2, seed=0)
    one_person = _people(4, {"happy": 2}) + [Sample(Path(f"/d/f{k}.png"), "fear", "solo") for k in range(3)]
    with pytest.raises(DatasetError, match=r"emotion 'fear' has 3 training images from 1 identity: too few"):
        split_dataset(_faces(one_person), 0.2, seed=0)


def test_one_emotion_or_test_only_emotions_are_refused() -> None:
    with pytest.raises(DatasetError, match=r"at least two emotions; .* show happy"):
        split_dataset(_faces(_people(3, {"happy": 2})), 0.2, seed=0)
    extra = [Sample(Path("/data/t.png"), "fear", "z", "test")]
    with pytest.raises(DatasetError, match=r"the test split has images of fear"):
        split_dataset(_faces(_people(4, {"happy": 2, "sad": 2}) + extra), 0.25, seed=0)


def test_limit_keeps_each_emotions_share(tmp_path: Path) -> None:
    write_csv_dataset(tmp_path, people=2, per_class={"happy": 15, "sad": 5}, test_people=0)
    faces = read_dataset(tmp_path, limit=8, seed=0)
    assert Counter(s.label for s in faces.samples) == {"happy": 6, "sad": 2}
    assert faces.samples == read_dataset(tmp_path, limit=8, seed=0).samples
