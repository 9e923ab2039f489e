"""The second opinion on crisis by meaning: the real all-MiniLM-L6-v2 embedder, the shipped examples."""

from __future__ import annotations

import atexit
import csv
import io
from pathlib import Path
from typing import Any

import pytest

from server.memory.embedding import MiniLMEmbedder
from server.safety.care import Care
from server.safety.crisis import Level
from server.safety.examples import CrisisExamples
from server.sections import SafetySection
from tests.conftest import ROOT
from tests.server.test_safety import FOUND_IN_THE_LANDED_CODE, dressed

SETS = ("eval", "holdout", "blind", "final")


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.texts = 0

    def embed(self, texts: list[str]) -> Any:
        self.texts += len(texts)
        return self.inner.embed(texts)

    def get_config(self) -> dict[str, Any]:
        return self.inner.get_config()


@pytest.fixture(scope="module")
def care(embedder: MiniLMEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Care:
    return Care.load(SafetySection(), embedder, tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize(
    "text",
    [
        "everything is sorted, the letters are written, it ends tonight",
        "I have made my peace and said my goodbyes, tonight I go",
        "my mind is made up, I am going to end everything on Sunday",
        "I don't see myself still being here next week, it's all arranged",
    ],
)
def test_the_examples_catch_crisis_the_rules_miss(care: Care, text: str) -> None:
    assert care.detector.assess(text).level != Level.CRISIS, "the rules catch this one already"
    found = care.assess(text)
    assert (found.level, found.rule) == (Level.CRISIS, "similar_example")
    assert found.trigger.startswith("like '")


def test_a_bare_command_is_read_by_the_rules_alone(care: Care) -> None:
    """The examples would call a lone goodbye a crisis (it sits near "i've said my goodbyes to everyone");
    without the second opinion it is a goodbye, while words of harm are still caught by the rules."""
    assert care.assess("goodbye").level == Level.CRISIS
    assert care.assess("goodbye", second_opinion=False).level == Level.NONE
    assert care.assess("goodbye, I'm going to kill myself", second_opinion=False).level == Level.CRISIS


@pytest.mark.parametrize(
    "text",
    [
        "I would never kill myself, I'm just stressed",  # negated: the rules' reading stands
        "my friend took an overdose last year",  # someone else's
        "I used to cut but I haven't for years",  # the past
        "I bought a new rope for climbing",  # an everyday context
        "this traffic is killing me",  # an idiom
        "I'm scared of flying next week",
    ],
)
def test_the_examples_never_overturn_what_the_rules_read(care: Care, text: str) -> None:
    assert care.assess(text).level != Level.CRISIS


def test_a_failing_embedder_leaves_the_rules_in_charge(
    care: Care, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert care.examples is not None

    def broken(texts: list[str]) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(care.examples, "_embedder", type("Broken", (), {"embed": staticmethod(broken)})())
    assert care.assess("I want to end my life").level == Level.CRISIS
    assert care.assess("the letters are written and it is all over on sunday").level == Level.NONE
    assert "the rules alone decide" in caplog.text


def test_embeddings_of_the_examples_are_cached(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    first = CountingEmbedder(embedder)
    CrisisExamples.load(first, tmp_path)
    assert len(list(tmp_path.glob("crisis-examples-*.npy"))) == 1
    assert first.texts > 700
    again = CountingEmbedder(embedder)
    examples = CrisisExamples.load(again, tmp_path)
    assert again.texts == 0
    examples.nearest("hello")
    assert again.texts == 1


def test_skip_identical_leaves_the_example_itself_out(care: Care) -> None:
    assert care.examples is not None
    line = "ctb tonight, everything's ready"  # in the examples as crisis
    assert care.examples.nearest(line).example == line
    assert care.examples.nearest(line, skip_identical=True).example != line


def _rows(text: str) -> list[tuple[str, str]]:
    lines = [line for line in io.StringIO(text) if not line.startswith("# version:")]
    return [(r["label"], r["text"]) for r in csv.DictReader(lines)]


def test_the_unseen_set_stays_out_of_the_examples() -> None:
    """tests/data/safety_unseen.csv was written blind to the rules and is scored, never searched."""
    shipped = {
        text for _, text in _rows((ROOT / "server" / "data" / "crisis_examples.csv").read_text("utf-8"))
    }
    unseen = _rows((ROOT / "tests" / "data" / "safety_unseen.csv").read_text(encoding="utf-8"))
    assert len(unseen) >= 150 and sum(label == "crisis" for label, _ in unseen) >= 60
    assert not [text for _, text in unseen if text in shipped]


def test_the_examples_are_exactly_the_labelled_development_sets() -> None:
    shipped = _rows((ROOT / "server" / "data" / "crisis_examples.csv").read_text(encoding="utf-8"))
    sets = [
        row
        for name in SETS
        for row in _rows((ROOT / "tests" / "data" / f"safety_{name}.csv").read_text(encoding="utf-8"))
    ]
    assert shipped == sets


def test_the_examples_read_the_same_words_the_same_whatever_their_dress(care: Care) -> None:
    """Every labelled row: each dressing is embedded as the same plain text, so the second opinion
    cannot change with a full stop, a capital or an "um"."""
    assert care.examples is not None
    rows = [
        row
        for name in (*SETS, "unseen")
        for row in _rows((ROOT / "tests" / "data" / f"safety_{name}.csv").read_text("utf-8"))
    ]
    assert len(rows) > 900
    for _, text in rows:
        plain = care.examples.canonical(text)
        assert plain and {care.examples.canonical(d) for d in dressed(text)} == {plain}, text
    assert care.examples.canonical("Honestly, I'm not WELL, so...") == "i'm not well, so", "only openers go"


def test_the_whole_check_gives_every_labelled_row_one_level_whatever_its_dress(care: Care) -> None:
    """Every labelled row, development and unseen: rules and examples together give one level for all
    its dressings (Whisper writes full stops and capitals; people say "um" and "honestly")."""
    rows = [
        row
        for name in (*SETS, "unseen")
        for row in _rows((ROOT / "tests" / "data" / f"safety_{name}.csv").read_text("utf-8"))
    ]
    varying = {}
    for _, text in rows:
        levels = {care.assess(variant).level for variant in dressed(text)}
        if len(levels) > 1:
            varying[text] = levels
    assert len(rows) > 900 and not varying, varying


@pytest.mark.parametrize("text", FOUND_IN_THE_LANDED_CODE)
def test_the_whole_check_reads_what_was_missed_as_a_crisis(care: Care, text: str) -> None:
    assert care.assess(text).level == Level.CRISIS


def test_a_query_read_again_is_embedded_once(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    """The n-best hypotheses of a turn are read more than once; their plain forms are embedded once."""
    counting = CountingEmbedder(embedder)
    examples = CrisisExamples.load(counting, tmp_path)
    before = counting.texts
    first = examples.nearest("I see no reason to go on living")
    again = examples.nearest("Um, I see no reason to go on living.")
    other = examples.nearest("I see no reason to go on working")
    assert first == again and other != first
    assert counting.texts - before == 2


@pytest.mark.parametrize(
    "said", ["I see no reason to go on living", "there's no point me being here anymore"]
)
def test_a_full_stop_does_not_change_the_whole_check(care: Care, said: str) -> None:
    """Found in the landed code: without the full stop a crisis, with it none (Whisper writes one)."""
    levels = {care.assess(variant).level for variant in dressed(said)}
    assert len(levels) == 1, levels


def test_the_second_opinion_works_when_memory_is_down(tmp_path: Path) -> None:
    """Found in the landed code: the examples took their embedder from memory, so a chromadb that would
    not open silently left the crisis check to the rules alone."""
    from server.app import create_app
    from server.config import load_settings

    config = tmp_path / "tadbot.toml"
    config.write_text(
        f'[llm]\nmodel_path = "{tmp_path / "none.gguf"}"\n[fer]\nmodel_path = "{tmp_path / "none.onnx"}"\n',
        encoding="utf-8",
    )
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(tmp_path / "data")})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "memory").write_text("a file where chromadb's folder should be", encoding="utf-8")
    engine = create_app(settings).extensions["tadbot"]
    try:
        status = engine.components.status
        assert engine.components.memory is None and status["memory"].status == "error"
        assert status["safety"].detail == "rules and similar examples"
        said = "I have made my peace and said my goodbyes, tonight I go"
        assert engine.care.detector.assess(said).level != Level.CRISIS, "the rules alone miss it"
        assert engine.care.assess(said).level == Level.CRISIS
    finally:
        engine.close()
        atexit.unregister(engine.close)  # the app keeps its engine for exit; this one is done now
