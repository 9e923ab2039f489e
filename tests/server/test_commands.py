"""Spoken commands: each is heard in its everyday wordings, and never in what a panicking person says."""

from __future__ import annotations

import re

import pytest

from server.errors import ConfigError
from server.safety.commands import COMMANDS_FILE, CommandName, Commands
from server.safety.crisis import CrisisDetector, Level


@pytest.fixture(scope="module")
def commands() -> Commands:
    return Commands.load()


def test_the_three_commands_ship_with_calm_replies(commands: Commands) -> None:
    assert list(commands.by_name) == [CommandName.NEW_SESSION, CommandName.END_SESSION, CommandName.PAUSE]
    assert commands.by_name[CommandName.NEW_SESSION].reply == ("Of course.", "Let's start again, fresh.")
    assert commands.by_name[CommandName.END_SESSION].reply == (
        "Goodbye for now.",
        "Take gentle care of yourself, and come back whenever you need me.",
    )
    assert commands.by_name[CommandName.PAUSE].reply == ()  # silence is what was asked for


def test_every_reply_is_short_plain_and_speakable(commands: Commands) -> None:
    for command in commands.by_name.values():
        for sentence in command.reply:
            assert sentence.endswith((".", "?", "!")), sentence
            assert len(sentence.split()) <= 14, sentence
            assert re.fullmatch(r"[A-Za-z ,.'!?]+", sentence), f"espeak cannot read {sentence!r} plainly"


@pytest.mark.parametrize(
    ("utterance", "expected"),
    [
        ("start over", "new_session"),
        ("Start over, please.", "new_session"),
        ("new session", "new_session"),
        ("A new session please", "new_session"),
        ("okay Tad, can we start again?", "new_session"),
        ("let's start fresh", "new_session"),
        ("Let's begin from the beginning.", "new_session"),
        ("I want to start over", "new_session"),
        ("could we have a new conversation", "new_session"),
        ("restart", "new_session"),
        ("re-start the session", "new_session"),
        ("goodbye", "end_session"),
        ("Goodbye, Tad. Thank you!", "end_session"),
        ("good-bye", "end_session"),
        ("bye bye", "end_session"),
        ("okay bye then", "end_session"),
        ("stop", "end_session"),
        ("Stop.", "end_session"),
        ("please stop", "end_session"),
        ("okay, can we stop now?", "end_session"),
        ("let's stop here for today", "end_session"),
        ("I have to go now", "end_session"),
        ("see you later", "end_session"),
        ("good night Tad", "end_session"),
        ("that's all for today, thanks", "end_session"),
        ("end the session", "end_session"),
        ("I'd like to end this conversation please", "end_session"),
        ("let's wrap up", "end_session"),
        ("pause", "pause"),
        ("Pause, please.", "pause"),
        ("be quiet", "pause"),
        ("Tad, be quiet please", "pause"),
        ("could you please stop talking", "pause"),
        ("can you be quiet for a minute", "pause"),
        ("shh", "pause"),
        ("shush", "pause"),
        ("hold on a second", "pause"),
        ("give me a minute", "pause"),
        ("um, wait", "pause"),
    ],
)
def test_a_command_is_heard_in_its_everyday_wordings(
    commands: Commands, utterance: str, expected: str
) -> None:
    found = commands.match(utterance)
    assert found is not None, utterance
    assert found.name == expected


NEAR_MISSES = [
    # What someone in a panic says about what they feel: it must reach the model, never end the session.
    "I want to stop feeling like this",
    "I can't stop shaking",
    "stop it hurts",
    "I want to end it all",
    "pause my life",
    "make it stop",
    "stop it",
    "please make it stop, I can't breathe",
    "I want to stop",
    "I just want to start over",
    "I want to start over my life",
    "I want to say goodbye",
    "goodbye forever",
    "goodbye everyone",
    "I'm done",
    "it's all over",
    "I need to stop thinking about it",
    "I can't be quiet about this any more",
    "wait, my chest hurts",
    # Talk, a decline, and filler alone: nothing is left once the filler is gone.
    "I stopped at the shop on the way home",
    "the new session of my course starts monday",
    "please stop the exercise",
    "okay",
    "thank you",
    "okay, thank you Tad",
    "",
]


@pytest.mark.parametrize("utterance", NEAR_MISSES)
def test_anything_more_than_the_command_is_not_one(commands: Commands, utterance: str) -> None:
    assert commands.match(utterance) is None


@pytest.mark.parametrize("utterance", ["stop, I want to die", "goodbye forever", "I want to end it all"])
def test_a_crisis_said_with_command_words_is_found_by_the_crisis_rules(
    commands: Commands, utterance: str
) -> None:
    """The engine checks for a crisis first; the command file never hides one behind its own words."""
    assert CrisisDetector.load().assess(utterance).level == Level.CRISIS
    assert commands.match(utterance) is None


def test_fillers_are_stripped_from_both_ends_only(commands: Commands) -> None:
    assert commands.core("okay tad so um be quiet please thank you") == "be quiet"
    assert commands.core("can we please stop") == "can we please stop"  # the middle is left alone
    assert commands.core("snow") == "snow"  # a filler inside a word is not a filler


_VALID = """
version = 1
fillers = ['please', 'okay']

[new_session]
patterns = ['start over']
reply = ["Of course."]

[end_session]
patterns = ['goodbye']
reply = ["Goodbye for now."]

[pause]
patterns = ['quiet|hush']
reply = []
"""


def test_a_small_valid_file_matches_by_its_own_patterns() -> None:
    commands = COMMANDS_FILE.parse_text(_VALID, "mine.toml")
    hush = commands.match("Okay, hush please.")
    assert hush is not None and hush.name == CommandName.PAUSE
    # A top-level alternation still has to match the whole utterance.
    assert commands.match("hush little baby") is None
    assert commands.match("quiet") is not None


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("version = 1", "version = 2", "version is 2; expected 1"),
        ("version = 1", 'version = 1\ncolour = "blue"', "unknown key 'colour'"),
        ("[pause]", "[pauses]", "unknown key 'pauses'"),
        ("fillers = ['please', 'okay']", "", "missing key 'fillers'"),
        ("fillers = ['please', 'okay']", "fillers = []", "fillers: expected a non-empty list"),
        (
            "fillers = ['please', 'okay']",
            "fillers = ['(please']",
            r"fillers\[0\] = '\(please' is not a regular",
        ),
        ("[pause]\npatterns = ['quiet|hush']\nreply = []\n", "", "missing key 'pause'"),
        ("reply = []", "", r"\[pause\]: missing key 'reply'"),
        ("reply = []", "reply = []\nwords = ['x']", r"\[pause\]: unknown key 'words'"),
        ("patterns = ['goodbye']", "patterns = []", r"\[end_session\] patterns: expected a non-empty list"),
        ("patterns = ['goodbye']", "patterns = ['good(bye']", r"\[end_session\] patterns\[0\] = 'good\(bye'"),
        (
            'reply = ["Goodbye for now."]',
            'reply = ["Goodbye for now"]',
            r"\[end_session\] reply\[0\] = .*ends",
        ),
        (
            'reply = ["Goodbye for now."]',
            'reply = "Goodbye for now."',
            r"\[end_session\] reply: expected a list",
        ),
        ('reply = ["Of course."]', 'reply = [" Of course."]', r"\[new_session\] reply\[0\] = .*one line"),
        ("version = 1", "version = 1\n[", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(old: str, new: str, problem: str) -> None:
    assert old in _VALID
    with pytest.raises(ConfigError, match=rf"^mine\.toml: .*{problem}") as raised:
        COMMANDS_FILE.parse_text(_VALID.replace(old, new, 1), "mine.toml")
    assert raised.value.code == "commands_invalid"
