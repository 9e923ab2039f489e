"""One spoken turn through the whole chain, on real components.

espeak-ng speech and a real face photo go into the real server under gunicorn; the device speaks the
reply into a WAV; the therapist reads it back.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import requests

from server.eval.stt import read_clips, word_errors, words
from tests.conftest import SPEECH, LiveServer, tadbot
from tests.speech import rms, speak

SENTENCE = "hello I feel anxious today"


def _turn(
    server: LiveServer,
    session_id: str,
    files: list[tuple[str, tuple[str, bytes, str]]],
    data: dict[str, str] | None = None,
) -> list[dict[str, object]]:
    response = requests.post(
        f"{server.url}/api/v1/sessions/{session_id}/turns",
        headers=server.device_headers(),
        files=files,
        data=data,
        stream=True,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.iter_lines() if line]


def test_spoken_turn_streams_events_in_order(live_server: LiveServer, face_jpeg: Path) -> None:
    started = live_server.start_session("e2e-http")
    session_id = started["session_id"]
    assert "here with you" in started["greeting"]

    events = _turn(
        live_server,
        session_id,
        [
            ("audio", ("u.wav", speak(SENTENCE), "audio/wav")),
            ("frame", ("f.jpg", face_jpeg.read_bytes(), "image/jpeg")),
        ],
    )
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["transcript", "emotions"]
    assert kinds[-1] == "done", events
    assert set(kinds[2:-1]) == {"sentence"} and len(kinds) >= 4
    heard = str(events[0]["text"]).lower()
    assert sum(word in heard for word in ("hello", "feel", "anxious", "today")) >= 2, heard
    assert events[1]["faces"] == 1
    top3 = events[1]["top3"]
    assert isinstance(top3, list) and len(top3) == 3
    assert all(0 <= e["score"] <= 1 for e in top3)
    timings = events[-1]["timings"]
    assert isinstance(timings, dict)
    assert {"stt_ms", "fer_ms", "first_sentence_ms", "total_ms"} <= timings.keys()

    log = requests.get(
        f"{live_server.url}/api/v1/sessions/{session_id}", headers=live_server.therapist_headers(), timeout=30
    ).json()
    assert [t["role"] for t in log["turns"]] == ["user", "assistant"]
    assert log["turns"][0]["text"] == events[0]["text"]
    assert log["turns"][1]["text"] == " ".join(str(e["text"]) for e in events if e["type"] == "sentence")
    assert log["turns"][1]["id"] == events[-1]["turn_id"]
    assert log["emotion_samples"][0]["top3"] == top3


def test_device_cli_speaks_the_reply_and_the_therapist_can_export_it(
    live_server: LiveServer, face_jpeg: Path, tmp_path: Path
) -> None:
    live_server.enroll("e2e-cli")
    utterance = tmp_path / "utterance.wav"
    utterance.write_bytes(speak(SENTENCE))
    reply = tmp_path / "reply.wav"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "device",
            "--server",
            live_server.url,
            "--token",
            live_server.device_token,
            "--client",
            "e2e-cli",
            "--audio-file",
            str(utterance),
            "--frame",
            str(face_jpeg),
            "--tts-out",
            str(reply),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert reply.is_file() and rms(reply) > 100, "the spoken reply is silent"

    headers = live_server.therapist_headers()
    sessions = requests.get(
        f"{live_server.url}/api/v1/sessions", params={"client": "e2e-cli"}, headers=headers, timeout=30
    ).json()["sessions"]
    assert len(sessions) == 1 and sessions[0]["ended_at"] is not None and sessions[0]["turns"] == 1
    session_id = sessions[0]["id"]
    log = requests.get(
        f"{live_server.url}/api/v1/sessions/{session_id}/export",
        params={"format": "json"},
        headers=headers,
        timeout=30,
    ).json()
    user_turn = log["turns"][0]
    assert user_turn["role"] == "user" and "feel" in user_turn["text"] + " ".join(
        t["text"] for t in log["turns"]
    )
    assert log["emotion_samples"] and log["emotion_samples"][0]["faces"] == 1
    text = requests.get(
        f"{live_server.url}/api/v1/sessions/{session_id}/export",
        params={"format": "txt"},
        headers=headers,
        timeout=30,
    ).text
    assert f"client: {user_turn['text']}" in text.replace("(?)", "") and "face (turn):" in text
    csv_rows = requests.get(
        f"{live_server.url}/api/v1/sessions/{session_id}/export",
        params={"format": "csv"},
        headers=headers,
        timeout=30,
    ).text.splitlines()
    assert csv_rows[0].startswith("time,kind,role_or_source,text")
    assert any(",turn,user," in row for row in csv_rows) and any(",emotion,turn," in row for row in csv_rows)


def test_a_real_voice_through_the_device_cli_is_heard_by_whisper_nearly_word_for_word(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """With no stt.* keys set, `tadbot device --audio-file jfk.wav`: President Kennedy's 11 s, WER <= 0.10."""
    live_server.enroll("e2e-jfk")
    (clip,) = read_clips(SPEECH)
    done = tadbot(
        *("device", "--server", live_server.url, "--token", live_server.device_token, "--client", "e2e-jfk"),
        *("--audio-file", str(clip.path), "--tts-out", str(tmp_path / "reply.wav")),
        env=live_server.env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (heard,) = [line.removeprefix("you: ") for line in done.stdout.splitlines() if line.startswith("you: ")]
    said = words(clip.text)
    assert len(said) == 22
    assert word_errors(said, words(heard)) / len(said) <= 0.10, heard


def test_a_crisis_said_in_either_of_the_device_s_voices_gets_the_crisis_reply(
    live_server: LiveServer, spoken_set: Path
) -> None:
    """Every crisis line of `tadbot bench spoken`, in Piper's voice and in espeak-ng's, through /turns."""
    session_id = live_server.start_session("e2e-spoken-crisis")["session_id"]
    crisis = [clip for clip in read_clips(spoken_set) if clip.label == "crisis"]
    assert len({clip.voice for clip in crisis}) == 2 and len(crisis) >= 20
    missed = []
    for clip in crisis:
        events = _turn(live_server, session_id, [("audio", ("u.wav", clip.path.read_bytes(), "audio/wav"))])
        levels = [e["level"] for e in events if e["type"] == "safety"]
        if levels != ["crisis"] or events[-1].get("source") != "crisis":
            missed.append((clip.voice, clip.text, events[0].get("text")))
    assert not missed, missed


MEDIA_SUFFIXES = {".wav", ".jpg", ".jpeg", ".png", ".pcm", ".raw", ".bmp", ".webm", ".ogg", ".mp3"}


def test_no_audio_or_image_is_ever_written(live_server: LiveServer, face_jpeg: Path) -> None:
    """Run a turn and a frame, then look at every file the server could have written."""
    started = live_server.start_session("e2e-privacy")
    # A large frame: Werkzeug would spool a part this size to a temp file if uploads were not kept in memory.
    big_padding = b"\0" * (2 * 1024 * 1024)
    audio = speak(SENTENCE)
    _turn(
        live_server,
        started["session_id"],
        [
            ("audio", ("u.wav", audio, "audio/wav")),
            ("frame", ("f.jpg", face_jpeg.read_bytes() + big_padding, "image/jpeg")),
        ],
    )
    answer = requests.post(
        f"{live_server.url}/api/v1/sessions/{started['session_id']}/frames",
        headers=live_server.device_headers(),
        files={"frame": ("f.jpg", face_jpeg.read_bytes(), "image/jpeg")},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["faces"] == 1
    written = [p for p in (*live_server.data_dir.rglob("*"), *live_server.tmp_dir.rglob("*")) if p.is_file()]
    assert written, "the data dir should hold the records"
    assert not [p for p in written if p.suffix.lower() in MEDIA_SUFFIXES]
    face = face_jpeg.read_bytes()
    fingerprints = (audio[2000:2064], face[len(face) // 2 : len(face) // 2 + 64])
    for path in written:
        content = path.read_bytes()
        assert not content.startswith((b"RIFF", b"\xff\xd8\xff", b"\x89PNG")), f"{path} holds raw media"
        assert not any(f in content for f in fingerprints), f"{path} holds bytes of the uploaded media"
    assert not list(live_server.tmp_dir.iterdir()), "the server spooled something to its temp dir"


def test_a_typed_turn_is_answered_from_persona_face_and_memories(
    live_server: LiveServer, face_jpeg: Path, tiny_gguf: Path
) -> None:
    """`tadbot device --text ...`: the reply was generated from the persona, the face note and a memory."""
    live_server.enroll("e2e-mem")
    device = (
        "device",
        "--server",
        live_server.url,
        "--token",
        live_server.device_token,
        "--client",
        "e2e-mem",
    )
    earlier = tadbot(*device, "--text", "the plane trip panic last spring was the worst", env=live_server.env)
    assert earlier.returncode == 0, earlier.stdout + earlier.stderr
    now = tadbot(
        *device, "--text", "I feel a panic attack coming", "--frame", str(face_jpeg), env=live_server.env
    )
    assert now.returncode == 0, now.stdout + now.stderr

    with contextlib.closing(sqlite3.connect(live_server.data_dir / "tadbot.sqlite3")) as db:
        (prompt, sid) = db.execute(
            "SELECT prompt, session_id FROM turns WHERE role = 'user' AND text = ?",
            ("I feel a panic attack coming",),
        ).fetchone()
        (timings,) = db.execute(
            "SELECT timings FROM turns WHERE role = 'assistant' AND session_id = ?", (sid,)
        ).fetchone()
    from server.conversation.prompt import Prompts

    prompts = Prompts.load("Tad")
    assert "- the plane trip panic last spring was the worst" in prompt, prompt
    assert "(Their face looks: " in prompt and prompts.stages["opening"] in prompt
    assert (
        prompt.index("plane trip") < prompt.index("I feel a panic attack coming") < prompt.index("face looks")
    )
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(tiny_gguf), vocab_only=True, verbose=False)
    persona = len(vocab.tokenize(prompts.system.encode(), add_bos=False, special=True))
    said = len(vocab.tokenize(prompt.encode(), add_bos=False, special=True))
    # The model read the persona as well as the turn: the prompt it evaluated holds both.
    assert json.loads(timings)["prompt_tokens"] >= persona + said
    assert any(line.strip() for line in now.stdout.splitlines()), "no reply was printed"


def test_a_crisis_typed_on_the_device_gets_the_helpline_and_is_flagged_for_the_therapist(
    live_server: LiveServer,
) -> None:
    """`tadbot device --text "I want to end my life"`: the crisis script, spoken, and a flag in the export."""
    live_server.enroll("e2e-crisis")
    device = ("device", "--server", live_server.url, "--token", live_server.device_token)
    done = tadbot(*device, "--client", "e2e-crisis", "--text", "I want to end my life", env=live_server.env)
    assert done.returncode == 0, done.stdout + done.stderr
    helpline = (
        "You can call or text nine eight eight, the Suicide and Crisis Lifeline, any time, day or night."
    )
    lines = done.stdout.splitlines()
    assert f"safety: crisis: {helpline}" in lines
    assert f"bot: {helpline}" in lines
    assert "bot: I'm really glad you told me, and I'm taking what you said seriously." in lines

    sessions = requests.get(
        f"{live_server.url}/api/v1/sessions",
        params={"client": "e2e-crisis"},
        headers=live_server.therapist_headers(),
        timeout=10,
    ).json()["sessions"]
    assert [s["crisis"] for s in sessions] == [True]
    export = requests.get(
        f"{live_server.url}/api/v1/sessions/{sessions[0]['id']}/export",
        params={"format": "txt"},
        headers=live_server.therapist_headers(),
        timeout=10,
    )
    assert f"!! SAFETY CRISIS: {helpline} (suicidal_ideation: end my life)" in export.text
