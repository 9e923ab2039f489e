"""HTTPS: server.certfile and server.keyfile are checked at start-up, and gunicorn then serves https only."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from server.cli.run import _wait_healthy
from server.config import describe, load_settings
from server.errors import ConfigError
from server.notify import HealthWatchdog
from tests.conftest import free_port, tadbot, write_config


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made as the README says, valid for a day."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("tls")
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        *("-keyout", "key.pem", "-out", "cert.pem"),
        cwd=root,
    )
    return root / "cert.pem", root / "key.pem"


def _config(tmp_path: Path, server_lines: str) -> Path:
    path = tmp_path / "tadbot.toml"
    path.write_text(f"[server]\n{server_lines}\n", encoding="utf-8")
    return path


def test_plain_http_is_the_default_and_config_show_prints_both_paths(
    tmp_path: Path, tls_pair: tuple[Path, Path]
) -> None:
    plain = load_settings(_config(tmp_path, ""), env={})
    assert (plain.server.certfile, plain.server.keyfile, plain.server.scheme) == ("", "", "http")
    cert, key = tls_pair
    env = {"TADBOT_SERVER__CERTFILE": str(cert), "TADBOT_SERVER__KEYFILE": str(key)}
    settings = load_settings(_config(tmp_path, ""), env=env)
    assert settings.server.scheme == "https"
    shown = describe(settings)
    assert f'certfile = "{cert}"' in shown
    assert f'keyfile = "{key}"' in shown


def test_the_health_probes_use_https_with_a_certificate() -> None:
    assert HealthWatchdog("0.0.0.0", 8710, scheme="https").url == "https://127.0.0.1:8710/api/v1/health"
    assert HealthWatchdog("127.0.0.1", 8710).url == "http://127.0.0.1:8710/api/v1/health"


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ('certfile = "{cert}"', "server.keyfile is empty but server.certfile is set"),
        ('keyfile = "{key}"', "server.certfile is empty but server.keyfile is set"),
        ('certfile = "{cert}"\nkeyfile = "{missing}"', "server.keyfile = '{missing}': no such file"),
        ('certfile = "{missing}"\nkeyfile = "{key}"', "server.certfile = '{missing}': no such file"),
        ('certfile = "{key}"\nkeyfile = "{key}"', "server.certfile = '{key}': not a PEM certificate"),
        ('certfile = "{cert}"\nkeyfile = "{cert}"', "server.keyfile = '{cert}': not an unencrypted PEM"),
    ],
)
def test_a_bad_pair_stops_start_up_naming_the_key(
    tmp_path: Path, tls_pair: tuple[Path, Path], lines: str, named: str
) -> None:
    cert, key = tls_pair
    paths = {"cert": cert, "key": key, "missing": tmp_path / "absent.pem"}
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, lines.format(**paths)), env={})
    assert named.format(**paths) in caught.value.message
    assert "\n" not in caught.value.message


def test_an_encrypted_key_is_refused_rather_than_asked_for(
    tmp_path: Path, tls_pair: tuple[Path, Path]
) -> None:
    cert, key = tls_pair
    locked = tmp_path / "locked.pem"
    _openssl("pkey", "-in", str(key), "-aes256", "-passout", "pass:s3cret", "-out", str(locked), cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"server\.keyfile = .*: not an unencrypted PEM private key"):
        load_settings(_config(tmp_path, f'certfile = "{cert}"\nkeyfile = "{locked}"'), env={})


@pytest.mark.parametrize(
    ("env_keys", "named"),
    [
        (("CERTFILE",), "server.keyfile"),
        (("CERTFILE", "KEYFILE"), "server.keyfile = "),
    ],
)
def test_tadbot_serve_exits_with_one_line_naming_the_key(
    tmp_path: Path, tls_pair: tuple[Path, Path], env_keys: tuple[str, ...], named: str
) -> None:
    cert, _key = tls_pair
    values = {"CERTFILE": str(cert), "KEYFILE": str(tmp_path / "absent.pem")}
    env = {**os.environ, "TADBOT_CONFIG": str(_config(tmp_path, f'data_dir = "{tmp_path / "data"}"'))}
    env |= {f"TADBOT_SERVER__{key}": values[key] for key in env_keys}
    done = tadbot("serve", env=env, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr


def _wait_ready(systemd: socket.socket, process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            return systemd.recv(4096).decode()
        except TimeoutError:
            continue
    pytest.fail("the server did not say it was ready:\n" + log.read_text(errors="replace"))


def test_the_server_answers_https_only(tmp_path: Path, tls_pair: tuple[Path, Path]) -> None:
    """One real start under gunicorn. READY=1 comes from the watchdog's own probe, so it also proves that
    probe speaks https to a self-signed certificate."""
    cert, key = tls_pair
    port = free_port()
    config = write_config(
        tmp_path / "tadbot.toml",
        data_dir=tmp_path / "data",
        port=port,
        llm=tmp_path / "absent.gguf",  # models play no part here; without them the server starts sooner
        fer=tmp_path / "absent.onnx",
    )
    env = {
        **os.environ,
        "TADBOT_CONFIG": str(config),
        "TADBOT_SERVER__CERTFILE": str(cert),
        "TADBOT_SERVER__KEYFILE": str(key),
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    log_path = tmp_path / "server.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd, log_path.open("wb") as log:
        systemd.bind(env["NOTIFY_SOCKET"])
        systemd.settimeout(1)
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            assert _wait_ready(systemd, process, log_path) == "READY=1\nSTATUS=serving"
            _wait_healthy(f"https://127.0.0.1:{port}", process, timeout_s=10)  # as `tadbot run` waits
            answer = requests.get(f"https://127.0.0.1:{port}/api/v1/health", verify=str(cert), timeout=10)
            assert answer.status_code == 200
            assert answer.json()["status"] in ("ok", "degraded")
            with pytest.raises(requests.exceptions.SSLError):  # not a certificate anyone vouches for
                requests.get(f"https://127.0.0.1:{port}/api/v1/health", timeout=10)
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=10)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
