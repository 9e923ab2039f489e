"""Sentence splitting of streamed LLM text, and cleaning it for text-to-speech."""

from __future__ import annotations

import pytest

from server.conversation.sentences import SentenceSplitter, clean_for_speech


def split_stream(pieces: list[str]) -> tuple[list[str], str | None]:
    splitter = SentenceSplitter()
    sentences = [sentence for piece in pieces for sentence in splitter.feed(piece)]
    return sentences, splitter.flush()


def test_sentences_come_out_in_order_even_fed_one_character_at_a_time() -> None:
    text = "Hello there. How are you feeling? I'm right here! Take your time"
    assert split_stream(list(text)) == (
        ["Hello there.", "How are you feeling?", "I'm right here!"],
        "Take your time",
    )


def test_a_sentence_is_held_back_until_the_whitespace_after_it_arrives() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("You are safe.") == []
    assert splitter.feed(" ") == ["You are safe."]
    assert splitter.feed("Breathe") == []
    assert splitter.flush() == "Breathe"
    assert splitter.flush() is None


def test_abbreviations_initials_and_decimals_stay_inside_their_sentence() -> None:
    pieces = ["Dr", ". Lee says e.g. breathing for 2.", "5 seconds helps. ", "Ask J. Smith", " too. Then."]
    assert split_stream(pieces) == (
        ["Dr. Lee says e.g. breathing for 2.5 seconds helps.", "Ask J. Smith too."],
        "Then.",
    )


def test_numbered_list_markers_are_not_sentences_but_numbers_ending_one_are() -> None:
    text = "1. Breathe in slowly.\n2. Hold it. I counted to 10. Then we stopped. "
    assert split_stream([text]) == (
        ["1. Breathe in slowly.", "2. Hold it.", "I counted to 10.", "Then we stopped."],
        None,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Well… I see. Okay", (["Well…", "I see."], "Okay")),
        ("Well... I see?! Okay", (["Well...", "I see?!"], "Okay")),
        ('She said "stop." Then she smiled. ', (['She said "stop."', "Then she smiled."], None)),
        ("**Breathe.** Slowly now. ", (["**Breathe.**", "Slowly now."], None)),
        ("Breathe in\nBreathe out\n\n", (["Breathe in", "Breathe out"], None)),
    ],
)
def test_terminators_quotes_and_line_breaks(text: str, expected: tuple[list[str], str | None]) -> None:
    assert split_stream([text]) == expected


def test_a_stage_direction_is_never_cut_in_half() -> None:
    pieces = ["(takes a breath. ", "smiles) You are safe. ", "*nods. waits* Okay. ", "[pause. slowly] Go on"]
    assert split_stream(pieces) == (
        ["(takes a breath. smiles) You are safe.", "*nods. waits* Okay."],
        "[pause. slowly] Go on",
    )


def test_an_aside_that_never_closes_stops_holding_sentences_back_after_max_chars() -> None:
    splitter = SentenceSplitter(max_chars=40)
    assert splitter.feed("(this aside never closes. ") == []
    assert splitter.feed("It goes on and on. And on. Done") == [
        "(this aside never closes. It goes on and on.",
        "And on.",
    ]
    assert splitter.flush() == "Done"


def test_nothing_unspeakable_or_empty_is_ever_yielded() -> None:
    assert split_stream(["   ", ". ", "\n\n", "!! ", "Fine. ", "  "]) == (["Fine."], None)
    assert split_stream(["..."]) == ([], None)


def test_flush_starts_afresh() -> None:
    splitter = SentenceSplitter()
    splitter.feed("First part")
    assert splitter.flush() == "First part"
    assert splitter.feed("Second. ") == ["Second."]


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Breathe** slowly, __gently__.", "Breathe slowly, gently."),
        ("*smiles warmly* You are safe.", "You are safe."),
        ("You are safe (I promise). Really [softly].", "You are safe. Really."),
        (
            "# Grounding\n- Five things you see\n* Four you hear",
            "Grounding Five things you see Four you hear",
        ),
        ("1. Breathe in\n2) Breathe out", "Breathe in Breathe out"),
        ("Try `box breathing` now.\n```\ncode\n```", "Try box breathing now. code"),
        ("You did great! 😊🌿 ❤️ Take care ✨", "You did great! Take care"),
        ("Go _slowly_, read [this guide](http://example.org/x) later.", "Go slowly, read this guide later."),
        ("> Quoted line\n\n   lots   of\t space  ", "Quoted line lots of space"),
        ("Hold 2.5 seconds, e.g. like this. You're okay!", "Hold 2.5 seconds, e.g. like this. You're okay!"),
        ("*sighs*", ""),
        ("(pause)", ""),
    ],
)
def test_clean_for_speech(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw) == spoken
