"""`tadbot bench turn`: what the person waits through, from the end of their speech to the first sound of
the reply, cut into the six stages that make it up, for each speech engine and each voice.

The stages, each measured with the real component on this machine:
- endpointing: the device's Endpointer hears a spoken sentence (said by its own Piper voice, over faint
  noise) frame by frame; the audio time from the last loud frame to its decision (mostly `end_silence_s`)
  plus the time it took to decide and make the WAV;
- upload: the request leaving until the transcript event is read, less the server's own STT time: the
  network, the multipart body and the server's handling around the speech engine;
- stt: the server's `stt_ms`;
- model_first_sentence: the server's `first_sentence_ms` less its `stt_ms`: the safety check, memory, the
  prompt and the language model until its first whole sentence;
- tts: the device's voice saying that first sentence;
- audio_open: handing the sound to the long-lived output (device.playback) until its writer takes the first
  chunk, plus the output's buffer (`LATENCY_S`) that the silence keeps full ahead of it. Where no sound
  output works (no card), the hand-over cannot be timed: the figure is then the resampling alone plus
  `LATENCY_S`, and the report says so.

The server's three stages depend on the speech engine, the device's two on the voice, so each engine runs
its turns once and each voice says those turns' first sentences: every (engine, voice) pair is the sum of
their medians. Without `--server`, `tadbot serve` is started on a loopback port once per engine, with a
fresh data dir and token. Progress goes to stderr; a table per pair, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.audio import SAMPLE_RATE, encode_wav
from device.bench import _open as open_voice
from device.client import ServerClient
from device.errors import DeviceError, SpeakerError
from device.mic import StreamResampler
from device.settings import DeviceSettings, load_settings
from device.synth import Speech
from device.vad import EndpointConfig, Endpointer, level_dbfs

STAGES = ("endpointing", "upload", "stt", "model_first_sentence", "tts", "audio_open")
ENGINES = ("faster_whisper", "sphinx")
VOICES = ("piper", "espeak")
UTTERANCE = "My heart is racing and I cannot slow my breathing down."
"""What the person says: an ordinary anxious line, not a crisis, so the model answers it."""

_LEAD_S, _TAIL_S = 0.6, 1.5
"""Noise before the speech (the endpointer learns the room) and after it (room for the decision)."""
_NOISE_DBFS = -60.0
"""The faint room noise under the speech: a quiet flat, not digital silence."""
_LOUD_DBFS = -45.0
"""A frame louder than this is still speech when finding where the sentence ends."""
_SERVER_START_S = 600.0
Say = Callable[[str], None]


@dataclass(frozen=True)
class TurnBenchOptions:
    repeats: int = 3
    engines: tuple[str, ...] = ENGINES
    voices: tuple[str, ...] = VOICES
    server: str = ""
    """A running server's URL; "" starts `tadbot serve` on a loopback port for each engine."""
    token: str = ""
    model: str = ""
    """The loopback server's GGUF (llm.model_path); "" keeps the configured one."""
    config: str = ""
    """The TOML file for the device's voices and endpointing, and for the loopback server."""


@dataclass(frozen=True)
class ServerTurn:
    """One turn as the device saw it: when the transcript came, the server's timings, the first sentence."""

    transcript_ms: float
    timings: dict[str, float]
    first_sentence: str
    heard: str
    source: str


def server_stages(turn: ServerTurn) -> dict[str, float]:
    """upload, stt and model_first_sentence from one turn (ms); none below zero."""
    stt = float(turn.timings.get("stt_ms", 0.0))
    first = float(turn.timings["first_sentence_ms"])
    return {
        "upload": max(0.0, turn.transcript_ms - stt),
        "stt": stt,
        "model_first_sentence": max(0.0, first - stt),
    }


def stage_table(stages_ms: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each stage with its share of the whole wait, in STAGES order."""
    total = sum(stages_ms[name] for name in STAGES)
    share = {name: round(stages_ms[name] / total, 4) if total > 0 else 0.0 for name in STAGES}
    return {name: {"ms": round(stages_ms[name], 1), "share": share[name]} for name in STAGES}


def spoken_utterance(settings: DeviceSettings) -> tuple[bytes, float]:
    """The sentence in the device's Piper voice as 16 kHz PCM16 with noise around it, and the time (s) at
    which its speech ends."""
    synth = open_voice("piper", settings, steady=True)
    try:
        speech = synth.synthesize(UTTERANCE)
    finally:
        synth.close()
    samples = np.frombuffer(speech.pcm, dtype="<i2") / 32768.0
    resampler = StreamResampler(speech.rate, SAMPLE_RATE)
    voice = np.concatenate([resampler.push(samples), resampler.push(np.zeros(speech.rate // 100))])
    frame = EndpointConfig().frame_bytes // 2
    loud = [
        i for i in range(0, voice.size - frame, frame) if level_dbfs(_pcm(voice[i : i + frame])) > _LOUD_DBFS
    ]
    speech_end_s = _LEAD_S + (loud[-1] + frame) / SAMPLE_RATE if loud else _LEAD_S + voice.size / SAMPLE_RATE
    lead, tail = round(_LEAD_S * SAMPLE_RATE), round(_TAIL_S * SAMPLE_RATE)
    audio = np.random.default_rng(1).normal(0.0, 10 ** (_NOISE_DBFS / 20), lead + voice.size + tail)
    audio[lead : lead + voice.size] += voice
    return _pcm(audio), speech_end_s


def _pcm(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def endpoint(settings: DeviceSettings, pcm: bytes, speech_end_s: float) -> tuple[bytes, float]:
    """The utterance's WAV as the listener makes it, and the endpointing stage in ms."""
    config = EndpointConfig(
        pre_roll_s=settings.pre_roll_s,
        end_silence_s=settings.end_silence_s,
        min_speech_s=settings.min_speech_s,
        max_utterance_s=settings.max_utterance_s,
        aggressiveness=settings.vad_aggressiveness,
    )
    endpointer = Endpointer(config)
    size = config.frame_bytes
    for index in range(len(pcm) // size):
        started = time.perf_counter()
        utterance = endpointer.feed(pcm[index * size : (index + 1) * size])
        if utterance is None:
            continue
        wav = encode_wav(np.frombuffer(utterance, dtype="<i2") / 32768.0)
        work_s = time.perf_counter() - started
        decided_s = (index + 1) * config.frame_ms / 1000
        return wav, 1000 * (decided_s - speech_end_s + work_s)
    raise DeviceError("bench_failed", "the endpointer never ended the spoken sentence")


def run_turns(client: ServerClient, wav: bytes, repeats: int) -> list[ServerTurn]:
    """One warm-up turn, then `repeats` timed turns, in one session that is ended afterwards."""
    session_id, _ = client.start_session("bench-turn")
    try:
        return [_turn(client, session_id, wav) for _ in range(repeats + 1)][1:]
    finally:
        client.end_session(session_id)


def _turn(client: ServerClient, session_id: str, wav: bytes) -> ServerTurn:
    started = time.perf_counter()
    transcript_ms, heard, first = 0.0, "", ""
    for event in client.turn(session_id, audio=wav):
        if event["type"] == "transcript":
            transcript_ms, heard = 1000 * (time.perf_counter() - started), str(event["text"])
        elif event["type"] == "sentence" and not first:
            first = str(event["text"])
        elif event["type"] == "done":
            timings = {k: float(v) for k, v in event.get("timings", {}).items()}
            if "first_sentence_ms" not in timings or not first:
                raise DeviceError("bench_failed", f"the turn ended without a sentence (heard {heard!r})")
            return ServerTurn(transcript_ms, timings, first, heard, str(event.get("source", "")))
        elif event["type"] == "error":
            raise DeviceError("bench_failed", f"a turn failed: {event.get('code')}: {event.get('message')}")
    raise DeviceError("bench_failed", "a turn's stream ended without `done`")


@contextmanager
def loopback_server(engine: str, options: TurnBenchOptions, say: Say) -> Iterator[ServerClient]:
    """`tadbot serve` with speech engine `engine` on a free loopback port: its own data dir and device
    token, the rest as configured. Started as a command, as an operator would: the device never imports the
    server."""
    with tempfile.TemporaryDirectory(prefix="tadbot-bench-turn-") as root:
        env = {
            **os.environ,
            "TADBOT_SERVER__PORT": str(_free_port()),
            "TADBOT_SERVER__HOST": "127.0.0.1",
            "TADBOT_SERVER__DATA_DIR": str(Path(root) / "data"),
            "TADBOT_STT__ENGINE": engine,
            "TADBOT_FER__MODEL_PATH": str(Path(root) / "no-fer.onnx"),  # turns carry no frames here
            "PYTHONUNBUFFERED": "1",
        }
        env |= {"TADBOT_CONFIG": options.config} if options.config else {}
        env |= {"TADBOT_LLM__MODEL_PATH": options.model} if options.model else {}
        url = f"http://127.0.0.1:{env['TADBOT_SERVER__PORT']}"
        added = subprocess.run(
            [sys.executable, "-m", "server", "admin", "add-device", "bench-turn", "--client", "bench-turn"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if added.returncode != 0 or not added.stdout.strip():
            raise DeviceError("bench_failed", f"cannot make a device token: {added.stderr.strip()[-500:]}")
        token = added.stdout.strip().splitlines()[-1]
        log_path = Path(root) / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            client = ServerClient(url, token, timeout=900)
            try:
                say(f"{engine}: starting the server on {url}")
                _wait_ready(client, process, log_path)
                yield client
            finally:
                client.close()
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


def _wait_ready(client: ServerClient, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until health answers with the model and the speech engine loaded; else the server log's tail."""
    deadline = time.monotonic() + _SERVER_START_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            components = client.health()["components"]
        except DeviceError:
            time.sleep(0.3)
            continue
        missing = [name for name in ("llm", "stt") if components.get(name, {}).get("status") != "ok"]
        if not missing:
            return
        detail = "; ".join(f"{n}: {components.get(n, {}).get('message', '')}" for n in missing)
        raise DeviceError(
            "bench_failed", f"the loopback server lacks {detail} (give --model GGUF for the llm)"
        )
    tail = log.read_text(errors="replace")[-1500:]
    raise DeviceError("bench_failed", f"the loopback server did not come up:\n{tail}")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def time_voice(voice: str, settings: DeviceSettings, sentences: Sequence[str]) -> tuple[list[float], Speech]:
    """ms to say each sentence in `voice` (after one untimed warm-up), and the last speech made."""
    synth = open_voice(voice, settings)
    try:
        speech = synth.synthesize(sentences[0])
        timings = []
        for text in sentences:
            started = time.perf_counter()
            speech = synth.synthesize(text)
            timings.append(1000 * (time.perf_counter() - started))
        return timings, speech
    finally:
        synth.close()


def time_audio_open(settings: DeviceSettings, speech: Speech, repeats: int) -> tuple[list[float], str]:
    """ms from handing `speech` to the output until it is on its way to the speaker, and how it was found."""
    from device.playback import LATENCY_S, OUTPUT_RATE, Playback

    buffer_ms = 1000 * LATENCY_S
    try:
        playback = Playback(settings.speaker_device)
    except SpeakerError as exc:
        return _converted(speech, repeats, buffer_ms), f"not measured ({exc.message}): resampling + buffer"
    try:
        probe = playback.play(bytes(2 * OUTPUT_RATE // 50), OUTPUT_RATE)
        probe.wait(5.0)
        time.sleep(0.5)  # an output with no card dies at once and is reopened: give it time to show
        if probe.failed or playback.opens != 1:
            why = probe.failed or "aplay kept exiting"
            return _converted(speech, repeats, buffer_ms), f"not measured ({why}): resampling + buffer"
        measured = []
        for _ in range(repeats):
            started = time.perf_counter()
            sound = playback.play(speech.pcm, speech.rate)
            deadline = time.monotonic() + 5.0
            while sound.offset == 0 and not sound.failed and time.monotonic() < deadline:
                time.sleep(0.001)
            if sound.offset == 0:
                raise DeviceError("bench_failed", f"the output took nothing: {sound.failed or 'timed out'}")
            measured.append(1000 * (time.perf_counter() - started) + buffer_ms)
            playback.stop()
        where = playback.device or "ALSA's default output"
        return measured, f"measured on aplay ({where}) + its buffer"
    finally:
        playback.close()


def _converted(speech: Speech, repeats: int, buffer_ms: float) -> list[float]:
    from device.playback import convert

    measured = []
    for _ in range(repeats):
        started = time.perf_counter()
        convert(speech.pcm, speech.rate)
        measured.append(1000 * (time.perf_counter() - started) + buffer_ms)
    return measured


def run_turn_bench(options: TurnBenchOptions, say: Say) -> dict[str, object]:
    settings = load_settings(options.config or None)
    pcm, speech_end_s = spoken_utterance(settings)
    endpointing: list[float] = []
    wav = b""
    for _ in range(options.repeats):
        wav, ms = endpoint(settings, pcm, speech_end_s)
        endpointing.append(ms)
    say(f"endpointing: {statistics.median(endpointing):.0f} ms after the last word")
    turns: dict[str, list[ServerTurn]] = {}
    for engine in options.engines:
        if options.server:
            client = ServerClient(options.server, options.token, timeout=900)
            try:
                turns[engine] = run_turns(client, wav, options.repeats)
            finally:
                client.close()
        else:
            with loopback_server(engine, options, say) as client:
                turns[engine] = run_turns(client, wav, options.repeats)
        last = turns[engine][-1]
        say(f"{engine}: heard {last.heard!r}; first sentence {last.first_sentence!r}")
    combinations = []
    audio_how: dict[str, str] = {}
    for voice in options.voices:
        audio_ms: list[float] = []
        for engine, measured in turns.items():
            tts_ms, speech = time_voice(voice, settings, [t.first_sentence for t in measured])
            if not audio_ms:
                audio_ms, audio_how[voice] = time_audio_open(settings, speech, options.repeats)
            stages = {
                name: statistics.median(server_stages(t)[name] for t in measured)
                for name in ("upload", "stt", "model_first_sentence")
            }
            stages |= {
                "endpointing": statistics.median(endpointing),
                "tts": statistics.median(tts_ms),
                "audio_open": statistics.median(audio_ms),
            }
            combinations.append(
                {
                    "stt": engine,
                    "voice": voice,
                    "total_ms": round(sum(stages.values()), 1),
                    "stages": stage_table(stages),
                    "sources": sorted({t.source for t in measured}),
                }
            )
        say(f"{voice}: audio_open {audio_how[voice]}")
    return {
        "target": "turn",
        "utterance": UTTERANCE,
        "repeats": options.repeats,
        "warmup": True,
        "server": options.server or "loopback",
        "end_silence_s": settings.end_silence_s,
        "audio_open": audio_how,
        "combinations": combinations,
    }


def print_tables(report: dict[str, object]) -> None:
    """One table per (engine, voice) pair: each stage's median and its share of the wait."""
    combinations = report["combinations"]
    assert isinstance(combinations, list)
    for combination in combinations:
        pair, total_s = f"{combination['stt']} + {combination['voice']}", combination["total_ms"] / 1000
        print(f"\n{pair}: {total_s:.2f} s to first audio")
        for name, stage in combination["stages"].items():
            print(f"  {name:<22} {stage['ms']:>9.0f} ms  {100 * stage['share']:5.1f} %")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tadbot bench turn", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="", help="a running server's URL (default: start one per engine)")
    parser.add_argument("--token", default="", help="a device token for --server")
    parser.add_argument("--repeats", type=int, default=3, help="timed turns per engine (default 3)")
    parser.add_argument("--engine", action="append", choices=ENGINES, help="speech engine (default: both)")
    parser.add_argument("--voice", action="append", choices=VOICES, help="device voice (default: both)")
    parser.add_argument("--model", default="", help="the loopback server's GGUF (default: llm.model_path)")
    parser.add_argument("--config", default="", help="the TOML file of the device (and loopback server)")
    args = parser.parse_args(argv)
    prog = "tadbot bench turn"
    if args.repeats < 1:
        print(f"{prog}: --repeats must be at least 1", file=sys.stderr)
        return 2
    if args.server and (not args.token or len(args.engine or []) != 1):
        print(f"{prog}: --server needs --token and the one --engine that server runs", file=sys.stderr)
        return 2
    options = TurnBenchOptions(
        repeats=args.repeats,
        engines=tuple(args.engine or ENGINES),
        voices=tuple(args.voice or VOICES),
        server=args.server,
        token=args.token,
        model=args.model,
        config=args.config,
    )

    def say(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    try:
        report = run_turn_bench(options, say)
    except DeviceError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 2 if exc.code == "bad_config" else 1
    print_tables(report)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
