"""The session PDF, read back with pypdf: the record's facts, every turn with its flags, in both fonts."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pypdf import PdfReader

from server.dashboard.report import FONT_DIR, session_pdf
from tests.server.test_dashboard_timeline import session_log

LONDON = ZoneInfo("Europe/London")
HAS_DEJAVU = (FONT_DIR / "DejaVuSans.ttf").is_file() and (FONT_DIR / "DejaVuSans-Bold.ttf").is_file()


def read(pdf: bytes) -> tuple[PdfReader, str]:
    reader = PdfReader(io.BytesIO(pdf))
    return reader, "\n".join(page.extract_text() for page in reader.pages)


def in_order(text: str, *parts: str) -> bool:
    at = 0
    for part in parts:
        at = text.find(part, at)
        if at < 0:
            return False
    return True


@pytest.mark.skipif(
    not HAS_DEJAVU, reason=f"DejaVu Sans is not in {FONT_DIR} (apt install fonts-dejavu-core)"
)
def test_the_report_keeps_every_word_in_dejavu() -> None:
    reader, text = read(session_pdf(session_log("robin-7"), tz=LONDON, reader="Dr Ana Lee"))
    assert len(reader.pages) >= 1
    assert reader.metadata is not None
    assert reader.metadata.title == "TADBot session report: robin-7, 14 Nov 2023"
    assert "TADBot session report" in text
    assert "Client: robin-7" in text
    assert "Session: 5f0c2d9e41b84a7c9d3e6f1a2b3c4d5e" in text
    assert "Started: 14 Nov 2023 22:13:20 GMT" in text
    assert "Ended: 14 Nov 2023 22:23:20 GMT" in text
    assert "Times in: Europe/London" in text
    assert "Duration: 10 min 0 s" in text
    assert "Turns: 2 by the person, 2 by TADBot" in text
    assert "Generated: by Dr Ana Lee" in text
    assert "Spoke about a hard week at work and tried box breathing." in text
    assert "My chest is tight and I feel naïve — café ✓" in text
    assert "Let’s breathe together… in for four." in text
    assert text.count("Confidential: contains health information") == len(reader.pages)
    assert f"page 1 of {len(reader.pages)}" in text


def test_flags_are_listed_and_marked_beside_their_turns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _, text = read(session_pdf(session_log(), tz=LONDON, reader="Dr Ana Lee"))
    # fpdf2 logs each SVG element it cannot draw: the chart must use none.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("fpdf")] == []
    assert "crisis: 1 (at 22:16:40 GMT)" in text
    assert "concern: 0" in text
    assert "blocked: 1 (at 22:13:59 GMT)" in text
    # The blocked sentence names no turn: it sits by the reply it was kept out of, before the next turn.
    assert in_order(
        text,
        "Person (T1) · 22:13:50 GMT",
        "TADBot · 22:14:00 GMT · reply: exercise",
        "[blocked at 22:13:59 GMT] advice: take two of your pills; said instead: let's breathe",
        "Person (T2) · 22:16:40 GMT",
        "I don't want to be here any more",
        "[crisis at 22:16:40 GMT] self-harm: don't want to be here; Call or text 988",
        "TADBot · 22:16:45 GMT · reply: crisis",
        "Please call 988 now; they are there for you.",
    )


def test_the_report_is_on_the_readers_clock() -> None:
    _, text = read(session_pdf(session_log(), tz=ZoneInfo("America/New_York"), reader="Dr Ana Lee"))
    assert "Started: 14 Nov 2023 17:13:20 EST" in text
    assert "Times in: America/New_York" in text
    assert "Clock time (EST), ticks every 2 min" in text  # the chart's own text, drawn from its SVG


def test_without_dejavu_the_words_fall_back_to_latin1(tmp_path: Path) -> None:
    log = session_log("zoë-3")
    reader, text = read(session_pdf(log, tz=LONDON, reader="Dr Ana Lee", font_dir=tmp_path))
    assert len(reader.pages) >= 1
    assert "Client: zoë-3" in text
    assert "My chest is tight and I feel naïve - café ?" in text
    assert "Let's breathe together... in for four." in text
    assert "[crisis at 22:16:40 GMT]" in text
    assert "Confidential: contains health information" in text


def test_a_session_with_nothing_recorded_still_reports() -> None:
    log = session_log()
    log.update(ended_at=None, summary=None, turns=[], emotion_samples=[], safety_events=[])
    _, text = read(session_pdf(log, tz=LONDON, reader="Dr Ana Lee"))
    assert "Ended: still open" in text
    assert "Duration: 0 min 0 s" in text
    assert "No turns were recorded." in text
    assert "No face seen in this session" in text
    assert "Summary" not in text
    assert "crisis: 0" in text
