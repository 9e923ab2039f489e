"""Shared fixtures: the real things, built small. Nothing here downloads anything."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FACES = SHARED_DATA / "faces-dev"
FACE_PHOTOS = ROOT / "tests" / "data" / "faces"
"""Two public-domain portraits shipped with the tests (see the README there): every clone has them."""
SPEECH = ROOT / "tests" / "data" / "speech"
"""jfk.wav, real human speech in the public domain, listed in index.csv (see the README there)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The privacy proof scans what every other test left behind, so it runs last."""
    items.sort(key=lambda item: item.path.name == "test_privacy_scan.py")


def pytest_unconfigure(config: pytest.Config) -> None:
    """llama_cpp opens two /dev/null handles at import and never closes them; with warnings as errors they
    would be reported after the summary at interpreter exit."""
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_gguf import build_tiny_gemma2_gguf

    return build_tiny_gemma2_gguf(tmp_path_factory.mktemp("gguf") / "llm.gguf")


@pytest.fixture(scope="session")
def tiny_fer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_onnx import build_tiny_fer_onnx

    return build_tiny_fer_onnx(tmp_path_factory.mktemp("fer") / "fer.onnx")


@pytest.fixture(scope="session")
def face_jpeg() -> Path:
    """A real face photo, one face, shipped in tests/data/faces."""
    return FACE_PHOTOS / "grace_hopper.jpg"


@pytest.fixture(scope="session")
def spoken_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """device/spoken_set.toml said in Piper's and espeak-ng's voices by `tadbot bench spoken`."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("spoken")
    config = root / "tadbot.toml"
    config.write_text("", encoding="utf-8")
    env = {**os.environ, "TADBOT_CONFIG": str(config)}
    done = tadbot("bench", "spoken", "--out", str(root / "set"), env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return root / "set"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tadbot(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class LiveServer:
    url: str
    device_token: str
    therapist_token: str
    data_dir: Path
    tmp_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def device_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.device_token}"}

    def therapist_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.therapist_token}"}

    def enroll(self, *clients: str) -> None:
        """Enrol the test device for these clients and assign them to the test therapist, as admins do."""
        from server.access.policy import Access
        from server.records.store import Records

        access = Access(Records(self.data_dir / "tadbot.sqlite3"))
        access.enroll("test-pi", list(clients), actor="test")
        access.assign("dr-test", list(clients), actor="test")

    def start_session(self, client: str) -> dict[str, str]:
        self.enroll(client)
        answer = requests.post(
            f"{self.url}/api/v1/sessions", headers=self.device_headers(), json={"client": client}, timeout=30
        )
        assert answer.status_code == 201, answer.text
        started: dict[str, str] = answer.json()
        return started


def write_config(path: Path, *, data_dir: Path, port: int, llm: Path | str, fer: Path | str) -> Path:
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir}"
max_upload_mb = 20

[llm]
model_path = "{llm}"
n_ctx = 2048
n_threads = 2
max_tokens = 24
seed = 7

[fer]
model_path = "{fer}"
""",
        encoding="utf-8",
    )
    return path


def start_server(root: Path, *, llm: Path | str, fer: Path | str) -> LiveServer:
    """`tadbot serve` as a subprocess under gunicorn on a free loopback port, with fresh credentials."""
    data_dir, tmp_dir = root / "data", root / "tmp"
    tmp_dir.mkdir(parents=True)
    port = free_port()
    config = write_config(root / "tadbot.toml", data_dir=data_dir, port=port, llm=llm, fer=fer)
    # TMPDIR is the server's own, so a test can prove nothing was spooled there.
    env = {**os.environ, "TADBOT_CONFIG": str(config), "TMPDIR": str(tmp_dir), "PYTHONUNBUFFERED": "1"}
    tokens = []
    for action, name in (("add-device", "test-pi"), ("add-therapist", "dr-test")):
        done = tadbot("admin", action, name, env=env)
        assert done.returncode == 0, done.stderr
        tokens.append(done.stdout.strip().splitlines()[-1])
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    server = LiveServer(
        f"http://127.0.0.1:{port}", tokens[0], tokens[1], data_dir, tmp_dir, env, process, log
    )
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            pytest.fail("the server did not start:\n" + (root / "server.log").read_text())
        try:
            requests.get(f"{server.url}/api/v1/health", timeout=2)
            return server
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.3)


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
    server.log.close()


@pytest.fixture(scope="module")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, tiny_fer: Path
) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("live"), llm=tiny_gguf, fer=tiny_fer)
    yield server
    stop_server(server)
