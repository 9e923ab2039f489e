"""Safety around the model, on the real engine and tiny model: the crisis path never asks the model, the
guard replaces what must not be said, exercises are paced, and without a model the person is still helped."""

from __future__ import annotations

import http.server
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from server.config import load_settings
from server.conversation.components import Components
from server.conversation.engine import Companion
from server.conversation.llm.llama import LlamaCppChat
from server.conversation.prompt import Prompts
from server.conversation.turns import TurnInput
from server.errors import LlmError
from server.records.export import to_csv, to_text
from server.records.store import Records
from server.safety.care import Care
from server.safety.crisis import Assessment, Level
from server.sections import SafetySection
from tests.server.chats import RecordingChat, ScriptedChat


def _companion(tmp_path: Path, chat: Any, safety: str = "") -> Companion:
    config = tmp_path / "tadbot.toml"
    config.write_text(f"[llm]\nmax_tokens = 16\nn_ctx = 2048\n[safety]\n{safety}\n", encoding="utf-8")
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(tmp_path / "data")})
    components = Components(records=Records(tmp_path / "db.sqlite3"), chat=chat)
    return Companion(components, settings, Prompts.load("Tad"))


@pytest.fixture
def chat(tiny_gguf: Path) -> RecordingChat:
    return RecordingChat(LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3))


@pytest.fixture
def companion(tmp_path: Path, chat: RecordingChat) -> Companion:
    return _companion(tmp_path, chat)


def _turns(companion: Companion, client: str, lines: list[str]) -> tuple[str, list[list[dict[str, Any]]]]:
    session_id = companion.start_session(client, None)["session_id"]
    session = companion.records.session(session_id)
    return session_id, [list(companion.turn(session, TurnInput(text=line))) for line in lines]


def _said(events: list[dict[str, Any]]) -> list[str]:
    return [e["text"] for e in events if e["type"] == "sentence"]


def test_a_crisis_is_answered_from_the_script_without_asking_the_model(
    companion: Companion, chat: RecordingChat
) -> None:
    session_id, (events,) = _turns(companion, "ann", ["I want to end my life"])
    assert [e["type"] for e in events[:2]] == ["transcript", "safety"]
    assert events[1] == {"type": "safety", "level": "crisis", "message": companion.care.crisis.helpline}
    assert _said(events) == list(companion.care.crisis.lines)
    assert "nine eight eight" in " ".join(_said(events))
    assert events[-1]["type"] == "done" and events[-1]["source"] == "crisis"
    assert chat.calls == [], "the model was asked during a crisis"
    log = companion.records.session_log(session_id)
    (flag,) = log["safety_events"]
    assert (flag["level"], flag["trigger"]) == ("crisis", "suicidal_ideation: end my life")
    assert flag["turn_id"] == log["turns"][0]["id"]
    assert "!! SAFETY CRISIS" in to_text(log)[0]
    assert "suicidal_ideation: end my life" in to_csv(log)[0]
    assert companion.records.list_sessions(["ann"])[0]["crisis"] is True


def test_the_locale_picks_the_helpline(tmp_path: Path, chat: RecordingChat) -> None:
    companion = _companion(tmp_path, chat, 'locale = "GB"')
    _, (events,) = _turns(companion, "bo", ["kms"])
    assert any("Samaritans" in text for text in _said(events))


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        """Quiet: the test reads what was posted."""


@pytest.fixture
def webhook() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Webhook.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}/alert"
    server.shutdown()
    server.server_close()


def test_a_crisis_alert_carries_who_and_when_never_the_words(
    tmp_path: Path, chat: RecordingChat, webhook: str
) -> None:
    companion = _companion(tmp_path, chat, f'alert_url = "{webhook}"')
    session_id, _ = _turns(companion, "cy", ["I took all my pills"])
    assert companion.care.alerts.wait(10)
    (alert,) = _Webhook.received
    assert (alert["client"], alert["session_id"], alert["level"]) == ("cy", session_id, "crisis")
    assert "pills" not in json.dumps(alert)


def test_a_dead_webhook_never_delays_or_breaks_the_reply(
    tmp_path: Path, chat: RecordingChat, caplog: pytest.LogCaptureFixture
) -> None:
    companion = _companion(tmp_path, chat, 'alert_url = "http://127.0.0.1:9/nothing-listens"')
    with caplog.at_level(logging.ERROR, logger="server.safety.alerts"):
        _, (events,) = _turns(companion, "di", ["I want to die"])
        assert events[-1]["source"] == "crisis"
        assert companion.care.alerts.wait(10)
    assert "crisis alert for session" in caplog.text and "failed" in caplog.text


def test_an_exercise_asked_for_is_paced_and_needs_no_model(companion: Companion, chat: RecordingChat) -> None:
    session_id, (events,) = _turns(companion, "fi", ["can you help me breathe"])
    steps = companion.care.exercises.get("box_breathing").steps
    sentences = [e for e in events if e["type"] == "sentence"]
    assert [(e["text"], e.get("pause_ms", 0)) for e in sentences] == [(s.text, s.pause_ms) for s in steps]
    assert events[-1]["source"] == "exercise" and chat.calls == []
    assert companion.records.session_log(session_id)["turns"][-1]["text"].startswith(steps[0].text)


def test_panic_in_the_words_brings_an_offer_and_yes_starts_it(companion: Companion) -> None:
    _, (first, second) = _turns(companion, "gil", ["I'm having a panic attack", "okay let's try"])
    offer = companion.care.exercises.get("box_breathing").offer
    assert _said(first)[-1] == offer and first[-1]["source"] == "llm"
    assert second[-1]["source"] == "exercise"
    assert _said(second)[0] == companion.care.exercises.get("box_breathing").steps[0].text


def test_an_offer_not_taken_up_is_forgotten(companion: Companion) -> None:
    _, (_, second, third) = _turns(companion, "hal", ["I'm panicking", "tell me about your day", "yes"])
    assert second[-1]["source"] == "llm" and third[-1]["source"] == "llm"


def test_offers_follow_the_face_and_never_nag() -> None:
    care = Care.load(SafetySection(offer_after_turns=2, offer_every_turns=3))
    calm = Assessment(Level.NONE)
    fear = [{"label": "fear", "score": 0.7}]
    happy = [{"label": "happy", "score": 0.9}]
    assert care.offer("s", 1, calm, fear) is None
    assert care.offer("s", 2, calm, fear) == care.exercises.get("box_breathing").offer
    assert care.offer("s", 3, calm, fear) is None, "offered one exchange ago"
    assert care.offer("s", 4, calm, fear) is None
    assert care.offer("s", 5, calm, fear) is not None
    assert care.offer("s", 9, calm, happy) is None
    assert care.offer("t", 1, calm, [{"label": "sad", "score": 0.3}]) is None, "below offer_min_score"
    assert care.offer("t", 2, Assessment(Level.NONE, panic=True), []) is not None


def test_the_guard_replaces_a_blocked_sentence_and_ends_the_reply(tmp_path: Path, tiny_gguf: Path) -> None:
    inner = LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3)
    chat = ScriptedChat(["You are safe. ", "Take 2 mg of lorazepam now. ", "It works fast. "], inner)
    companion = _companion(tmp_path, chat)
    session_id, (events,) = _turns(companion, "ivy", ["my chest is tight"])
    fallback = companion.care.guard.check("Take 2 mg of lorazepam now.").replacement
    assert _said(events)[:2] == ["You are safe.", fallback]
    assert "It works fast." not in _said(events) and events[-1]["type"] == "done"
    log = companion.records.session_log(session_id)
    (flag,) = log["safety_events"]
    assert flag["level"] == "blocked" and flag["trigger"] == "medication_dose: Take 2 mg of lorazepam now."
    reply = companion.records.conversation(session_id).turns[-1]
    assert "lorazepam" not in reply.prompt, "the model must not read its blocked words back"


def test_the_guard_reads_the_reply_so_far_so_split_harm_is_caught(tmp_path: Path, tiny_gguf: Path) -> None:
    inner = LlamaCppChat(tiny_gguf, n_ctx=2048, n_threads=1, seed=3)
    chat = ScriptedChat(["There are pills in your cupboard. ", "Swallow them now. ", "You'll sleep. "], inner)
    companion = _companion(tmp_path, chat)
    assert not companion.care.guard.check("Swallow them now.").blocked, "harmless alone"
    session_id, (events,) = _turns(companion, "uma", ["I can't sleep"])
    fallback = companion.care.guard.check("Take all of them.").replacement
    assert _said(events) == ["There are pills in your cupboard.", fallback]
    (flag,) = companion.records.session_log(session_id)["safety_events"]
    assert flag["trigger"] == "self_harm_method: Swallow them now."


def test_without_a_model_the_person_hears_the_talk_down_and_an_exercise(tmp_path: Path) -> None:
    companion = _companion(tmp_path, None)
    _, (events,) = _turns(companion, "jo", ["I feel awful"])
    talk_down = [s.text for s in companion.care.exercises.talk_down]
    assert _said(events)[: len(talk_down)] == talk_down
    assert len(_said(events)) > len(talk_down) + 5
    assert events[-1]["source"] == "offline"


def test_a_model_too_busy_to_wait_for_is_replaced_by_the_talk_down(
    companion: Companion, chat: RecordingChat
) -> None:
    for _ in range(1 + companion.settings.llm.queue_max):
        companion.admit()
    _, (events,) = _turns(companion, "kit", ["my hands are shaking"])
    assert events[-1]["source"] == "offline" and chat.calls == []


def test_a_model_that_fails_before_saying_anything_is_replaced(tmp_path: Path) -> None:
    companion = _companion(tmp_path, ScriptedChat([], LlmError("llm_failed", "the model crashed")))
    _, (events,) = _turns(companion, "lu", ["are you there"])
    assert events[-1]["source"] == "offline"
    companion.admit()  # the failed turn gave its place in the queue back


def test_without_a_model_no_offer_is_left_waiting_for_a_yes(tmp_path: Path) -> None:
    companion = _companion(tmp_path, None)
    _, (first, second) = _turns(companion, "mo", ["I'm panicking", "yes"])
    offer = companion.care.exercises.get("box_breathing").offer
    assert offer not in _said(first)
    assert second[-1]["source"] == "offline", "a yes to an offer that was never said starts nothing"


# The helpline before the record: nothing is written until it has been said.


def _fer_companion(tmp_path: Path, chat: RecordingChat, tiny_fer: Path) -> Companion:
    from server.face.detect import HaarDetector
    from server.face.fer import EmotionClassifier, FerPipeline

    companion = _companion(tmp_path, chat)
    fer = FerPipeline(HaarDetector(), EmotionClassifier(tiny_fer))
    companion.components = Components(records=companion.records, chat=chat, fer=fer)
    return companion


def test_nothing_is_written_before_the_helpline_is_said(companion: Companion) -> None:
    session_id = companion.start_session("ola", None)["session_id"]
    session = companion.records.session(session_id)
    seen = []
    for item in companion.turn(session, TurnInput(text="I want to end my life")):
        recorded = companion.records.session_log(session_id)
        if item["type"] != "done":
            assert recorded["turns"] == [] and recorded["safety_events"] == [], item
        else:
            # The record is in before `done`, when the database takes it at once.
            assert [t["id"] for t in recorded["turns"]][-1] == item["turn_id"]
        seen.append(item["type"])
    assert seen[:2] == ["transcript", "safety"] and seen[-1] == "done"


def test_a_locked_database_never_holds_up_the_helpline_and_the_record_lands_after(
    tmp_path: Path, chat: RecordingChat, tiny_fer: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    import numpy as np

    companion = _fer_companion(tmp_path, chat, tiny_fer)
    session_id = companion.start_session("pam", None)["session_id"]
    session = companion.records.session(session_id)
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    # Another writer holds the database: every write waits for it, as with a stuck backup or a long purge.
    blocker = sqlite3.connect(companion.records.path, timeout=0, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="server.conversation.crisis_record"):
            given = TurnInput(text="I want to end my life", frames=[frame])
            events = list(companion.turn(session, given))
        took = time.monotonic() - started
        lines = list(companion.care.crisis.lines)
        assert [e["type"] for e in events[:3]] == ["transcript", "emotions", "safety"]
        assert events[2]["message"] == companion.care.crisis.helpline
        assert _said(events) == lines
        done = events[-1]
        assert done["type"] == "done" and done["source"] == "crisis" and done["turn_id"] is None
        assert took < 3, f"the stream waited {took:.1f} s on the locked database"
        assert "crisis record not written on try 3: database is locked" in caplog.text
        assert companion.records.session_log(session_id)["turns"] == [], "written through the lock?"
    finally:
        blocker.rollback()
        blocker.close()
    assert companion.crisis_records.wait_idle(30), "the retried write never finished"
    log = companion.records.session_log(session_id)
    assert [(t["role"], t["text"]) for t in log["turns"]] == [
        ("user", "I want to end my life"),
        ("assistant", " ".join(lines)),
    ]
    assert log["turns"][1]["timings"]["total_ms"] == done["timings"]["total_ms"]
    (flag,) = log["safety_events"]
    assert (flag["level"], flag["trigger"], flag["message"]) == (
        "crisis",
        "suicidal_ideation: end my life",
        companion.care.crisis.helpline,
    )
    assert flag["turn_id"] == log["turns"][0]["id"]
    assert [(e["source"], e["faces"]) for e in log["emotion_samples"]] == [("turn", 0)]
    # Kept at the time they happened, not when the write finally landed.
    assert log["emotion_samples"][0]["t"] <= log["turns"][0]["created_at"] == flag["t"]
    assert log["turns"][1]["created_at"] < time.time() - 1.0, "stamped when said, not when written"
    assert companion.records.list_sessions(["pam"])[0]["crisis"] is True
    companion.close()


def test_a_hang_up_mid_crisis_reply_still_records_the_crisis(companion: Companion) -> None:
    session_id = companion.start_session("quy", None)["session_id"]
    stream = companion.turn(companion.records.session(session_id), TurnInput(text="I want to die"))
    heard = [next(stream) for _ in range(3)]
    assert [e["type"] for e in heard] == ["transcript", "safety", "sentence"]
    stream.close()  # what the WSGI server does when the device hangs up
    log = companion.records.session_log(session_id)
    assert [(t["role"], t["text"]) for t in log["turns"]] == [
        ("user", "I want to die"),
        ("assistant", companion.care.crisis.lines[0]),
    ]
    assert log["turns"][1]["timings"] == {"interrupted": True}
    assert [(e["level"], e["turn_id"]) for e in log["safety_events"]] == [("crisis", log["turns"][0]["id"])]


# Concern is recorded whatever answers it. Found in earlier code: "I feel hopeless, help me breathe" started
# the exercise and no concern reached the therapist's record.


@pytest.mark.parametrize(
    ("said", "source", "answered"),
    [
        ("I can't do this anymore", "llm", "the model was asked to answer with care"),
        ("I feel hopeless, help me breathe", "exercise", "answered with a guided exercise"),
        # Command words in a concern never make it a command: the model answers, with the care note.
        ("I feel hopeless, goodbye", "llm", "the model was asked to answer with care"),
    ],
)
def test_concern_is_recorded_whatever_answers_it(
    companion: Companion, chat: RecordingChat, said: str, source: str, answered: str
) -> None:
    session_id, (events,) = _turns(companion, "rae", [said])
    assert events[-1]["source"] == source
    assert not any(e["type"] in ("command", "safety") for e in events), "not a command, not an alarm"
    log = companion.records.session_log(session_id)
    (flag,) = log["safety_events"]
    assert (flag["level"], flag["message"], flag["turn_id"]) == ("concern", answered, log["turns"][0]["id"])
    assert bool(chat.calls) is (source == "llm")
    if chat.calls:
        assert companion.care.crisis.concern_note in chat.calls[-1][-1]["content"]


def test_concern_is_recorded_without_a_model_too(tmp_path: Path) -> None:
    companion = _companion(tmp_path, None)
    session_id, (events,) = _turns(companion, "sol", ["I feel hopeless, goodbye"])
    assert events[-1]["source"] == "offline"
    (flag,) = companion.records.session_log(session_id)["safety_events"]
    assert (flag["level"], flag["trigger"]) == ("concern", "hopelessness: hopeless")


# Risk across turns.


def test_concern_right_after_a_crisis_is_a_crisis(companion: Companion, chat: RecordingChat) -> None:
    session_id, (_, after, later) = _turns(
        companion, "tam", ["I want to end my life", "I feel hopeless", "I feel hopeless"]
    )
    assert after[1] == {"type": "safety", "level": "crisis", "message": companion.care.crisis.helpline}
    assert _said(after) == list(companion.care.crisis.lines) and after[-1]["source"] == "crisis"
    # The turn after that was a crisis too, so concern on it is read the same way.
    assert later[-1]["source"] == "crisis"
    assert chat.calls == [], "the model was asked"
    triggers = [
        (e["level"], e["trigger"]) for e in companion.records.session_log(session_id)["safety_events"]
    ]
    assert triggers == [
        ("crisis", "suicidal_ideation: end my life"),
        ("crisis", "concern_after_crisis: hopeless (hopelessness; on the turn after a crisis)"),
        ("crisis", "concern_after_crisis: hopeless (hopelessness; on the turn after a crisis)"),
    ]


def test_concern_after_a_calmer_turn_past_a_crisis_stays_concern(companion: Companion) -> None:
    _, (_, calm, concern) = _turns(
        companion, "uri", ["I want to end my life", "I walked the dog today", "I feel hopeless"]
    )
    assert calm[-1]["source"] == "llm" and concern[-1]["source"] == "llm"


def test_concern_on_a_third_turn_of_a_session_is_a_crisis(
    companion: Companion, chat: RecordingChat, tmp_path: Path, webhook: str
) -> None:
    lines = ["I feel hopeless", "I walked the dog today", "I can't do this anymore", "I feel hopeless"]
    session_id, streams = _turns(companion, "val", lines)
    assert [s[-1]["source"] for s in streams] == ["llm", "llm", "llm", "crisis"]
    assert streams[3][1]["type"] == "safety"
    events = companion.records.session_log(session_id)["safety_events"]
    assert [(e["level"], e["trigger"]) for e in events] == [
        ("concern", "hopelessness: hopeless"),
        ("concern", "hopelessness: can't do this anymore"),
        ("crisis", "repeated_concern: hopeless (hopelessness; concern on 3 turns of this session)"),
    ]
    # Counted per session: the same person's next session starts again from their words alone.
    _, (fresh,) = _turns(companion, "val", ["I feel hopeless"])
    assert fresh[-1]["source"] == "llm"
    # The alert names the rule, so the clinic knows why (never the words).
    (tmp_path / "alerted").mkdir()
    alerted = _companion(tmp_path / "alerted", chat, f'alert_url = "{webhook}"')
    _turns(alerted, "wyn", lines)
    assert alerted.care.alerts.wait(10)
    assert [a["rule"] for a in _Webhook.received] == ["repeated_concern"]


# A crisis sent again under the same idempotency key: the device's stream broke.


def _keyed(companion: Companion, session_id: str, text: str, key: str) -> list[dict[str, Any]]:
    return list(companion.turn(companion.records.session(session_id), TurnInput(text=text), key))


def test_a_crisis_sent_again_is_replayed_with_the_helpline_and_recorded_once(
    companion: Companion, chat: RecordingChat
) -> None:
    session_id = companion.start_session("rae", None)["session_id"]
    first = _keyed(companion, session_id, "I want to end my life", "crisis-key")
    again = _keyed(companion, session_id, "I want to end my life", "crisis-key")
    assert [e["type"] for e in again[:2]] == ["transcript", "safety"]
    assert again[1] == {"type": "safety", "level": "crisis", "message": companion.care.crisis.helpline}
    assert again[:-1] == first[:-1] and _said(again) == list(companion.care.crisis.lines)
    assert again[-1] == {**first[-1], "replayed": True} and again[-1]["source"] == "crisis"
    log = companion.records.session_log(session_id)
    assert [t["role"] for t in log["turns"]] == ["user", "assistant"]
    assert [e["level"] for e in log["safety_events"]] == ["crisis"]
    assert chat.calls == []


def test_a_crisis_reply_cut_off_is_said_again_whole_and_the_crisis_recorded_once(
    companion: Companion,
) -> None:
    session_id = companion.start_session("sol", None)["session_id"]
    stream = companion.turn(companion.records.session(session_id), TurnInput(text="I want to die"), "k")
    assert [next(stream)["type"] for _ in range(3)] == ["transcript", "safety", "sentence"]
    stream.close()
    again = _keyed(companion, session_id, "I want to die", "k")
    assert again[1] == {"type": "safety", "level": "crisis", "message": companion.care.crisis.helpline}
    assert _said(again) == list(companion.care.crisis.lines) and again[-1]["source"] == "crisis"
    assert "replayed" not in again[-1]
    log = companion.records.session_log(session_id)
    assert [(t["role"], t["timings"].get("interrupted", False)) for t in log["turns"]] == [
        ("user", False),
        ("assistant", True),
        ("assistant", False),
    ]
    assert log["turns"][2]["id"] == again[-1]["turn_id"]
    assert [(e["level"], e["turn_id"]) for e in log["safety_events"]] == [("crisis", log["turns"][0]["id"])]


def test_a_yes_to_an_offer_whose_exercise_was_cut_off_starts_the_same_exercise_again(
    companion: Companion,
) -> None:
    session_id, (first,) = _turns(companion, "tam", ["I'm having a panic attack"])
    box = companion.care.exercises.get("box_breathing")
    assert _said(first)[-1] == box.offer
    session = companion.records.session(session_id)
    stream = companion.turn(session, TurnInput(text="okay let's try"), "yes-key")
    assert [next(stream)["type"] for _ in range(3)] == ["transcript", "sentence", "sentence"]
    stream.close()
    again = _keyed(companion, session_id, "okay let's try", "yes-key")
    assert again[-1]["source"] == "exercise" and _said(again) == [step.text for step in box.steps]
    user_turns = companion.records.user_turns(session_id)
    assert user_turns == ["I'm having a panic attack", "okay let's try"]
