from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import pytest

from device.client import ServerClient
from device.session import APOLOGY, Conversation, Utterance, describe_faces
from tests.device.loopback import GREETING, TOKEN, Loopback


class RecordingSpeaker:
    """Stands in for the loudspeaker (absent here); implements the real Speaker protocol."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.closed = False

    def say(self, text: str) -> None:
        self.said.append(text)

    def close(self) -> None:
        self.closed = True


class OneFrame:
    """A FrameSource with a fixed picture."""

    def latest(self) -> bytes | None:
        return b"\xff\xd8\xff frame"

    def close(self) -> None:
        """Nothing to release."""


def _run(server: Loopback, utterances: Iterable[Utterance]) -> tuple[int, str, RecordingSpeaker]:
    out, speaker = io.StringIO(), RecordingSpeaker()
    failed = Conversation(ServerClient(server.url, TOKEN, 10), speaker, OneFrame(), out=out).run(
        "anon", utterances
    )
    return failed, out.getvalue(), speaker


def test_a_turn_is_printed_and_each_sentence_spoken(loopback: Loopback) -> None:
    loopback.script = [
        {"type": "transcript", "text": "my heart is racing"},
        {
            "type": "emotions",
            "faces": 1,
            "top3": [{"label": "fear", "score": 0.61}, {"label": "sad", "score": 0.2}],
        },
        {"type": "sentence", "text": "I'm here."},
        {"type": "sentence", "text": "Breathe out slowly."},
        {"type": "done", "turn_id": 1, "timings": {"total_ms": 10}},
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
    assert speaker.said == [GREETING, "I'm here.", "Breathe out slowly."]
    assert [p.name for p in loopback.turn_parts()] == ["text", "frame"]
    assert loopback.ended == ["s1"]


def test_an_error_event_is_printed_and_apologised_for(loopback: Loopback) -> None:
    loopback.script = [{"type": "error", "code": "llm_failed", "message": "the model is not loaded"}]
    failed, out, speaker = _run(loopback, [Utterance(text="hello")])
    assert failed == 1
    assert "error: llm_failed: the model is not loaded" in out.splitlines()
    assert speaker.said == [GREETING, APOLOGY]
    assert loopback.ended == ["s1"]


def test_the_session_is_ended_on_ctrl_c(loopback: Loopback) -> None:
    loopback.script = [{"type": "done", "turn_id": 1, "timings": {}}]

    def utterances() -> Iterator[Utterance]:
        yield Utterance(text="hello")
        raise KeyboardInterrupt  # the person presses Ctrl-C while the microphone listens

    with pytest.raises(KeyboardInterrupt):
        _run(loopback, utterances())
    assert loopback.ended == ["s1"]


@pytest.mark.parametrize(
    ("event", "text"),
    [
        ({"faces": 0, "top3": []}, "no face seen"),
        ({"faces": 2, "top3": [{"label": "happy", "score": 0.9}]}, "happy 0.90 (2 faces)"),
    ],
)
def test_describe_faces(event: dict[str, object], text: str) -> None:
    assert describe_faces(event) == text
