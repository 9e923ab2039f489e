"""Smoothing of face readings within a session: the arithmetic, and the engine reporting the smoothed face."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_settings
from server.conversation.components import Components
from server.conversation.engine import Companion
from server.conversation.prompt import Prompts
from server.conversation.turns import TurnInput
from server.face.detect import HaarDetector
from server.face.fer import EmotionClassifier, FerPipeline
from server.face.images import decode_image
from server.face.smoothing import EmotionSmoother
from server.records.store import Records


def test_the_first_face_is_taken_as_it_is_and_later_ones_move_it_by_alpha() -> None:
    smoother = EmotionSmoother(0.25)
    assert smoother.update("s", {"fear": 0.8, "neutral": 0.2}) == {"fear": 0.8, "neutral": 0.2}
    after = smoother.update("s", {"fear": 0.0, "neutral": 0.6, "happy": 0.4})
    assert after == pytest.approx({"fear": 0.6, "neutral": 0.3, "happy": 0.1})
    assert sum(after.values()) == pytest.approx(1.0)


def test_sessions_are_smoothed_apart_and_forgotten_at_the_end() -> None:
    smoother = EmotionSmoother(0.5)
    smoother.update("a", {"sad": 1.0})
    assert smoother.update("b", {"happy": 1.0}) == {"happy": 1.0}
    smoother.forget("a")
    assert smoother.update("a", {"happy": 1.0}) == {"happy": 1.0}


def test_alpha_one_is_no_smoothing_and_out_of_range_is_refused() -> None:
    smoother = EmotionSmoother(1.0)
    smoother.update("s", {"sad": 1.0, "happy": 0.0})
    assert smoother.update("s", {"sad": 0.0, "happy": 1.0}) == {"sad": 0.0, "happy": 1.0}
    with pytest.raises(ValueError, match="alpha"):
        EmotionSmoother(0.0)


def test_the_turn_reports_the_smoothed_face_and_the_timeline_keeps_each_frame(
    tmp_path: Path, tiny_fer: Path, face_jpeg: Path
) -> None:
    config = tmp_path / "tadbot.toml"
    config.write_text("[fer]\nsmoothing = 0.5\n", encoding="utf-8")
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(tmp_path / "data")})
    fer = FerPipeline(HaarDetector(), EmotionClassifier(tiny_fer))
    companion = Companion(
        Components(records=Records(tmp_path / "db.sqlite3"), fer=fer), settings, Prompts.load("Tad")
    )
    session = companion.records.session(companion.start_session("ana", None)["session_id"])
    face = decode_image(face_jpeg.read_bytes())
    mirrored = face[:, ::-1].copy()  # the same face, read a little differently by the tiny model
    first, second = fer.read(face).probs, fer.read(mirrored).probs
    assert first != second
    raw = companion.read_frame(session, face)
    events = list(companion.turn(session, TurnInput(text="hello", frames=[mirrored])))
    (emotions,) = [e for e in events if e["type"] == "emotions"]
    expected = {k: first[k] + 0.5 * (second[k] - first[k]) for k in first}
    best = max(expected, key=lambda k: expected[k])
    assert emotions["top3"][0]["label"] == best
    assert emotions["top3"][0]["score"] == pytest.approx(expected[best], abs=0.001)
    timeline = companion.records.session_log(session.id)["emotion_samples"]
    assert [s["source"] for s in timeline] == ["frame", "turn"]
    assert timeline[0]["top3"] == raw["top3"]
