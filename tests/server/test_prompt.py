"""How a turn is laid out for the model: the stable prefix first, what changes per turn last."""

from __future__ import annotations

from server.prompt import Prompts, build_messages

PROMPTS = Prompts.load("Tad")


def test_shipped_prompts_name_the_persona() -> None:
    assert PROMPTS.system.startswith("You are Tad,")
    assert "{name}" not in PROMPTS.system and "{name}" not in PROMPTS.greeting
    assert "Tad" in PROMPTS.greeting


def test_memories_and_face_go_into_the_last_turn_only() -> None:
    history = [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}]
    top3 = [{"label": "fear", "score": 0.61}, {"label": "sad", "score": 0.2}]
    messages = build_messages(
        PROMPTS, history=history, memories=["plane trips scare me"], user_text="help", top3=top3
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == PROMPTS.system
    last = messages[-1]["content"]
    assert "- plane trips scare me" in last and "fear 0.61, sad 0.20" in last
    assert last.index("plane trips") < last.index("help") < last.index("fear 0.61")
    plain = build_messages(PROMPTS, history=history, memories=[], user_text="help")
    assert plain[:-1] == messages[:-1], "the prefix must not change with memories or the face"
    assert plain[-1]["content"] == "help"


def test_history_is_made_to_alternate() -> None:
    history = [
        {"role": "assistant", "text": "orphan reply"},
        {"role": "user", "text": "first"},
        {"role": "user", "text": "second, after a failed reply"},
        {"role": "assistant", "text": "answer"},
        {"role": "user", "text": "unanswered"},
    ]
    messages = build_messages(PROMPTS, history=history, memories=[], user_text="now")
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "second, after a failed reply"),
        ("assistant", "answer"),
        ("user", "now"),
    ]
