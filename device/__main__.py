"""`tadbot device`: build the settings and components once, then run one conversation.

Exit codes: 0 done or stopped by SIGTERM, 1 runtime failure (server unreachable for a one-shot turn, a
turn failed), 2 bad usage or config (including a device token the server refuses), 130 interrupted.
Every failure is one line on stderr, so the journal shows the cause at a glance.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import NoReturn

from device.audio import AudioSource
from device.backoff import Backoff
from device.camera import CameraSource, FrameSource, ImageFileSource
from device.client import ServerClient
from device.errors import DeviceConfigError, DeviceError
from device.lines import load_lines
from device.session import Conversation, Utterance
from device.settings import DeviceSettings, load_settings, settings_to_toml
from device.speaker import Pyttsx3Speaker, Speaker, WavFileSpeaker

_LOGGER = logging.getLogger(__name__)

PROG = "tadbot device"


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
    seen = parser.add_mutually_exclusive_group()
    seen.add_argument(
        "--frame", metavar="IMAGE", help="use this image, or a folder of images, instead of the webcam"
    )
    seen.add_argument(
        "--camera", metavar="INDEX", type=int, help="webcam index (default: [device] camera_index)"
    )
    parser.add_argument(
        "--tts-out", metavar="WAV", help="write the spoken replies to this WAV instead of the speaker"
    )
    parser.add_argument(
        "--config", metavar="PATH", help="TOML config file (default: $TADBOT_CONFIG, /etc/tadbot/...)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective [device] settings and exit"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    return parser


def _utterances(args: argparse.Namespace, settings: DeviceSettings) -> Iterator[Utterance]:
    """The person's side: one typed or recorded turn, or the microphone until stopped.

    The source is built here, before the session opens, so a bad file or a missing PyAudio fails first.
    """
    if args.text is not None:
        return iter([Utterance(text=args.text)])
    source: AudioSource
    if args.audio_file is not None:
        from device.wavfile import WavFileSource

        source = WavFileSource(args.audio_file)
    else:
        from device.mic import MicrophoneSource

        source = MicrophoneSource(
            None if settings.mic_index < 0 else settings.mic_index,
            calibration_s=settings.mic_calibration_s,
            max_utterance_s=settings.max_utterance_s,
        )
    return _heard(source)


def _heard(source: AudioSource) -> Iterator[Utterance]:
    """Each utterance `source` hears; closing this closes the source's generator, and the microphone."""
    with contextlib.closing(source.utterances()) as wavs:
        for wav in wavs:
            yield Utterance(audio=wav)


def _frames(args: argparse.Namespace, settings: DeviceSettings) -> FrameSource | None:
    if args.frame is not None:
        return ImageFileSource(args.frame)
    if settings.camera_index < 0:
        return None
    return CameraSource(settings.camera_index)


def _speaker(args: argparse.Namespace, settings: DeviceSettings) -> Speaker:
    if args.tts_out is not None:
        return WavFileSpeaker(
            args.tts_out, settings.tts_voice, settings.tts_rate, settings.tts_volume, settings.language
        )
    return Pyttsx3Speaker(settings.tts_voice, settings.tts_rate, settings.tts_volume, settings.language)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


class _Terminated(Exception):
    """SIGTERM (systemd stopping the unit) turned into an exception, so the session is still ended cleanly."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Stop whatever the main thread is doing; a second SIGTERM must not cut the clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated


def _run(args: argparse.Namespace, settings: DeviceSettings) -> int:
    if not settings.token:
        raise DeviceConfigError(
            "no device token: pass --token, or set [device] token or TADBOT_DEVICE__TOKEN"
        )
    one_shot = args.text is not None or args.audio_file is not None
    lines = load_lines()
    with contextlib.ExitStack() as stack:  # closed in reverse: client, speaker (writes --tts-out), camera
        utterances = _utterances(args, settings)  # not started yet: the conversation closes it
        frames = _frames(args, settings)
        if frames is not None:
            stack.callback(frames.close)
        speaker = _speaker(args, settings)
        stack.callback(speaker.close)
        client = ServerClient(settings.server_url, settings.token, settings.request_timeout_s)
        stack.callback(client.close)
        # The daemon waits for a server that is not up yet; a one-shot turn reports it and exits 1.
        conversation = Conversation(
            client, speaker, frames, lines=lines, backoff=None if one_shot else Backoff()
        )
        failed = conversation.run(settings.client, utterances)
    if failed:
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
