"""The dashboard's SVG charts: well-formed, accessible, escaped, on the reader's clock, with their tables."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from zoneinfo import ZoneInfo

import pytest

from server.dashboard.charts import (
    emotion_timeline_svg,
    emotion_timeline_table,
    trend_svg,
    trend_table,
)
from server.dashboard.timeline import TrendRow, build_timeline, trend_row
from tests.server.test_dashboard_timeline import T0, sample, session_log

NS = {"s": "http://www.w3.org/2000/svg"}
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


def smoothed_paths(root: ET.Element) -> dict[str, ET.Element]:
    paths = {}
    for path in root.iterfind(".//s:path", NS):
        title = path.find("s:title", NS)
        if title is not None and (title.text or "").endswith(", smoothed"):
            paths[(title.text or "").removesuffix(", smoothed")] = path
    return paths


def test_the_timeline_is_an_accessible_scalable_image() -> None:
    root = ET.fromstring(emotion_timeline_svg(build_timeline(session_log()), LONDON))
    assert (root.get("role"), root.get("width")) == ("img", "100%")
    assert root.get("viewBox") == "0 0 800 410"
    title_id, desc_id = (root.get("aria-labelledby") or "").split()
    title, desc = root.find("s:title", NS), root.find("s:desc", NS)
    assert title is not None and desc is not None
    assert (title.get("id"), desc.get("id")) == (title_id, desc_id)
    assert title.text == "Emotion timeline: robin-7, 14 Nov 2023 22:13"
    assert desc.text == (
        "Face readings over 10 minutes (fear, sad, neutral); 2 turns by the person; 1 blocked, 1 crisis."
    )
    sizes = [float(t.get("font-size") or root.get("font-size") or 0) for t in root.iter(f"{{{NS['s']}}}text")]
    assert min(sizes) >= 14


def test_each_shown_label_has_its_own_line_dash_and_legend_entry() -> None:
    root = ET.fromstring(emotion_timeline_svg(build_timeline(session_log()), LONDON))
    paths = smoothed_paths(root)
    assert list(paths) == ["fear", "sad", "neutral"]
    dashes = [p.get("stroke-dasharray") for p in paths.values()]
    assert len(set(dashes)) == 3
    # Three smoothed points per line: one move and two line segments.
    assert all(len(re.findall("[ML]", p.get("d") or "")) == 3 for p in paths.values())
    assert {"fear", "sad", "neutral"} <= set(texts(root))


def test_turn_guides_and_flags_are_marked_and_labelled() -> None:
    root = ET.fromstring(emotion_timeline_svg(build_timeline(session_log()), LONDON))
    assert [t for t in texts(root) if re.fullmatch(r"T\d+", t)] == ["T1", "T2"]
    flag_titles = [g.findtext("s:title", namespaces=NS) for g in root.iterfind("s:g", NS)]
    assert flag_titles == ["blocked at 22:13:59", "crisis at 22:16:40"]
    assert {"C", "B", "Flags: C = crisis; B = blocked reply"} <= set(texts(root))


def test_times_are_on_the_given_clock() -> None:
    timeline = build_timeline(session_log())
    london = texts(ET.fromstring(emotion_timeline_svg(timeline, LONDON)))
    new_york = texts(ET.fromstring(emotion_timeline_svg(timeline, NEW_YORK)))
    london_ticks = ["22:13", "22:15", "22:17", "22:19", "22:21", "22:23"]
    assert [t for t in london if re.fullmatch(r"\d\d:\d\d", t)] == london_ticks
    five_hours_back = [t.replace("22:", "17:") for t in london_ticks]
    assert [t for t in new_york if re.fullmatch(r"\d\d:\d\d", t)] == five_hours_back
    assert "Clock time (GMT), ticks every 2 min" in london
    assert "Clock time (EST), ticks every 2 min" in new_york


def test_markup_in_a_pseudonym_or_label_is_text_not_markup() -> None:
    log = session_log(client='Ro<b>in & "co"\x01')
    log["emotion_samples"].append(sample(400, 1, ("</path><script>x", 0.99)))
    svg = emotion_timeline_svg(build_timeline(log), LONDON)
    root = ET.fromstring(svg)
    assert "<script>" not in svg
    assert root.findtext("s:title", namespaces=NS) == 'Emotion timeline: Ro<b>in & "co", 14 Nov 2023 22:13'
    assert "</path><script>x" in smoothed_paths(root)


def test_a_session_without_a_face_says_so() -> None:
    log = session_log()
    log["emotion_samples"] = [sample(20, 0)]
    root = ET.fromstring(emotion_timeline_svg(build_timeline(log), LONDON))
    assert "No face seen in this session" in texts(root)
    assert smoothed_paths(root) == {}
    assert [t for t in texts(root) if re.fullmatch(r"T\d+", t)] == ["T1", "T2"]
    assert emotion_timeline_table(build_timeline(log), LONDON) == [["Time"]]


def test_the_timeline_table_holds_the_charts_numbers() -> None:
    table = emotion_timeline_table(build_timeline(session_log()), NEW_YORK)
    assert table[0] == [
        "Time",
        "fear",
        "fear, smoothed",
        "sad",
        "sad, smoothed",
        "neutral",
        "neutral, smoothed",
    ]
    assert table[1:] == [
        ["17:13:30", "0.60", "0.60", "0.30", "0.30", "0.10", "0.10"],
        ["17:15:00", "0.40", "0.54", "0.50", "0.36", "0.00", "0.07"],
        ["17:18:20", "0.00", "0.38", "0.10", "0.28", "0.70", "0.26"],
    ]


def trend_rows() -> list[TrendRow]:
    """Three sessions, given out of order: the first, one a week on (21 minutes, blocked only) and one
    between (crisis only, no face seen)."""
    first = trend_row(session_log())
    week_on: TrendRow = {
        **first,
        "session_id": "b",
        "started_at": T0 + 7 * 86400,
        "duration_s": 1260.0,
        "crisis": 0,
    }
    between: TrendRow = {
        **first,
        "session_id": "c",
        "started_at": T0 + 3 * 86400,
        "fear_share": None,
        "blocked": 0,
    }
    return [first, week_on, between]


def test_trend_draws_one_point_per_session_in_time_order_and_flags_above() -> None:
    root = ET.fromstring(trend_svg(trend_rows(), "duration", LONDON, "Session length <robin & co>"))
    assert root.findtext("s:title", namespaces=NS) == "Session length <robin & co>"
    points = [c.findtext("s:title", namespaces=NS) for c in root.iterfind("s:circle", NS)]
    assert points == ["14 Nov 22:13: 10", "17 Nov 22:13: 10", "21 Nov 22:13: 21"]
    assert len(root.findall("s:path", NS)) == 1
    flags = [g.findtext("s:title", namespaces=NS) for g in root.iterfind("s:g", NS)]
    assert flags == [
        "14 Nov 22:13: 1 crisis",
        "14 Nov 22:13: 1 blocked",
        "17 Nov 22:13: 1 crisis",
        "21 Nov 22:13: 1 blocked",
    ]
    assert {"14 Nov", "21 Nov", "Session start (GMT)"} <= set(texts(root))


def test_trend_skips_sessions_without_a_face_for_a_face_metric() -> None:
    root = ET.fromstring(trend_svg(trend_rows(), "fear_share", NEW_YORK, "Fear"))
    points = [c.findtext("s:title", namespaces=NS) for c in root.iterfind("s:circle", NS)]
    assert points == ["14 Nov 17:13: 33%", "21 Nov 17:13: 33%"]
    assert {"0%", "100%"} <= set(texts(root))


def test_trend_of_one_session_and_of_none() -> None:
    one = ET.fromstring(trend_svg(trend_rows()[:1], "turns", LONDON, "Turns"))
    assert len(one.findall("s:circle", NS)) == 1
    assert one.findall("s:path", NS) == []
    assert "14 Nov 22:13" in texts(one)
    none = ET.fromstring(trend_svg([], "turns", LONDON, "Turns"))
    assert "No sessions yet" in texts(none)
    assert none.findtext("s:desc", namespaces=NS) == "No sessions recorded yet."
    with pytest.raises(ValueError, match="unknown trend metric 'mood'"):
        trend_svg([], "mood", LONDON, "Mood")


def test_the_trend_table_lists_sessions_oldest_first() -> None:
    assert trend_table(trend_rows(), "fear_share", LONDON) == [
        ["Session start", "Readings showing fear", "Flags"],
        ["14 Nov 2023 22:13", "33%", "1 crisis, 1 blocked"],
        ["17 Nov 2023 22:13", "no face seen", "1 crisis"],
        ["21 Nov 2023 22:13", "33%", "1 blocked"],
    ]
