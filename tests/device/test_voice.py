"""The voice thread, the state machine, the offline exercises and the daemon's helpers around a turn."""

from __future__ import annotations

import io
import itertools
import threading
import time
from pathlib import Path

import pytest

from device.backoff import Backoff
from device.client import ServerClient
from device.errors import DeviceError
from device.exercises import load_exercises
from device.lines import load_lines
from device.session import Conversation, Utterance
from device.states import State, StateMachine
from device.timeline import FramePoster
from device.voice import Voice
from tests.device.conftest import RecordingGate
from tests.device.loopback import GREETING, TOKEN, Loopback
from tests.device.test_session import REPLY, OneFrame, RecordingSpeaker

LINES = load_lines()


class SlowSpeaker(RecordingSpeaker):
    """Takes `seconds` per sentence, as a real voice does, and can be cut short."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.cut = threading.Event()
        self.stops = 0

    def say(self, text: str) -> None:
        self.cut.clear()
        self.cut.wait(self.seconds)
        super().say(text)

    def stop(self) -> None:
        self.stops += 1
        self.cut.set()


class HeldSpeaker(RecordingSpeaker):
    """Each sentence lasts until the test lets it end."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Semaphore(0)

    def say(self, text: str) -> None:
        assert self.release.acquire(timeout=10)
        super().say(text)


def test_voice_speaks_in_order_and_returns_at_once() -> None:
    speaker = HeldSpeaker()
    voice = Voice(speaker)
    for text in ("one.", "two.", "three."):
        voice.say(text)
    assert voice.busy and speaker.sentences == [], "say() queued all three while the first is still said"
    for _ in range(3):
        speaker.release.release()
    assert voice.wait_idle(5.0)
    assert speaker.sentences == ["one.", "two.", "three."] == list(voice.spoken)
    voice.close()


def test_the_state_machine_shuts_the_gate_for_a_whole_turn_and_opens_it_after_a_tail() -> None:
    """Found in the landed code: the voice opened the gate whenever its queue ran dry, so the microphone
    came on in the gap between two streamed sentences and cut off whoever spoke into it."""
    gate = RecordingGate()
    states = StateMachine(gate, tail_s=0.4)
    states.go(State.LISTENING)
    states.go(State.SENDING, "speech")
    states.go(State.SPEAKING, "first sentence")
    assert gate.events == ["mute"], "shut once, as the turn is sent, and not opened between sentences"
    states.go(State.LISTENING)
    states.go(State.ENDED, "goodbye")
    assert gate.events == ["mute", "unmute 0.4"], "opened once, with its tail, after the whole reply"


def test_voice_honours_pauses_and_caps_them() -> None:
    speaker = RecordingSpeaker()
    voice = Voice(speaker)
    voice.say("Breathe in.", 4000)
    voice.say("Hold.", 90_000)
    voice.say("Out.")
    assert voice.wait_idle(5.0)
    voice.close()
    assert speaker.pauses == [4.0, 20.0]


def test_interrupt_drops_what_is_queued_and_cuts_the_sentence_short() -> None:
    speaker = SlowSpeaker(2.0)
    voice = Voice(speaker)
    for text in ("a long sentence.", "another.", "and another."):
        voice.say(text)
    time.sleep(0.1)
    started = time.monotonic()
    voice.interrupt()
    assert voice.wait_idle(5.0)
    assert time.monotonic() - started < 1.0
    assert speaker.stops == 1
    assert speaker.sentences == ["a long sentence."], "the one being said was cut; the rest never said"
    voice.say("after.")
    assert voice.wait_idle(5.0)
    assert speaker.sentences[-1] == "after.", "speaking goes on normally after an interruption"
    voice.close()


def test_a_failing_speaker_does_not_stop_the_voice() -> None:
    speaker = RecordingSpeaker(fails_on=["bad."])
    voice = Voice(speaker)
    voice.say("bad.")
    voice.say("good.")
    assert voice.wait_idle(5.0)
    voice.close()
    assert speaker.sentences == ["good."]


def test_state_machine_logs_each_transition_with_its_duration(caplog: pytest.LogCaptureFixture) -> None:
    states = StateMachine()
    with caplog.at_level("INFO", logger="device.states"):
        states.go(State.LISTENING)
        time.sleep(0.02)
        states.go(State.SENDING, "speech")
        states.go(State.SENDING)
    assert [(old, new) for old, new, _ in states.history] == [
        (State.STARTING, State.LISTENING),
        (State.LISTENING, State.SENDING),
    ]
    assert states.history[1][2] >= 0.02
    assert caplog.records[-1].getMessage().startswith("state listening -> sending after 0.0")
    assert caplog.records[-1].getMessage().endswith("s (speech)")
    with pytest.raises(RuntimeError, match="state sending cannot go to starting"):
        states.go(State.STARTING)


def test_offline_exercises_are_read_from_the_device_copy() -> None:
    exercises = load_exercises()
    names = [name for name, _ in exercises.exercises]
    assert names[0] == "box_breathing", "the file's default comes first"
    assert len(names) == len(set(names)) >= 3
    rotation = exercises.rotation()
    assert [next(rotation)[0] for _ in range(len(names) + 1)] == [*names, names[0]]
    assert exercises.talk_down[0].text == "I'm here with you."
    box = dict(exercises.exercises)["box_breathing"]
    assert sum(1 for step in box if step.text == "Breathe in.") == 4, "four rounds"


def test_a_bad_exercise_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "exercises.toml"
    path.write_text('version = 1\ndefault = "nope"\n', encoding="utf-8")
    with pytest.raises(DeviceError, match="default 'nope' names no exercise"):
        load_exercises(path)
    path.write_text(
        'version = 1\ndefault = "a"\n[a]\nsteps = [{ text = "Hi.", pause_ms = 99999 }]\n', encoding="utf-8"
    )
    with pytest.raises(DeviceError, match="pause_ms 99999 is outside"):
        load_exercises(path)


def test_a_slow_server_gets_a_gentle_acknowledgement(loopback: Loopback) -> None:
    """Nothing heard back for think_ack_s: a short "one moment", different each time it repeats."""
    loopback.script = [REPLY[0], 0.6, *REPLY[1:]]
    speaker = RecordingSpeaker()
    voice = Voice(speaker)
    out = io.StringIO()
    conversation = Conversation(
        ServerClient(loopback.url, TOKEN, 10), voice, OneFrame(), lines=LINES, out=out, think_ack_s=0.25
    )
    conversation.run("anon", [Utterance(text="hello")])
    voice.close()
    acks = [text for text in speaker.sentences if text in LINES.thinking]
    assert len(acks) == 1, speaker.sentences
    assert speaker.sentences.index(acks[0]) < speaker.sentences.index("I'm here."), "said while waiting"


def test_acknowledgements_never_repeat_back_to_back(loopback: Loopback) -> None:
    voice = Voice(RecordingSpeaker())
    conversation = Conversation(ServerClient(loopback.url, TOKEN, 10), voice, lines=LINES, out=io.StringIO())
    for _ in range(40):
        conversation.acknowledge()
    voice.wait_idle(5.0)
    voice.close()
    said = list(voice.spoken)
    assert all(a != b for a, b in itertools.pairwise(said))
    assert len(set(said)) >= 3, "varied"


@pytest.mark.parametrize(
    ("name", "expected_paths"),
    [
        ("end_session", ["/api/v1/sessions", "/api/v1/sessions/s1/turns", "/api/v1/sessions/s1/end"]),
        (
            "new_session",
            [
                "/api/v1/sessions",
                "/api/v1/sessions/s1/turns",
                "/api/v1/sessions/s1/end",
                "/api/v1/sessions",
                "/api/v1/sessions/s2/end",
            ],
        ),
    ],
)
def test_session_commands_end_or_renew_the_session(
    loopback: Loopback, name: str, expected_paths: list[str]
) -> None:
    loopback.script = [
        {"type": "transcript", "text": "start over" if name == "new_session" else "goodbye"},
        {"type": "command", "name": name},
        {"type": "sentence", "text": "Of course."},
        {"type": "done", "turn_id": 1, "timings": {}, "source": "command"},
    ]
    speaker = RecordingSpeaker()
    voice = Voice(speaker)
    conversation = Conversation(
        ServerClient(loopback.url, TOKEN, 10), voice, lines=LINES, out=io.StringIO(), backoff=Backoff((0.01,))
    )
    assert conversation.run("anon", [Utterance(text="x")]) == 0
    voice.close()
    assert loopback.paths() == expected_paths
    greetings = 2 if name == "new_session" else 1
    assert speaker.sentences == [GREETING, "Of course.", *[GREETING] * (greetings - 1)]


def test_the_pause_command_stops_speaking(loopback: Loopback) -> None:
    loopback.script = [
        {"type": "transcript", "text": "be quiet"},
        {"type": "command", "name": "pause"},
        {"type": "done", "turn_id": 1, "timings": {}, "source": "command"},
    ]
    speaker = SlowSpeaker(0.01)
    voice = Voice(speaker)
    conversation = Conversation(ServerClient(loopback.url, TOKEN, 10), voice, lines=LINES, out=io.StringIO())
    conversation.run("anon", [Utterance(text="be quiet")])
    voice.close()
    assert speaker.stops == 1
    assert loopback.ended == ["s1"], "pausing keeps the session; it ends only with the daemon"


def test_frames_are_posted_between_turns_only(loopback: Loopback) -> None:
    session = {"id": "s1", "turn": False}
    poster = FramePoster(
        ServerClient(loopback.url, TOKEN, 10),
        OneFrame(),
        lambda: session["id"],
        lambda: bool(session["turn"]),
        interval_s=0.05,
    )
    deadline = time.monotonic() + 5
    while poster.posted < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    session["turn"] = True
    time.sleep(0.05)
    posted = poster.posted
    time.sleep(0.2)
    assert poster.posted == posted, "nothing is posted during a turn"
    session.update(id="", turn=False)
    time.sleep(0.2)
    assert poster.posted == posted, "nor without a session"
    poster.close()
    assert posted >= 2
    assert all(path == "/api/v1/sessions/s1/frames" for path in loopback.paths())


def test_what_is_kept_for_inspection_stays_bounded_over_months() -> None:
    states = StateMachine()
    states.go(State.LISTENING)
    for _ in range(300):
        states.go(State.SENDING)
        states.go(State.LISTENING)
    assert len(states.history) == 200 and states.history[-1][:2] == (State.SENDING, State.LISTENING)
    voice = Voice(RecordingSpeaker())
    for n in range(250):
        voice.say(f"sentence {n}.")
    assert voice.wait_idle(10.0)
    voice.close()
    assert len(voice.spoken) == 200 and voice.spoken[-1] == "sentence 249."
