"""How a turn is laid out for the model: the stable prefix first, what changes per turn last."""

from __future__ import annotations

import jinja2

from server.conversation.llm.chat import fold_system
from server.conversation.prompt import Prompts, build_messages, stage_for, turn_content
from tests.tiny_gguf import GEMMA2_CHAT_TEMPLATE

PROMPTS = Prompts.load("Tad")
FACE = [{"label": "fear", "score": 0.61}, {"label": "sad", "score": 0.2}, {"label": "neutral", "score": 0.1}]


def render(messages: list[dict[str, str]]) -> str:
    """The prompt text exactly as Gemma-2's own chat template makes it from what the backend sends."""
    template = jinja2.Environment(loader=jinja2.BaseLoader()).from_string(GEMMA2_CHAT_TEMPLATE)
    return template.render(messages=fold_system(messages), bos_token="<bos>", add_generation_prompt=True)


def test_shipped_prompts_name_the_persona() -> None:
    assert PROMPTS.system.startswith("You are Tad,")
    assert "{name}" not in PROMPTS.system and "{name}" not in PROMPTS.greeting
    assert "{name}" not in PROMPTS.summarise and "Tad" in PROMPTS.summarise
    assert "Tad" in PROMPTS.greeting
    for move in ("safe", "reframe", "here and now", "breathing"):
        assert move in PROMPTS.system, f"the persona prompt lost the talk-down move {move!r}"


def test_the_whole_prompt_with_gemma_markers() -> None:
    content = turn_content(
        PROMPTS,
        user_text="it is happening again",
        memories=["plane trips scare me"],
        stage="building",
        top3=FACE,
    )
    messages = build_messages(
        PROMPTS,
        summary="They fear flying.",
        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, I'm here."}],
        content=content,
    )
    assert render(messages) == (
        "<bos><start_of_turn>user\n"
        f"{PROMPTS.system}\n\nEarlier in this conversation, in short: They fear flying.\n\nhi<end_of_turn>\n"
        "<start_of_turn>model\nHello, I'm here.<end_of_turn>\n"
        "<start_of_turn>user\n"
        "(Things they said in earlier conversations, for context only:\n- plane trips scare me)\n"
        "(You have been talking for a while: reflect back what they told you and refer to it.)\n"
        "it is happening again\n"
        "(Their face looks: fear 0.61, sad 0.20, neutral 0.10. Let this guide your tone; do not mention it.)"
        "<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_the_first_turn_carries_the_system_text() -> None:
    messages = build_messages(PROMPTS, summary="", history=[], content="hello")
    assert render(messages) == (
        f"<bos><start_of_turn>user\n{PROMPTS.system}\n\nhello<end_of_turn>\n<start_of_turn>model\n"
    )


def test_each_prompt_starts_with_the_previous_prompt_and_its_reply() -> None:
    """Append-only: memories, stage and face of the newest turn never change what came before."""
    history: list[dict[str, str]] = []
    previous = ""
    for n, words in enumerate(["my chest is tight", "it is getting worse", "okay, a little better"], 1):
        content = turn_content(
            PROMPTS,
            user_text=words,
            memories=[f"memory {n}"],
            stage=stage_for(n, 2, 3),
            top3=FACE[: 4 - n],
        )
        prompt = render(build_messages(PROMPTS, summary="", history=history, content=content))
        assert prompt.startswith(previous)
        reply = f"Reply number {n}."
        previous = prompt + reply
        history += [{"role": "user", "content": content}, {"role": "assistant", "content": reply}]


def test_no_notes_means_just_their_words() -> None:
    assert turn_content(PROMPTS, user_text="help") == "help"


def test_rapport_stages_follow_the_configured_boundaries() -> None:
    assert [stage_for(n, 10, 30) for n in (1, 9, 10, 29, 30, 500)] == [
        "opening",
        "opening",
        "building",
        "building",
        "established",
        "established",
    ]
    assert set(PROMPTS.stages) == {"opening", "building", "established"}
