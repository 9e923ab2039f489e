"""The `tadbot` command line as a user meets it: tokens on the last line, one-line errors, masked secrets."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import ClassVar

import pytest

from tests.conftest import ROOT, tadbot


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "tadbot.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n[device]\ntoken = "tdb_secret"\n', "utf-8"
    )
    return {**os.environ, "TADBOT_CONFIG": str(config), "TADBOT_MODELS_DIR": str(tmp_path / "models")}


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("action", ["add-device", "add-therapist"])
def test_admin_prints_the_token_alone_on_the_last_line(env: dict[str, str], action: str) -> None:
    done = tadbot("admin", action, "someone", env=env)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"tdb_[A-Za-z0-9_-]{43}", done.stdout.splitlines()[-1])
    again = tadbot("admin", action, "someone", env=env)
    assert again.returncode == 1
    assert "already exists" in _one_line_error(again.stderr)


def test_config_show_masks_secrets(env: dict[str, str]) -> None:
    done = tadbot("config", "show", env=env)
    assert done.returncode == 0, done.stderr
    assert "tdb_secret" not in done.stdout
    assert 'token = "********"' in done.stdout
    assert "[server]" in done.stdout and "[device]" in done.stdout and "port = 8710" in done.stdout


def test_a_bad_config_value_stops_serve_with_one_line(env: dict[str, str], tmp_path: Path) -> None:
    Path(env["TADBOT_CONFIG"]).write_text('[llm]\nbackend = "magic"\n', "utf-8")
    done = tadbot("serve", env=env, timeout=60)
    assert done.returncode == 2
    line = _one_line_error(done.stderr)
    assert "llm.backend = 'magic'" in line and "llama_cpp, openai" in line


def test_an_unavailable_stt_engine_stops_the_server(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Path(env["TADBOT_CONFIG"]).write_text(
        f'[server]\nport = {port}\ndata_dir = "{tmp_path / "data"}"\n[stt]\nengine = "vosk"\n', "utf-8"
    )
    done = tadbot("serve", env=env, timeout=120)
    assert done.returncode == 2
    line = _one_line_error(done.stderr)
    assert "stt.engine = 'vosk'" in line and "faster_whisper, sphinx" in line


def test_models_pull_offline_names_file_url_and_key(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    models = Path(env["TADBOT_MODELS_DIR"])
    models.mkdir()
    url = f"http://127.0.0.1:{port}/fer.onnx"
    (models / "catalogue.toml").write_text(
        f"""
[[models]]
name = "test-fer"
role = "fer"
default = true
description = "a test entry"
license = "MIT"
config_key = "fer.model_path"

[[models.files]]
url = "{url}"
sha256 = "{"0" * 64}"
size = 10
dest = "fer.onnx"
""",
        "utf-8",
    )
    done = tadbot("models", "pull", env=env)
    assert done.returncode == 1
    line = _one_line_error(done.stderr)
    assert url in line and "fer.model_path" in line and str(models / "fer.onnx") in line
    listed = tadbot("models", "list", env=env)
    assert listed.returncode == 0 and "test-fer" in listed.stdout
    verified = tadbot("models", "verify", env=env)
    assert verified.returncode == 1 and "missing" in verified.stdout


def test_a_missing_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import extras
    from server.cli import main as cli

    monkeypatch.setitem(extras.EXTRAS, "device", ("numpy", "no_such_module_for_tadbot"))
    assert cli.main(["device", "--help"]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "no_such_module_for_tadbot" in line and "pip install 'tadbot[device]'" in line
    assert "numpy" not in line


def test_doctor_runs_the_device_checks_and_fails_without_a_server(env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: connections are refused
        server = f"http://127.0.0.1:{closed}"
        done = tadbot("doctor", "--no-sound", "--json", "--server", server, "--token", "t", env=env)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["server"]["ok"] is False and "Connection refused" in checks["server"]["detail"]
    assert checks["disk"]["ok"] is True
    assert "✗ server" in done.stdout or "x server" in done.stdout


def _doctor_server_side(env: dict[str, str]) -> tuple[int, dict[str, dict[str, object]], list[str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        server = f"http://127.0.0.1:{s.getsockname()[1]}"  # refused: the server checks fail alike
        done = tadbot("doctor", "--role", "server", "--json", "--server", server, env=env, timeout=300)
    assert "Traceback" not in done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return done.returncode, {c["name"]: c for c in report["checks"]}, [c["name"] for c in report["checks"]]


def test_doctor_reports_the_crisis_second_opinion(env: dict[str, str], model_dir: Path) -> None:
    """The nearest labelled examples, with their embedder loaded apart from the memory, as the server does."""
    code, checks, order = _doctor_server_side(env)
    assert order[:2] == ["llm", "second_opinion"], "the server-side checks come first"
    second = checks["second_opinion"]
    shipped = ROOT / "server" / "data" / "crisis_examples.csv"
    examples = len(shipped.read_text(encoding="utf-8").strip().splitlines()) - 2  # less version, header
    assert (second["state"], second["required"]) == ("pass", True)
    assert second["detail"] == f"all-MiniLM-L6-v2 from {model_dir}, {examples} labelled examples"
    assert code == 1, "the server is not running, so the models check fails"


def test_doctor_says_when_the_rules_alone_decide(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no-embedder"
    code, checks, _ = _doctor_server_side({**env, "TADBOT_MEMORY__EMBEDDER_PATH": str(missing)})
    second = checks["second_opinion"]
    assert (second["state"], second["ok"]) == ("fail", False)
    assert second["detail"] == (
        f"The embedder directory {missing} does not exist; fix memory.embedder_path or set it to '' to use "
        "the installed default; the rules alone decide"
    )
    assert code == 1


class _FakeChild:
    """Stands in for the server and device processes `tadbot run` starts, recording how each was started."""

    started: ClassVar[list[tuple[list[str], dict[str, str]]]] = []

    def __init__(self, args: list[str], env: dict[str, str] | None = None, **_: object) -> None:
        self.started.append((list(args), dict(os.environ if env is None else env)))
        self.returncode = 0

    def __enter__(self) -> _FakeChild:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def poll(self) -> int | None:
        return None

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def terminate(self) -> None:
        return None


def test_run_hands_the_device_its_token_in_the_environment_never_argv(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli import main as cli
    from server.cli import run

    monkeypatch.setattr(run, "require", lambda extra: None)
    monkeypatch.setattr(run, "_wait_healthy", lambda url, server, timeout_s: None)
    monkeypatch.setattr(run.subprocess, "Popen", _FakeChild)
    monkeypatch.setattr(_FakeChild, "started", [])
    assert cli.main(["--config", env["TADBOT_CONFIG"], "run", "--port", "8799"]) == 0
    (server_argv, _), (device_argv, device_env) = _FakeChild.started
    assert device_argv[1:3] == ["-m", "device"] and server_argv[1:3] == ["-m", "server"]
    token = device_env["TADBOT_DEVICE__TOKEN"]
    assert re.fullmatch(r"tdb_[A-Za-z0-9_-]{43}", token)
    assert "--token" not in device_argv and not any(token in arg for arg in device_argv + server_argv)
