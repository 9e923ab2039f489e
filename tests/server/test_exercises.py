"""The shipped exercises are complete, paced and speakable; requests find the right one; a bad file is
refused with a line that names the file and the problem."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest

from server.conversation.sentences import SentenceSplitter, clean_for_speech
from server.errors import ConfigError, NotFound
from server.safety.exercises import EXERCISES_FILE, Exercise, Exercises

IDS = ("box_breathing", "breathing_478", "grounding_54321", "muscle_relaxation", "orientation")
# espeak-ng's default rate (the device's tts_rate) is 165 words a minute.
WORDS_PER_S = 165 / 60


@pytest.fixture(scope="module")
def exercises() -> Exercises:
    return Exercises.load()


def test_the_five_exercises_ship_and_the_default_is_box_breathing(exercises: Exercises) -> None:
    assert sorted(exercises.by_id) == sorted(IDS)
    assert exercises.default == "box_breathing"
    assert all(exercises.get(exercise_id).id == exercise_id for exercise_id in IDS)


def test_an_unknown_id_is_not_found(exercises: Exercises) -> None:
    with pytest.raises(NotFound, match=r"no exercise 'yoga'; known: .*box_breathing"):
        exercises.get("yoga")


@pytest.mark.parametrize("exercise_id", IDS)
def test_each_opens_by_name_and_closes_by_checking_in(exercises: Exercises, exercise_id: str) -> None:
    exercise = exercises.get(exercise_id)
    assert exercise.title.lower() in exercise.steps[0].text.lower()
    assert exercise.steps[-1].text == "How do you feel now?"
    assert exercise.steps[-1].pause_ms == 0, "after the check-in the person answers; nothing to wait for"
    assert exercise.offer.endswith("?")


@pytest.mark.parametrize("exercise_id", IDS)
def test_each_takes_one_to_three_minutes_spoken(exercises: Exercises, exercise_id: str) -> None:
    steps = exercises.get(exercise_id).steps
    words = sum(len(step.text.split()) for step in steps)
    seconds = words / WORDS_PER_S + sum(step.pause_ms for step in steps) / 1000
    assert 60 <= seconds <= 180
    assert all(0 <= step.pause_ms <= 20_000 for step in steps)
    assert all(step.pause_ms > 0 for step in steps[:-1]), "every step but the last leaves a moment"


@pytest.mark.parametrize("exercise_id", IDS)
def test_every_line_is_one_plain_sentence_for_espeak(exercises: Exercises, exercise_id: str) -> None:
    exercise = exercises.get(exercise_id)
    for text in (exercise.offer, *(step.text for step in exercise.steps)):
        assert text.isascii(), text
        assert clean_for_speech(text) == text, "no markdown, emoji or asides"
        assert text.endswith((".", "?", "!")), text
        assert not any(character.isdigit() for character in text), f"numbers as words: {text}"
        splitter = SentenceSplitter()
        assert [*splitter.feed(text + " "), splitter.flush()] == [text, None], "exactly one sentence"


CUES = ("Breathe in.", "Hold.", "Breathe out.")


def _body(exercise: Exercise) -> list[tuple[str, int]]:
    """The breathing cues of every round, with the length of the phase each one starts."""
    return [(step.text, step.pause_ms) for step in exercise.steps if step.text in CUES]


def test_box_breathing_is_rounds_of_four_four_second_phases(exercises: Exercises) -> None:
    body = _body(exercises.get("box_breathing"))
    box = [("Breathe in.", 4000), ("Hold.", 4000), ("Breathe out.", 4000), ("Hold.", 4000)]
    assert len(body) >= 3 * len(box)
    assert body == box * (len(body) // len(box))


def test_478_breathing_holds_seven_and_breathes_out_for_eight(exercises: Exercises) -> None:
    body = _body(exercises.get("breathing_478"))
    cycle = [("Breathe in.", 4000), ("Hold.", 7000), ("Breathe out.", 8000)]
    assert len(body) >= 3 * len(cycle)
    assert body == cycle * (len(body) // len(cycle))


def test_muscle_relaxation_tenses_for_five_seconds_and_releases_for_ten(exercises: Exercises) -> None:
    pairs = pairwise(exercises.get("muscle_relaxation").steps)
    releases = [after for before, after in pairs if (before.pause_ms, after.pause_ms) == (5000, 10000)]
    assert len(releases) >= 4
    assert all(step.text.startswith("Now let") for step in releases)


def test_orientation_names_no_day_place_or_time_it_cannot_know(exercises: Exercises) -> None:
    text = " ".join(step.text for step in exercises.get("orientation").steps).lower()
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    assert not any(word in text for word in (*days, "morning", "evening", "tonight", "at home"))
    assert "you are safe" not in text
    assert "notice the day" in text
    assert "will pass" in text


@pytest.mark.parametrize(
    ("utterance", "expected"),
    [
        ("Can you help me breathe?", "box_breathing"),
        ("can you help me breathe", "box_breathing"),
        ("can we do the breathing", "box_breathing"),
        ("lets do some breathing", "box_breathing"),
        ("breathe with me please", "box_breathing"),
        ("I'd like a breathing exercise", "box_breathing"),
        ("box breathing", "box_breathing"),
        ("breathing", "box_breathing"),
        ("i dont know what to do can you help me breathe", "box_breathing"),
        ("i'm not sure, can we do the breathing", "box_breathing"),
        ("no, i want to do the breathing", "box_breathing"),
        ("can we do four seven eight breathing", "breathing_478"),
        ("let's try the 4-7-8 breathing exercise", "breathing_478"),
        ("can we do 478", "breathing_478"),
        ("four seven eight", "breathing_478"),
        ("grounding", "grounding_54321"),
        ("can we do some grounding", "grounding_54321"),
        ("okay can we do grounding", "grounding_54321"),
        ("lets do the five four three two one thing", "grounding_54321"),
        ("the 5, 4, 3, 2, 1 one", "grounding_54321"),
        ("can we do the five things i can see one", "grounding_54321"),
        ("help me relax my muscles", "muscle_relaxation"),
        ("can we do progressive muscle relaxation", "muscle_relaxation"),
        ("where am i", "orientation"),
        ("Where am I?", "orientation"),
        ("i feel dizzy where am i", "orientation"),
        ("help me come back to the here and now", "orientation"),
        ("i need to calm down", "box_breathing"),
        ("help me calm down", "box_breathing"),
        ("give me something to calm me down", "box_breathing"),
        ("can we do an exercise", "box_breathing"),
        ("do you have a calming exercise", "box_breathing"),
    ],
)
def test_a_request_finds_its_exercise(exercises: Exercises, utterance: str, expected: str) -> None:
    found = exercises.asked_for(utterance)
    assert found is not None and found.id == expected


@pytest.mark.parametrize(
    "utterance",
    [
        # Describing distress is not a request: the engine may offer an exercise, but none starts by itself.
        "i can't breathe",
        "I can't breathe properly since the cold",
        "my breathing is fast",
        "i cant calm down",
        # Everyday talk that shares words with the asks.
        "I went to the gym",
        "i need to get some exercise",
        "the grounding wire in my house is loose",
        "i was grounded as a kid",
        "my muscles hurt from the gym",
        "my room number is 478",
        "where am i going to find the time",
        # Saying no.
        "i don't want to do the breathing",
        "can we not do the breathing",
        "i'm not in the mood for breathing exercises",
        "no more breathing exercises please",
        "please stop the exercise",
        "i hate grounding exercises",
        "",
    ],
)
def test_other_talk_asks_for_nothing(exercises: Exercises, utterance: str) -> None:
    assert exercises.asked_for(utterance) is None


@pytest.mark.parametrize(
    "utterance",
    ["yes", "Yes please.", "okay", "ok lets try", "sure, let's do it", "yeah go on", "why not", "I'll try"],
)
def test_saying_yes_to_an_offer_is_heard(exercises: Exercises, utterance: str) -> None:
    assert exercises.accepted(utterance)


@pytest.mark.parametrize(
    "utterance",
    [
        "no thanks",
        "I don't want to do the breathing",
        "not now",
        "yes I was on the train when it started",
        "okay so my heart is still racing and I keep thinking about the meeting tomorrow and my boss",
        "my chest hurts",
    ],
)
def test_a_no_or_a_new_thought_is_not_a_yes(exercises: Exercises, utterance: str) -> None:
    assert not exercises.accepted(utterance)


def test_the_talk_down_is_short_steady_and_speakable(exercises: Exercises) -> None:
    assert 1 <= len(exercises.talk_down) <= 5
    for step in exercises.talk_down:
        assert step.text.isascii() and step.text.endswith((".", "!", "?")) and step.pause_ms > 0
        assert clean_for_speech(step.text) == step.text


_VALID = r"""
version = 1
default = "calm"
asks = ['\bcalm down\b']
declines = ['\bno\b']
accepts = ['^yes$']
talk_down = [{ text = "I'm here.", pause_ms = 500 }]

[calm]
title = "calm"
offer = "Shall we?"
asks = ['\bcalm\b']
intro = [{ text = "Let's start.", pause_ms = 1000 }]
steps = [{ text = "Breathe in.", pause_ms = 4000 }, { text = "Breathe out.", pause_ms = 4000 }]
rounds = 2
closing = [{ text = "How do you feel now?", pause_ms = 0 }]
"""


def test_rounds_repeat_the_body_between_intro_and_closing() -> None:
    exercise = EXERCISES_FILE.parse_text(_VALID, "mine.toml").get("calm")
    texts = [step.text for step in exercise.steps]
    assert texts == ["Let's start.", *["Breathe in.", "Breathe out."] * 2, "How do you feel now?"]


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("version = 1", "version = 2", "version is 2; expected 1"),
        ('default = "calm"', 'default = "yoga"', "default = 'yoga' names no exercise; known: calm"),
        ('default = "calm"', 'default = "calm"\ncolour = "blue"', "the top level: unknown key 'colour'"),
        (r"declines = ['\bno\b']", "", "the top level: missing key 'declines'"),
        ('title = "calm"', 'title = "calm"\nmood = "ok"', r"\[calm\]: unknown key 'mood'"),
        ('offer = "Shall we?"', "", r"\[calm\]: missing key 'offer'"),
        ('offer = "Shall we?"', 'offer = "Shall we"', r"\[calm\] offer = 'Shall we'; a spoken sentence ends"),
        ("steps = [{", "steps = [] #", r"\[calm\] steps: expected a non-empty list"),
        ("pause_ms = 4000 }, {", "pause_ms = 30000 }, {", r"\[calm\] steps\[0\] pause_ms = 30000; expected"),
        ("pause_ms = 4000 }, {", "pause_ms = -1 }, {", r"\[calm\] steps\[0\] pause_ms = -1; expected"),
        ("pause_ms = 4000 }, {", "pause_ms = 4.5 }, {", r"\[calm\] steps\[0\] pause_ms = 4.5; expected"),
        ('{ text = "Breathe in.",', '{ txt = "Breathe in.",', r"\[calm\] steps\[0\]: unknown key 'txt'"),
        ("rounds = 2", "rounds = 0", r"\[calm\] rounds = 0; expected a whole number from 1 to 10"),
        (r"asks = ['\bcalm\b']", "asks = ['(calm']", r"\[calm\] asks\[0\] = '\(calm' is not a regular"),
        ("[calm]", "[Calm]", r"\[Calm\]: an exercise id is lower-case"),
        ("version = 1", "version = 1\n[", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_problem(old: str, new: str, problem: str) -> None:
    assert old in _VALID
    with pytest.raises(ConfigError, match=rf"^mine\.toml: .*{problem}") as raised:
        EXERCISES_FILE.parse_text(_VALID.replace(old, new, 1), "mine.toml")
    assert raised.value.code == "exercises_invalid"


def test_a_file_with_no_exercises_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "exercises.toml"
    path.write_text(_VALID.split("[calm]")[0], encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: no exercises"):
        EXERCISES_FILE.parse_text(path.read_text(encoding="utf-8"), str(path))
