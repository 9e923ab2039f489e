from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator

import pytest

from device.backoff import Backoff
from device.client import ServerClient
from device.crisis import load_crisis_fallback
from device.earcons import Earcon, Earcons
from device.errors import CameraError, DeviceConfigError, DeviceError, ServerError, SpeakerError
from device.exercises import load_exercises
from device.lines import load_lines
from device.playback import Played
from device.session import Conversation, Utterance, describe_faces
from device.states import State, StateMachine
from device.voice import Voice
from tests.device.conftest import RecordingGate, spoken_wav
from tests.device.loopback import BREAK, GREETING, TOKEN, Loopback, serve

LINES = load_lines()
REPLY = [
    {"type": "transcript", "text": "my heart is racing"},
    {"type": "sentence", "text": "I'm here."},
    {"type": "sentence", "text": "Breathe out slowly."},
    {"type": "done", "turn_id": 1, "timings": {"total_ms": 10}},
]


class RecordingSpeaker:
    """Stands in for the loudspeaker (absent here); implements the real Speaker protocol.

    It fails, as a real one can (espeak-ng gone, the sound card busy), on every text in `fails_on`.
    """

    def __init__(self, fails_on: Iterable[str] = ()) -> None:
        self.said: list[str] = []
        self.pauses: list[float] = []
        self.fails_on = set(fails_on)
        self.closed = False

    def say(self, text: str) -> None:
        if text in self.fails_on:
            raise SpeakerError("tts_failed", f"pyttsx3 did not write speech for {text!r}")
        self.said.append(text)

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def end_reply(self, name: str = "") -> None:
        self.said.append("<end>")

    def stop(self) -> None:
        """Nothing is playing for real."""

    def close(self) -> None:
        self.closed = True

    @property
    def sentences(self) -> list[str]:
        return [text for text in self.said if text != "<end>"]


class OneFrame:
    """A FrameSource with a fixed picture."""

    def latest(self) -> bytes | None:
        return b"\xff\xd8\xff frame"

    def close(self) -> None:
        """Nothing to release."""


class BrokenCamera:
    """A FrameSource whose camera fails, as `CameraSource` does when OpenCV cannot encode a frame."""

    def latest(self) -> bytes | None:
        raise CameraError("bad_image", "OpenCV could not encode a frame as JPEG")

    def close(self) -> None:
        """Nothing to release."""


def _run(
    server: Loopback | str,
    utterances: Iterable[Utterance | None],
    speaker: RecordingSpeaker | None = None,
    frames: OneFrame | BrokenCamera | None = None,
    backoff: Backoff | None = None,
    heartbeat: Callable[[], None] | None = None,
    think_ack_s: float = 0.0,
    states: StateMachine | None = None,
    idle_end_s: float = 0.0,
    earcons: Earcons | None = None,
) -> tuple[int, str, RecordingSpeaker]:
    out, speaker = io.StringIO(), speaker or RecordingSpeaker()
    url = server if isinstance(server, str) else server.url
    voice = Voice(speaker, earcons=earcons)
    conversation = Conversation(
        ServerClient(url, TOKEN, 10),
        voice,
        frames or OneFrame(),
        lines=LINES,
        exercises=load_exercises(),
        crisis=load_crisis_fallback("US"),
        backoff=backoff,
        out=out,
        heartbeat=heartbeat,
        think_ack_s=think_ack_s,
        states=states,
        idle_end_s=idle_end_s,
    )
    try:
        failed = conversation.run("anon", utterances)
    finally:
        voice.close()
    return failed, out.getvalue(), speaker


def test_a_turn_is_printed_and_each_sentence_spoken(loopback: Loopback) -> None:
    loopback.script = [
        REPLY[0],
        {
            "type": "emotions",
            "faces": 1,
            "top3": [{"label": "fear", "score": 0.61}, {"label": "sad", "score": 0.2}],
        },
        *REPLY[1:],
    ]
    failed, out, speaker = _run(loopback, [Utterance(text="my heart is racing")])
    assert failed == 0
    assert out.splitlines() == [
        f"bot: {GREETING}",
        "you: my heart is racing",
        "face: fear 0.61, sad 0.20",
        "bot: I'm here.",
        "bot: Breathe out slowly.",
    ]
    assert speaker.sentences == [GREETING, "I'm here.", "Breathe out slowly."]
    assert [p.name for p in loopback.turn_parts()] == ["text", "frame"]
    assert loopback.ended == ["s1"]


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("no_speech", "I didn't catch that — take your time and say it again."),
        ("llm_unavailable", LINES.errors["llm_unavailable"]),
        ("stt_failed", LINES.errors["stt_failed"]),
        ("something_new", LINES.errors["default"]),
    ],
)
def test_an_error_event_is_printed_and_answered_with_its_own_line(
    loopback: Loopback, code: str, line: str
) -> None:
    loopback.script = [{"type": "error", "code": code, "message": "the server's reason"}]
    failed, out, speaker = _run(loopback, [Utterance(text="hello")])
    assert failed == 1
    assert out.splitlines()[-2:] == [f"error: {code}: the server's reason", f"bot: {line}"]
    assert speaker.sentences == [GREETING, line]
    assert loopback.ended == ["s1"]


def test_a_safety_message_is_shown_and_the_sentences_after_it_are_spoken(loopback: Loopback) -> None:
    crisis = "You can call or text nine eight eight, the Suicide and Crisis Lifeline, any time, day or night."
    loopback.script = [REPLY[0], {"type": "safety", "level": "crisis", "message": crisis}, *REPLY[1:]]
    failed, out, speaker = _run(loopback, [Utterance(text="my heart is racing")])
    assert failed == 0
    assert f"safety: crisis: {crisis}" in out.splitlines()
    assert speaker.sentences == [GREETING, "I'm here.", "Breathe out slowly."]


def test_an_exercise_step_is_followed_by_its_pause(loopback: Loopback) -> None:
    loopback.script = [
        REPLY[0],
        {"type": "sentence", "text": "Breathe in.", "pause_ms": 4000},
        {"type": "sentence", "text": "Hold.", "pause_ms": 90_000},
        {"type": "sentence", "text": "How do you feel now?"},
        REPLY[-1],
    ]
    failed, _, speaker = _run(loopback, [Utterance(text="help me breathe")])
    assert failed == 0
    assert speaker.sentences == [GREETING, "Breathe in.", "Hold.", "How do you feel now?"]
    assert speaker.pauses == [4.0, 20.0], "a pause is kept, and an absurd one is cut to 20 s"


def test_a_broken_camera_sends_the_turn_without_a_frame(
    loopback: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    loopback.script = REPLY
    with caplog.at_level(logging.WARNING, logger="device.session"):
        failed, _, speaker = _run(loopback, [Utterance(text="hello")], frames=BrokenCamera())
    assert failed == 0
    assert [p.name for p in loopback.turn_parts()] == ["text"]
    assert speaker.sentences[-1] == "Breathe out slowly."
    (warning,) = caplog.records
    assert (
        warning.getMessage() == "no frame for this turn (bad_image: OpenCV could not encode a frame as JPEG)"
    )


def test_a_broken_speaker_is_logged_once_and_the_conversation_goes_on(
    loopback: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    loopback.script = REPLY
    speaker = RecordingSpeaker(fails_on=[GREETING, "I'm here."])
    with caplog.at_level(logging.WARNING, logger="device.voice"):
        failed, out, _ = _run(loopback, [Utterance(text="one"), Utterance(text="two")], speaker=speaker)
    assert failed == 0
    assert out.count("bot: Breathe out slowly.") == 2, "both turns were shown in full"
    assert speaker.sentences == ["Breathe out slowly.", "Breathe out slowly."]
    failing = "cannot speak (tts_failed: pyttsx3 did not write speech for {!r}); going on without the voice"
    assert [r.getMessage() for r in caplog.records] == [
        failing.format(GREETING),
        failing.format("I'm here."),
    ], "one line per spell of failures: the greeting's, then the first sentence's after a success"
    assert loopback.ended == ["s1"]


@pytest.mark.parametrize("status", [404, 409])
def test_a_lost_or_ended_session_is_replaced_once_and_the_words_resent(
    loopback: Loopback, status: int
) -> None:
    loopback.script = REPLY
    loopback.turn_status = {"s1": status}
    failed, _, speaker = _run(loopback, [Utterance(text="my heart is racing"), Utterance(text="again")])
    assert failed == 0
    assert speaker.sentences == [GREETING, *["I'm here.", "Breathe out slowly."] * 2], "no second greeting"
    assert loopback.paths() == [
        "/api/v1/sessions",
        "/api/v1/sessions/s1/turns",
        "/api/v1/sessions",
        "/api/v1/sessions/s2/turns",
        "/api/v1/sessions/s2/turns",
        "/api/v1/sessions/s2/end",
    ]
    assert loopback.turn_parts()[0].data == b"again"


def test_a_new_session_that_is_refused_too_stops_the_loop(loopback: Loopback) -> None:
    loopback.turn_status = {"s1": 404, "s2": 404}
    with pytest.raises(DeviceError) as caught:
        _run(loopback, [Utterance(text="hello"), Utterance(text="never sent")])
    assert caught.value.code == "unknown_session" and "server_url" in caught.value.message
    assert loopback.paths().count("/api/v1/sessions") == 2, "a new session once, not a loop"
    assert loopback.ended == ["s2"]


def test_a_revoked_token_stops_at_once_with_what_to_do(loopback: Loopback) -> None:
    loopback.turn_status = {"s1": 401}
    speaker = RecordingSpeaker()
    with pytest.raises(DeviceConfigError) as caught:
        _run(loopback, [Utterance(text="hello"), Utterance(text="never sent")], speaker=speaker)
    assert "tadbot admin add-device" in caught.value.message and "\n" not in caught.value.message
    assert speaker.sentences == [GREETING, LINES.refused]
    assert loopback.paths() == ["/api/v1/sessions", "/api/v1/sessions/s1/turns"], "no retry, no end"


def test_a_server_error_mid_conversation_is_spoken_and_the_loop_goes_on(loopback: Loopback) -> None:
    loopback.script = REPLY
    loopback.turn_status = {"s1": 503}
    failed, out, speaker = _run(loopback, [Utterance(text="one"), Utterance(text="two")])
    assert failed == 2
    assert speaker.sentences == [GREETING, LINES.errors["overloaded"], LINES.errors["overloaded"]]
    assert "error: overloaded: turns of s1 are refused with 503" in out.splitlines()


def test_the_daemon_waits_for_the_server_and_says_so_once(
    unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The server starts on the eighth try; meanwhile the microphone's idle ticks retry it on a back-off."""
    started: list[Loopback] = []
    servers: list[Generator[Loopback, None, None]] = []
    backoff = Backoff((0.01, 0.02))

    def microphone() -> Iterator[Utterance | None]:
        while not started:
            if backoff.failures == 8:
                servers.append(serve(port=unused_port))
                started.append(next(servers[-1]))
                started[0].script = REPLY
            time.sleep(0.005)
            yield None
        time.sleep(0.05)  # past the back-off's last delay: this tick reopens
        yield None
        yield Utterance(text="hi")

    try:
        with caplog.at_level(logging.WARNING, logger="device.session"):
            failed, out, speaker = _run(f"http://127.0.0.1:{unused_port}", microphone(), backoff=backoff)
    finally:
        for server in servers:
            server.close()
    assert failed == 0
    assert speaker.sentences == [LINES.waiting_for_server, GREETING, "I'm here.", "Breathe out slowly."]
    assert out.splitlines()[0] == f"bot: {LINES.waiting_for_server}"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5, "failures 1, 2, 4 and 8 (not 3, 5, 6, 7), then one line: it is back"
    assert messages[0] == (
        f"waiting for the server: cannot reach the server at http://127.0.0.1:{unused_port}: "
        "Connection refused; retrying in 0.01 s (failure 1 in a row)"
    )
    assert messages[-1] == "the server answers again, after 8 failed tries"
    assert backoff.failures == 0
    assert started[0].ended == ["s1"]


def test_the_daemon_offers_an_exercise_and_recovers(loopback: Loopback) -> None:
    """A turn the server cannot answer gets one line that offers to breathe together, and the microphone
    back (found in the landed code: some 27 sentences of talk-down and exercise with it shut); the next
    turn goes through as soon as the server is back."""
    loopback.script = REPLY
    loopback.turn_status = {"s1": 503}

    def microphone() -> Iterator[Utterance | None]:
        yield Utterance(text="my heart is racing")
        loopback.turn_status.clear()  # the server is back
        yield Utterance(text="still scared")

    failed, out, speaker = _run(loopback, microphone(), backoff=Backoff((0.01,)))
    assert failed == 1
    assert speaker.sentences == [GREETING, LINES.errors["overloaded"], "I'm here.", "Breathe out slowly."]
    assert "error: overloaded: turns of s1 are refused with 503" in out.splitlines()
    assert loopback.turn_parts()[0].data == b"still scared"


def test_speaking_again_while_the_server_is_away_starts_the_devices_exercise(loopback: Loopback) -> None:
    """The device cannot understand words on its own: a person who speaks again after the offer has asked."""
    loopback.turn_status = {"s1": 503}
    failed, _, speaker = _run(
        loopback, [Utterance(text="help"), Utterance(text="yes please")], backoff=Backoff((0.01,))
    )
    exercises = load_exercises()
    offline = [step.text for step in (*exercises.talk_down, *exercises.exercises[0][1])]
    assert failed == 2
    assert speaker.sentences == [GREETING, LINES.errors["overloaded"], LINES.errors["overloaded"], *offline]


def test_a_one_shot_turn_does_not_wait_for_the_server(unused_port: int) -> None:
    with pytest.raises(ServerError) as caught:
        _run(f"http://127.0.0.1:{unused_port}", [Utterance(text="hi")])
    assert caught.value.code == "server_unreachable"


def test_listening_stops_before_the_session_ends(loopback: Loopback) -> None:
    """Shutdown in order: the microphone (a generator) is closed explicitly, then the session is ended."""
    loopback.script = REPLY
    ended_when_mic_closed: list[list[str]] = []
    speaker = RecordingSpeaker()

    def microphone() -> Iterator[Utterance]:
        try:
            yield Utterance(text="hello")
            yield Utterance(text="never heard")
        finally:
            ended_when_mic_closed.append(list(loopback.ended))

    def ctrl_c_once_the_reply_is_said() -> None:
        if "Breathe out slowly." in speaker.said:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(loopback, microphone(), speaker=speaker, heartbeat=ctrl_c_once_the_reply_is_said)
    assert ended_when_mic_closed == [[]], "the microphone was closed before the session was ended"
    assert loopback.ended == ["s1"]
    assert loopback.paths().count("/api/v1/sessions/s1/turns") == 1


def test_the_session_is_ended_on_ctrl_c(loopback: Loopback) -> None:
    loopback.script = [{"type": "done", "turn_id": 1, "timings": {}}]

    def utterances() -> Iterator[Utterance]:
        yield Utterance(text="hello")
        raise KeyboardInterrupt  # the person presses Ctrl-C while the microphone listens

    with pytest.raises(KeyboardInterrupt):
        _run(loopback, utterances())
    assert loopback.ended == ["s1"]


def test_speaking_to_a_daemon_whose_server_is_down_gets_one_line_then_the_exercise_if_asked(
    unused_port: int,
) -> None:
    failed, out, speaker = _run(
        f"http://127.0.0.1:{unused_port}",
        [Utterance(text="help"), Utterance(text="yes")],
        backoff=Backoff((30.0,)),
    )
    exercises = load_exercises()
    unreachable = LINES.errors["server_unreachable"]
    assert failed == 2
    assert speaker.sentences[:3] == [LINES.waiting_for_server, unreachable, unreachable]
    assert speaker.sentences[3:] == [step.text for step in (*exercises.talk_down, *exercises.exercises[0][1])]
    assert "error: server_unreachable: cannot reach the server" in out


CRISIS_REPLY = [
    "I'm really glad you told me, and I'm taking what you said seriously.",
    "You deserve support right now, from a person who can help.",
    "You can call or text nine eight eight, the Suicide and Crisis Lifeline, any time, day or night.",
    "If you are in immediate danger, call nine one one now, or ask someone near you to stay with you.",
    "I'm here with you. Let's breathe together while you reach out: in slowly, and out even slower.",
]
CUT_OFF = "My answer got cut off, sorry. Please say that again."


def test_a_stream_that_breaks_after_words_of_crisis_gets_the_devices_crisis_reply(
    any_loopback: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    """The words are the server's transcript of speech: the device has nothing else to read them by."""
    any_loopback.script = [{"type": "transcript", "text": "I just want to end my life."}, BREAK]
    with caplog.at_level(logging.INFO):
        failed, out, speaker = _run(any_loopback, [Utterance(audio=spoken_wav())])
    assert failed == 1
    assert speaker.sentences == [GREETING, *CRISIS_REPLY]
    assert out.splitlines()[-5:] == [f"bot: {line}" for line in CRISIS_REPLY]
    assert (
        "the device's rule end_my_life read this turn as a crisis: saying 5 line(s) of the crisis reply"
        in [r.getMessage() for r in caplog.records]
    )
    assert not any("want to end" in r.getMessage().lower() for r in caplog.records), "never their words"


@pytest.mark.parametrize(
    "words",
    ["My heart is racing and I can't breathe.", "I'm not going to kill myself, I'm just scared."],
    ids=["safe", "negated"],
)
def test_a_stream_that_breaks_after_other_words_still_gets_the_cut_off_line(
    any_loopback: Loopback, words: str
) -> None:
    any_loopback.script = [{"type": "transcript", "text": words}, BREAK]
    failed, out, speaker = _run(any_loopback, [Utterance(audio=spoken_wav())])
    assert failed == 1
    assert speaker.sentences == [GREETING, CUT_OFF]
    assert out.splitlines()[-1] == f"bot: {CUT_OFF}"


def test_a_crisis_the_server_flagged_is_finished_by_the_device_when_the_stream_breaks(
    loopback: Loopback,
) -> None:
    """Words the device's rules miss: the server's safety event is enough, and no line is said twice."""
    loopback.script = [
        {"type": "transcript", "text": "I wrote a goodbye note to my family."},
        {"type": "safety", "level": "crisis", "message": CRISIS_REPLY[2]},
        *({"type": "sentence", "text": line} for line in CRISIS_REPLY[:2]),
        BREAK,
    ]
    failed, _, speaker = _run(loopback, [Utterance(audio=spoken_wav())])
    assert failed == 1
    assert speaker.sentences == [GREETING, *CRISIS_REPLY]


def test_an_error_event_on_typed_words_of_crisis_gets_the_crisis_reply(loopback: Loopback) -> None:
    loopback.script = [{"type": "error", "code": "llm_failed", "message": "the model failed"}]
    failed, out, speaker = _run(loopback, [Utterance(text="I want to kill myself.")])
    assert failed == 1
    assert speaker.sentences == [GREETING, *CRISIS_REPLY]
    assert "error: llm_failed: the model failed" in out.splitlines()


def test_the_daemon_says_the_crisis_reply_without_the_panic_talk_down_and_recovers(
    loopback: Loopback,
) -> None:
    """The talk-down calls the feeling not dangerous: after words of crisis it would be wrong."""
    loopback.script = [{"type": "transcript", "text": "I want to kill myself."}, BREAK]

    def microphone() -> Iterator[Utterance | None]:
        yield Utterance(audio=spoken_wav())
        loopback.script = REPLY  # the server is back
        yield Utterance(text="still scared")

    failed, _, speaker = _run(loopback, microphone(), backoff=Backoff((0.01,)))
    assert failed == 1
    assert speaker.sentences == [GREETING, *CRISIS_REPLY, "I'm here.", "Breathe out slowly."]
    assert loopback.opened == ["s1", "s2"], "a server that broke off may have lost the session: a new one"


@pytest.mark.parametrize(
    ("event", "text"),
    [
        ({"faces": 0, "top3": []}, "no face seen"),
        ({"faces": 2, "top3": [{"label": "happy", "score": 0.9}]}, "happy 0.90 (2 faces)"),
    ],
)
def test_describe_faces(event: dict[str, object], text: str) -> None:
    assert describe_faces(event) == text


GOODBYE = [
    {"type": "transcript", "text": "goodbye"},
    {"type": "command", "name": "end_session"},
    {"type": "sentence", "text": "Take care. Goodbye."},
    {"type": "done", "turn_id": 2, "timings": {}, "source": "command"},
]


def test_goodbye_ends_the_conversation_until_the_person_speaks_again(loopback: Loopback) -> None:
    """Found in the landed code: the next idle tick after "goodbye" opened a new session and greeted."""
    loopback.scripts = [GOODBYE]
    loopback.script = REPLY
    states = StateMachine()

    def microphone() -> Iterator[Utterance | None]:
        yield Utterance(text="goodbye")
        for _ in range(5):
            time.sleep(0.02)
            yield None  # idle ticks: past the back-off, nothing may open or greet
        assert states.state == State.ENDED
        yield Utterance(text="I can't sleep")

    failed, _, speaker = _run(loopback, microphone(), backoff=Backoff((0.01,)), states=states)
    assert failed == 0
    assert speaker.sentences == [GREETING, "Take care. Goodbye.", "I'm here.", "Breathe out slowly."]
    assert loopback.opened == ["s1", "s2"] and loopback.ended[0] == "s1"
    assert loopback.turn_parts()[0].data == b"I can't sleep", "their words went to the new session"


def test_the_microphone_stays_shut_in_the_gap_between_two_sentences(loopback: Loopback) -> None:
    """Found in the landed code: the gate opened whenever the voice ran out of queued sentences, so a
    person who spoke in the gap before the next streamed sentence was cut off by it."""
    loopback.script = [REPLY[0], REPLY[1], 0.4, REPLY[2], REPLY[3]]
    gate = RecordingGate()
    _, _, speaker = _run(loopback, [Utterance(text="hi")], states=StateMachine(gate, tail_s=0.3))
    assert speaker.sentences == [GREETING, "I'm here.", "Breathe out slowly."]
    greeting, turn, stopping = gate.events[:2], gate.events[2:4], gate.events[4:]
    assert greeting == turn == ["mute", "unmute 0.3"], "the turn: shut once, opened once after the reply"
    assert stopping == ["mute"]


def test_a_broken_reply_is_asked_for_once_more_under_the_same_key_and_not_said_twice(
    any_loopback: Loopback,
) -> None:
    any_loopback.scripts = [[REPLY[0], REPLY[1], BREAK], REPLY]
    failed, _, speaker = _run(any_loopback, [Utterance(text="hi")], backoff=Backoff((0.01,)))
    assert failed == 0
    assert speaker.sentences == [GREETING, "I'm here.", "Breathe out slowly."]
    keys = [h["Idempotency-Key"] for _, path, h, _ in any_loopback.requests if path.endswith("/turns")]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32


def test_a_reply_broken_twice_gets_one_line_the_microphone_back_and_the_session_ended(
    any_loopback: Loopback,
) -> None:
    """Found in the landed code: the cut-off line, then some 27 sentences of talk-down and exercise with the
    microphone muted, and a session abandoned without /end."""
    any_loopback.script = [REPLY[0], REPLY[1], REPLY[2], BREAK]  # broken after sentence 2, both times
    states = StateMachine()
    waited: list[float] = []

    def microphone() -> Iterator[Utterance | None]:
        sent = time.monotonic()
        yield Utterance(text="hi")
        waited.append(time.monotonic() - sent)
        assert states.state == State.WAITING, "listening again, with no session open"

    failed, _, speaker = _run(any_loopback, microphone(), backoff=Backoff((0.01,)), states=states)
    assert failed == 1
    assert speaker.sentences == [GREETING, "I'm here.", "Breathe out slowly.", CUT_OFF]
    assert waited[0] < 2.0, "the microphone is back within 2 s (a loopback server; the voice takes no time)"
    assert any_loopback.ended == ["s1"], "the device gave the session up on the server"
    turns = [path for _, path, _, _ in any_loopback.requests if path.endswith("/turns")]
    assert len(turns) == 2


def test_speech_that_began_while_a_turn_was_sent_is_dropped(loopback: Loopback) -> None:
    loopback.script = [REPLY[0], 0.5, *REPLY[1:]]

    def microphone() -> Iterator[Utterance | None]:
        t0 = time.monotonic()
        yield Utterance(text="my heart is racing")
        yield Utterance(text="stale", heard_at=t0 + 0.25)  # heard past the gate, before the reply began
        yield Utterance(text="thank you", heard_at=time.monotonic())

    failed, _, _ = _run(loopback, microphone())
    sent = [body for _, path, _, body in loopback.requests if path.endswith("/turns")]
    assert failed == 0 and len(sent) == 2
    assert b"stale" not in b"".join(sent) and loopback.turn_parts()[0].data == b"thank you"


def test_a_silent_session_is_ended_and_nothing_is_said_until_the_person_speaks(loopback: Loopback) -> None:
    loopback.script = REPLY
    states = StateMachine()

    def microphone() -> Iterator[Utterance | None]:
        yield Utterance(text="hi")
        deadline = time.monotonic() + 5
        while states.state != State.ENDED and time.monotonic() < deadline:
            time.sleep(0.02)
            yield None
        assert loopback.ended == ["s1"], "ended on the server: its timeline samples stop with it"
        for _ in range(3):
            yield None
        yield Utterance(text="are you there")

    failed, _, speaker = _run(loopback, microphone(), backoff=Backoff((0.01,)), states=states, idle_end_s=0.2)
    assert failed == 0
    assert speaker.sentences == [GREETING, *["I'm here.", "Breathe out slowly."] * 2], "no greeting again"
    assert loopback.opened == ["s1", "s2"]


class RecordingOut:
    """Stands in for the sound card's output (absent here): the earcons handed to it, by length and rate."""

    def __init__(self) -> None:
        self.played: list[tuple[int, int]] = []

    def play(self, pcm: bytes, rate: int) -> Played:
        self.played.append((len(pcm), rate))
        return Played(pcm)


def test_heard_is_chimed_once_per_spoken_utterance_and_offline_once_an_outage(unused_port: int) -> None:
    out = RecordingOut()
    earcons = Earcons(out)
    heard, offline = (earcons.play(e).pcm for e in (Earcon.HEARD, Earcon.OFFLINE))
    out.played.clear()
    utterances = [Utterance(audio=spoken_wav()), Utterance(text="typed"), Utterance(audio=spoken_wav())]
    failed, _, _ = _run(
        f"http://127.0.0.1:{unused_port}", utterances, backoff=Backoff((30.0,)), earcons=earcons
    )
    assert failed == 3
    sizes = [size for size, _ in out.played]
    assert sizes == [len(offline), len(heard), len(heard)], "offline once, heard for each spoken one"


def test_hearing_is_shown_from_listening_or_ended_and_goes_back_to_it(loopback: Loopback) -> None:
    """The listener's thread tells the start and end of speech; the state machine shows "hearing" only
    when the device was waiting for the person, never over its own voice."""
    states, voice = StateMachine(), Voice(RecordingSpeaker())
    conversation = Conversation(ServerClient(loopback.url, TOKEN, 10), voice, lines=LINES, states=states)
    for before in (State.LISTENING, State.ENDED):
        states.go(before)
        conversation.heard_start()
        assert states.state == State.HEARING
        conversation.heard_end()
        assert states.state == before
    states.go(State.SENDING)
    states.go(State.SPEAKING)
    conversation.heard_start()
    conversation.heard_end()
    assert states.state == State.SPEAKING, "a barge-in over the voice is not shown as hearing"
    voice.close()
