"""The device's own crisis rules and its copy of the crisis reply (device/crisis.py)."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from device.crisis import load_crisis_fallback, load_crisis_reply, load_crisis_words
from device.errors import DeviceError

WORDS = load_crisis_words()
US_HELPLINE = (
    "You can call or text nine eight eight, the Suicide and Crisis Lifeline, any time, day or night."
)
US_REPLY = (
    "I'm really glad you told me, and I'm taking what you said seriously.",
    "You deserve support right now, from a person who can help.",
    US_HELPLINE,
    "If you are in immediate danger, call nine one one now, or ask someone near you to stay with you.",
    "I'm here with you. Let's breathe together while you reach out: in slowly, and out even slower.",
)
SPOKEN_SET = tomllib.loads(resources.files("device").joinpath("spoken_set.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("words", "rule"),
    [
        ("I want to end my life.", "end_my_life"),
        ("I just want to die.", "want_to_die"),
        ("I'm going to kill myself tonight.", "kill_myself"),
        ("I keep thinking about suicide.", "suicide"),
        ("I want to hurt myself.", "hurt_myself"),
        ("Honestly I’m feeling suicidal again", "suicidal"),
        ("I'm scared, and I don't want to be alive anymore", "not_alive"),
        ("I'm going to take an overdose.", "overdose"),
        ("I'm not okay. I want to kill myself.", "kill_myself"),
        ("I'm not joking I want to die", "want_to_die"),
        ("I would never say this, but I want to end it all.", "end_it_all"),
    ],
)
def test_first_person_words_of_crisis_are_read_as_crisis(words: str, rule: str) -> None:
    assert WORDS.match(words) == rule


@pytest.mark.parametrize(
    "words",
    [
        "I'm not going to kill myself.",
        "I would never hurt myself.",
        "I don't want to die, I want this panic to stop.",
        "I won't end my life.",
        *SPOKEN_SET["safe"],
    ],
)
def test_negated_words_and_everyday_distress_are_not(words: str) -> None:
    assert WORDS.match(words) is None


@pytest.mark.parametrize(
    ("locale", "helpline"),
    [
        ("US", US_HELPLINE),
        ("gb", "You can call Samaritans free on one one six, one two three, any time, day or night."),
        ("FR", "You can find a free, confidential helpline in your country at find a helpline dot com."),
    ],
)
def test_the_reply_gives_the_helpline_of_the_locale(locale: str, helpline: str) -> None:
    reply = load_crisis_reply(locale)
    assert len(reply) == 5 and reply[2] == helpline
    assert not any("{" in line for line in reply)


def test_the_us_reply_is_the_whole_script() -> None:
    assert load_crisis_reply("US") == US_REPLY


def test_a_broken_turn_the_server_flagged_says_only_the_lines_not_yet_sent() -> None:
    fallback = load_crisis_fallback("US")
    assert fallback.lines_for("goodbye", True, US_REPLY[:2]) == ("the server", US_REPLY[2:])
    assert fallback.lines_for("I want to die", False, ()) == ("the device's rule want_to_die", US_REPLY)
    assert fallback.lines_for("my heart is racing", False, ()) is None


def test_a_reply_file_without_the_helpline_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crisis_reply.toml"
    path.write_text(
        'version = 1\nlines = ["Hello."]\n[locales.default]\nhelpline = "Call."\nemergency = "112"\n',
        encoding="utf-8",
    )
    with pytest.raises(DeviceError) as caught:
        load_crisis_reply("US", path)
    assert caught.value.code == "bad_crisis_reply"
    assert caught.value.message == f"{path}: `lines` must hold the {{helpline}} line"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('version = 2\n[rules]\na = "x"\n', "has version 2; expected 1"),
        ('version = 1\nclause_breaks = ","\nnegation = "not"\n', "has no [rules]"),
        (
            'version = 1\nclause_breaks = ","\nnegation = "not"\n[rules]\nbad = "(die"\n',
            "[rules] bad is not a",
        ),
    ],
)
def test_a_bad_words_file_is_refused_with_what_is_wrong(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "crisis_words.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(DeviceError) as caught:
        load_crisis_words(path)
    assert caught.value.code == "bad_crisis_words" and message in caught.value.message
