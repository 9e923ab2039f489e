"""`tadbot models pull|verify|list` against a real HTTP server on 127.0.0.1, and the shipped catalogue."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from server.errors import ModelError
from server.face.manifest import load_manifest
from server.models.catalogue import list_models, load_catalogue
from server.models.pull import VerifyState, pull, verify

REPO = Path(__file__).resolve().parents[2]
BLOB = bytes(range(256)) * 4000 + b"tail"  # ~1 MB: several read chunks
SMALL = b'{"hidden_size": 384}\n'
MANIFEST = {"labels": ["calm", "tense"], "input_size": [8, 8]}


@dataclass
class FileServer:
    """Serves `files` by path; honours Range with 206 unless `ignore_range`; `/moved/<path>` redirects to
    `<path>` like the Hugging Face CDN; `cut_at` drops the connection mid-body. Records every request."""

    files: dict[str, bytes]
    ignore_range: bool = False
    cut_at: int | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            if self.path.startswith("/moved/"):
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/moved"))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            start = int(match.group(1)) if match and not state.ignore_range else 0
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if state.cut_at is None:
                self.wfile.write(body[start:])
            else:  # promise the whole body, send part of it, hang up
                self.wfile.write(body[start : state.cut_at])
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer({"/weights.bin": BLOB, "/cfg/config.json": SMALL})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _catalogue(
    tmp_path: Path, url: str, *, sha: str | None = None, small_url: str = "", small_sha: str | None = None
) -> Path:
    """A catalogue with one model: a weights file (+ optional second file) and a manifest."""
    (tmp_path / "manifests").mkdir(exist_ok=True)
    (tmp_path / "manifests" / "tiny.json").write_text(json.dumps(MANIFEST))
    text = f'''
[[models]]
name = "tiny-fer"
role = "fer"
default = true
description = "test model"
license = "Apache-2.0"
config_key = "fer.model_path"
manifest = {{ source = "manifests/tiny.json", dest = "fer.json" }}

[[models.files]]
url = "{url}"
sha256 = "{_sha(BLOB) if sha is None else sha}"
size = {len(BLOB)}
dest = "fer.onnx"
'''
    if small_url:
        text += f'''
[[models.files]]
url = "{small_url}"
sha256 = "{_sha(SMALL) if small_sha is None else small_sha}"
size = {len(SMALL)}
dest = "sub/config.json"
'''
    path = tmp_path / "catalogue.toml"
    path.write_text(text)
    return path


def test_fresh_pull_then_second_pull_makes_no_request(server: FileServer, tmp_path: Path) -> None:
    cat = load_catalogue(
        _catalogue(tmp_path, server.url("/weights.bin"), small_url=server.url("/cfg/config.json"))
    )
    root = tmp_path / "models"

    first = pull(cat, root, progress=False, timeout=5)

    assert [r.status for r in first] == ["downloaded", "downloaded", "copied"]
    assert (root / "fer.onnx").read_bytes() == BLOB
    assert (root / "sub" / "config.json").read_bytes() == SMALL
    assert json.loads((root / "fer.json").read_text()) == MANIFEST
    assert not list(root.rglob("*.part"))
    assert len(server.requests) == 2

    second = pull(cat, root, progress=False, timeout=5)

    assert [r.status for r in second] == ["present", "present", "present"]
    assert len(server.requests) == 2


def test_resume_sends_range_and_completes_the_part(server: FileServer, tmp_path: Path) -> None:
    cat = load_catalogue(_catalogue(tmp_path, server.url("/weights.bin")))
    root = tmp_path / "models"
    root.mkdir()
    half = len(BLOB) // 2
    (root / "fer.onnx.part").write_bytes(BLOB[:half])

    result = pull(cat, root, progress=True, timeout=5)[0]

    assert server.requests == [("/weights.bin", f"bytes={half}-")]
    assert (result.status, result.fetched) == ("resumed", len(BLOB) - half)
    assert (root / "fer.onnx").read_bytes() == BLOB
    assert not (root / "fer.onnx.part").exists()


def test_dropped_connection_keeps_the_part_and_the_next_pull_resumes(
    server: FileServer, tmp_path: Path
) -> None:
    cat = load_catalogue(_catalogue(tmp_path, server.url("/moved/weights.bin")))
    root = tmp_path / "models"
    server.cut_at = 300_000

    with pytest.raises(ModelError) as err:
        pull(cat, root, progress=False, timeout=5)

    assert err.value.code == "download_failed"
    assert (root / "fer.onnx.part").stat().st_size == 300_000
    assert not (root / "fer.onnx").exists()

    server.cut_at = None
    result = pull(cat, root, progress=False, timeout=5)[0]

    assert server.requests[-2:] == [
        ("/moved/weights.bin", "bytes=300000-"),
        ("/weights.bin", "bytes=300000-"),
    ]
    assert result.status == "resumed"
    assert (root / "fer.onnx").read_bytes() == BLOB


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    server.ignore_range = True
    cat = load_catalogue(_catalogue(tmp_path, server.url("/weights.bin")))
    root = tmp_path / "models"
    root.mkdir()
    (root / "fer.onnx.part").write_bytes(b"stale bytes from an older revision")

    result = pull(cat, root, progress=False, timeout=5)[0]

    assert server.requests[0][1] is not None  # a Range was asked for, and ignored
    assert (result.status, result.fetched) == ("downloaded", len(BLOB))
    assert (root / "fer.onnx").read_bytes() == BLOB


def test_checksum_mismatch_leaves_nothing_behind(server: FileServer, tmp_path: Path) -> None:
    cat = load_catalogue(_catalogue(tmp_path, server.url("/weights.bin"), sha=_sha(b"another file")))
    root = tmp_path / "models"

    with pytest.raises(ModelError) as err:
        pull(cat, root, progress=False, timeout=5)

    assert err.value.code == "checksum_mismatch"
    assert "fer.model_path" in err.value.message
    assert not (root / "fer.onnx").exists()
    assert not (root / "fer.onnx.part").exists()


def test_unreachable_server_names_url_file_and_config_key(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/weights.bin"
    cat = load_catalogue(_catalogue(tmp_path, url))

    with pytest.raises(ModelError) as err:
        pull(cat, tmp_path / "models", progress=False, timeout=5)

    assert err.value.code == "download_failed"
    assert url in err.value.message and "fer.onnx" in err.value.message
    assert "fer.model_path" in err.value.message
    assert "\n" not in err.value.message


def test_http_error_is_download_failed(server: FileServer, tmp_path: Path) -> None:
    cat = load_catalogue(_catalogue(tmp_path, server.url("/gone.bin")))

    with pytest.raises(ModelError) as err:
        pull(cat, tmp_path / "models", progress=False, timeout=5)

    assert err.value.code == "download_failed"
    assert "HTTP 404" in err.value.message


def test_verify_states(server: FileServer, tmp_path: Path) -> None:
    cat = load_catalogue(
        _catalogue(
            tmp_path, server.url("/weights.bin"), small_url=server.url("/cfg/config.json"), small_sha=""
        )
    )
    root = tmp_path / "models"

    assert [r.state for r in verify(cat, root)] == [VerifyState.MISSING] * 3
    assert [row.present for row in list_models(cat, root)] == [False]

    pull(cat, root, progress=False, timeout=5)
    assert [r.state for r in verify(cat, root)] == [VerifyState.OK, VerifyState.NO_CHECKSUM, VerifyState.OK]
    assert [row.present for row in list_models(cat, root)] == [True]

    (root / "fer.onnx").write_bytes(bytes(len(BLOB)))  # right size, wrong content
    (root / "fer.json").write_text("{}")
    states = [r.state for r in verify(cat, root)]
    assert states == [VerifyState.BAD_CHECKSUM, VerifyState.NO_CHECKSUM, VerifyState.BAD_CHECKSUM]

    (root / "fer.onnx").unlink()
    (root / "fer.onnx.part").write_bytes(BLOB[:10])
    first = verify(cat, root)[0]
    assert first.state is VerifyState.MISSING and "partial" in first.detail


def test_bad_catalogue_names_file_and_entry(tmp_path: Path) -> None:
    path = _catalogue(tmp_path, "http://127.0.0.1:9/weights.bin", sha="not-hex")

    with pytest.raises(ModelError) as err:
        load_catalogue(path)

    assert err.value.code == "bad_catalogue"
    assert str(path) in err.value.message and "tiny-fer" in err.value.message


def test_unknown_role_is_refused(tmp_path: Path) -> None:
    cat = load_catalogue(_catalogue(tmp_path, "http://127.0.0.1:9/weights.bin"))

    with pytest.raises(ModelError) as err:
        pull(cat, tmp_path / "models", ["tts"], progress=False)

    assert err.value.code == "unknown_model"


def test_default_lookup_prefers_the_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _catalogue(tmp_path, "http://127.0.0.1:9/weights.bin")
    monkeypatch.setenv("TADBOT_MODELS_DIR", str(tmp_path))

    assert load_catalogue().path == tmp_path / "catalogue.toml"


def test_shipped_catalogue_is_complete() -> None:
    cat = load_catalogue(REPO / "models" / "catalogue.toml")

    assert {e.role for e in cat.select()} >= {"llm", "fer", "face_detector", "embedder"}
    for entry in cat.entries:
        assert entry.license and entry.config_key, entry.name
        for f in entry.files:
            assert f.url.startswith("https://"), f
            assert f.dest and not f.dest.startswith("/"), f
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) or f.sha256 == "", f
    fer = next(e for e in cat.select(["fer"]))
    assert fer.manifest is not None and fer.manifest.dest == "fer.json"
    manifest = json.loads(fer.manifest.source.read_text())
    keys = {"labels", "input_size", "color", "layout", "normalize", "aligned", "output", "source", "license"}
    assert keys <= manifest.keys()
    assert manifest["labels"] == ["angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]
    for entry in cat.entries:
        if entry.manifest is not None:
            assert load_manifest(entry.manifest.source).labels, entry.name


def test_default_models_land_where_the_config_looks() -> None:
    """`tadbot models pull` and the settings' defaults agree, so a pulled model is used with no edits."""
    from server.config import Settings

    settings = Settings()
    for entry in load_catalogue(REPO / "models" / "catalogue.toml").select(["llm", "fer", "face_detector"]):
        section, key = entry.config_key.split(".")
        assert getattr(getattr(settings, section), key) == f"models/{entry.files[0].dest}", entry.name


def test_default_model_paths_follow_the_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from server.models.catalogue import resolve_model_path

    monkeypatch.delenv("TADBOT_MODELS_DIR", raising=False)
    assert resolve_model_path("models/llm.gguf") == Path("models/llm.gguf")
    monkeypatch.setenv("TADBOT_MODELS_DIR", str(tmp_path))
    assert resolve_model_path("models/llm.gguf") == tmp_path / "llm.gguf"
    assert resolve_model_path("/srv/x.gguf") == Path("/srv/x.gguf")
    assert resolve_model_path("elsewhere/x.gguf") == Path("elsewhere/x.gguf")


def test_a_role_without_a_default_names_all_its_entries() -> None:
    """Options such as the wake word are never pulled unasked, but `models pull wakeword` finds them."""
    cat = load_catalogue(REPO / "models" / "catalogue.toml")
    assert "wakeword" not in {e.role for e in cat.select()}
    (entry,) = cat.select(["wakeword"])
    assert entry.name == "openwakeword-hey-jarvis"
    assert [f.dest for f in entry.files] == [
        "wakeword/melspectrogram.onnx",
        "wakeword/embedding_model.onnx",
        "wakeword/hey_jarvis_v0.1.onnx",
    ]
    assert [e.name for e in cat.select(["fer"])] == ["facial_expression_recognition_mobilefacenet_2022july"]


def test_the_installed_whisper_and_voice_are_pulled_from_their_packages_with_no_download(
    tmp_path: Path,
) -> None:
    """`tadbot models pull stt voice` on a box with no network: both defaults come installed from PyPI,
    their files checked against the hub's sha256, and nothing is fetched or copied."""
    catalogue = load_catalogue()
    results = pull(catalogue, tmp_path, roles=["whisper-tiny.en", "en_US-joe-medium"], progress=False)
    assert {(r.model, r.status) for r in results} == {
        ("whisper-tiny.en", "installed"),
        ("en_US-joe-medium", "installed"),
    }
    names = sorted(r.path.name for r in results)
    whisper = ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"]
    assert names == sorted([*whisper, "en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json"])
    assert all("site-packages" in str(r.path) or ".venv" in str(r.path) for r in results)
    assert list(tmp_path.iterdir()) == [], "nothing is written to the models dir"
