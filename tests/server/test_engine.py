"""The engine on real components in-process: records, memory across sessions, and the turn's event order."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from server.config import load_settings
from server.conversation.components import Components
from server.conversation.engine import Companion
from server.conversation.llm.llama import LlamaCppChat
from server.conversation.prompt import Prompts
from server.conversation.turns import TurnInput
from server.errors import LlmError
from server.face.detect import HaarDetector
from server.face.fer import EmotionClassifier, FerPipeline
from server.memory.store import Memory
from server.records.store import Records
from tests.server.chats import RecordingChat, ScriptedChat
from tests.tiny_gguf import build_tiny_gemma2_gguf


def _companion(
    tmp_path: Path,
    chat: Any,
    memory: Memory | None = None,
    toml: str = "[llm]\nmax_tokens = 16\nn_ctx = 2048\n",
) -> Companion:
    config = tmp_path / "tadbot.toml"
    config.write_text(toml, encoding="utf-8")
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(tmp_path / "data")})
    components = Components(records=Records(tmp_path / "db.sqlite3"), chat=chat, memory=memory)
    return Companion(components, settings, Prompts.load("Tad"))


@pytest.fixture
def companion(tmp_path: Path, tiny_gguf: Path, embedder: Any) -> Companion:
    chat = RecordingChat(LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3))
    return _companion(tmp_path, chat, Memory(tmp_path / "memory", embedder))


def _say(companion: Companion, client: str, text: str) -> tuple[str, list[dict[str, Any]]]:
    session_id = companion.start_session(client, None)["session_id"]
    session = companion.records.session(session_id)
    return session_id, list(companion.turn(session, TurnInput(text=text)))


def test_a_text_turn_is_recorded_before_done(companion: Companion) -> None:
    session_id = companion.start_session("ana", None)["session_id"]
    session = companion.records.session(session_id)
    events = []
    for item in companion.turn(session, TurnInput(text="my chest feels tight")):
        if item["type"] == "done":
            # Read the record while the stream is paused at `done`, before the engine runs another line.
            recorded = [t["role"] for t in companion.records.session_log(session_id)["turns"]]
            assert recorded == ["user", "assistant"]
        events.append(item)
    assert events[0] == {"type": "transcript", "text": "my chest feels tight"}
    assert events[-1]["type"] == "done"
    reply = " ".join(e["text"] for e in events if e["type"] == "sentence")
    log = companion.records.session_log(session_id)
    assert [(t["role"], t["text"]) for t in log["turns"]] == [
        ("user", "my chest feels tight"),
        ("assistant", reply),
    ]
    assert log["turns"][1]["id"] == events[-1]["turn_id"]
    assert log["turns"][1]["timings"]["total_ms"] == events[-1]["timings"]["total_ms"]


def test_memories_of_earlier_sessions_reach_the_prompt(companion: Companion) -> None:
    chat = companion.components.chat
    _say(companion, "ana", "I had a panic attack on the plane trip last year")
    _say(companion, "ana", "I baked bread with my sister")
    _say(companion, "ben", "flying is fine for me, trains scare me")
    _, events = _say(companion, "ana", "I'm scared of flying next week")
    assert events[-1]["type"] == "done"
    prompt = chat.calls[-1][-1]["content"]
    assert "plane trip" in prompt, prompt
    assert "trains scare me" not in prompt, "another client's memories leaked into the prompt"
    assert prompt.index("plane trip") < prompt.index("I'm scared of flying next week")


def test_ending_a_session_summarises_and_remembers_it(companion: Companion) -> None:
    session_id, _ = _say(companion, "cara", "crowds make me dizzy")
    session = companion.records.session(session_id)
    ended = companion.end_session(session)
    assert ended["turns"] == 1 and "crowds make me dizzy" in ended["summary"]
    memory = companion.components.memory
    recalled = memory.recall(client="cara", query="dizzy in crowds", k=5)
    assert any(r.kind == "summary" for r in recalled)


def test_forgetting_a_client_erases_records_and_memory(companion: Companion) -> None:
    _say(companion, "dan", "I worry about my job")
    _say(companion, "eve", "I worry about exams")
    erased = companion.forget_client("dan", "test")
    assert erased == {"sessions": 1, "memories": 2}
    assert companion.components.memory.count("dan") == 0
    assert companion.components.memory.count("eve") == 2
    assert [s["client"] for s in companion.records.list_sessions(["dan", "eve"])] == ["eve"]


def test_an_empty_reply_is_replaced_by_the_talk_down_not_silence(tmp_path: Path) -> None:
    mute = build_tiny_gemma2_gguf(tmp_path / "mute.gguf", favour_end_of_turn=True)
    companion = _companion(tmp_path, LlamaCppChat(mute, n_ctx=2048, n_threads=1, seed=3))
    session_id, events = _say(companion, "fay", "hello?")
    talk_down = [step.text for step in companion.care.exercises.talk_down]
    assert [e["text"] for e in events if e["type"] == "sentence"][: len(talk_down)] == talk_down
    assert events[-1]["type"] == "done" and events[-1]["source"] == "offline"
    assert [t["role"] for t in companion.records.session_log(session_id)["turns"]] == ["user", "assistant"]


def test_a_hang_up_mid_reply_records_what_was_said_and_frees_the_model(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    inner = LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3)
    chat = ScriptedChat(["You are safe here. ", "Breathe in slowly. ", "Now out. "], inner)
    companion = _companion(tmp_path, chat)
    session_id = companion.start_session("gus", None)["session_id"]
    stream = companion.turn(companion.records.session(session_id), TurnInput(text="I can't breathe"))
    heard = [next(stream) for _ in range(3)]
    assert [e["type"] for e in heard] == ["transcript", "sentence", "sentence"]
    stream.close()  # what the WSGI server does when the device hangs up
    assert chat.closed, "the model's stream was left open after the hang-up"
    turns = companion.records.session_log(session_id)["turns"]
    assert [(t["role"], t["text"]) for t in turns] == [
        ("user", "I can't breathe"),
        ("assistant", "You are safe here. Breathe in slowly."),
    ]
    assert turns[1]["timings"] == {"interrupted": True}
    from server.records.export import to_text

    assert "Breathe in slowly. [cut off]" in to_text(companion.records.session_log(session_id))[0]


def test_a_model_failure_mid_reply_ends_with_an_error_and_keeps_what_was_said(tmp_path: Path) -> None:
    failure = LlmError("llm_failed", "the model stopped")
    companion = _companion(tmp_path, ScriptedChat(["You are safe here. ", "Breathe in. "], failure))
    session_id, events = _say(companion, "hal", "my heart is racing")
    assert [e["type"] for e in events] == ["transcript", "sentence", "sentence", "error"]
    assert events[-1]["code"] == "llm_failed"
    turns = companion.records.session_log(session_id)["turns"]
    assert turns[-1]["text"] == "You are safe here. Breathe in."
    assert turns[-1]["timings"] == {"interrupted": True}


def test_a_frame_that_cannot_be_read_does_not_cost_the_reply(
    tmp_path: Path, tiny_gguf: Path, tiny_fer: Path
) -> None:
    import numpy as np

    companion = _companion(tmp_path, LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3))
    fer = FerPipeline(HaarDetector(), EmotionClassifier(tiny_fer))
    companion.components = Components(records=companion.records, chat=companion.components.chat, fer=fer)
    session_id = companion.start_session("ida", None)["session_id"]
    unreadable = np.zeros((0, 0, 3), dtype=np.uint8)  # OpenCV's detector raises on an empty image
    events = list(
        companion.turn(companion.records.session(session_id), TurnInput(text="hi", frames=[unreadable]))
    )
    assert [e["type"] for e in events if e["type"] != "sentence"] == ["transcript", "done"]
    assert "fer_ms" in events[-1]["timings"]


def _talk(companion: Companion, session_id: str, lines: list[str]) -> list[dict[str, Any]]:
    session = companion.records.session(session_id)
    done = []
    for text in lines:
        events = list(companion.turn(session, TurnInput(text=text)))
        assert events[-1]["type"] == "done", events[-1]
        done.append(events[-1])
        companion.summariser.wait_idle(60)
    return done


def test_later_turns_evaluate_only_what_is_new(tmp_path: Path, tiny_gguf: Path) -> None:
    """llama.cpp's own counters: the cached prompt prefix is reused, so turn n reads about its new tokens."""
    companion = _companion(tmp_path, LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3))
    session_id = companion.start_session("jo", None)["session_id"]
    done = _talk(companion, session_id, ["my hands are shaking", "I keep thinking I will faint", "ok"])
    timings = [d["timings"] for d in done]
    assert (
        timings[0]["evaluated_tokens"] == timings[0]["prompt_tokens"] > 100
    )  # the system prompt is read once
    for before, now in itertools.pairwise(timings):
        new = now["prompt_tokens"] - before["prompt_tokens"]
        assert now["evaluated_tokens"] <= new + before["generated_tokens"], (before, now)
        assert now["evaluated_tokens"] < now["prompt_tokens"] / 2
        assert now["generated_tokens"] > 0 and now["first_token_ms"] > 0
    recorded = companion.records.session_log(session_id)["turns"][-1]["timings"]
    assert recorded["evaluated_tokens"] == timings[-1]["evaluated_tokens"]


def test_the_prompt_is_built_from_persona_stage_face_and_memories(companion: Companion) -> None:
    chat = companion.components.chat
    _say(companion, "kim", "the plane trip panic was awful")
    session_id = companion.start_session("kim", None)["session_id"]
    session = companion.records.session(session_id)
    events = list(companion.turn(session, TurnInput(text="I'm scared of flying")))
    assert events[-1]["type"] == "done"
    system, turn = chat.calls[-1][0], chat.calls[-1][-1]["content"]
    assert system == {"role": "system", "content": companion.prompts.system}
    assert "- the plane trip panic was awful" in turn
    assert companion.prompts.stages["opening"] in turn
    stored = companion.records.conversation(session_id).turns[0]
    assert stored.prompt == turn and stored.text == "I'm scared of flying"


def test_memories_already_in_the_prompt_are_not_repeated(companion: Companion) -> None:
    chat = companion.components.chat
    _say(companion, "lee", "thunderstorms make me panic")
    session_id = companion.start_session("lee", None)["session_id"]
    _talk(companion, session_id, ["a storm is coming tonight", "the storm is here now"])
    first, second = chat.calls[-2][-1]["content"], chat.calls[-1][-1]["content"]
    assert "thunderstorms make me panic" in first
    assert "thunderstorms make me panic" not in second


def _folding_companion(tmp_path: Path, tiny_gguf: Path) -> Companion:
    """A companion on the tiny model whose history is small enough to fold after a few turns."""
    chat = RecordingChat(LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=5))
    toml = "[llm]\nmax_tokens = 24\nn_ctx = 2048\n[memory]\nhistory_tokens = 300\n"
    return _companion(tmp_path, chat, toml=toml)


def test_a_long_conversation_folds_into_a_summary_and_never_overflows(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    companion = _folding_companion(tmp_path, tiny_gguf)
    session_id = companion.start_session("max", None)["session_id"]
    lines = [f"turn {n}: my heart races when I think about the meeting on day {n}" for n in range(200)]
    done = _talk(companion, session_id, lines)
    assert len(done) == 200
    assert max(d["timings"]["prompt_tokens"] for d in done) + 24 <= 2048
    conversation = companion.records.conversation(session_id)
    assert conversation.folded_through > 0 and conversation.summary
    assert companion.records.session_log(session_id)["turns"][-2]["text"] == lines[-1], "nothing is dropped"
    companion.close()


def test_the_fallback_summary_keeps_their_newest_words_within_budget(tmp_path: Path, tiny_gguf: Path) -> None:
    from server.conversation.summary import fallback_summary
    from server.records.rows import Turn

    prompts = Prompts.load("Tad")
    folded = [Turn(i, "user" if i % 2 else "assistant", f"words of turn {i}", "") for i in range(1, 41)]
    summary = fallback_summary(prompts, "They fear crowds.", folded, lambda s: len(s.split()), 30)
    assert len(summary.split()) <= 30
    assert "'words of turn 39'" in summary and "turn 40" not in summary  # replies are not quoted
    assert summary.startswith("... ")


def test_turns_past_the_queue_bound_are_refused(companion: Companion) -> None:
    limit = 1 + companion.settings.llm.queue_max
    for _ in range(limit):
        companion.admit()
    with pytest.raises(LlmError) as refused:
        companion.admit()
    assert refused.value.status == 503 and refused.value.code == "llm_busy"
    companion.release()
    companion.admit()


def _refuse(*_: Any, **__: Any) -> Any:
    raise AssertionError("called for a spoken command")


def test_a_spoken_command_is_tagged_answered_and_recorded_without_the_model(
    companion: Companion, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = companion.components.chat
    memory = companion.components.memory
    # Any of these called would end the stream with an internal_error instead of `done`.
    monkeypatch.setattr(memory, "recall", _refuse)
    monkeypatch.setattr(companion.care, "exercise_for", _refuse)
    session_id, events = _say(companion, "nia", "Okay Tad, can we start over please?")
    reply = ["Of course.", "Let's start again, fresh."]
    assert [e["type"] for e in events] == ["transcript", "command", "sentence", "sentence", "done"]
    assert events[1] == {"type": "command", "name": "new_session"}
    assert [e["text"] for e in events[2:4]] == reply
    done = events[-1]
    assert done["source"] == "command"
    assert chat.calls == [], "the model was asked to answer a command"
    assert {"safety_ms", "first_sentence_ms", "total_ms"} <= done["timings"].keys()
    assert "prompt_tokens" not in done["timings"]
    log = companion.records.session_log(session_id)
    assert [(t["role"], t["text"]) for t in log["turns"]] == [
        ("user", "Okay Tad, can we start over please?"),
        ("assistant", "Of course. Let's start again, fresh."),
    ]
    assert log["turns"][1]["id"] == done["turn_id"]
    assert log["turns"][1]["timings"]["total_ms"] == done["timings"]["total_ms"]
    assert log["ended_at"] is None, "the device ends the session with /end, never the engine"
    assert memory.count("nia") == 0, "a command went to the vector memory"


def test_a_goodbye_is_said_and_the_session_is_left_for_the_device_to_end(companion: Companion) -> None:
    session_id, events = _say(companion, "oli", "goodbye, thank you")
    assert events[1] == {"type": "command", "name": "end_session"}
    assert [e["text"] for e in events if e["type"] == "sentence"] == [
        "Goodbye for now.",
        "Take gentle care of yourself, and come back whenever you need me.",
    ]
    assert events[-1]["type"] == "done" and events[-1]["source"] == "command"
    assert companion.records.session(session_id).ended_at is None
    assert companion.components.chat.calls == []


def test_a_pause_is_silent_and_recorded(companion: Companion) -> None:
    session_id, events = _say(companion, "pia", "Tad, be quiet please")
    assert [e["type"] for e in events] == ["transcript", "command", "done"]
    assert events[1] == {"type": "command", "name": "pause"}
    assert events[2]["source"] == "command" and "first_sentence_ms" not in events[2]["timings"]
    turns = companion.records.session_log(session_id)["turns"]
    # Nothing was said back, so no companion turn: `done` carries the person's turn.
    assert [(t["role"], t["text"]) for t in turns] == [("user", "Tad, be quiet please")]
    assert turns[0]["id"] == events[2]["turn_id"]
    assert turns[0]["timings"]["total_ms"] == events[2]["timings"]["total_ms"]
    assert companion.components.chat.calls == []


def test_the_model_answers_the_turn_after_a_pause(companion: Companion) -> None:
    session_id = companion.start_session("quin", None)["session_id"]
    done = _talk(companion, session_id, ["shh", "my hands are shaking"])
    assert [d["source"] for d in done] == ["command", "llm"]
    (call,) = companion.components.chat.calls
    # The pause is in the history the model reads, with no reply after it; the backend folds the two turns.
    assert [m["role"] for m in call] == ["system", "user", "user"] and call[1]["content"] == "shh"


def test_a_crisis_wins_over_a_command(companion: Companion) -> None:
    session_id, events = _say(companion, "ray", "stop, I want to die")
    types = [e["type"] for e in events]
    assert types[:2] == ["transcript", "safety"] and "command" not in types
    assert events[-1]["source"] == "crisis"
    assert companion.components.chat.calls == []
    assert [e["level"] for e in companion.records.session_log(session_id)["safety_events"]] == ["crisis"]


def test_a_command_comes_after_the_face_reading(tmp_path: Path, tiny_gguf: Path, tiny_fer: Path) -> None:
    import numpy as np

    chat = RecordingChat(LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3))
    companion = _companion(tmp_path, chat)
    fer = FerPipeline(HaarDetector(), EmotionClassifier(tiny_fer))
    companion.components = Components(records=companion.records, chat=chat, fer=fer)
    session_id = companion.start_session("sam", None)["session_id"]
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    given = TurnInput(text="pause", frames=[frame])
    events = list(companion.turn(companion.records.session(session_id), given))
    assert [e["type"] for e in events] == ["transcript", "emotions", "command", "done"]
    assert "fer_ms" in events[-1]["timings"] and chat.calls == []


def test_commands_are_left_out_of_the_session_summary(companion: Companion) -> None:
    session_id = companion.start_session("tia", None)["session_id"]
    _talk(companion, session_id, ["my chest is tight on the bus", "okay goodbye"])
    ended = companion.end_session(companion.records.session(session_id))
    assert "my chest is tight on the bus" in ended["summary"] and "goodbye" not in ended["summary"]
    only_a_restart, _ = _say(companion, "uma", "start over")
    companion.end_session(companion.records.session(only_a_restart))
    # A session that held nothing but a command leaves nothing to recall in the next one.
    assert companion.components.memory.count("uma") == 0


CRISIS = "I want to end my life"
CONCERN = "I feel hopeless about my life"


def test_crisis_and_concern_stay_out_of_later_prompts_and_whole_in_the_record(companion: Companion) -> None:
    chat = companion.components.chat
    first = companion.start_session("vic", None)["session_id"]
    _talk(companion, first, ["I baked bread with my sister", CRISIS, "I walked to the park", CONCERN])
    ended = companion.end_session(companion.records.session(first))
    assert "I baked bread with my sister" in ended["summary"]
    assert "end my life" not in ended["summary"] and "hopeless" not in ended["summary"]
    recalled = companion.components.memory.recall(
        client="vic", query=f"{CRISIS}. {CONCERN}", k=20, roles=("user", "summary")
    )
    assert recalled, "nothing was remembered at all"
    assert not [r.text for r in recalled if "end my life" in r.text or "hopeless" in r.text]

    second = companion.start_session("vic", None)["session_id"]
    _talk(companion, second, ["baking bread with my sister helped me feel less lost in life"])
    prompt = "\n".join(message["content"] for message in chat.calls[-1])
    assert "- I baked bread with my sister" in prompt, "recall works, so what is missing was left out"
    assert "end my life" not in prompt and "hopeless" not in prompt, prompt

    from server.records.export import to_csv, to_text

    log = companion.records.session_log(first)
    assert [(e["level"], e["turn_id"]) for e in log["safety_events"]] == [
        ("crisis", log["turns"][2]["id"]),
        ("concern", log["turns"][6]["id"]),
    ]
    assert [log["turns"][i]["text"] for i in (2, 6)] == [CRISIS, CONCERN]
    for words in (CRISIS, CONCERN):
        assert words in to_text(log)[0] and words in to_csv(log)[0]


def test_the_running_summary_never_reads_crisis_or_concern_turns(tmp_path: Path, tiny_gguf: Path) -> None:
    companion = _folding_companion(tmp_path, tiny_gguf)
    chat = companion.components.chat
    session_id = companion.start_session("wes", None)["session_id"]
    meeting = [f"turn {n}: my heart races when I think about the meeting on day {n}" for n in range(12)]
    _talk(companion, session_id, [CRISIS, meeting[0], CONCERN, *meeting[1:]])
    turns = companion.records.session_log(session_id)["turns"]
    conversation = companion.records.conversation(session_id)
    concern_turn = next(t["id"] for t in turns if t["text"] == CONCERN)
    assert conversation.folded_through > concern_turn, "both were folded out of the prompt"
    assert conversation.summary
    opening = companion.prompts.summarise.split("{")[0]
    asked = [c[0]["content"] for c in chat.calls if len(c) == 1 and c[0]["content"].startswith(opening)]
    assert asked, "the model was never asked to summarise"
    crisis_reply = companion.care.crisis.lines[0]
    for text in [conversation.summary, *asked]:
        assert "end my life" not in text and "hopeless" not in text and crisis_reply not in text, text
    ended = companion.end_session(companion.records.session(session_id))
    assert "end my life" not in ended["summary"] and "hopeless" not in ended["summary"]
    assert "'turn 0: my heart races" in ended["summary"]
    companion.close()


# A repeated idempotency key: the device's stream broke and it sends the same utterance once more.


def _keyed(companion: Companion, session_id: str, text: str, key: str) -> list[dict[str, Any]]:
    return list(companion.turn(companion.records.session(session_id), TurnInput(text=text), key))


def _sentences(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "sentence"]


def test_a_repeated_key_is_replayed_from_the_record_and_the_model_is_not_asked_again(
    companion: Companion,
) -> None:
    chat = companion.components.chat
    session_id = companion.start_session("kim", None)["session_id"]
    first = _keyed(companion, session_id, "my hands are shaking", "key-1")
    asked = len(chat.calls)
    assert asked == 1 and first[-1]["type"] == "done" and "replayed" not in first[-1]
    again = _keyed(companion, session_id, "my hands are shaking", "key-1")
    assert len(chat.calls) == asked, "the model was asked again for a reply already given"
    assert again[0] == {"type": "transcript", "text": "my hands are shaking"}
    assert _sentences(again) == _sentences(first) and _sentences(first)
    assert again[-1] == {**first[-1], "replayed": True}
    assert [e["type"] for e in again] == ["transcript", *["sentence"] * len(_sentences(first)), "done"]
    turns = companion.records.session_log(session_id)["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[1]["id"] == again[-1]["turn_id"]
    # Another key is another utterance: heard and answered anew.
    _keyed(companion, session_id, "my hands are shaking", "key-2")
    assert len(chat.calls) == asked + 1
    assert [t["role"] for t in companion.records.session_log(session_id)["turns"]] == [
        "user",
        "assistant",
    ] * 2


def test_a_broken_first_answer_is_answered_again_without_a_second_person_turn(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    inner = LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3)
    chat = RecordingChat(ScriptedChat(["You are safe here. ", "Breathe in slowly. ", "Now out. "], inner))
    companion = _companion(tmp_path, chat)
    session_id = companion.start_session("lou", None)["session_id"]
    _keyed(companion, session_id, "I like my garden", "earlier")
    stream = companion.turn(companion.records.session(session_id), TurnInput(text="I can't breathe"), "k")
    assert [next(stream)["type"] for _ in range(3)] == ["transcript", "sentence", "sentence"]
    stream.close()  # the device's connection broke mid-reply
    again = _keyed(companion, session_id, "I can't breathe", "k")
    assert again[0] == {"type": "transcript", "text": "I can't breathe"}
    assert again[-1]["type"] == "done" and again[-1]["source"] == "llm" and "replayed" not in again[-1]
    assert [e["text"] for e in _sentences(again)][:3] == [
        "You are safe here.",
        "Breathe in slowly.",
        "Now out.",
    ]
    assert len(chat.calls) == 3
    # The model read the conversation before this turn, then this turn's words once: not the cut-off reply.
    assert [m["role"] for m in chat.calls[-1]] == ["system", "user", "assistant", "user"]
    prompt = "\n".join(m["content"] for m in chat.calls[-1])
    assert prompt.count("I can't breathe") == 1 and "I like my garden" in prompt
    turns = companion.records.session_log(session_id)["turns"]
    assert [(t["role"], t["text"]) for t in turns[2:]] == [
        ("user", "I can't breathe"),
        ("assistant", "You are safe here. Breathe in slowly."),
        ("assistant", " ".join(e["text"] for e in _sentences(again))),
    ]
    assert turns[3]["timings"] == {"interrupted": True} and turns[4]["id"] == again[-1]["turn_id"]
    # A third try finds the whole reply and replays it.
    third = _keyed(companion, session_id, "I can't breathe", "k")
    assert _sentences(third) == _sentences(again) and third[-1]["replayed"] is True
    assert len(chat.calls) == 3 and len(companion.records.session_log(session_id)["turns"]) == 5


def test_a_key_still_streaming_is_refused_until_its_stream_ends(companion: Companion) -> None:
    from server.conversation.in_flight import TurnInProgress

    session_id = companion.start_session("max", None)["session_id"]
    session = companion.records.session(session_id)
    stream = companion.turn(session, TurnInput(text="I feel dizzy"), "busy-key")
    assert next(stream)["type"] == "transcript"
    with pytest.raises(TurnInProgress) as refused:
        companion.turn(session, TurnInput(text="I feel dizzy"), "busy-key")
    assert (refused.value.code, refused.value.status, refused.value.retry_after_s) == (
        "turn_in_progress",
        409,
        5,
    )
    rest = list(stream)
    assert rest[-1]["type"] == "done"
    again = _keyed(companion, session_id, "I feel dizzy", "busy-key")
    assert again[-1] == {**rest[-1], "replayed": True}


def test_a_silent_command_and_a_paced_exercise_are_replayed_as_they_were_sent(companion: Companion) -> None:
    session_id = companion.start_session("ned", None)["session_id"]
    pause = _keyed(companion, session_id, "be quiet", "pause-key")
    assert [e["type"] for e in pause] == ["transcript", "command", "done"]
    assert _keyed(companion, session_id, "be quiet", "pause-key") == [
        *pause[:2],
        {**pause[-1], "replayed": True},
    ]
    exercise = _keyed(companion, session_id, "can you help me breathe", "breathe-key")
    assert any(e.get("pause_ms", 0) > 0 for e in _sentences(exercise))
    replayed = _keyed(companion, session_id, "can you help me breathe", "breathe-key")
    assert _sentences(replayed) == _sentences(exercise)
    assert replayed[-1]["source"] == "exercise" and replayed[-1]["replayed"] is True
    assert companion.components.chat.calls == []
    roles = [t["role"] for t in companion.records.session_log(session_id)["turns"]]
    assert roles == ["user", "user", "assistant"]
