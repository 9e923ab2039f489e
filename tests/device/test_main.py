from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from device.__main__ import main
from tests.device.conftest import tone, wav_bytes
from tests.device.loopback import GATE, GREETING, TOKEN, Loopback
from tests.device.test_speaker import needs_espeak

ROOT = Path(__file__).resolve().parents[2]
REPLY = [
    {"type": "transcript", "text": "hello"},
    {"type": "emotions", "faces": 1, "top3": [{"label": "neutral", "score": 0.8}]},
    {"type": "sentence", "text": "Hello, it is good to hear you."},
    {"type": "done", "turn_id": 1, "timings": {"total_ms": 5}},
]


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def _base(server: Loopback) -> list[str]:
    return ["--server", server.url, "--token", TOKEN, "--client", "anon-1"]


@needs_espeak
def test_text_turn_speaks_into_a_wav_and_exits_0(
    loopback: Loopback, face_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loopback.script = REPLY
    reply = tmp_path / "reply.wav"
    code = main([*_base(loopback), "--text", "hello", "--frame", str(face_png), "--tts-out", str(reply)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [
        f"bot: {GREETING}",
        "you: hello",
        "face: neutral 0.80",
        "bot: Hello, it is good to hear you.",
    ]
    assert [p.name for p in loopback.turn_parts()] == ["text", "frame"]
    assert loopback.turn_parts()[1].data.startswith(b"\xff\xd8\xff"), "the PNG is sent as a JPEG"
    assert loopback.ended == ["s1"]
    with wave.open(str(reply)) as reader:
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(np.float64)
    assert np.sqrt(np.mean(samples**2)) > 500


@needs_espeak
def test_audio_file_turn_sends_16k_mono(loopback: Loopback, tmp_path: Path) -> None:
    loopback.script = REPLY
    utterance = tmp_path / "utterance.wav"
    utterance.write_bytes(wav_bytes(np.stack([tone(220, 0.5, 48_000)] * 2, axis=1), 48_000))
    code = main(
        [
            *_base(loopback),
            "--audio-file",
            str(utterance),
            "--camera=-1",
            "--tts-out",
            str(tmp_path / "r.wav"),
        ]
    )
    assert code == 0
    (audio,) = loopback.turn_parts()
    assert (audio.name, audio.content_type) == ("audio", "audio/wav")
    assert audio.data[22:28] == b"\x01\x00\x80\x3e\x00\x00"  # 1 channel, 16000 Hz


@needs_espeak
def test_error_event_exits_1(loopback: Loopback, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loopback.script = [{"type": "error", "code": "stt_failed", "message": "could not hear that"}]
    code = main([*_base(loopback), "--text", "hi", "--camera=-1", "--tts-out", str(tmp_path / "r.wav")])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: stt_failed: could not hear that" in captured.out
    assert captured.err.splitlines() == ["tadbot device: error: 1 turn(s) failed; see the lines above"]
    assert loopback.ended == ["s1"]


def test_unreachable_server_exits_1_with_one_line(
    unused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    code = main(["--server", url, "--token", "t", "--text", "hi", "--camera=-1", "--tts-out", "r.wav"])
    assert code == 1
    assert _errors(capsys) == [f"tadbot device: error: cannot reach the server at {url}: Connection refused"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--text", "hi", "--audio-file", "a.wav"], "not allowed with argument"),
        (["--frame", "a.png", "--camera", "1"], "not allowed with argument"),
        (["--camera", "front"], "invalid int value"),
        (["--volume", "3"], "unrecognized arguments: --volume 3"),
        (["--text", "hi"], "no device token"),
        (["--token", "t", "--server", "pi.local"], "server_url = 'pi.local'"),
        (["--config", "missing.toml", "--print-config"], "missing.toml does not exist"),
    ],
)
def test_usage_and_config_errors_exit_2_with_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    (line,) = _errors(capsys)
    assert line.startswith("tadbot device: error: ") and words in line, line


def test_env_override_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TADBOT_DEVICE__TTS_RATE", "quick")
    assert main(["--print-config"]) == 2
    (line,) = _errors(capsys)
    assert "tts_rate = 'quick' (from TADBOT_DEVICE__TTS_RATE)" in line


def test_print_config_applies_flags_and_masks_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "device.toml"
    config.write_text('[device]\ntoken = "from-file-secret"\ntts_rate = 150\n', encoding="utf-8")
    assert main(["--config", str(config), "--client", "anon-9", "--camera", "2", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "from-file-secret" not in out and 'token = "********"' in out
    assert 'client = "anon-9"' in out and "camera_index = 2" in out and "tts_rate = 150" in out
    import tomllib

    assert tomllib.loads(out)["device"]["server_url"] == "http://127.0.0.1:8710"


def test_module_help_uses_the_tadbot_device_name() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "device", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: tadbot device [-h] [--server URL]")
    for flag in (
        "--server",
        "--token",
        "--client",
        "--audio-file",
        "--text",
        "--frame",
        "--camera",
        "--tts-out",
    ):
        assert flag in done.stdout


def test_main_runs_outside_the_main_thread(capsys: pytest.CaptureFixture[str]) -> None:
    """`tadbot run` may start the device in a thread, where signal handlers cannot be installed."""
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(["--print-config"])))
    thread.start()
    thread.join(timeout=30)
    assert codes == [0]
    assert "[device]" in capsys.readouterr().out


@needs_espeak
def test_sigterm_ends_the_session_and_exits_0(loopback: Loopback, tmp_path: Path) -> None:
    """systemd stops the unit with SIGTERM: the session must still be ended on the server."""
    loopback.script = [REPLY[0], GATE, *REPLY[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    device = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device",
            *_base(loopback),
            "--text",
            "hi",
            "--camera=-1",
            "--tts-out",
            "r.wav",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(path.endswith("/turns") for _, path, _, _ in loopback.requests):
            assert device.poll() is None and time.monotonic() < deadline, device.communicate()
            time.sleep(0.05)
        time.sleep(0.3)  # let it read the first event and block on the held stream
        device.send_signal(signal.SIGTERM)
        out, err = device.communicate(timeout=30)
    finally:
        device.kill()
    assert device.returncode == 0, err
    assert "you: hello" in out
    assert loopback.ended == ["s1"]
