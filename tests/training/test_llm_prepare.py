"""`tadbot train prepare`: cleaning, answer picking, the split by question (no leakage, duplicates kept
together), the chat JSONL and its data card, every reader, and the command as a user runs it.

tests/data/counsel_chat_sample.csv is synthetic, shaped like counsel-chat: question 1 has three answers (HTML,
a link, signatures, a tie on upvotes); question 2 an empty, an over-long and a phone/e-mail answer; questions
3 and 30 are one question under two ids in train and test (two rows each: a tie, so train); 5 (val) and 50
(train) differ by one word (val, by majority); 6 has no text; id 7 holds two different questions; 9 has a
Spanish answer.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from server.conversation.llm.chat import fold_system
from server.conversation.prompt import Prompts
from tests.conftest import ROOT, SHARED_DATA, tadbot
from training.__main__ import main
from training.llm.clean import clean_answer, clean_question, first_sentences, looks_english, signer_names
from training.llm.prepare import rank_answers
from training.llm.readers import (
    daily_dialog,
    empathetic_dialogues,
    normalise_turns,
    read_chat_jsonl,
    read_person_dialogs,
)
from training.llm.split import Item, assign_splits, exact_key, near_duplicates, normalise

SAMPLE = ROOT / "tests" / "data" / "counsel_chat_sample.csv"
REAL = SHARED_DATA / "counsel-chat" / "20200325_counsel_chat.csv"
SPLITS = ("train", "val", "test")
PERSONA = Prompts.load("Tad").system


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def _prepare(
    tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str, source: Path = SAMPLE
) -> dict[str, Any]:
    assert main(["prepare", "--source", str(source), "--out", str(tmp), *extra]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return summary


def _user_question(message: dict[str, str]) -> str:
    """The person's words in a first user turn, the persona taken off."""
    return message["content"].removeprefix(PERSONA + "\n\n")


# Cleaning -------------------------------------------------------------------------------------------------

CLEAN_ANSWERS = {
    "html and entities": (
        "<p>Breathe out slowly.</p><p>Name five things you can see.&nbsp;It helps &amp; it is free.</p>",
        "",
        "Breathe out slowly. Name five things you can see. It helps & it is free.",
    ),
    "sentences run together": ("It passes.Otherwise ask for help.", "", "It passes. Otherwise ask for help."),
    "link in a sentence": (
        "A good book helps (see https://example.org/book). Rest well.",
        "",
        "A good book helps. Rest well.",
    ),
    "sentence that only pointed at a link": (
        "Breathing helps. View the full article here: https://example.org/a/b. You are safe.",
        "",
        "Breathing helps. You are safe.",
    ),
    "e-mail address": (
        "Talk to someone you trust. Write to me at jo@example.com any time.",
        "",
        "Talk to someone you trust.",
    ),
    "phone number": (
        "You are not alone. Call me at (555) 123-4567 to book a session. It gets easier.",
        "",
        "You are not alone. It gets easier.",
    ),
    "name and credentials run on": (
        "Hope this was helpful. Be well.Robin J. Landwehr, DBH, LPCC, NCC",
        "",
        "Hope this was helpful. Be well.",
    ),
    "closing and signature": ("It will pass. Warmly,Angela Topcu, MFT", "", "It will pass."),
    "closing and first name": ("It will pass.Best wishes,Karen", "", "It will pass."),
    "closing and practice": (
        "It will pass. Sincerely, Mirella~Image and Likeness Counseling",
        "",
        "It will pass.",
    ),
    "Ph.D. signature on its own line": (
        "Go slowly.\n\nAvraham Cohen, Ph.D, R.C.C., C.C.C.",
        "",
        "Go slowly.",
    ),
    "the author's own name": (
        "Give it three sessions. I hope that helps, Allison",
        "Allison Ray, LPCTherapist",
        "Give it three sessions. I hope that helps",
    ),
    "dashed initials": ("Tears are welcome in therapy. -IJP", "", "Tears are welcome in therapy."),
    "advert": ("Try journaling. I am currently providing services in West Houston.", "", "Try journaling."),
    "Spanish after the English": (
        "Talking helps. Hablar con alguien de confianza ayuda mucho. ¿Cómo estás?",
        "",
        "Talking helps.",
    ),
    "whitespace": ("  Slow   down.\n\n\tYou are   safe.  ", "", "Slow down. You are safe."),
    "kind last words stay": (
        "Be gentle with yourself. Take care. Best of luck to you!",
        "",
        "Be gentle with yourself. Take care. Best of luck to you!",
    ),
    "a place is not a signature": ("I practise in Boston, MA", "", "I practise in Boston, MA"),
}


@pytest.mark.parametrize("case", CLEAN_ANSWERS)
def test_clean_answer(case: str) -> None:
    raw, signer, cleaned = CLEAN_ANSWERS[case]
    assert clean_answer(raw, signer) == cleaned


def test_clean_question_keeps_the_words_and_drops_markup_and_links() -> None:
    assert (
        clean_question("<b>Why</b> do I panic?\n  See www.example.com or mail a@b.org.")
        == "Why do I panic? See or mail ."
    )
    assert clean_question("   ") == ""


def test_signer_names_come_from_therapist_info_that_runs_into_the_title() -> None:
    assert signer_names("Sherry Katz, LCSWCouples and Family Therapist, LCSW") == ("Sherry", "Katz")
    assert signer_names("Lynda MartensMarriage & Family Therapist, MSc, RP") == ("Lynda", "Martens")
    assert signer_names("Dr. Avraham CohenDepth work") == ("Avraham", "Cohen")
    assert signer_names("") == ()


def test_language() -> None:
    assert looks_english("It is normal to feel this way, and it will pass.")
    assert not looks_english("Es muy normal sentir miedo antes de un examen y de la vida.")


# Answers, duplicates and splits ---------------------------------------------------------------------------


def test_answers_rank_by_upvotes_then_length_then_order() -> None:
    answers = [(1, "short"), (3, "a bit longer answer"), (3, "the longest answer of all here"), (1, "also")]
    assert rank_answers(answers) == [2, 1, 0, 3]
    assert rank_answers([(0, "same words"), (0, "same size")]) == [0, 1]


def test_normalised_text_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("How can I STOP  arguing?!") == "how can i stop arguing"
    assert exact_key("Self-harm") == exact_key("self harm") == "selfharm"


def test_near_duplicates_equal_after_normalising_or_jaccard_at_least_0_9() -> None:
    base = " ".join(f"word{i}" for i in range(20))
    one_changed = base.replace("word7", "other")  # 19 shared of 21: Jaccard 0.905
    two_changed = base.replace("word8", "a").replace(
        "word9", "b"
    )  # 18 of 22 with base (0.82), 17 of 23 with one
    texts = [base, base.upper() + "!", one_changed, two_changed, "something else entirely"]
    assert near_duplicates(texts) == [0, 0, 0, 3, 4]
    assert near_duplicates(["???", "!!!"]) == [0, 1]  # no words: like nothing else


def test_near_duplicates_is_transitive() -> None:
    words = [f"w{i}" for i in range(30)]
    a, b, c = " ".join(words), " ".join([*words[:-1], "x"]), " ".join([*words[:-2], "x", "y"])
    assert near_duplicates([a, c, b]) == [0, 0, 0]  # a~b and b~c, though a and c are only 0.875 alike


def test_prefix_filtering_finds_exactly_what_comparing_every_pair_finds() -> None:
    rng = random.Random(3)
    vocabulary = [f"v{i}" for i in range(40)]
    texts = []
    for _ in range(150):
        words = rng.sample(vocabulary, rng.randint(1, 25))
        if texts and rng.random() < 0.4:
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = rng.choice(vocabulary)
        texts.append(" ".join(words))
    sets = [frozenset(t.split()) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(texts)):
        for j in range(i):
            if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= 0.9:
                parent[max(find(i), find(j))] = min(find(i), find(j))
    assert near_duplicates(texts) == [find(i) for i in range(len(texts))]


def test_a_group_goes_to_its_majority_split_and_a_tie_to_train() -> None:
    items = [
        Item("how do I sleep", ("a",), "val"),
        Item("How do I sleep?", ("b",), "val"),
        Item("how do i SLEEP", ("c",), "test"),
        Item("why do I panic", ("d",), "test"),
        Item("why do I panic!", ("e",), "train"),
    ]
    result = assign_splits(items, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert result.splits == ["val", "val", "val", "train", "train"]
    assert result.stats["groups_straddling_given_splits"] == 2
    assert result.stats["questions_moved"] == 2 and result.stats["rows_moved"] == 2


def test_a_shared_id_keeps_different_questions_together() -> None:
    items = [Item("first question", ("id1",), "train"), Item("second question", ("id1",), "test")]
    result = assign_splits(items, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert result.splits == ["train", "train"]
    assert result.stats["groups_joined_by_shared_ids"] == 1


def test_without_given_splits_groups_are_drawn_by_the_seed() -> None:
    items = [Item(f"question number {i // 2} about topic {i // 2}") for i in range(200)]
    first = assign_splits(items, val_fraction=0.1, test_fraction=0.2, seed=5)
    assert first.splits == assign_splits(items, val_fraction=0.1, test_fraction=0.2, seed=5).splits
    assert first.splits != assign_splits(items, val_fraction=0.1, test_fraction=0.2, seed=6).splits
    counts = {s: first.splits.count(s) for s in SPLITS}
    assert counts == {"train": 140, "val": 20, "test": 40}
    assert all(first.splits[i] == first.splits[i + 1] for i in range(0, 200, 2))
    assert first.stats["groups_carved_for_val"] == 10 and first.stats["groups_carved_for_test"] == 20


def test_only_a_split_the_source_lacks_is_drawn() -> None:
    items = [Item(f"question {i}", (), "test" if i < 5 else "train") for i in range(50)]
    result = assign_splits(items, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert result.splits[:5] == ["test"] * 5
    assert result.splits.count("val") == 5 and result.splits.count("test") == 5


# The prepared sample --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("prepared")
    done = tadbot("train", "prepare", "--source", str(SAMPLE), "--out", str(out), env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cli_writes_the_files_and_prints_the_summary_last(prepared: tuple[Path, dict[str, Any]]) -> None:
    out, summary = prepared
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "DATA_CARD.md", "data_card.json"):
        assert (out / name).is_file()
    assert summary["train"] == str(out / "train.jsonl") and summary["data_card"] == str(out / "DATA_CARD.md")
    assert summary["examples"] == {"train": 7, "val": 2, "test": 1}


def _leaks(out: Path, source: Path) -> tuple[dict[str, set[str]], int]:
    """Questions (by normalised text) and questionIDs found in more than one split, and how many source
    rows were traced to a split through their question text."""
    split_of_text: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        for line in _lines(out / f"{split}.jsonl"):
            split_of_text[exact_key(_user_question(line["messages"][0]))].add(split)
    split_of_id: dict[str, set[str]] = defaultdict(set)
    traced = 0
    with source.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            title, text = clean_question(row["questionTitle"]), clean_question(row["questionText"])
            splits = split_of_text.get(exact_key(title + text)) or split_of_text.get(exact_key(text), set())
            traced += bool(splits)
            split_of_id[row["questionID"]] |= splits
    leaks = {f"text {k}": v for k, v in split_of_text.items() if len(v) > 1}
    return leaks | {f"questionID {k}": v for k, v in split_of_id.items() if len(v) > 1}, traced


def test_no_question_is_in_two_splits(prepared: tuple[Path, dict[str, Any]]) -> None:
    """Neither by the sample's questionIDs nor by normalised question text."""
    out, _ = prepared
    leaks, traced = _leaks(out, SAMPLE)
    assert not leaks
    assert traced == 26  # all but id 6 (no text) and id 50, whose near-duplicate's wording (id 5) is kept
    split_of_text: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        for line in _lines(out / f"{split}.jsonl"):
            split_of_text[exact_key(_user_question(line["messages"][0]))].add(split)
    # ids 5 (val, 2 rows) and 50 (train, 1 row), one word apart: val, by majority
    sleep = [key for key in split_of_text if key.startswith("mymindracesatnight")]
    assert len(sleep) == 1 and split_of_text[sleep[0]] == {"val"}
    # ids 3 (train, 2 rows) and 30 (test, 2 rows), the same question: a tie, so train
    chores = [key for key in split_of_text if key.startswith("howcanistoparguing")]
    assert len(chores) == 1 and split_of_text[chores[0]] == {"train"}


def test_the_card_counts_merges_moves_and_drops(prepared: tuple[Path, dict[str, Any]]) -> None:
    out, _ = prepared
    card = json.loads((out / "data_card.json").read_text(encoding="utf-8"))
    assert card["duplicates"] == {
        "questions": 10,
        "split_groups": 9,
        "duplicate_questions_merged": 2,
        "groups_joined_by_shared_ids": 1,
        "groups_straddling_given_splits": 2,
        "questions_moved": 2,
        "rows_moved": 3,
        "groups_carved_for_val": 0,
        "groups_carved_for_test": 0,
    }
    assert card["dropped"]["answers"] == {
        "empty": 1,
        "in Spanish": 1,
        "longer than 400 words": 1,
        "not picked": 13,
        "question has no text": 1,
        "same answer twice to one question": 1,
    }
    assert card["dropped"]["questions"] == {"no question text": 1}
    assert card["sources"] == [
        {
            "source": str(SAMPLE),
            "kind": "counsel-chat",
            "license": "MIT (github.com/nbertagnolli/counsel-chat)",
            "rows_read": 28,
        }
    ]
    assert card["command"] == f"tadbot train prepare --source {SAMPLE} --out {out}"
    assert card["seed"] == 0 and card["length"]["unit"] == "words"
    markdown = (out / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "2 questions (3 rows) moved" in markdown and "words, not tokens" in markdown
    assert "| train | 7 | 7 | train.jsonl |" in markdown


def test_the_card_counts_equal_the_files(prepared: tuple[Path, dict[str, Any]]) -> None:
    out, summary = prepared
    card = json.loads((out / "data_card.json").read_text(encoding="utf-8"))
    for split in SPLITS:
        lines = _lines(out / f"{split}.jsonl")
        assert card["splits"][split]["examples"] == len(lines) == summary["examples"][split]
        assert card["length"][split]["n"] == len(lines)
        assert sum(counts[split] for counts in card["topics"].values()) == len(lines)
        questions = {exact_key(_user_question(line["messages"][0])) for line in lines}
        assert card["splits"][split]["questions"] == len(questions) == summary["questions"][split]
    assert card["topics"]["anxiety"] == {"train": 2, "val": 1, "test": 0}


def test_each_line_is_a_gemma_chat_with_the_persona_in_the_first_user_turn(
    prepared: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = prepared
    raw = (out / "train.jsonl").read_text(encoding="utf-8")
    assert "{name}" not in raw and "\\u" not in raw  # rendered, and UTF-8 rather than escapes
    assert PERSONA.startswith("You are Tad,")
    for split in SPLITS:
        for line in _lines(out / f"{split}.jsonl"):
            assert set(line) == {"messages"}
            roles = [m["role"] for m in line["messages"]]
            assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
            assert line["messages"][0]["content"].startswith(PERSONA + "\n\n")
    first = _lines(out / "train.jsonl")[0]["messages"]
    system = [{"role": "system", "content": PERSONA}, {"role": "user", "content": _user_question(first[0])}]
    assert fold_system(system)[0] == first[0]  # exactly as the server folds it at run time
    assert first[1]["content"] == (
        "Panic peaks and passes within minutes, so you are safe even though it feels awful. "
        "Try breathing out for longer than you breathe in."
    )


def test_k_answers_per_question_stay_in_their_question_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = _prepare(tmp_path, capsys, "--answers", "2", "--no-system")
    assert summary["examples"] == {"train": 13, "val": 3, "test": 2}
    assert summary["questions"] == {"train": 7, "val": 2, "test": 1}
    assert not _leaks(tmp_path, SAMPLE)[0]
    lines = _lines(tmp_path / "train.jsonl")
    panic = [
        line["messages"][1]["content"] for line in lines if "supermarket" in line["messages"][0]["content"]
    ]
    assert panic[0].startswith("Panic peaks") and panic[1].startswith("Slow your breathing")
    assert not any(line["messages"][0]["content"].startswith("You are") for line in lines)


def test_the_system_file_and_persona_name_render_the_placeholder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    persona = tmp_path / "persona.txt"
    persona.write_text("  You are {name}, kind and brief.\n", encoding="utf-8")
    out = tmp_path / "out"
    _prepare(out, capsys, "--system-file", str(persona), "--persona-name", "Mo")
    first = _lines(out / "train.jsonl")[0]["messages"][0]["content"]
    assert first.startswith("You are Mo, kind and brief.\n\nHow do I calm down")


def test_a_tokenizer_measures_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    out = tmp_path / "out"
    _prepare(out, capsys, "--tokenizer", str(path), "--no-system")
    length = json.loads((out / "data_card.json").read_text(encoding="utf-8"))["length"]
    assert length["unit"] == "tokens" and length["tokenizer"] == str(path)
    assert "Gemma" in length["measured_on"] and length["all"]["n"] == 10
    assert length["all"]["min"] > 0


# Other sources --------------------------------------------------------------------------------------------


def test_turns_are_normalised_to_a_gemma_chat() -> None:
    turns = [
        ("assistant", "Hi, I'm here."),
        ("user", "I'm scared."),
        ("user", "Really scared."),
        ("assistant", "I hear you."),
        ("user", "Thanks"),
    ]
    assert normalise_turns(turns) == (("user", "I'm scared.\n\nReally scared."), ("assistant", "I hear you."))
    assert normalise_turns([("user", "Hello?")]) == ()


def test_chat_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    lines = [
        {
            "messages": [
                {"role": "system", "content": "Be nice."},
                {"role": "user", "content": "I can't breathe."},
                {"role": "assistant", "content": "Breathe out slowly with me."},
            ]
        },
        {"messages": [{"role": "user", "content": "Anyone there?"}]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    dialogs, dropped = read_chat_jsonl(path)
    assert [d.turns for d in dialogs] == [
        (("user", "I can't breathe."), ("assistant", "Breathe out slowly with me."))
    ]
    assert dropped == {
        "system messages replaced by the persona": 1,
        "dialogs without a companion turn after a user turn": 1,
    }


def test_person_a_b_dialogs(tmp_path: Path) -> None:
    path = tmp_path / "generated.txt"
    path.write_text(
        "Person A: My chest is tight and I think\nI'm dying.\n"
        "Person B: That sounds frightening. You are safe.\n"
        "Person A: Okay.\nPerson B: Let's breathe out slowly together.\n\n\n"
        "person b: Hello there.\nPerson A: I can't sleep.\nPerson B: What keeps you awake?\n",
        encoding="utf-8",
    )
    dialogs, dropped = read_person_dialogs(path)
    assert [d.turns for d in dialogs] == [
        (
            ("user", "My chest is tight and I think I'm dying."),
            ("assistant", "That sounds frightening. You are safe."),
            ("user", "Okay."),
            ("assistant", "Let's breathe out slowly together."),
        ),
        (("user", "I can't sleep."), ("assistant", "What keeps you awake?")),
    ]
    assert not dropped


def test_empathetic_dialogues_rows_map_to_alternating_turns() -> None:
    rows = [
        {
            "conv_id": "hit:1_conv:2",
            "utterance_idx": 2,
            "speaker_idx": 7,
            "utterance": "Oh no_comma_ what happened?",
            "context": "afraid",
            "prompt": "p",
        },
        {
            "conv_id": "hit:1_conv:2",
            "utterance_idx": 1,
            "speaker_idx": 3,
            "utterance": "I heard a noise downstairs.",
            "context": "afraid",
            "prompt": "p",
        },
        {
            "conv_id": "hit:1_conv:2",
            "utterance_idx": 3,
            "speaker_idx": 3,
            "utterance": "It was the cat.",
            "context": "afraid",
            "prompt": "p",
        },
        {
            "conv_id": "hit:9_conv:9",
            "utterance_idx": 1,
            "speaker_idx": 1,
            "utterance": "Just me talking.",
            "context": "lonely",
            "prompt": "p",
        },
    ]
    dialogs, dropped = empathetic_dialogues(rows, "val")
    assert len(dialogs) == 1 and dialogs[0].topic == "afraid" and dialogs[0].split == "val"
    assert dialogs[0].turns == (
        ("user", "I heard a noise downstairs."),
        ("assistant", "Oh no, what happened?"),
    )
    assert dropped == {"dialogs without a companion turn after a user turn": 1}


def test_daily_dialog_rows_map_to_alternating_turns() -> None:
    rows = [
        {
            "dialog": ["Hi , how are you ? ", "I ’ m fine , thanks .", "Good ."],
            "act": [1, 2, 1],
            "emotion": [0, 0, 0],
        }
    ]
    dialogs, _ = daily_dialog(rows, "train")
    assert dialogs[0].turns == (("user", "Hi, how are you?"), ("assistant", "I’m fine, thanks."))


def test_dialog_sources_split_and_read_back_without_a_second_persona(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Our own output is chat JSONL too: read back, its persona is not added twice."""
    first = tmp_path / "first"
    _prepare(first, capsys)
    again = tmp_path / "again"
    summary = _prepare(
        again, capsys, "--val-fraction", "0.2", "--test-fraction", "0.2", source=first / "train.jsonl"
    )
    assert sum(summary["examples"].values()) == 7 and summary["examples"]["val"] >= 1
    for split in SPLITS:
        for line in _lines(again / f"{split}.jsonl"):
            assert line["messages"][0]["content"].count("You are Tad,") == 1
    card = json.loads((again / "data_card.json").read_text(encoding="utf-8"))
    assert card["sources"][0]["kind"] == "chat-jsonl"
    assert card["dropped"]["dialogs"] == {"persona already in the first turn, taken off": 7}


# Errors ---------------------------------------------------------------------------------------------------


def _bad_csv(tmp: Path) -> Path:
    path = tmp / "bad.csv"
    path.write_text("questionID,questionTitle,answerText,upvotes\n1,Hi,Hello,0\n", encoding="utf-8")
    return path


BAD_INPUT = {
    "missing file": (lambda tmp: tmp / "nowhere.csv", "--source {tmp}/nowhere.csv: no such file"),
    "missing column": (_bad_csv, "{tmp}/bad.csv: no column 'questionText'"),
    "unknown hub name": (lambda tmp: Path("someone/some-set"), "not a file, nor one of the hub sets"),
    "bad split": (
        lambda tmp: _write(
            tmp / "split.csv", SAMPLE.read_text(encoding="utf-8").replace(",val\n", ",holdout\n", 1)
        ),
        "{tmp}/split.csv line 11: column 'split' is 'holdout'; expected train, val or test",
    ),
    "nothing left": (
        lambda tmp: _write(tmp / "empty.csv", SAMPLE.read_text(encoding="utf-8").splitlines()[0] + "\n"),
        "{tmp}/empty.csv: nothing is left after cleaning",
    ),
    "bad jsonl": (
        lambda tmp: _write(tmp / "chat.jsonl", '{"messages": [}\n'),
        "{tmp}/chat.jsonl line 1: not JSON",
    ),
    "unlabelled dialog": (
        lambda tmp: _write(tmp / "dialogs.txt", "Here is a dialog:\nPerson A: hi\n"),
        "{tmp}/dialogs.txt line 1: a dialog must start with 'Person A:' or 'Person B:'",
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    make, message = BAD_INPUT[case]
    source = make(tmp_path)
    assert main(["prepare", "--source", str(source), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    line = _one_line_error(captured.err)
    assert line.startswith("tadbot: error: ") and message.format(tmp=tmp_path) in line
    assert captured.out == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--answers", "none"], "--answers 'none': expected best or a number"),
        (["--val-fraction", "1"], "--val-fraction 1.0: expected from 0 up to (not including) 1"),
        (
            ["--val-fraction", "0.6", "--test-fraction", "0.4"],
            "--test-fraction 0.4: expected less than 1 together",
        ),
        (["--max-answer-words", "0"], "--max-answer-words 0: expected 1 or more"),
        (["--max-sentences", "-1"], "--max-sentences -1: expected 0 (whole answers) or more"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    assert main(["prepare", "--source", str(SAMPLE), "--out", str(tmp_path / "out"), *options]) == 2
    assert message in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_first_sentences_splits_as_the_server_speaks() -> None:
    text = "Dr. Lee says breathe. It helps!\n\nTry it now. Then rest."
    assert first_sentences(text, 2) == ("Dr. Lee says breathe. It helps!", True)
    assert first_sentences(text, 4) == (text, False)
    assert first_sentences("One thought, no stop", 1) == ("One thought, no stop", False)


def test_max_sentences_cuts_the_answers_and_the_card_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = _prepare(tmp_path / "whole", capsys)
    cut = _prepare(tmp_path / "cut", capsys, "--max-sentences", "1")
    assert cut["examples"] == whole["examples"], "cutting must not drop an example"
    longer = 0
    for split in SPLITS:
        for before, after in zip(
            _lines(tmp_path / "whole" / f"{split}.jsonl"),
            _lines(tmp_path / "cut" / f"{split}.jsonl"),
            strict=True,
        ):
            reply, full = after["messages"][-1]["content"], before["messages"][-1]["content"]
            assert first_sentences(reply, 1) == (reply, False) and full.startswith(reply.split("\n")[0])
            longer += reply != full
    card = json.loads((tmp_path / "cut" / "data_card.json").read_text())
    assert card["options"]["max_sentences"] == 1 and longer > 0
    assert card["dropped"]["answers, shortened"]["cut to their first 1 sentence"] >= longer
    assert (
        json.loads((tmp_path / "whole" / "data_card.json").read_text())["dropped"]["answers, shortened"] == {}
    )


def test_a_bad_csv_through_tadbot_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = tadbot(
        "train",
        "prepare",
        "--source",
        str(_bad_csv(tmp_path)),
        "--out",
        str(tmp_path / "out"),
        env=dict(os.environ),
    )
    assert done.returncode == 2
    assert _one_line_error(done.stderr).startswith(
        f"tadbot: error: {tmp_path}/bad.csv: no column 'questionText'"
    )
    assert done.stdout == ""


@pytest.mark.parametrize("name", ["nbertagnolli/counsel-chat", "empathetic_dialogues", "daily_dialog"])
def test_a_hub_set_without_datasets_installed_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setitem(
        sys.modules, "datasets", None
    )  # import fails, even where it is installed: no download
    assert main(["prepare", "--source", name, "--out", str(tmp_path / "out")]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert line.endswith("needs the datasets library: pip install datasets")


def test_tadbot_train_help_lists_fer_and_prepare() -> None:
    done = tadbot("train", "--help", env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "fer" in done.stdout and "prepare" in done.stdout
    done = tadbot("train", "prepare", "--help", env=dict(os.environ))
    for flag in (
        "--source",
        "--out",
        "--answers",
        "--max-answer-words",
        "--no-system",
        "--tokenizer",
        "--seed",
    ):
        assert flag in done.stdout


# The real counsel-chat ------------------------------------------------------------------------------------


def test_the_real_counsel_chat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On ../shared/data's counsel-chat, when present: no leakage by questionID or question text, and
    counts in reason. The counts are printed (pytest -s shows them)."""
    if not REAL.is_file():
        pytest.skip(f"{REAL} is absent (reference data is not part of a clone)")
    summary = _prepare(tmp_path, capsys, source=REAL)
    card = json.loads((tmp_path / "data_card.json").read_text(encoding="utf-8"))
    with capsys.disabled():
        print(f"\nreal counsel-chat: {summary['examples']}; dropped {card['dropped']}; {card['duplicates']}")
    leaks, traced = _leaks(tmp_path, REAL)
    assert not leaks
    assert traced > 1900  # of 2,129 rows; the rest belong to questions whose every answer was dropped
    assert 600 < summary["examples"]["train"] < 800
    assert 40 < summary["examples"]["val"] < 120 and 20 < summary["examples"]["test"] < 80
    assert card["duplicates"]["duplicate_questions_merged"] >= 9
    assert card["duplicates"]["groups_straddling_given_splits"] >= 3
    assert card["sources"][0]["license"].startswith("MIT")
