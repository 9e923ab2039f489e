"""One session as a PDF a clinician can file: who, when, the flags, the face chart and every turn.

Written with fpdf2. Clients' words are Unicode, so DejaVu Sans is used where Debian's fonts-dejavu-core put
it; without it the core Helvetica font stands in, which holds latin-1 only, so typographic punctuation is
spelled in ASCII and anything else becomes "?" rather than failing the report.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from server.dashboard.charts import emotion_timeline_svg
from server.dashboard.timeline import FLAG_LEVELS, build_timeline, trend_row

_LOGGER = logging.getLogger(__name__)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
"""Where fonts-dejavu-core installs DejaVuSans.ttf and DejaVuSans-Bold.ttf."""
TITLE = "TADBot session report"
FOOTER = "Confidential: contains health information"
_UNICODE_FAMILY = "DejaVu Sans"
"""Registered under the name the chart's SVG asks for, so its text is drawn in the same face."""
_TO_LATIN1 = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2026": "...",
        "\u00a0": " ",
    }
)
_SVG_LABELS = re.compile(r"<(title|desc)\b[^>]*>.*?</\1>", re.S)
_FLAG_INK = (150, 20, 35)
_SPEAKERS = {"user": "Person", "assistant": "TADBot"}


class _Report(FPDF):
    def __init__(self, font_dir: Path) -> None:
        super().__init__(format="A4")
        regular, bold = font_dir / "DejaVuSans.ttf", font_dir / "DejaVuSans-Bold.ttf"
        self.unicode = regular.is_file() and bold.is_file()
        if self.unicode:
            self.add_font(_UNICODE_FAMILY, "", str(regular))
            self.add_font(_UNICODE_FAMILY, "B", str(bold))
            self.face = _UNICODE_FAMILY
        else:
            _LOGGER.warning("no DejaVu Sans in %s; the report falls back to latin-1 text", font_dir)
            self.face = "helvetica"
        self.set_auto_page_break(True, margin=20)

    def words(self, text: str) -> str:
        if self.unicode:
            return text
        return text.translate(_TO_LATIN1).encode("latin-1", "replace").decode("latin-1")

    def say(
        self, text: str, size: float = 11, bold: bool = False, ink: tuple[int, int, int] = (0, 0, 0)
    ) -> None:
        self.set_font(self.face, "B" if bold else "", size)
        self.set_text_color(*ink)
        self.multi_cell(0, size * 0.5, self.words(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_text_color(0, 0, 0)

    def heading(self, text: str) -> None:
        self.ln(4)
        self.say(text, 14, bold=True)
        self.ln(1)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font(self.face, "", 9)
        self.set_text_color(0, 0, 0)  # a page can break in the middle of a coloured flag line
        self.cell(0, 6, f"{FOOTER}  ·  page {self.page_no()} of {{nb}}", align="C")


def _when(t: float, tz: tzinfo, fmt: str = "%d %b %Y %H:%M:%S") -> str:
    at = datetime.fromtimestamp(t, tz)
    return f"{at.strftime(fmt)} {at.tzname() or ''}".rstrip()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def _events_by_turn(
    turns: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> tuple[dict[int, list[Mapping[str, Any]]], list[Mapping[str, Any]]]:
    """Each event beside its turn: the one it names, else (a blocked sentence names none) the first turn
    written at or after it, which is the reply the sentence was kept out of. Those after the last turn are
    returned apart."""
    ids = {turn["id"] for turn in turns}
    by_turn: dict[int, list[Mapping[str, Any]]] = {}
    after: list[Mapping[str, Any]] = []
    for event in events:
        turn_id = event.get("turn_id")
        if turn_id not in ids:
            turn_id = next((t["id"] for t in turns if t["created_at"] >= event["t"]), None)
        if turn_id is None:
            after.append(event)
        else:
            by_turn.setdefault(turn_id, []).append(event)
    return by_turn, after


def _event_line(event: Mapping[str, Any], tz: tzinfo) -> str:
    line = f"[{event['level']} at {_when(event['t'], tz, '%H:%M:%S')}] {event['trigger']}"
    if event.get("message"):
        line += f"; {event['message']}"
    if event.get("heard_as"):
        line += f" (heard as '{event['heard_as']}', speech hypothesis {event.get('hypothesis', 1)})"
    return line


def _head(pdf: _Report, log: Mapping[str, Any], tz: tzinfo, reader: str) -> None:
    row = trend_row(log)
    ended = _when(log["ended_at"], tz) if log.get("ended_at") else "still open"
    users = row["turns"]
    pdf.say(TITLE, 20, bold=True)
    pdf.ln(2)
    for name, value in (
        ("Client", str(log["client"])),
        ("Session", str(log["session_id"])),
        ("Started", _when(log["started_at"], tz)),
        ("Ended", ended),
        ("Times in", str(tz)),
        ("Duration", _duration(row["duration_s"])),
        ("Turns", f"{users} by the person, {len(log['turns']) - users} by TADBot"),
        ("Generated", f"by {reader}, {_when(time.time(), tz)}"),
    ):
        pdf.say(f"{name}: {value}")
    if log.get("summary"):
        pdf.heading("Summary")
        pdf.say(str(log["summary"]))


def _flags(pdf: _Report, log: Mapping[str, Any], tz: tzinfo) -> None:
    pdf.heading("Flags")
    for level in FLAG_LEVELS:
        times = [_when(e["t"], tz, "%H:%M:%S") for e in log["safety_events"] if e["level"] == level]
        ink = _FLAG_INK if times and level == "crisis" else (0, 0, 0)
        pdf.say(
            f"{level}: {len(times)}" + (f" (at {', '.join(times)})" if times else ""),
            bold=bool(times),
            ink=ink,
        )
    others = [e for e in log["safety_events"] if e["level"] not in FLAG_LEVELS]
    if others:
        pdf.say(f"other: {len(others)} ({', '.join(sorted({str(e['level']) for e in others}))})")


def _chart(pdf: _Report, log: Mapping[str, Any], tz: tzinfo) -> None:
    pdf.heading("Face readings")
    svg = emotion_timeline_svg(build_timeline(log), tz)
    # fpdf2 draws neither <title> nor <desc> and logs a warning for each; the PDF has its own words.
    pdf.image(io.BytesIO(_SVG_LABELS.sub("", svg).encode("utf-8")), w=pdf.epw, alt_text="Emotion timeline")


def _transcript(pdf: _Report, log: Mapping[str, Any], tz: tzinfo) -> None:
    pdf.heading("Transcript")
    turns = log["turns"]
    by_turn, after = _events_by_turn(turns, log["safety_events"])
    users = 0
    for turn in turns:
        who = _SPEAKERS.get(turn["role"], str(turn["role"]))
        if turn["role"] == "user":
            users += 1
            who += f" (T{users})"
        head = f"{who} · {_when(turn['created_at'], tz, '%H:%M:%S')}"
        if turn.get("source"):
            head += f" · reply: {turn['source']}"
        pdf.ln(1.5)
        pdf.say(head, 10, bold=True)
        pdf.say(str(turn["text"]))
        for event in by_turn.get(turn["id"], []):
            pdf.say(_event_line(event, tz), 10, bold=True, ink=_FLAG_INK)
    if not turns:
        pdf.say("No turns were recorded.")
    for event in after:
        pdf.say(_event_line(event, tz), 10, bold=True, ink=_FLAG_INK)


def session_pdf(log: dict[str, Any], *, tz: tzinfo, reader: str, font_dir: Path = FONT_DIR) -> bytes:
    """The report for `log` (as `Records.session_log()` returns it), with times in `tz`; `reader` is
    named as who generated it."""
    pdf = _Report(font_dir)
    started = datetime.fromtimestamp(log["started_at"], tz)
    pdf.set_title(f"{TITLE}: {log['client']}, {started:%d %b %Y}")
    pdf.set_lang("en")
    pdf.add_page()
    _head(pdf, log, tz, reader)
    _flags(pdf, log, tz)
    _chart(pdf, log, tz)
    _transcript(pdf, log, tz)
    return bytes(pdf.output())
