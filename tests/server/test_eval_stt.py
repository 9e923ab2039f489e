"""How the speech benches count words wrong, and how they read a set of labelled speech."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import TadbotError
from server.eval.stt import Clip, read_clips, score, word_errors, words


def test_words_ignore_case_punctuation_and_spelled_contractions() -> None:
    assert " ".join(words("And so, my fellow Americans... ask NOT!")) == "and so my fellow americans ask not"
    assert " ".join(words("I'm scared—I can't breathe.")) == "i am scared i can not breathe"
    assert " ".join(words("I\u2019m fine, it's a well-known 'trick'")) == "i am fine it is a well known trick"
    assert words("I took 5 pills") != words("I took five pills"), "numbers are compared as written"
    assert words(" . , ") == []


@pytest.mark.parametrize(
    ("said", "heard", "errors"),
    [
        ("i want to die", "i want to die", 0),
        ("i want to die", "i want to buy", 1),  # a substitution
        ("i just want to die", "i want to die", 1),  # a deletion
        ("i want to die", "i want to die now", 1),  # an insertion
        ("i want to end my life", "i won't turn my life", 3),
        ("ask not", "", 2),
        ("", "thank you", 2),
    ],
)
def test_word_errors_are_the_fewest_edits(said: str, heard: str, errors: int) -> None:
    assert word_errors(said.split(), heard.split()) == errors


def test_the_score_is_errors_over_all_words_said_per_voice_too(tmp_path: Path) -> None:
    clips = [
        Clip(tmp_path / "a.wav", "I want to die.", "piper", "crisis"),
        Clip(tmp_path / "b.wav", "Help me breathe please now", "piper", "safe"),
        Clip(tmp_path / "c.wav", "I want to die.", "espeak", "crisis"),
    ]
    report = score(clips, ["i want to die", "help me breathe", "I want to buy."])
    assert (report["words"], report["word_errors"], report["exact"]) == (13, 3, 1)
    assert report["wer"] == round(3 / 13, 4)
    assert report["wer_by_voice"] == {"espeak": 0.25, "piper": round(2 / 9, 4)}
    assert report["misheard"] == [
        {"file": "b.wav", "said": "Help me breathe please now", "heard": "help me breathe"},
        {"file": "c.wav", "said": "I want to die.", "heard": "I want to buy."},
    ]
    assert "wer_by_voice" not in score([Clip(tmp_path / "a.wav", "hello")], ["hello"])


def test_a_set_is_read_from_its_index(tmp_path: Path) -> None:
    (tmp_path / "one.wav").write_bytes(b"RIFF")
    (tmp_path / "index.csv").write_text('file,text,voice,label\none.wav,"Hello, there",piper,safe\n')
    assert read_clips(tmp_path) == [Clip(tmp_path / "one.wav", "Hello, there", "piper", "safe")]
    (tmp_path / "index.csv").write_text("file,text\none.wav,hi\n")
    assert read_clips(tmp_path) == [Clip(tmp_path / "one.wav", "hi")]


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (None, "index.csv: cannot read"),
        ("name,words\na.wav,hi\n", "needs the columns file,text"),
        ("file,text\nmissing.wav,hi\n", "index.csv line 2: no such file"),
        ("file,text\n", "index.csv: no rows"),
    ],
)
def test_a_bad_set_is_one_error_naming_the_file(tmp_path: Path, index: str | None, message: str) -> None:
    if index is not None:
        (tmp_path / "index.csv").write_text(index)
    with pytest.raises(TadbotError) as caught:
        read_clips(tmp_path)
    assert caught.value.code == "bad_data" and message in caught.value.message
