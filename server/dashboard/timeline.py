"""A session log turned into what the dashboard draws: emotion lines, turn and safety markers, trend rows.

Pure data over `Records.session_log()`, so the charts, the pages and the PDF report all read one shape, and
the arithmetic is tested without HTTP. Times stay epoch seconds; whoever draws them picks the zone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from server.face.manifest import VOCABULARY

SHOWN = 3
"""How many emotions a timeline draws: more lines than this tangle on a tablet."""

DEFAULT_ALPHA = 0.3
"""The smoothing of the drawn line; the same formula as the server's own (server/face/smoothing.py)."""

FLAG_LEVELS = ("crisis", "concern", "blocked")
"""The safety levels a therapist looks for first, in the order they are listed."""

Point = tuple[float, float]
"""(t in epoch seconds, score 0..1)."""


@dataclass(frozen=True)
class TurnMarker:
    index: int
    """1 for the person's first turn, so a chart's "T3" matches the third thing they said."""
    t: float


@dataclass(frozen=True)
class EventMarker:
    t: float
    level: str


@dataclass(frozen=True)
class Timeline:
    """One session's face readings, per emotion, with the person's turns and the safety events beside them."""

    session_id: str
    client: str
    started_at: float
    ended_at: float
    """The session's end, or its last turn, reading or event while it is still open."""
    labels: tuple[str, ...]
    """The emotions to draw: the SHOWN with the highest mean raw score, highest first."""
    raw: Mapping[str, tuple[Point, ...]]
    """Every label seen, one point per sample with a face; a label outside that sample's top 3 is 0.0."""
    smoothed: Mapping[str, tuple[Point, ...]]
    """`raw` through an exponential moving average; the first sample starts it."""
    turns: tuple[TurnMarker, ...]
    events: tuple[EventMarker, ...]


class TrendRow(TypedDict):
    """One session in a client's trend; a plain dict so a page or a JSON view can use it as it is."""

    session_id: str
    started_at: float
    duration_s: float
    turns: int
    crisis: int
    concern: int
    blocked: int
    fear_share: float | None
    """Share of face readings whose top emotion was fear; None when no face was seen (not 0: unknown)."""
    sad_share: float | None


def _with_face(samples: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted((s for s in samples if s["faces"] > 0 and s["top3"]), key=lambda s: float(s["t"]))


def _order(label: str) -> tuple[int, str]:
    """VOCABULARY order breaks ties, so the same scores always show the same lines."""
    return (VOCABULARY.index(label) if label in VOCABULARY else len(VOCABULARY), label)


def smooth(points: Sequence[Point], alpha: float = DEFAULT_ALPHA) -> tuple[Point, ...]:
    """Each point moves the estimate `alpha` of the way towards its score; the first sets it."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], not {alpha}")
    out: list[Point] = []
    for t, score in points:
        est = score if not out else out[-1][1] + alpha * (score - out[-1][1])
        out.append((t, est))
    return tuple(out)


def build_timeline(log: Mapping[str, Any], alpha: float = DEFAULT_ALPHA) -> Timeline:
    samples = _with_face(log["emotion_samples"])
    seen = sorted({e["label"] for s in samples for e in s["top3"]}, key=_order)
    raw: dict[str, tuple[Point, ...]] = {}
    for label in seen:
        raw[label] = tuple(
            (float(s["t"]), next((float(e["score"]) for e in s["top3"] if e["label"] == label), 0.0))
            for s in samples
        )
    means = {label: sum(score for _, score in points) / len(points) for label, points in raw.items()}
    labels = tuple(sorted(seen, key=lambda label: (-means[label], _order(label)))[:SHOWN])
    users = [t for t in log["turns"] if t["role"] == "user"]
    events = tuple(EventMarker(float(e["t"]), str(e["level"])) for e in log["safety_events"])
    started = float(log["started_at"])
    last = [started]
    last += [float(t["created_at"]) for t in log["turns"]]
    last += [float(s["t"]) for s in log["emotion_samples"]]
    last += [e.t for e in events]
    return Timeline(
        session_id=str(log["session_id"]),
        client=str(log["client"]),
        started_at=started,
        ended_at=float(log["ended_at"]) if log.get("ended_at") else max(last),
        labels=labels,
        raw=raw,
        smoothed={label: smooth(points, alpha) for label, points in raw.items()},
        turns=tuple(TurnMarker(i, float(t["created_at"])) for i, t in enumerate(users, start=1)),
        events=events,
    )


def emotion_shares(samples: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Share of the samples with a face whose top emotion was each label; labels never on top are left out."""
    faced = _with_face(samples)
    counts: dict[str, int] = {}
    for sample in faced:
        top = max(sample["top3"], key=lambda e: float(e["score"]))["label"]
        counts[top] = counts.get(top, 0) + 1
    return {label: n / len(faced) for label, n in sorted(counts.items(), key=lambda kv: _order(kv[0]))}


def trend_row(log: Mapping[str, Any]) -> TrendRow:
    """One session of a client's trend, from its whole session log: that already holds the turns, samples
    and events, so no second query is needed beside `list_sessions()`."""
    started = float(log["started_at"])
    if log.get("ended_at"):
        duration = float(log["ended_at"]) - started
    else:
        duration = max((float(t["created_at"]) - started for t in log["turns"]), default=0.0)
    levels = [e["level"] for e in log["safety_events"]]
    shares = emotion_shares(log["emotion_samples"])  # empty exactly when no face was seen
    return TrendRow(
        session_id=str(log["session_id"]),
        started_at=started,
        duration_s=max(duration, 0.0),
        turns=sum(1 for t in log["turns"] if t["role"] == "user"),
        crisis=levels.count("crisis"),
        concern=levels.count("concern"),
        blocked=levels.count("blocked"),
        fear_share=shares.get("fear", 0.0) if shares else None,
        sad_share=shares.get("sad", 0.0) if shares else None,
    )
