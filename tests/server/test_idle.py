"""Sessions a device left open are ended by the server after `server.session_idle_s`, as /end would, and
their state in memory is freed."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from server.config import load_settings
from server.conversation.components import Components
from server.conversation.engine import Companion
from server.conversation.prompt import Prompts
from server.conversation.turns import TurnInput
from server.face.detect import HaarDetector
from server.face.fer import EmotionClassifier, FerPipeline
from server.face.images import decode_image
from server.memory.store import Memory
from server.records.store import Records


def _companion(tmp_path: Path, idle_s: float, **components: Any) -> Companion:
    config = tmp_path / "tadbot.toml"
    config.write_text(f"[server]\nsession_idle_s = {idle_s}\n", encoding="utf-8")
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(tmp_path / "data")})
    records = Records(tmp_path / "db.sqlite3")
    return Companion(Components(records=records, **components), settings, Prompts.load("Tad"))


def test_an_idle_session_is_ended_by_the_sweep_as_end_would_and_its_state_freed(
    tmp_path: Path, tiny_fer: Path, face_jpeg: Path, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fer = FerPipeline(HaarDetector(), EmotionClassifier(tiny_fer))
    memory = Memory(tmp_path / "memory", embedder)
    companion = _companion(tmp_path, 0.5, fer=fer, memory=memory)
    try:
        session_id = companion.start_session("uma", None)["session_id"]
        session = companion.records.session(session_id)
        assert companion.read_frame(session, decode_image(face_jpeg.read_bytes()))["faces"] == 1
        events = list(companion.turn(session, TurnInput(text="the dentist makes me nervous")))
        assert events[-1]["type"] == "done"
        assert session_id in companion.faces.held() and session_id in companion.care.held()
        deadline = time.monotonic() + 10
        while companion.records.session(session_id).ended_at is None:
            assert time.monotonic() < deadline, "the sweep never ended the idle session"
            time.sleep(0.05)
    finally:
        companion.close()  # waits for the sweep in hand to finish
    assert companion.held_sessions() == set()
    summary = companion.records.session(session_id).summary
    assert summary is not None and "the dentist makes me nervous" in summary
    recalled = memory.recall(client="uma", query="nervous at the dentist", k=5)
    assert [r.text for r in recalled if r.kind == "summary"] == [summary]
    expired = [r.getMessage() for r in caplog.records if "the server ends it" in r.getMessage()]
    assert expired == [f"session {session_id}: no turn or frame for 0.5 s; the server ends it"]
    assert "dentist" not in caplog.text, "the log carries the person's words"


def test_a_session_with_a_turn_streaming_is_left_alone(tmp_path: Path) -> None:
    companion = _companion(tmp_path, 0)
    quiet, talking = (companion.start_session("vin", None)["session_id"] for _ in range(2))
    stream = companion.turn(companion.records.session(talking), TurnInput(text="hello"))
    assert next(stream)["type"] == "transcript"
    assert companion.expire_idle(time.time() + 1) == [quiet]
    stream.close()
    assert companion.expire_idle(time.time() + 1) == [talking]
    assert companion.expire_idle(time.time() + 1) == [], "an ended session is not ended again"
    companion.close()


def test_zero_never_ends_a_session(tmp_path: Path) -> None:
    companion = _companion(tmp_path, 0)
    session_id = companion.start_session("wes", None)["session_id"]
    time.sleep(0.5)  # ten of the shortest sweeps: with any idle limit at all, it would be over
    assert companion.records.session(session_id).ended_at is None
    companion.close()


def test_the_sweep_frees_the_state_of_a_session_erased_before_it_ended(tmp_path: Path) -> None:
    companion = _companion(tmp_path, 0)
    erased = companion.start_session("yara", None)["session_id"]
    kept = companion.start_session("zed", None)["session_id"]
    for session_id in (erased, kept):
        list(companion.turn(companion.records.session(session_id), TurnInput(text="hello")))
    assert companion.held_sessions() == {erased, kept}
    companion.forget_client("yara", "test")
    assert companion.expire_idle(time.time() - 3600) == []
    assert companion.held_sessions() == {kept}
    companion.close()
