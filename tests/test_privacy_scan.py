"""The privacy proof, run after every other test (tests/conftest.py puts this file last).

Every data dir the suite made, and one more made here by a real spoken turn with a face photo, is scanned:
no file in it is or carries a WAV, FLAC, Ogg, JPEG, PNG, GIF or WebP, and no server log beside it holds a
word the people in its record said. The scanner's own tests show it finds each kind it looks for.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from server.bench.privacy import RECORD, code_words, leaked_words, media_files, said_in
from tests.conftest import FACE_PHOTOS, LiveServer, start_server, stop_server
from tests.speech import speak

SAID = "The lighthouse keeper whistled a melody near the orchard"


@pytest.fixture(scope="module")
def spoken_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, tiny_fer: Path
) -> Iterator[LiveServer]:
    """A real spoken turn with a face photo, and a typed one, so this proof never scans nothing."""
    live = start_server(tmp_path_factory.mktemp("privacy"), llm=tiny_gguf, fer=tiny_fer)
    try:
        session_id = live.start_session("pia")["session_id"]
        face = (FACE_PHOTOS / "grace_hopper.jpg").read_bytes()
        for part in (
            {"audio": ("u.wav", speak(SAID), "audio/wav"), "frame": ("f.jpg", face, "image/jpeg")},
            {"text": (None, "I keep thinking about the marmalade factory")},
        ):
            answer = requests.post(
                f"{live.url}/api/v1/sessions/{session_id}/turns",
                headers=live.device_headers(),
                files=part,
                timeout=120,
            )
            events = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
            assert events[-1]["type"] == "done", events
        requests.post(
            f"{live.url}/api/v1/sessions/{session_id}/frames",
            headers=live.device_headers(),
            files={"frame": ("f.jpg", face, "image/jpeg")},
            timeout=60,
        ).raise_for_status()
    finally:
        stop_server(live)
    yield live


def _data_dirs(root: Path) -> list[Path]:
    return sorted({path.parent for path in root.rglob(f"*{Path(RECORD).suffix}")})


def test_no_data_dir_keeps_audio_or_images(
    spoken_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data_dirs = _data_dirs(tmp_path_factory.getbasetemp())
    assert spoken_server.data_dir in data_dirs
    assert "melody" in " ".join(said_in(spoken_server.data_dir)).lower()
    found = {str(path): kind for data_dir in data_dirs for path, kind in media_files(data_dir)}
    assert found == {}


def test_no_server_log_holds_what_people_said(
    spoken_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    known = code_words()
    logs = 0
    for data_dir in _data_dirs(tmp_path_factory.getbasetemp()):
        log = data_dir.parent / "server.log"
        if data_dir.name != "data" or not log.is_file():
            continue
        logs += 1
        said = said_in(data_dir)
        assert leaked_words(log.read_text(errors="replace"), said, known) == {}, log
    assert logs >= 1
    assert (spoken_server.data_dir.parent / "server.log").stat().st_size > 0


def _webp() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out, "WEBP")
    return out.getvalue()


@pytest.mark.parametrize(
    ("made", "kind"),
    [
        pytest.param(lambda: speak("hello"), "RIFF", id="wav"),
        pytest.param(lambda: (FACE_PHOTOS / "grace_hopper.jpg").read_bytes(), "JPEG", id="jpeg"),
        pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + bytes(32), "PNG", id="png"),
        pytest.param(lambda: b"GIF89a" + bytes(32), "GIF", id="gif"),
        pytest.param(_webp, "RIFF", id="webp"),
        pytest.param(lambda: b"fLaC\x00\x00\x00\x22" + bytes(40), "FLAC", id="flac"),
        pytest.param(
            lambda: b"SQLite format 3\x00" + bytes(100) + speak("hello") + bytes(10),
            "WAV",
            id="wav-in-a-blob",
        ),
        pytest.param(
            lambda: bytes(64) + (FACE_PHOTOS / "grace_hopper.jpg").read_bytes()[:400],
            "JPEG",
            id="jpeg-in-a-blob",
        ),
    ],
)
def test_the_scan_finds_each_kind_of_media(tmp_path: Path, made: object, kind: str) -> None:
    assert callable(made)
    (tmp_path / "kept.bin").write_bytes(made())
    (tmp_path / "words.txt").write_text("only words and scores are kept", encoding="utf-8")
    assert media_files(tmp_path) == [(tmp_path / "kept.bin", kind)]


def test_the_log_check_finds_a_spoken_word_and_ignores_the_codes_own() -> None:
    log = "INFO server.conversation.engine: session 1 ended\nDEBUG heard: the lighthouse keeper\n"
    found = leaked_words(log, [SAID], code_words())
    assert found == {"keeper": "DEBUG heard: the lighthouse keeper"}  # "lighthouse" is in a data file
    assert (
        leaked_words("INFO session ended after the breathing exercise", ["a breathing session"], code_words())
        == {}
    )
