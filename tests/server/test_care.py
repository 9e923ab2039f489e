"""Safety around the model, on the real engine and tiny model: the crisis path never asks the model, the
guard replaces what must not be said, exercises are paced, and without a model the person is still helped."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from server.care import Care
from server.components import Components
from server.config import SafetySection, load_settings
from server.engine import Companion, TurnInput
from server.errors import LlmError
from server.export import to_csv, to_text
from server.llm import LlamaCppChat
from server.prompt import Prompts
from server.records import Records
from server.safety import Assessment, Level
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
    assert companion.records.list_sessions("ann")[0]["crisis"] is True


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
    with caplog.at_level(logging.ERROR, logger="server.alerts"):
        _, (events,) = _turns(companion, "di", ["I want to die"])
        assert events[-1]["source"] == "crisis"
        assert companion.care.alerts.wait(10)
    assert "crisis alert for session" in caplog.text and "failed" in caplog.text


def test_concern_adds_a_note_to_the_model_s_prompt_and_is_recorded(
    companion: Companion, chat: RecordingChat
) -> None:
    session_id, (events,) = _turns(companion, "ed", ["I can't do this anymore"])
    assert events[-1]["source"] == "llm"
    assert companion.care.crisis.concern_note in chat.calls[-1][-1]["content"]
    (flag,) = companion.records.session_log(session_id)["safety_events"]
    assert flag["level"] == "concern"
    assert not any(e["type"] == "safety" for e in events), "a concern is not spoken as an alarm"


def test_a_concern_that_asks_for_an_exercise_is_recorded_too(
    companion: Companion, chat: RecordingChat
) -> None:
    """Found in the landed code: "I feel hopeless, help me breathe" started the exercise and no concern
    reached the therapist's record."""
    session_id, (events,) = _turns(companion, "eve", ["I feel hopeless, help me breathe"])
    assert events[-1]["source"] == "exercise" and chat.calls == []
    (flag,) = companion.records.session_log(session_id)["safety_events"]
    assert (flag["level"], flag["message"]) == ("concern", "answered with a guided exercise")
    assert flag["turn_id"] == companion.records.session_log(session_id)["turns"][0]["id"]
    assert not any(e["type"] == "safety" for e in events), "a concern is not spoken as an alarm"


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
