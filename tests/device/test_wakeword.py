"""The wake word: openWakeWord's pipeline on tiny stand-in models, alone, in the listener and in the daemon.

The stand-ins (tests/tiny_wakeword.py) have the real models' shapes; their word model "hears the wake word"
in a 1 kHz tone pulsing like syllables, and nothing in silence, hiss or a hummed voice at 150 Hz. Both pulse
four times a second, so the VAD takes both for speech: a steady tone it soon takes for a machine.
"""

from __future__ import annotations

import io
import logging
import queue
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from device.__main__ import main
from device.audio import SAMPLE_RATE
from device.errors import DeviceConfigError
from device.listen import END, Gate, Item, Listener, WavPcm
from device.vad import Endpointer
from device.wakeword import CHUNK_SAMPLES, WakeGate, WakeWordDetector, resolve_word_model
from tests.conftest import ROOT
from tests.device.loopback import TOKEN, Loopback, parse_multipart
from tests.device.test_listen import drain, pcm_of
from tests.device.test_speaker import needs_espeak
from tests.device.test_vad import frames, pcm, silence
from tests.speech import pcm16_wav
from tests.tiny_wakeword import WAKE_HZ, WORD, build_tiny_wakeword

NAME = WORD.split("_v")[0]
"""What a person sets as `wake_word`: the name without its version."""
CHUNK_BYTES = CHUNK_SAMPLES * 2


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wakeword")
    build_tiny_wakeword(directory)
    return directory


def syllables(phase: np.ndarray, harmonics: int, dbfs: float = -10.0) -> np.ndarray:
    """Harmonics of `phase` (radians per sample, summed), four syllables a second, at `dbfs` RMS."""
    t = np.arange(len(phase)) / SAMPLE_RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))
    signal = signal * np.sqrt(np.abs(np.sin(np.pi * 4 * t)))
    return signal / np.sqrt(np.mean(signal**2)) * 32768 * 10 ** (dbfs / 20)


def wake(seconds: float = 1.2) -> np.ndarray:
    """The wake word, as the stand-in word model hears it."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return syllables(2 * np.pi * WAKE_HZ * t, harmonics=1)


def talk(seconds: float = 1.0) -> np.ndarray:
    """Anything else a person says: a voice at 150 Hz with a little vibrato, its harmonics below 1 kHz."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 150 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    return syllables(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE, harmonics=5)


def scores(detector: WakeWordDetector, stream: bytes) -> list[float]:
    """One score per 80 ms chunk."""
    return [detector.feed(stream[i : i + CHUNK_BYTES]) for i in range(0, len(stream), CHUNK_BYTES)]


def test_the_stand_ins_take_and_give_openwakewords_shapes(models: Path) -> None:
    import onnxruntime

    def run(name: str, value: np.ndarray) -> tuple[int, ...]:
        session = onnxruntime.InferenceSession(str(models / name), providers=["CPUExecutionProvider"])
        return tuple(session.run(None, {session.get_inputs()[0].name: value.astype(np.float32)})[0].shape)

    assert run("melspectrogram.onnx", np.zeros((1, 1280 + 480))) == (1, 1, 8, 32)
    assert run("melspectrogram.onnx", np.zeros((1, 1280))) == (1, 1, 5, 32)
    assert run("embedding_model.onnx", np.zeros((1, 76, 32, 1))) == (1, 1, 1, 96)
    assert run(f"{WORD}.onnx", np.zeros((1, 16, 96))) == (1, 1)


def test_the_wake_word_scores_high_and_other_sounds_low(models: Path) -> None:
    detector = WakeWordDetector(NAME, models)
    heard = scores(detector, pcm(silence(1.0), wake(), silence(1.0)))
    detector.reset()
    other = scores(detector, pcm(silence(1.0), talk(2.0), silence(1.0), hiss_dbfs=-40))

    assert heard[:5] == [0.0] * 5, "openWakeWord's warm-up: the first five chunks score 0"
    assert max(heard) > 0.95 and max(other) < 0.05
    assert 1.0 < (heard.index(max(heard)) + 1) * 0.08 < 3.0, "the peak comes while it is said, or just after"


def test_how_the_audio_is_cut_does_not_change_the_scores(models: Path) -> None:
    detector = WakeWordDetector(NAME, models)
    stream = pcm(silence(0.5), wake(), silence(0.5), talk(), silence(0.3))
    stream = stream[: len(stream) // CHUNK_BYTES * CHUNK_BYTES]
    by_chunk = scores(detector, stream)
    detector.reset()
    assert detector.feed(stream) == max(by_chunk)
    detector.reset()
    by_frame = [detector.feed(frame) for frame in frames(stream)]  # 30 ms: at most one chunk each
    detector.reset()
    uneven = [detector.feed(stream[i : i + 1001]) for i in range(0, len(stream), 1001)]  # odd byte counts

    assert [s for s in by_frame if s > 0] == [s for s in by_chunk if s > 0]
    assert max(uneven) == max(by_chunk)
    assert detector.feed(b"") == 0.0, "a call that completes no chunk scores nothing"


def test_the_threshold_decides_what_is_detected(models: Path) -> None:
    stream = pcm(silence(0.5), wake(0.6), silence(0.3))
    peak = WakeWordDetector(NAME, models).feed(stream)
    assert 0.3 < peak < 0.97, "a short wake word scores in between"

    assert WakeWordDetector(NAME, models, threshold=peak - 0.01).detected(stream)
    assert not WakeWordDetector(NAME, models, threshold=peak + 0.01).detected(stream)


@pytest.mark.parametrize("missing", ["melspectrogram.onnx", "embedding_model.onnx", f"{WORD}.onnx"])
def test_a_missing_model_is_one_line_naming_the_file_and_the_fix(missing: str, tmp_path: Path) -> None:
    build_tiny_wakeword(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(DeviceConfigError) as error:
        WakeWordDetector(NAME, tmp_path)
    message = error.value.message
    named = str(tmp_path / missing) if missing != f"{WORD}.onnx" else f"{tmp_path / NAME}*.onnx"
    assert "\n" not in message and named in message and "`tadbot models pull wakeword`" in message


def test_a_broken_model_or_no_onnxruntime_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    word = build_tiny_wakeword(tmp_path)
    word.write_bytes(b"not a model")
    with pytest.raises(
        DeviceConfigError, match=r"cannot load .*`tadbot models pull wakeword` again"
    ) as error:
        WakeWordDetector(str(word), tmp_path)
    assert "\n" not in error.value.message

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an install without it looks like
    with pytest.raises(DeviceConfigError, match=r"needs onnxruntime: run `pip install onnxruntime`"):
        WakeWordDetector(str(word), tmp_path)


def test_a_name_finds_the_newest_version_and_models_follow_the_models_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "wakeword").mkdir()
    for name in ("hey_jarvis_v0.1.onnx", "hey_jarvis_v0.2.onnx", "alexa_v0.1.onnx"):
        (tmp_path / "wakeword" / name).touch()
    monkeypatch.setenv("TADBOT_MODELS_DIR", str(tmp_path))

    assert (
        resolve_word_model("hey_jarvis", "models/wakeword") == tmp_path / "wakeword" / "hey_jarvis_v0.2.onnx"
    )
    own = tmp_path / "wakeword" / "alexa_v0.1.onnx"
    assert resolve_word_model(str(own), "elsewhere") == own
    with pytest.raises(DeviceConfigError, match="does not exist"):
        resolve_word_model(str(tmp_path / "nope.onnx"), "models/wakeword")


def _recording(tmp_path: Path, parts: dict[str, np.ndarray]) -> tuple[Path, bytes, dict[str, range]]:
    """The parts one after another in a WAV file, the stream written to it, and where each part is in it."""
    bounds, at = {}, 0
    for name, samples in parts.items():
        bounds[name] = range(at, at + len(samples))
        at += len(samples)
    stream = pcm(*parts.values())
    path = tmp_path / "recording.wav"
    path.write_bytes(pcm16_wav(stream, SAMPLE_RATE))
    return path, stream, bounds


def _conversation(tmp_path: Path) -> tuple[Path, bytes, dict[str, range]]:
    """Said in order: talk (asleep), the wake word, talk (within the window), a long silence, talk again."""
    parts = {
        "lead": silence(0.5),
        "before": talk(),
        "gap1": silence(1.5),
        "wake": wake(),
        "gap2": silence(1.5),
        "within": talk(),
        "gap3": silence(6.0),  # longer than the 3 s window after the last utterance, pre-roll included
        "after": talk(),
        "tail": silence(0.5),
    }
    return _recording(tmp_path, parts)


SAID = ("before", "wake", "within", "after")


def _said(utterances: list[bytes], stream: bytes, bounds: dict[str, range]) -> list[str]:
    """Which of the SAID parts each utterance's PCM holds (their middle samples, found byte for byte)."""
    return ["+".join(n for n in SAID if n in bounds and _middle(stream, bounds[n]) in u) for u in utterances]


def _middle(stream: bytes, span: range) -> bytes:
    middle = (span.start + span.stop) // 2
    return stream[middle * 2 : middle * 2 + 64]


def _listen(path: Path, wake_gate: WakeGate | None) -> list[bytes]:
    out: queue.Queue[Item] = queue.Queue()
    listener = Listener(WavPcm(path), Endpointer(), Gate(), out, wake=wake_gate)
    listener.start()
    items = drain(out)
    listener.join(timeout=5)
    assert items[-1] is END
    return [pcm_of(item) for item in items[:-1]]


def test_the_listener_sends_from_the_wake_word_until_the_window_runs_out(
    models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, stream, bounds = _conversation(tmp_path)
    gate = WakeGate(WakeWordDetector(NAME, models), window_s=3.0)
    with caplog.at_level(logging.INFO, logger="device.wakeword"):
        heard = _listen(path, gate)

    assert _said(heard, stream, bounds) == ["wake", "within"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("asleep: ignored an utterance without the wake word") == 2
    assert sum(line.startswith(f"wake word {WORD} heard (score 0.") for line in lines) == 1
    assert "nothing said for 3 s: asleep until the wake word" in lines
    assert not gate.awake


def test_without_a_wake_word_every_utterance_is_sent(tmp_path: Path) -> None:
    path, stream, bounds = _conversation(tmp_path)
    assert _said(_listen(path, None), stream, bounds) == ["before", "wake", "within", "after"]


def test_with_the_wake_word_off_the_device_never_loads_onnxruntime(tmp_path: Path) -> None:
    path, _, _ = _conversation(tmp_path)
    code = textwrap.dedent(
        f"""
        import queue, sys
        from device.__main__ import _endpointer, _wake_gate
        from device.listen import END, Gate, Listener, WavPcm
        from device.settings import load_settings

        settings = load_settings(env={{}})
        wake = _wake_gate(settings)
        out = queue.Queue()
        listener = Listener(WavPcm({str(path)!r}), _endpointer(settings), Gate(), out, wake=wake)
        listener.run()
        items = []
        while not items or items[-1] is not END:
            items.append(out.get(timeout=10))
        print(wake, len(items) - 1, "onnxruntime" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["None", "4", "False"]


def test_the_daemon_will_not_start_without_the_wake_word_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "device.toml"
    config.write_text(
        f'[device]\nwake_word = "hey_jarvis"\nwake_models_dir = "{tmp_path}"\n', encoding="utf-8"
    )
    argv = ["--config", str(config), "--server", "http://127.0.0.1:9", "--token", "t", "--camera=-1"]

    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{tmp_path / 'hey_jarvis'}*.onnx" in line and "`tadbot models pull wakeword`" in line


@needs_espeak
def test_the_daemon_sends_only_what_follows_the_wake_word(
    loopback: Loopback, models: Path, tmp_path: Path
) -> None:
    from tests.device.test_main import REPLY

    loopback.script = REPLY
    parts = {"lead": silence(0.5), "before": talk(), "gap1": silence(1.5), "wake": wake()}
    mic, stream, bounds = _recording(tmp_path, {**parts, "gap2": silence(1.5), "within": talk()})
    config = tmp_path / "device.toml"
    config.write_text(f'[device]\nwake_word = "{NAME}"\nwake_models_dir = "{models}"\n', encoding="utf-8")
    argv = ["--config", str(config), "--server", loopback.url, "--token", TOKEN, "--camera=-1"]

    code = main([*argv, "--mic-file", str(mic), "--tts-out", str(tmp_path / "replies")])

    assert code == 0
    sent = []
    for _, path, headers, body in loopback.requests:
        if path.endswith("/turns"):
            (audio,) = parse_multipart(headers["Content-Type"], body)
            with wave.open(io.BytesIO(audio.data)) as reader:
                sent.append(reader.readframes(reader.getnframes()))
    assert _said(sent, stream, bounds) == ["wake", "within"]
