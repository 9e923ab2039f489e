"""`tadbot train prepare`: sources → cleaned, split-by-question chat JSONL for the companion's fine-tune.

Each example is what the fine-tuned model will be shown at run time: Gemma has no system role, so the
persona (server/prompts/system.txt, rendered as the server renders it) goes in front of the first user turn,
folded by the server's own `fold_system`. Counsel-chat gives one question and a therapist's answer per
example; dialog sources give their whole conversation.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from server.for_training import ConfigError, PersonaSection, fold_system
from training.llm import card
from training.llm.clean import clean_answer, clean_question, first_sentences, looks_english, word_count
from training.llm.readers import DataError, Dialog, Source, read_source
from training.llm.split import SPLITS, Item, assign_splits, exact_key

_LOGGER = logging.getLogger(__name__)

DEFAULT_PERSONA_NAME = PersonaSection().name


@dataclass(frozen=True)
class PrepareConfig:
    """One `tadbot train prepare` run; each field is the command-line flag of the same name."""

    sources: tuple[str, ...]
    """Counsel-chat CSVs, chat JSONL, Person A/B .txt files, or hub names; read in this order."""
    out: Path
    """Where train.jsonl, val.jsonl, test.jsonl, DATA_CARD.md and data_card.json go."""
    answers: str = "best"
    """Counsel-chat answers kept per question: "best" (the most upvoted), or K (up to K, by upvotes)."""
    max_answer_words: int = 400
    """Counsel-chat answers longer than this, after cleaning, are dropped: the companion speaks briefly."""
    max_sentences: int = 0
    """Counsel-chat answers are cut to their first N sentences (0: kept whole): a written answer is longer
    than a spoken reply."""
    val_fraction: float = 0.1
    """Share of question groups drawn for validation when the sources name no validation split."""
    test_fraction: float = 0.1
    """Share of question groups drawn for test when the sources name no test split."""
    seed: int = 0
    system_file: Path | None = None
    """The persona text; None uses the server's shipped server/prompts/system.txt."""
    system: bool = True
    """Put the persona in front of the first user turn; False leaves it out."""
    persona_name: str = DEFAULT_PERSONA_NAME
    """Replaces {name} in the persona text, as the server does with [persona] name."""
    tokenizer: Path | None = None
    """A Hugging Face tokenizer.json for the data card's lengths; None counts words instead."""
    command_line: str = ""
    """The command as typed, for the data card."""

    def __post_init__(self) -> None:
        if not self.sources:
            _bad("source", "", "at least one --source")
        if self.answers != "best" and not (self.answers.isdigit() and int(self.answers) >= 1):
            _bad("answers", self.answers, "best or a number of answers per question, 1 or more")
        if self.max_answer_words < 1:
            _bad("max_answer_words", self.max_answer_words, "1 or more")
        if self.max_sentences < 0:
            _bad("max_sentences", self.max_sentences, "0 (whole answers) or more")
        for key in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, key) < 1:
                _bad(key, getattr(self, key), "from 0 up to (not including) 1")
        if self.val_fraction + self.test_fraction >= 1:
            _bad("test_fraction", self.test_fraction, "less than 1 together with --val-fraction")
        if not self.persona_name.strip():
            _bad("persona_name", self.persona_name, "a name")

    @property
    def answers_per_question(self) -> int:
        return 1 if self.answers == "best" else int(self.answers)


def _bad(key: str, value: object, wanted: str) -> None:
    flag = "--" + key.replace("_", "-")
    raise ConfigError("bad_option", f"{flag} {value!r}: expected {wanted}")


def load_persona(config: PrepareConfig) -> str:
    """The persona text as the server sends it: stripped, with {name} replaced (its only placeholder)."""
    if not config.system:
        return ""
    if config.system_file is None:
        text = resources.files("server").joinpath("prompts", "system.txt").read_text(encoding="utf-8")
    else:
        try:
            text = config.system_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"--system-file {config.system_file}: cannot read it ({exc})") from exc
    text = text.strip().replace("{name}", config.persona_name)
    if not text:
        raise DataError(f"--system-file {config.system_file}: it is empty")
    return text


@dataclass(frozen=True)
class Example:
    turns: tuple[tuple[str, str], ...]
    topic: str
    split: str
    question: int
    """The example's question (near-duplicates share it), for counting distinct questions per split."""


@dataclass
class _Pending:
    """A counsel-chat row or a dialog, waiting for its split."""

    item: Item
    topic: str
    question: str = ""
    """Counsel-chat: what the person asks, cleaned."""
    answer: str = ""
    upvotes: int = 0
    dialog: Dialog | None = None


def run_prepare(config: PrepareConfig) -> dict[str, Any]:
    """Read, clean, split, write; returns the summary printed as the last stdout line."""
    persona = load_persona(config)
    counter = card.length_counter(config.tokenizer)
    sources = [read_source(spec) for spec in config.sources]
    for source in sources:
        _LOGGER.debug(
            "%s (%s): %d rows, %d dialogs", source.name, source.kind, len(source.rows), len(source.dialogs)
        )
    dropped: dict[str, Counter[str]] = {
        "answers": Counter(),
        "answers, shortened": Counter(),
        "questions": Counter(),
        "dialogs": Counter(),
    }
    pending: list[_Pending] = []
    for source in sources:
        pending += _counsel_pending(source, config, dropped)
        pending += _dialog_pending(source, persona, dropped)
        dropped["dialogs"] += source.dropped
    if not pending:
        raise DataError(f"{', '.join(config.sources)}: nothing is left after cleaning")

    result = assign_splits(
        [p.item for p in pending],
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    examples = _examples(pending, result.splits, result.question_of, config, dropped)
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"--out {config.out}: cannot create it ({exc.strerror})") from exc
    files = _write(examples, persona, config.out)
    return card.write(
        config=config,
        sources=sources,
        examples=examples,
        rendered={split: _rendered(examples, persona, split) for split in SPLITS},
        counter=counter,
        dropped=dropped,
        split_stats=result.stats,
        files=files,
    )


def _counsel_pending(
    source: Source, config: PrepareConfig, dropped: dict[str, Counter[str]]
) -> list[_Pending]:
    """Clean each row; drop questions without text and answers that are empty, Spanish or too long."""
    pending = []
    no_text: set[str] = set()
    asked: set[str] = set()
    kept_questions: set[str] = set()
    for row in source.rows:
        title, text = clean_question(row.title), clean_question(row.text)
        key = exact_key(f"{title} {text}") or f"{source.name}#{row.question_id}"
        if not text:
            no_text.add(key)
            dropped["answers"]["question has no text"] += 1
            continue
        asked.add(key)
        answer = clean_answer(row.answer, row.signer)
        if not answer:
            reason = "in Spanish" if not looks_english(row.answer) else "nothing left after cleaning"
            dropped["answers"]["empty" if not row.answer.strip() else reason] += 1
            continue
        if word_count(answer) > config.max_answer_words:
            dropped["answers"][f"longer than {config.max_answer_words} words"] += 1
            continue
        if config.max_sentences:
            answer, cut = first_sentences(answer, config.max_sentences)
            plural = "s" if config.max_sentences > 1 else ""
            dropped["answers, shortened"][f"cut to their first {config.max_sentences} sentence{plural}"] += (
                cut
            )
        kept_questions.add(key)
        item = Item(f"{title} {text}", (f"{source.name}#{row.question_id}",), row.split)
        pending.append(_Pending(item, row.topic, _user_text(title, text), answer, row.upvotes))
    dropped["questions"]["no question text"] += len(no_text)
    dropped["questions"]["no answer left"] += len(asked - kept_questions)
    return pending


def _user_text(title: str, text: str) -> str:
    """What the person says: the title, then the text, unless the text already holds the title."""
    if not title or exact_key(title) in exact_key(text):
        return text
    return f"{title}\n\n{text}"


def _dialog_pending(source: Source, persona: str, dropped: dict[str, Counter[str]]) -> list[_Pending]:
    pending = []
    for number, dialog in enumerate(source.dialogs):
        turns = dialog.turns
        # Our own output read back carries the persona already: take it off, so it is not there twice.
        if persona and turns[0][1].startswith(persona + "\n\n"):
            turns = (("user", turns[0][1][len(persona) + 2 :]), *turns[1:])
            dropped["dialogs"]["persona already in the first turn, taken off"] += 1
        users = " ".join(content for role, content in turns if role == "user")
        item = Item(users, (f"{source.name}#{number}",), dialog.split)
        pending.append(_Pending(item, dialog.topic, dialog=Dialog(turns, dialog.topic, dialog.split)))
    return pending


def _examples(
    pending: Sequence[_Pending],
    splits: Sequence[str],
    question_of: Sequence[int],
    config: PrepareConfig,
    dropped: dict[str, Counter[str]],
) -> list[Example]:
    """Dialogs as they are; per counsel-chat question, its best answers (see `rank_answers`)."""
    examples: list[tuple[int, Example]] = []
    answers: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(pending):
        if p.dialog is not None:
            examples.append((i, Example(p.dialog.turns, p.topic, splits[i], question_of[i])))
        else:
            answers[question_of[i]].append(i)
    for question, indices in answers.items():
        unique: dict[str, int] = {}
        for i in indices:
            key = exact_key(pending[i].answer)
            if key in unique:
                dropped["answers"]["same answer twice to one question"] += 1
                if pending[i].upvotes > pending[unique[key]].upvotes:
                    unique[key] = i
            else:
                unique[key] = i
        candidates = sorted(unique.values())
        ranked = rank_answers([(pending[i].upvotes, pending[i].answer) for i in candidates])
        keep = ranked[: config.answers_per_question]
        dropped["answers"]["not picked"] += len(ranked) - len(keep)
        first = pending[indices[0]]
        topic = Counter(pending[i].topic for i in indices).most_common(1)[0][0]
        for chosen in keep:
            turns = (("user", first.question), ("assistant", pending[candidates[chosen]].answer))
            examples.append((indices[0], Example(turns, topic, splits[indices[0]], question)))
    return [example for _, example in sorted(examples, key=lambda pair: pair[0])]


def rank_answers(answers: Sequence[tuple[int, str]]) -> list[int]:
    """Positions of (upvotes, answer) pairs, best first: most upvoted; among equal votes (most answers
    have none) the longer, since the fuller answer carries the reasoning; then the earlier."""
    return sorted(range(len(answers)), key=lambda i: (-answers[i][0], -word_count(answers[i][1]), i))


def messages(turns: Sequence[tuple[str, str]], persona: str) -> list[dict[str, str]]:
    """The chat as the fine-tune sees it: the persona folded into the first user turn, as at run time."""
    chat = [{"role": role, "content": content} for role, content in turns]
    return fold_system([{"role": "system", "content": persona}, *chat]) if persona else chat


def _rendered(examples: Sequence[Example], persona: str, split: str) -> list[list[dict[str, str]]]:
    return [messages(e.turns, persona) for e in examples if e.split == split]


def _write(examples: Sequence[Example], persona: str, out: Path) -> dict[str, Path]:
    files = {split: out / f"{split}.jsonl" for split in SPLITS}
    for split, path in files.items():
        with path.open("w", encoding="utf-8") as handle:
            for example in examples:
                if example.split == split:
                    line = json.dumps({"messages": messages(example.turns, persona)}, ensure_ascii=False)
                    handle.write(line + "\n")
    return files
