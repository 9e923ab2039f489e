"""The dashboard's data: emotion lines and their smoothing, the shown labels, shares and trend rows."""

from __future__ import annotations

from typing import Any

import pytest

from server.dashboard.timeline import (
    EventMarker,
    TurnMarker,
    build_timeline,
    emotion_shares,
    smooth,
    trend_row,
)

T0 = 1_700_000_000.0
"""14 Nov 2023 22:13:20 UTC: GMT in London, EST in New York."""


def sample(dt: float, faces: int, *scores: tuple[str, float]) -> dict[str, Any]:
    return {
        "t": T0 + dt,
        "source": "frame",
        "faces": faces,
        "top3": [{"label": label, "score": score} for label, score in scores],
    }


def turn(turn_id: int, role: str, dt: float, text: str, source: str | None = None) -> dict[str, Any]:
    return {
        "id": turn_id,
        "role": role,
        "text": text,
        "created_at": T0 + dt,
        "timings": {},
        "confidence": None,
        "source": source,
    }


def session_log(client: str = "robin-7") -> dict[str, Any]:
    """A ten-minute session, as Records.session_log() returns it: two exchanges, the second a crisis, a
    sentence of the first reply blocked, and four face readings, one of them with no face."""
    return {
        "session_id": "5f0c2d9e41b84a7c9d3e6f1a2b3c4d5e",
        "client": client,
        "started_at": T0,
        "ended_at": T0 + 600,
        "summary": "Spoke about a hard week at work and tried box breathing.",
        "turns": [
            turn(1, "user", 30, "My chest is tight and I feel naïve — café ✓"),
            turn(2, "assistant", 40, "Let’s breathe together… in for four.", source="exercise"),
            turn(3, "user", 200, "I don't want to be here any more"),
            turn(4, "assistant", 205, "Please call 988 now; they are there for you.", source="crisis"),
        ],
        "emotion_samples": [
            sample(10, 1, ("fear", 0.6), ("sad", 0.3), ("neutral", 0.1)),
            sample(20, 0),
            sample(100, 1, ("sad", 0.5), ("fear", 0.4), ("angry", 0.1)),
            sample(300, 1, ("neutral", 0.7), ("happy", 0.2), ("sad", 0.1)),
        ],
        "safety_events": [
            {
                "turn_id": None,
                "t": T0 + 39,
                "level": "blocked",
                "trigger": "advice: take two of your pills",
                "message": "said instead: let's breathe",
                "hypothesis": 1,
                "heard_as": "",
            },
            {
                "turn_id": 3,
                "t": T0 + 200,
                "level": "crisis",
                "trigger": "self-harm: don't want to be here",
                "message": "Call or text 988",
                "hypothesis": 1,
                "heard_as": "",
            },
        ],
    }


def test_raw_points_skip_faceless_samples_and_count_a_missing_label_as_zero() -> None:
    tl = build_timeline(session_log())
    assert tl.raw["fear"] == ((T0 + 10, 0.6), (T0 + 100, 0.4), (T0 + 300, 0.0))
    assert tl.raw["happy"] == ((T0 + 10, 0.0), (T0 + 100, 0.0), (T0 + 300, 0.2))
    assert set(tl.raw) == {"fear", "sad", "neutral", "angry", "happy"}


def test_smoothing_is_the_servers_moving_average_started_by_the_first_face() -> None:
    tl = build_timeline(session_log())
    fear = [v for _, v in tl.smoothed["fear"]]
    # 0.6; 0.6 + 0.3 * (0.4 - 0.6) = 0.54; 0.54 + 0.3 * (0.0 - 0.54) = 0.378
    assert fear == pytest.approx([0.6, 0.54, 0.378])
    sad = [v for _, v in build_timeline(session_log(), alpha=0.5).smoothed["sad"]]
    assert sad == pytest.approx([0.3, 0.4, 0.25])
    assert [t for t, _ in tl.smoothed["fear"]] == [T0 + 10, T0 + 100, T0 + 300]


def test_alpha_one_keeps_the_raw_points_and_alpha_out_of_range_is_refused() -> None:
    points = ((1.0, 0.2), (2.0, 0.9))
    assert [v for _, v in smooth(points, 1.0)] == pytest.approx([0.2, 0.9])
    with pytest.raises(ValueError, match="alpha"):
        smooth(points, 0.0)


def test_the_three_labels_with_the_highest_mean_are_shown_highest_first() -> None:
    # means: fear 1.0/3, sad 0.9/3, neutral 0.8/3, happy 0.2/3, angry 0.1/3
    assert build_timeline(session_log()).labels == ("fear", "sad", "neutral")
    log = session_log()
    # Over four faces: happy 1.15/4 leads fear 1.05/4 and sad 0.9/4; neutral 0.8/4 drops out.
    log["emotion_samples"].append(sample(400, 1, ("happy", 0.95), ("fear", 0.05)))
    assert build_timeline(log).labels == ("happy", "fear", "sad")


def test_ties_are_broken_in_vocabulary_order() -> None:
    log = session_log()
    log["emotion_samples"] = [sample(10, 1, ("surprise", 0.5), ("happy", 0.5), ("angry", 0.5))]
    assert build_timeline(log).labels == ("angry", "happy", "surprise")


def test_turn_and_event_markers_line_up_with_the_persons_turns() -> None:
    tl = build_timeline(session_log())
    assert tl.turns == (TurnMarker(1, T0 + 30), TurnMarker(2, T0 + 200))
    assert tl.events == (EventMarker(T0 + 39, "blocked"), EventMarker(T0 + 200, "crisis"))
    assert (tl.started_at, tl.ended_at) == (T0, T0 + 600)


def test_an_open_session_ends_at_its_last_record_and_no_face_shows_nothing() -> None:
    log = session_log()
    log["ended_at"] = None
    log["emotion_samples"] = [sample(20, 0), sample(450, 0)]
    tl = build_timeline(log)
    assert tl.ended_at == T0 + 450
    assert (tl.labels, dict(tl.raw), dict(tl.smoothed)) == ((), {}, {})


def test_shares_count_each_faces_top_label() -> None:
    shares = emotion_shares(session_log()["emotion_samples"])
    assert shares == pytest.approx({"fear": 1 / 3, "sad": 1 / 3, "neutral": 1 / 3})
    unsorted = [sample(1, 1, ("sad", 0.2), ("fear", 0.7)), sample(2, 2, ("fear", 0.9)), sample(3, 0)]
    assert emotion_shares(unsorted) == {"fear": 1.0}
    assert emotion_shares([sample(1, 0), sample(2, 0)]) == {}
    assert emotion_shares([]) == {}


def test_trend_row_counts_the_persons_turns_and_each_flag() -> None:
    row = trend_row(session_log())
    assert row == {
        "session_id": "5f0c2d9e41b84a7c9d3e6f1a2b3c4d5e",
        "started_at": T0,
        "duration_s": 600.0,
        "turns": 2,
        "crisis": 1,
        "concern": 0,
        "blocked": 1,
        "fear_share": pytest.approx(1 / 3),
        "sad_share": pytest.approx(1 / 3),
    }


def test_trend_row_of_an_open_faceless_session_runs_to_its_last_turn_with_unknown_shares() -> None:
    log = session_log()
    log["ended_at"] = None
    log["emotion_samples"] = [sample(20, 0)]
    log["safety_events"].append({**log["safety_events"][1], "level": "concern", "t": T0 + 30})
    row = trend_row(log)
    assert row["duration_s"] == 205.0
    assert (row["fear_share"], row["sad_share"]) == (None, None)
    assert (row["crisis"], row["concern"], row["blocked"]) == (1, 1, 1)
    log["turns"] = []
    assert trend_row(log)["duration_s"] == 0.0
