from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Generator
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from device.__main__ import _on_sigterm, _Terminated, main
from device.backoff import Backoff
from device.lines import load_lines
from tests.device import fake_pyaudio
from tests.device.conftest import spoken_wav, tone, wav_bytes
from tests.device.loopback import GATE, GREETING, TOKEN, Loopback, parse_multipart, serve
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


def _read_lines(stream: IO[str], into: queue.Queue[str]) -> None:
    """Hand over a child's stdout line by line, so the test can wait for one with a timeout."""
    for line in stream:
        into.put(line.rstrip("\n"))


def _rms(path: Path) -> float:
    with wave.open(str(path)) as reader:
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


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
    assert _rms(reply) > 500


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
        (["--token", "t", "--server", "http://127.0.0.1:99999"], "server_url = 'http://127.0.0.1:99999'"),
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


@needs_espeak
def test_a_bad_server_url_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It passes the config check (a host name and a port), but urllib3 cannot parse the host.
    url = "http://exa_mple..com:8710"
    argv = [
        "--server",
        url,
        "--token",
        "t",
        "--text",
        "hi",
        "--camera=-1",
        "--tts-out",
        str(tmp_path / "r.wav"),
    ]
    assert main(argv) == 1
    (line,) = _errors(capsys)
    assert line.startswith(f"tadbot device: error: the server URL {url} is not valid (")
    assert line.endswith("; fix [device] server_url")


@needs_espeak
@pytest.mark.usefixtures("fake_mic")
def test_a_refused_token_stops_the_daemon_at_once(
    loopback: Loopback, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong token would be wrong on every retry: say so once, aloud and on stderr, and stop (exit 2)."""
    reply = tmp_path / "reply.wav"
    argv = ["--server", loopback.url, "--token", "not-the-token", "--camera=-1", "--tts-out", str(reply)]
    assert main(argv) == 2
    (line,) = _errors(capsys)
    assert line.startswith("tadbot device: error: the server refused this device (401 bad_token: ")
    assert "`tadbot admin add-device NAME`" in line
    assert loopback.paths() == ["/api/v1/sessions"], "no retries hammering the server"
    assert fake_pyaudio.log[-1:] == ["close"], "the microphone, opened at start, was released"
    assert _rms(reply) > 500, "the person heard why the device stopped"


def _after_first_failure(
    monkeypatch: pytest.MonkeyPatch, delay_s: float, start: Callable[[], None]
) -> threading.Timer:
    """Run `start` `delay_s` after the daemon first finds the server down: timed from the daemon's start,
    the server could come up while the voice is still loading, before the daemon has tried it at all."""
    timer = threading.Timer(delay_s, start)
    failed = Backoff.failed

    def failed_then_start(self: Backoff) -> float:
        if timer.ident is None:
            timer.start()
        return failed(self)

    monkeypatch.setattr(Backoff, "failed", failed_then_start)
    return timer


@needs_espeak
@pytest.mark.usefixtures("fake_mic")
def test_the_daemon_waits_for_a_server_that_starts_late(
    unused_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TADBOT_DEVICE__MIC_CALIBRATION_S", "0")
    fake_pyaudio.after = "interrupt"  # Ctrl-C while listening for the second utterance
    # The microphone listens from the start; the person speaks once the greeting has been said.
    fake_pyaudio.load(spoken_wav(lead_s=4.0))
    servers: list[Generator[Loopback, None, None]] = []
    started: list[Loopback] = []

    def start_server() -> None:
        servers.append(serve(port=unused_port))
        started.append(next(servers[0]))
        started[0].script = REPLY

    timer = _after_first_failure(monkeypatch, 0.3, start_server)  # the daemon's first retry is after 1 s
    try:
        url, reply = f"http://127.0.0.1:{unused_port}", str(tmp_path / "reply.wav")
        code = main(["--server", url, "--token", TOKEN, "--camera=-1", "--tts-out", reply])
        timer.join(timeout=5)
    finally:
        timer.cancel()
        for running in servers:
            running.close()
    assert code == 130
    assert capsys.readouterr().out.splitlines() == [
        f"bot: {load_lines().waiting_for_server}",
        f"bot: {GREETING}",
        "you: hello",
        "face: neutral 0.80",
        "bot: Hello, it is good to hear you.",
    ]
    (server,) = started
    assert server.paths() == ["/api/v1/sessions", "/api/v1/sessions/s1/turns", "/api/v1/sessions/s1/end"]
    (audio,) = server.turn_parts()
    assert audio.name == "audio" and audio.data[22:28] == b"\x01\x00\x80\x3e\x00\x00"  # 16 kHz mono
    assert fake_pyaudio.log == ["open", "close"]
    assert _rms(tmp_path / "reply.wav") > 500


@needs_espeak
def test_sigterm_stops_the_daemon_mid_turn_ends_the_session_and_exits_0(
    loopback: Loopback, tmp_path: Path
) -> None:
    """systemd stops the unit with SIGTERM: the loop stops at once, the microphone is released and the
    session is ended on the server. The reply is held open, so only a real SIGTERM stop can pass."""
    loopback.script = [REPLY[0], GATE, *REPLY[1:]]
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "pyaudio.py").write_text(
        "import importlib, sys\n"
        "sys.modules[__name__] = importlib.import_module('tests.device.fake_pyaudio')\n",
        encoding="utf-8",
    )
    (tmp_path / "speech.wav").write_bytes(spoken_wav(lead_s=1.5))  # after the greeting
    mic_log, stderr_path = tmp_path / "mic.log", tmp_path / "stderr.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(fakes), str(ROOT)]),
        "FAKE_MIC_WAV": str(tmp_path / "speech.wav"),
        "FAKE_MIC_LOG": str(mic_log),
        "TADBOT_DEVICE__MIC_CALIBRATION_S": "0",
    }
    argv = [sys.executable, "-m", "device", *_base(loopback), "--camera=-1", "--tts-out", "r.wav", "-v"]
    lines: queue.Queue[str] = queue.Queue()
    out: list[str] = []
    with (
        stderr_path.open("w", encoding="utf-8") as stderr,
        subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as device,
    ):
        reader = threading.Thread(target=_read_lines, args=(device.stdout, lines))
        reader.start()
        try:
            while "you: hello" not in out:  # the turn is under way, its reply held at the gate
                out.append(lines.get(timeout=30))
            sent = time.monotonic()
            device.send_signal(signal.SIGTERM)
            code = device.wait(timeout=30)
            stopped_s = time.monotonic() - sent
            reader.join(timeout=10)
        finally:
            device.kill()
    out += list(lines.queue)
    errors = stderr_path.read_text(encoding="utf-8")
    assert code == 0, errors
    assert stopped_s < 4, "it waited for the held reply instead of stopping"
    assert out == [f"bot: {GREETING}", "you: hello"], "nothing after the SIGTERM"
    assert loopback.paths() == ["/api/v1/sessions", "/api/v1/sessions/s1/turns", "/api/v1/sessions/s1/end"]
    assert loopback.ended == ["s1"]
    assert mic_log.read_text(encoding="utf-8").split() == ["open", "close"], "the microphone was released"
    assert "stopped by SIGTERM" in errors and "Traceback" not in errors


def test_a_sigterm_while_the_voice_loads_is_a_stop_not_a_broken_voice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """systemd may stop the unit while Piper loads its voice, a second or two at every start. The stop must
    not read as a broken voice file: that falls back to espeak-ng and runs on, with SIGTERM then ignored
    until systemd kills the daemon. A real SIGTERM reaches the daemon's handler inside the load."""
    import piper

    from device.synth import PiperSynth

    def load(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("the SIGTERM handler did not run")

    monkeypatch.setattr(piper.PiperVoice, "load", staticmethod(load))
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with pytest.raises(_Terminated):
            PiperSynth(tmp_path / "voice.onnx", 160, 1.0)
    finally:
        signal.signal(signal.SIGTERM, previous)


def conversation_wav(*parts: str | float) -> bytes:
    """A 16 kHz recording of a person: each str is spoken by espeak-ng, each float is seconds of silence."""
    from device.audio import to_pcm16_mono_16k
    from tests.speech import speak

    pcm = b""
    for part in parts:
        if isinstance(part, str):
            with wave.open(io.BytesIO(to_pcm16_mono_16k(speak(part), part))) as reader:
                pcm += reader.readframes(reader.getnframes())
        else:
            pcm += b"\0\0" * round(part * 16_000)
    return wav_bytes(np.frombuffer(pcm, "<i2") / 32768.0, 16_000)


@needs_espeak
def test_a_mic_file_is_endpointed_into_turns_with_one_wav_per_reply(
    loopback: Loopback, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loopback.script = REPLY
    mic = tmp_path / "two_utterances.wav"
    mic.write_bytes(conversation_wav(0.5, "hello, I feel anxious today", 1.5, "my heart is racing", 0.5))
    replies = tmp_path / "replies"
    code = main([*_base(loopback), "--camera=-1", "--mic-file", str(mic), "--tts-out", str(replies)])
    assert code == 0
    assert loopback.paths() == [
        "/api/v1/sessions",
        "/api/v1/sessions/s1/turns",
        "/api/v1/sessions/s1/turns",
        "/api/v1/sessions/s1/end",
    ]
    durations = []
    for _, path, headers, body in loopback.requests:
        if path.endswith("/turns"):
            (audio,) = parse_multipart(headers["Content-Type"], body)
            with wave.open(io.BytesIO(audio.data)) as reader:
                durations.append(reader.getnframes() / reader.getframerate())
    assert all(1.0 < seconds < 4.0 for seconds in durations), durations
    assert sorted(p.name for p in replies.iterdir()) == ["greeting.wav", "reply-001.wav", "reply-002.wav"]
    assert all(_rms(path) > 500 for path in replies.iterdir())
    assert capsys.readouterr().out.count("bot: Hello, it is good to hear you.") == 2


@needs_espeak
def test_a_server_that_goes_away_gets_the_offer_of_an_exercise_and_is_used_again_when_back(
    unused_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server is down for the first utterance and back for the second: the person hears the
    device's offer to breathe together, then a real reply, with no restart."""
    mic = tmp_path / "mic.wav"
    mic.write_bytes(conversation_wav(0.3, "I can't breathe properly", 5.0, "that helped a little", 0.5))
    servers: list[Generator[Loopback, None, None]] = []
    started: list[Loopback] = []

    def start_server() -> None:
        servers.append(serve(port=unused_port))
        started.append(next(servers[0]))
        started[0].script = REPLY

    timer = _after_first_failure(monkeypatch, 5.0, start_server)  # after the 1st utterance, before the 2nd
    replies = tmp_path / "replies"
    try:
        url = f"http://127.0.0.1:{unused_port}"
        code = main(
            [
                "--server",
                url,
                "--token",
                TOKEN,
                "--camera=-1",
                "--mic-file",
                str(mic),
                "--tts-out",
                str(replies),
            ]
        )
        timer.join(timeout=10)
    finally:
        timer.cancel()
        for running in servers:
            running.close()
    out = capsys.readouterr().out.splitlines()
    lines = load_lines()
    assert code == 0
    assert out[0] == f"bot: {lines.waiting_for_server}"
    assert f"bot: {lines.errors['server_unreachable']}" in out
    assert "bot: I'm here with you." not in out, "one line offers the exercise; it was not asked for"
    assert out[-1] == "bot: Hello, it is good to hear you.", "answered by the server once it was back"
    (server,) = started
    assert server.paths()[-2:] == ["/api/v1/sessions/s1/turns", "/api/v1/sessions/s1/end"]
    # A greeting, when the back-off's next try reached the server before the second utterance did.
    replied = sorted(p.name for p in replies.iterdir() if p.name != "greeting.wav")
    assert replied == ["reply-001.wav", "reply-002.wav", "waiting.wav"]
