"""Charts as inline SVG strings: no JavaScript, no files beside the page, nothing fetched from elsewhere.

Each chart is an accessible image (role="img", a title and a description it is labelled by), scales to its
container through a viewBox, and tells lines apart by dash pattern and marker shape as well as colour, so it
reads in greyscale, on paper and for colour-blind eyes. Each has a sibling table of the same numbers, for a
screen reader and for anyone who wants the values. Every string that goes into the SVG is escaped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from xml.sax.saxutils import escape

from server.dashboard.timeline import FLAG_LEVELS, Timeline, TrendRow

_W, _H = 800, 410
_LEFT, _TOP, _RIGHT, _BOTTOM = 72, 84, 776, 290
"""The plot area inside the viewBox; above it, one band of flag letters per level."""
_INK, _MUTED, _GRID = "#1a1a1a", "#595959", "#d9d9d9"

_LABEL_STYLES: dict[str, tuple[str, str]] = {
    "fear": ("#0072b2", ""),
    "sad": ("#a34f00", "12 6"),
    "neutral": ("#4d4d4d", "3 5"),
    "happy": ("#00704f", "14 5 3 5"),
    "angry": ("#b2182b", "7 4"),
    "surprise": ("#6a3d9a", "2 4 9 4"),
    "disgust": ("#7a4a0a", "16 4 3 4 3 4"),
    "contempt": ("#a8326e", "1 4"),
}
"""Colour (at least 4.5:1 on white) and dash pattern per emotion, fixed so it looks alike in every chart."""
_MARKERS = ("circle", "square", "triangle")
"""Raw readings' marker shape, by the line's rank among those shown."""
_FLAG_MARKS: dict[str, tuple[str, str, str]] = {
    "crisis": ("C", "#b2182b", "crisis"),
    "concern": ("W", "#7a4a0a", "concern (worry raised)"),
    "blocked": ("B", "#4d4d4d", "blocked reply"),
}
"""Letter, colour and legend words for each flag level."""
_BAD_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _esc(text: object) -> str:
    """Escape for text and attribute values alike, dropping what XML cannot hold at all."""
    return escape(_BAD_XML.sub("", str(text)), {'"': "&quot;"})


def _text(x: float, y: float, words: object, **attrs: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{_esc(value)}"' for name, value in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{_esc(words)}</text>'


def _open(chart_id: str, title: str, desc: str) -> list[str]:
    ident = re.sub(r"[^A-Za-z0-9_-]", "", chart_id) or "chart"
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="100%" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc" font-family="DejaVu Sans, Verdana, sans-serif" '
        f'font-size="16" fill="{_INK}">',
        f'<title id="{ident}-title">{_esc(title)}</title>',
        f'<desc id="{ident}-desc">{_esc(desc)}</desc>',
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="#ffffff"/>',
    ]


def _y_axis(top: float, fmt: Callable[[float], str], name: str) -> list[str]:
    parts = []
    for i in range(5):
        y = _BOTTOM - (_BOTTOM - _TOP) * i / 4
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_RIGHT}" y2="{y:.1f}" stroke="{_GRID}"/>')
        parts.append(_text(_LEFT - 8, y + 5, fmt(top * i / 4), text_anchor="end"))
    mid = (_TOP + _BOTTOM) / 2
    parts.append(_text(20, mid, name, text_anchor="middle", transform=f"rotate(-90 20 {mid:.1f})"))
    parts.append(f'<line x1="{_LEFT}" y1="{_BOTTOM}" x2="{_RIGHT}" y2="{_BOTTOM}" stroke="{_INK}"/>')
    return parts


def _flag(x: float, level: str, title: str) -> str:
    """A lettered box in its level's band above the plot, with a tooltip and screen-reader title."""
    letter, colour, _ = _FLAG_MARKS.get(level, ("?", _MUTED, level))
    band = FLAG_LEVELS.index(level) if level in FLAG_LEVELS else len(FLAG_LEVELS) - 1
    y = 8 + band * 24
    return (
        f"<g><title>{_esc(title)}</title>"
        f'<rect x="{x - 10:.1f}" y="{y}" width="20" height="21" rx="3" fill="#ffffff" stroke="{colour}" '
        f'stroke-width="2"/>{_text(x, y + 16, letter, text_anchor="middle", fill=colour, font_weight="bold")}'
        "</g>"
    )


def _flag_legend(levels: set[str], y: float) -> str:
    words = "; ".join(f"{m[0]} = {m[2]}" for lv, m in _FLAG_MARKS.items() if lv in levels)
    return _text(_LEFT, y, f"Flags: {words}", font_size="15") if words else ""


def _marker(shape: str, x: float, y: float, colour: str) -> str:
    if shape == "square":
        return f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{colour}"/>'
    if shape == "triangle":
        d = f"M{x:.1f} {y - 4.5:.1f}L{x + 4.5:.1f} {y + 3.5:.1f}L{x - 4.5:.1f} {y + 3.5:.1f}Z"
        return f'<path d="{d}" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>'


def _message(words: str) -> str:
    """A line in the middle of an empty plot, saying why it is empty."""
    return _text((_LEFT + _RIGHT) / 2, (_TOP + _BOTTOM) / 2, words, text_anchor="middle", font_size="20")


def _polyline(points: Sequence[tuple[float, float]]) -> str:
    return "".join(f"{'L' if i else 'M'}{x:.1f} {y:.1f}" for i, (x, y) in enumerate(points))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _style(label: str, rank: int) -> tuple[str, str]:
    return _LABEL_STYLES.get(label, (_MUTED, ("", "12 6", "3 5")[rank % 3]))


def _clock(t: float, tz: tzinfo, fmt: str = "%H:%M") -> str:
    return datetime.fromtimestamp(t, tz).strftime(fmt)


def _zone(t: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(t, tz).tzname() or str(tz)


# --- one session -------------------------------------------------------------------------------------------


def emotion_timeline_svg(timeline: Timeline, tz: tzinfo) -> str:
    """Face readings over one session: a smoothed line and the raw points per shown emotion, a guide at each
    of the person's turns, and the safety flags above, all on the session's clock in `tz`."""
    tl = timeline
    span = max(tl.ended_at - tl.started_at, 60.0)

    def x_of(t: float) -> float:
        return _LEFT + (_RIGHT - _LEFT) * min(max((t - tl.started_at) / span, 0.0), 1.0)

    def y_of(score: float) -> float:
        return _BOTTOM - (_BOTTOM - _TOP) * score

    when = _clock(tl.started_at, tz, "%d %b %Y %H:%M")
    minutes = span / 60
    flags = [ev.level for ev in tl.events]
    seen = ", ".join(tl.labels) if tl.labels else "no face seen"
    desc = (
        f"Face readings over {_count(round(minutes), 'minute')} ({seen}); "
        f"{_count(len(tl.turns), 'turn')} by the person; "
        + (", ".join(f"{flags.count(lv)} {lv}" for lv in dict.fromkeys(flags)) or "no safety flags")
        + "."
    )
    parts = _open(f"timeline-{tl.session_id}", f"Emotion timeline: {tl.client}, {when}", desc)
    parts += _y_axis(1.0, lambda v: f"{v:.2f}", "Score (0 to 1)")
    step = next(s for s in (1, 2, 5, 10, 15, 20, 30, 60, 120, 240) if minutes / s <= 6)
    for k in range(int(minutes // step) + 1):
        t = tl.started_at + k * step * 60
        x = x_of(t)
        parts.append(f'<line x1="{x:.1f}" y1="{_BOTTOM}" x2="{x:.1f}" y2="{_BOTTOM + 6}" stroke="{_INK}"/>')
        parts.append(_text(x, _BOTTOM + 24, _clock(t, tz), text_anchor="middle"))
    axis = f"Clock time ({_zone(tl.started_at, tz)}), ticks every {step} min"
    parts.append(_text((_LEFT + _RIGHT) / 2, _BOTTOM + 50, axis, text_anchor="middle"))
    for turn in tl.turns:
        x = x_of(turn.t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_BOTTOM}" stroke="{_MUTED}" '
            'stroke-dasharray="2 3"/>'
        )
        parts.append(_text(x + 3, _TOP + 14, f"T{turn.index}", font_size="14", fill=_MUTED))
    for ev in tl.events:
        parts.append(_flag(x_of(ev.t), ev.level, f"{ev.level} at {_clock(ev.t, tz, '%H:%M:%S')}"))
    if not tl.labels:
        parts.append(_message("No face seen in this session"))
    for rank, label in enumerate(tl.labels):
        colour, dash = _style(label, rank)
        d = _polyline([(x_of(t), y_of(v)) for t, v in tl.smoothed[label]])
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="3.5"{dashed}>'
            f"<title>{_esc(label)}, smoothed</title></path>"
        )
        parts += [_marker(_MARKERS[rank], x_of(t), y_of(v), colour) for t, v in tl.raw[label]]
        lx = _LEFT + rank * 220
        ly = _BOTTOM + 80
        parts.append(
            f'<line x1="{lx}" y1="{ly - 5}" x2="{lx + 44}" y2="{ly - 5}" stroke="{colour}" '
            f'stroke-width="3.5"{dashed}/>'
        )
        parts.append(_marker(_MARKERS[rank], lx + 22, ly - 5, colour))
        parts.append(_text(lx + 52, ly, label))
    parts.append(_flag_legend(set(flags), _BOTTOM + 108))
    return "".join(parts) + "</svg>"


def emotion_timeline_table(timeline: Timeline, tz: tzinfo) -> list[list[str]]:
    """The chart's numbers, header row first: each face reading's clock time, then raw and smoothed score
    per shown emotion."""
    header = ["Time"]
    for label in timeline.labels:
        header += [label, f"{label}, smoothed"]
    rows = [header]
    first = timeline.labels[0] if timeline.labels else None
    for i, (t, _) in enumerate(timeline.raw[first] if first else ()):
        row = [_clock(t, tz, "%H:%M:%S")]
        for label in timeline.labels:
            row += [f"{timeline.raw[label][i][1]:.2f}", f"{timeline.smoothed[label][i][1]:.2f}"]
        rows.append(row)
    return rows


# --- a client's sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Metric:
    name: str
    value: Callable[[TrendRow], float | None]
    fmt: Callable[[float], str]
    top: float | None
    """A fixed top of the axis (shares), or None to fit the data."""


_METRICS = {
    "duration": _Metric("Duration (minutes)", lambda r: r["duration_s"] / 60, lambda v: f"{v:.0f}", None),
    "turns": _Metric("Turns by the person", lambda r: r["turns"], lambda v: f"{v:.0f}", None),
    "fear_share": _Metric("Readings showing fear", lambda r: r["fear_share"], lambda v: f"{v:.0%}", 1.0),
    "sad_share": _Metric("Readings showing sadness", lambda r: r["sad_share"], lambda v: f"{v:.0%}", 1.0),
}
METRICS = tuple(_METRICS)


def _metric(metric: str) -> _Metric:
    if metric not in _METRICS:
        raise ValueError(f"unknown trend metric {metric!r}: use one of {', '.join(METRICS)}")
    return _METRICS[metric]


def _flags(row: TrendRow) -> dict[str, int]:
    return {"crisis": row["crisis"], "concern": row["concern"], "blocked": row["blocked"]}


def trend_svg(rows: Sequence[TrendRow], metric: str, tz: tzinfo, title: str) -> str:
    """One metric across a client's sessions in time order, with each session's flags above it."""
    m = _metric(metric)
    rows = sorted(rows, key=lambda r: r["started_at"])
    values = [v for v in map(m.value, rows) if v is not None]
    if not rows:
        desc = "No sessions recorded yet."
    else:
        first, last = (_clock(r["started_at"], tz, "%d %b %Y") for r in (rows[0], rows[-1]))
        low, high = (m.fmt(f(values)) for f in (min, max)) if values else ("none", "none")
        crises = sum(1 for r in rows if r["crisis"])
        desc = f"{_count(len(rows), 'session')} from {first} to {last}; {m.name} from {low} to {high}; "
        desc += f"{crises} with a crisis."
    parts = _open(f"trend-{metric}", title, desc)
    top = m.top or max(4.0, math.ceil(max(values, default=0.0) / 4) * 4)
    parts += _y_axis(top, m.fmt, m.name)
    if not rows:
        parts.append(_message("No sessions yet"))
        return "".join(parts) + "</svg>"
    t0, t1 = rows[0]["started_at"], rows[-1]["started_at"]
    inner = 24  # keep the end points off the axes

    def x_of(t: float) -> float:
        if t1 == t0:
            return (_LEFT + _RIGHT) / 2
        return _LEFT + inner + (_RIGHT - _LEFT - 2 * inner) * (t - t0) / (t1 - t0)

    fmt = "%d %b" if t1 - t0 >= 2 * 86400 else "%d %b %H:%M"
    for t in sorted({t0 + (t1 - t0) * k / 4 for k in range(5)}):
        parts.append(_text(x_of(t), _BOTTOM + 24, _clock(t, tz, fmt), text_anchor="middle"))
    parts.append(
        _text((_LEFT + _RIGHT) / 2, _BOTTOM + 50, f"Session start ({_zone(t1, tz)})", text_anchor="middle")
    )
    points = [(x_of(r["started_at"]), v, r) for r in rows if (v := m.value(r)) is not None]
    ys = [(x, _BOTTOM - (_BOTTOM - _TOP) * v / top, v, r) for x, v, r in points]
    if len(ys) > 1:
        d = _polyline([(x, y) for x, y, _, _ in ys])
        parts.append(f'<path d="{d}" fill="none" stroke="#0072b2" stroke-width="3"/>')
    for x, y, v, r in ys:
        label = f"{_clock(r['started_at'], tz, '%d %b %H:%M')}: {m.fmt(v)}"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="#0072b2"><title>{_esc(label)}</title></circle>'
        )
    levels: set[str] = set()
    for r in rows:
        when = _clock(r["started_at"], tz, "%d %b %H:%M")
        for level, count in _flags(r).items():
            if count:
                levels.add(level)
                parts.append(_flag(x_of(r["started_at"]), level, f"{when}: {count} {level}"))
    parts.append(_flag_legend(levels, _BOTTOM + 80))
    return "".join(parts) + "</svg>"


def trend_table(rows: Sequence[TrendRow], metric: str, tz: tzinfo) -> list[list[str]]:
    """The trend's numbers, header row first, oldest session first."""
    m = _metric(metric)
    table = [["Session start", m.name, "Flags"]]
    for r in sorted(rows, key=lambda r: r["started_at"]):
        v = m.value(r)
        flags = ", ".join(f"{n} {level}" for level, n in _flags(r).items() if n) or "none"
        shown = m.fmt(v) if v is not None else "no face seen"
        table.append([_clock(r["started_at"], tz, "%d %b %Y %H:%M"), shown, flags])
    return table
