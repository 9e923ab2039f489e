"""`tadbot device`: build the settings and components once, then run the conversation.

The daemon is threads joined by queues: the listener (microphone or `--mic-file`, with VAD endpointing)
puts utterances on a queue, the main loop sends each as a turn, the voice thread speaks the reply while it
streams in, and the camera and frame threads keep the latest picture and feed the emotion timeline. They
are stopped in a fixed order: listening first, then the session is ended, then the voice finishes, then the
camera, then the HTTP clients.

Exit codes: 0 done or stopped by SIGTERM, 1 runtime failure (server unreachable for a one-shot turn, a
turn failed), 2 bad usage or config (including a device token the server refuses), 130 interrupted.
Every failure is one line on stderr, so the journal shows the cause at a glance.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from device import notify
from device.backoff import DELAYS_S, Backoff
from device.camera import CameraSource, CameraWatcher, FrameSource, ImageFileSource
from device.client import ServerClient
from device.crisis import load_crisis_fallback
from device.earcons import Earcons
from device.errors import DeviceConfigError, DeviceError
from device.exercises import load_exercises
from device.lines import load_lines
from device.listen import END, Failed, Gate, Heard, Item, Listener, MicPcm, PcmSource, WavPcm
from device.liveness import Beat, Liveness, status_path
from device.playback import Playback
from device.session import Conversation, Utterance
from device.settings import DeviceSettings, load_settings, settings_to_toml
from device.speaker import AloudSpeaker, Speaker, WavDirSpeaker, WavFileSpeaker
from device.states import StateMachine
from device.synth import open_synth
from device.timeline import FramePoster
from device.vad import EndpointConfig, Endpointer
from device.voice import IDLE_DEADLINE_S, Voice
from device.wakeword import WakeGate, WakeWordDetector

_LOGGER = logging.getLogger("device.main")  # not "__main__", which `python -m device` would give

PROG = "tadbot device"

_SLACK_S = 30.0
"""Added to a thread's longest wait on purpose before it counts as hung (device.liveness)."""
_LISTENER_DEADLINE_S = max(DELAYS_S) + _SLACK_S
"""The microphone beats every frame, but one read of a microphone that is away waits up to 30 s to retry."""
_CONVERSATION_REQUESTS = 4
"""The most requests the conversation makes between two beats: open a session, send a turn, send it once
more, end the session; each may wait `request_timeout_s`."""


class _UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so `main` can return 2 with a single line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Talk to the TADBot server: listen, watch, and speak its replies."
    )
    parser.add_argument(
        "--server", metavar="URL", help="server base URL (default from config: [device] server_url)"
    )
    parser.add_argument("--token", metavar="TOKEN", help="device bearer token from `tadbot admin add-device`")
    parser.add_argument("--client", metavar="NAME", help="pseudonym of the person talking")
    said = parser.add_mutually_exclusive_group()
    said.add_argument(
        "--audio-file", metavar="WAV", help="send this WAV as one turn, then exit (default: microphone)"
    )
    said.add_argument("--text", metavar="TEXT", help="send this text as one turn, then exit")
    said.add_argument(
        "--mic-file",
        metavar="WAV",
        help="let this WAV play the microphone: each utterance in it is a turn; exit at its end",
    )
    seen = parser.add_mutually_exclusive_group()
    seen.add_argument(
        "--frame", metavar="IMAGE", help="use this image, or a folder of images, instead of the webcam"
    )
    seen.add_argument(
        "--camera", metavar="INDEX", type=int, help="webcam index (default: [device] camera_index)"
    )
    parser.add_argument(
        "--tts-out",
        metavar="WAV|DIR",
        help="write the spoken replies to this WAV instead of the speaker; with --mic-file, a folder that "
        "gets one numbered WAV per reply",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="TOML config file (default: $TADBOT_CONFIG, /etc/tadbot/...)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective [device] settings and exit"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    return parser


def _one_shot(args: argparse.Namespace) -> list[Utterance] | None:
    """The single turn of `--text` or `--audio-file` (the whole file, not endpointed), else None."""
    if args.text is not None:
        return [Utterance(text=args.text)]
    if args.audio_file is not None:
        from device.wavfile import WavFileSource

        return [Utterance(audio=wav) for wav in WavFileSource(args.audio_file).utterances()]
    return None


def _pcm(args: argparse.Namespace, settings: DeviceSettings, beat: Beat) -> PcmSource:
    if args.mic_file is not None:
        return WavPcm(args.mic_file, realtime=True)
    index = None if settings.mic_index < 0 else settings.mic_index
    return MicPcm(index, device_name=settings.mic_device, beat=beat)


def _endpointer(settings: DeviceSettings) -> Endpointer:
    return Endpointer(
        EndpointConfig(
            pre_roll_s=settings.pre_roll_s,
            end_silence_s=settings.end_silence_s,
            min_speech_s=settings.min_speech_s,
            max_utterance_s=settings.max_utterance_s,
            aggressiveness=settings.vad_aggressiveness,
        )
    )


def _wake_gate(settings: DeviceSettings) -> WakeGate | None:
    """The wake word, when one is set. Its models load here, once: a missing one stops start-up, and a
    listener started again keeps the gate and whether it was awake."""
    if not settings.wake_word:
        return None
    detector = WakeWordDetector(
        settings.wake_word, settings.wake_models_dir, threshold=settings.wake_threshold
    )
    return WakeGate(detector, settings.wake_window_s)


class _Beating:
    """A PCM source that beats for the listener on every frame it reads, so the listener beats while it
    waits for speech, and stops beating when a read blocks in the driver."""

    def __init__(self, source: PcmSource, beat: Beat) -> None:
        self._source = source
        self._beat = beat
        self.live = source.live

    def read(self) -> bytes | None:
        frame = self._source.read()
        self._beat.beat("listening")
        return frame

    def close(self) -> None:
        self._source.close()


class _Listening:
    """The listener thread and its queue, seen by the conversation as utterances with idle ticks between.

    A listener that crashes, or hangs (`restart`, from device.liveness), is started again; the
    microphone's own failures it already rides out.
    """

    def __init__(self, make: Callable[[queue.Queue[Item]], Listener], beat: Beat) -> None:
        self._make = make
        self._beat = beat
        self._lock = threading.Lock()
        self._queue: queue.Queue[Item] = queue.Queue()
        self._listener = make(self._queue)
        self._listener.start()

    def utterances(self) -> Iterator[Utterance | None]:
        """Utterances as they are heard, None each idle second; closing it stops the listener first."""
        try:
            while True:
                listened = self._queue
                try:
                    item = listened.get(timeout=1.0)
                except queue.Empty:
                    yield None
                    continue
                if listened is not self._queue:
                    continue  # from a listener replaced as hung
                if item is END:
                    return
                if isinstance(item, Failed):
                    _LOGGER.error("the listener failed (%s); starting it again", item.exc)
                    time.sleep(1.0)
                    self.restart()
                    continue
                assert isinstance(item, Heard)
                _LOGGER.info("heard %.1f s of speech", item.speech_s)
                yield Utterance(audio=item.wav, heard_at=item.started)
        finally:
            self.stop()

    def restart(self) -> None:
        """Replace the listener with a new one on a queue of its own, so nothing the old one puts later
        (END, once a stuck read returns) is taken for the new one's. The old one is stopped from a
        throwaway thread: closing a microphone stuck in a read can block as long as the read."""
        with self._lock:
            old, self._queue = self._listener, queue.Queue()
            threading.Thread(target=old.stop, name="listener-stop", daemon=True).start()
            self._listener = self._make(self._queue)
            self._listener.start()

    def stop(self) -> None:
        self._beat.done()
        with self._lock:
            listener = self._listener
        listener.stop()
        listener.join(5.0)


def _frames(args: argparse.Namespace, settings: DeviceSettings, live: Liveness) -> FrameSource | None:
    if args.frame is not None:
        return ImageFileSource(args.frame)
    if settings.camera_index < 0:
        return None
    camera = CameraSource(settings.camera_index)
    beat = live.register("camera", _SLACK_S)
    return CameraWatcher(camera, fps=settings.camera_fps, reopen=camera.reopen, beat=beat)


def _speaker(args: argparse.Namespace, settings: DeviceSettings) -> Speaker:
    synth, _ = open_synth(settings)
    try:
        if args.tts_out is None:
            return AloudSpeaker(synth, Playback(settings.speaker_device))
        if args.mic_file is not None or Path(args.tts_out).is_dir():
            return WavDirSpeaker(args.tts_out, synth)
        return WavFileSpeaker(args.tts_out, synth)
    except Exception:
        synth.close()
        raise


def _earcons(speaker: Speaker, settings: DeviceSettings) -> Earcons | None:
    """The chimes play through the speaker's own output; speech written to files gets none."""
    if not settings.earcons or not isinstance(speaker, AloudSpeaker):
        return None
    return Earcons(speaker.output)


def _on_speech_start(conversation: Conversation, voice: Voice, barge_in: bool) -> Callable[[], None]:
    """The person started talking: the state shows it, and with barge-in, a device speaking stops."""

    def started() -> None:
        conversation.heard_start()
        if barge_in and voice.busy:
            voice.interrupt()

    return started


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


class _Terminated(BaseException):
    """SIGTERM (systemd stopping the unit) turned into an exception, so the session is still ended cleanly.

    A BaseException, as KeyboardInterrupt is: an `except Exception` on the way (a voice that will not load, a
    driver fault) must not take the stop for an error and carry on."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Stop whatever the main thread is doing; a second SIGTERM must not cut the clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated


def _run(args: argparse.Namespace, settings: DeviceSettings) -> int:
    if not settings.token:
        raise DeviceConfigError(
            "no device token: pass --token, or set [device] token or TADBOT_DEVICE__TOKEN"
        )
    lines, exercises, crisis = load_lines(), load_exercises(), load_crisis_fallback(settings.locale)
    one_shot = _one_shot(args)  # read before anything opens, so a bad file fails first
    wake = None if one_shot is not None else _wake_gate(settings)
    live = Liveness(status_path())  # its supervisor, which feeds systemd's watchdog, runs in the daemon only
    with contextlib.ExitStack() as stack:  # closed in reverse: clients, camera, speaker, voice
        client = ServerClient(
            settings.server_url, settings.token, settings.request_timeout_s, settings.ca_file
        )
        stack.callback(client.close)
        frames = _frames(args, settings, live)
        if frames is not None:
            stack.callback(frames.close)
        speaker = _speaker(args, settings)
        stack.callback(speaker.close)
        gate = Gate(barge_in=settings.barge_in)
        voice = Voice(
            speaker,
            beat=live.register("voice", IDLE_DEADLINE_S, restart=lambda: voice.restart()),
            earcons=_earcons(speaker, settings),
        )
        stack.callback(voice.close)
        deadline_s = _CONVERSATION_REQUESTS * settings.request_timeout_s + _SLACK_S
        beat = live.register("conversation", deadline_s)
        conversation = Conversation(
            client,
            voice,
            frames,
            lines=lines,
            exercises=exercises,
            crisis=crisis,
            backoff=None if one_shot else Backoff(),
            states=StateMachine(None if one_shot else gate, tail_s=settings.mute_tail_s),
            think_ack_s=settings.think_ack_s,
            idle_end_s=0.0 if one_shot else settings.idle_end_s,
            heartbeat=lambda: beat.beat(conversation.states.state),
            ready=None if one_shot else notify.ready,
        )
        if one_shot is not None:
            failed = conversation.run(settings.client, one_shot)
        else:
            if frames is not None and settings.frame_interval_s > 0:
                poster = FramePoster(
                    ServerClient(
                        settings.server_url, settings.token, settings.request_timeout_s, settings.ca_file
                    ),
                    frames,
                    lambda: conversation.session_id,
                    lambda: conversation.in_turn,
                    settings.frame_interval_s,
                    live.register(
                        "frames", settings.frame_interval_s + settings.request_timeout_s + _SLACK_S
                    ),
                )
                stack.callback(poster.close)
            heard = live.register("listener", _LISTENER_DEADLINE_S, restart=lambda: listening.restart())
            listening = _Listening(
                lambda out: Listener(
                    _Beating(_pcm(args, settings, heard), heard),
                    _endpointer(settings),
                    gate,
                    out,
                    on_speech_start=_on_speech_start(conversation, voice, settings.barge_in),
                    on_speech_end=conversation.heard_end,
                    calibrate_s=settings.mic_calibration_s,
                    wake=wake,
                ),
                heard,
            )
            live.start()
            stack.callback(live.close)  # first to close: the threads it watches stop after it
            try:
                failed = conversation.run(settings.client, listening.utterances())
            finally:
                listening.stop()
                notify.stopping()
    if failed and one_shot is not None:
        return _fail(f"{failed} turn(s) failed; see the lines above", 1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m device` and for `tadbot device ARGS`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{exc} (see `{PROG} --help`)", 2)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides = {
        "server_url": args.server,
        "token": args.token,
        "client": args.client,
        "camera_index": args.camera,
    }
    previous = signal.signal(signal.SIGTERM, _on_sigterm)  # `tadbot device|run` run this in its own process
    try:
        settings = load_settings(args.config, overrides=overrides)
        if args.print_config:
            print(settings_to_toml(settings), end="")
            return 0
        return _run(args, settings)
    except DeviceConfigError as exc:
        return _fail(exc.message, 2)
    except DeviceError as exc:
        return _fail(exc.message, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except _Terminated:
        _LOGGER.info("stopped by SIGTERM")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
