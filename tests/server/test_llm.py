"""The LLM seam: the tiny Gemma-2 GGUF in real llama.cpp, and an OpenAI-compatible engine on loopback."""

from __future__ import annotations

import json
import pathlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import gguf
import pytest

from server.conversation.llm.chat import GenerationStats, fold_system, get_chat_model
from server.conversation.llm.llama import LlamaCppChat, token_budget
from server.conversation.llm.openai import OpenAICompatChat
from server.errors import ConfigError, LlmError, ModelError
from tests.llama_server import llama_cpp_server
from tests.tiny_gguf import END_OF_TURN_ID, GEMMA2_CHAT_TEMPLATE, START_OF_TURN_ID, build_tiny_gemma2_gguf

SYSTEM = {"role": "system", "content": "You are Tad, a calm companion."}
USER = {"role": "user", "content": "My heart is racing."}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_tiny_gemma2_gguf(tmp_path_factory.mktemp("llm") / "tiny-gemma2.gguf")


@pytest.fixture(scope="module")
def chat(tiny_gguf: pathlib.Path) -> LlamaCppChat:
    # One thread: on a small CI box more threads only add contention for a model this size.
    return LlamaCppChat(tiny_gguf, n_ctx=512, n_threads=1, n_batch=64, seed=1234)


# --- the tiny model itself -------------------------------------------------------------------------


def test_tiny_gguf_is_small_and_byte_for_byte_reproducible(
    tiny_gguf: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    again = build_tiny_gemma2_gguf(tmp_path / "again.gguf")
    assert 100_000 < tiny_gguf.stat().st_size < 500_000
    assert again.read_bytes() == tiny_gguf.read_bytes()


def test_tiny_gguf_has_gemma2_keys_tensors_and_the_real_chat_template(tiny_gguf: pathlib.Path) -> None:
    reader = gguf.GGUFReader(tiny_gguf)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "gemma2"
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.chat_template"] == GEMMA2_CHAT_TEMPLATE
    assert "raise_exception('System role not supported')" in fields["tokenizer.chat_template"]
    assert fields["gemma2.attn_logit_softcapping"] == 50.0
    assert fields["gemma2.final_logit_softcapping"] == 30.0
    assert fields["gemma2.attention.sliding_window"] == 256
    assert fields["gemma2.attention.key_length"] == fields["gemma2.attention.value_length"] == 32
    assert fields["tokenizer.ggml.eot_token_id"] == END_OF_TURN_ID
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[START_OF_TURN_ID] == "<start_of_turn>"
    assert tokens[END_OF_TURN_ID] == "<end_of_turn>"
    assert fields["tokenizer.ggml.token_type"][END_OF_TURN_ID] == gguf.TokenType.CONTROL
    names = {tensor.name for tensor in reader.tensors}
    assert {"blk.1.post_attention_norm.weight", "blk.1.post_ffw_norm.weight", "output_norm.weight"} <= names


def test_llama_cpp_uses_the_gguf_template_and_reads_gemma_control_tokens(tiny_gguf: pathlib.Path) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=512, n_threads=1, verbose=False)
    assert llm.chat_format == "chat_template.default"
    assert llm.tokenize(b"<start_of_turn>", add_bos=False, special=True) == [START_OF_TURN_ID]
    assert len(llm.tokenize(b"<start_of_turn>", add_bos=False, special=False)) > 1
    # The reason fold_system exists: Gemma's own template refuses a system turn.
    with pytest.raises(ValueError, match="System role not supported"):
        llm.create_chat_completion(messages=[SYSTEM, USER], max_tokens=4)  # type: ignore[list-item]


# --- LlamaCppChat --------------------------------------------------------------------------------


def test_stream_chat_streams_readable_pieces_for_a_system_and_user_chat(chat: LlamaCppChat) -> None:
    pieces = list(chat.stream_chat([SYSTEM, USER], max_tokens=16, temperature=0.7))
    text = "".join(pieces)
    assert chat.name == "llama_cpp:tiny-gemma2.gguf"
    assert 0 < len(pieces) <= 16
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert "<start_of_turn>" not in text and "<end_of_turn>" not in text
    assert sum(char.isalpha() for char in text) > len(text) / 2


def test_the_same_seed_gives_the_same_reply(tiny_gguf: pathlib.Path) -> None:
    replies = [
        list(
            LlamaCppChat(tiny_gguf, n_ctx=512, n_threads=1, seed=99).stream_chat(
                [USER], max_tokens=8, temperature=0.9
            )
        )
        for _ in range(2)
    ]
    assert replies[0] == replies[1]
    assert replies[0]


def test_generation_stops_at_end_of_turn(tmp_path: pathlib.Path) -> None:
    eager = build_tiny_gemma2_gguf(tmp_path / "eager.gguf", favour_end_of_turn=True)
    model = LlamaCppChat(eager, n_ctx=512, n_threads=1, seed=1)
    assert list(model.stream_chat([SYSTEM, USER], max_tokens=64, temperature=0.7)) == []


def test_a_model_emitting_stray_bytes_still_stops_at_max_tokens(tmp_path: pathlib.Path) -> None:
    """A random model that favours bytes 0x80-0xFF never completes a UTF-8 character; llama-cpp-python alone
    would then ignore max_tokens until the context is full and fail. Converted by llama.cpp's converter (which
    `make test` fetches) from a Hugging Face folder, since the bench's builder favours whole words."""
    from tests.tiny_hf_gemma import build_tiny_hf_gemma2
    from training.llm.converter import convert, find_converter

    corpus = ["My heart is racing.", "You are Tad, a calm companion.", "Breathe in slowly, then out."] * 20
    noisy = build_tiny_hf_gemma2(tmp_path / "noisy", corpus, quiet_high_bytes=False)
    gguf_path = convert(noisy, tmp_path / "noisy.gguf", script=find_converter())
    model = LlamaCppChat(gguf_path, n_ctx=512, n_threads=1, seed=1)
    stats = GenerationStats()
    text = "".join(model.stream_chat([USER], max_tokens=16, temperature=0.0, stats=stats))
    assert 16 <= stats.generated_tokens <= 16 + 4 + 1, stats
    assert not text.strip(), "the model was meant to emit only stray bytes"


def test_the_token_budget_forces_the_end_token_past_its_limit() -> None:
    import numpy as np

    budget = token_budget(2, end_token=1)
    logits = np.array([0.5, -3.0, 2.0], dtype=np.single)
    assert budget(None, logits.copy()).tolist() == [0.5, -3.0, 2.0]
    assert budget(None, logits.copy()).tolist() == [0.5, -3.0, 2.0]
    forced = budget(None, logits.copy())
    assert int(np.argmax(forced)) == 1 and np.isinf(forced[[0, 2]]).all()


def test_one_generation_at_a_time(tiny_gguf: pathlib.Path) -> None:
    model = LlamaCppChat(tiny_gguf, n_ctx=512, n_threads=1, seed=5, busy_timeout_s=0.2)
    first = model.stream_chat([USER], max_tokens=32, temperature=0.7)
    assert next(first)
    with pytest.raises(LlmError) as busy:
        next(model.stream_chat([USER], max_tokens=4, temperature=0.7))
    assert busy.value.code == "llm_busy"
    first.close()
    assert list(model.stream_chat([USER], max_tokens=4, temperature=0.7))


def test_a_prompt_longer_than_the_context_is_an_llm_error(chat: LlamaCppChat) -> None:
    huge = {"role": "user", "content": "breathe " * 1000}
    with pytest.raises(LlmError) as failed:
        list(chat.stream_chat([huge], max_tokens=8, temperature=0.7))
    assert failed.value.code == "llm_failed"
    assert failed.value.status == 503
    # The lock was released: the next turn works.
    assert list(chat.stream_chat([USER], max_tokens=4, temperature=0.7))


def test_a_missing_model_file_names_the_file_the_key_and_the_fix(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nowhere" / "llm.gguf"
    with pytest.raises(ModelError) as error:
        LlamaCppChat(missing)
    assert error.value.code == "model_missing"
    assert str(missing) in error.value.message
    assert "llm.model_path" in error.value.message
    assert "tadbot models pull" in error.value.message


@pytest.mark.parametrize("content", [b"<html>404 Not Found</html>", b"GGUF\x03\x00\x00\x00truncated"])
def test_a_corrupt_model_file_is_a_model_error(tmp_path: pathlib.Path, content: bytes) -> None:
    bad = tmp_path / "llm.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelError) as error:
        LlamaCppChat(bad, n_ctx=512, n_threads=1)
    assert error.value.code == "model_invalid"
    assert str(bad) in error.value.message and "llm.model_path" in error.value.message


def test_a_truncated_download_of_a_real_gguf_is_a_model_error(
    tiny_gguf: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    partial = tmp_path / "partial.gguf"
    partial.write_bytes(tiny_gguf.read_bytes()[:150_000])
    with pytest.raises(ModelError) as error:
        LlamaCppChat(partial, n_ctx=512, n_threads=1)
    assert error.value.code == "model_invalid"


# --- fold_system ---------------------------------------------------------------------------------


def test_fold_system_puts_the_system_text_before_the_first_user_turn() -> None:
    messages = [SYSTEM, USER]
    assert fold_system(messages) == [
        {"role": "user", "content": "You are Tad, a calm companion.\n\nMy heart is racing."}
    ]
    assert messages == [SYSTEM, USER]


def test_fold_system_keeps_a_chat_without_system_text_as_it_is() -> None:
    chat = [USER, {"role": "assistant", "content": "I'm here."}, {"role": "user", "content": "Thanks."}]
    assert fold_system(chat) == chat


def test_fold_system_gives_a_greeting_first_chat_its_own_leading_user_turn() -> None:
    greeting = {"role": "assistant", "content": "Hi, I'm Tad."}
    assert fold_system([SYSTEM, greeting, USER]) == [
        {"role": "user", "content": "You are Tad, a calm companion."},
        greeting,
        USER,
    ]
    assert fold_system([greeting, USER]) == [USER]


def test_fold_system_joins_every_system_message_and_merges_same_role_neighbours() -> None:
    memory = {"role": "system", "content": "Earlier: they like counting breaths."}
    follow_up = {"role": "user", "content": "And my hands shake."}
    assert fold_system([SYSTEM, memory, USER, follow_up]) == [
        {
            "role": "user",
            "content": "You are Tad, a calm companion.\n\nEarlier: they like counting breaths.\n\n"
            "My heart is racing.\n\nAnd my hands shake.",
        }
    ]


# --- OpenAICompatChat against a real loopback server -------------------------------------------


class _Engine:
    """A minimal OpenAI-compatible streaming engine on 127.0.0.1, port chosen by the OS."""

    def __init__(self, events: list[str], status: int = 200, pause_after: int | None = None) -> None:
        self.events = events
        self.status = status
        self.pause_after = pause_after
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.first_piece_seen = threading.Event()
        self.waited_ok: list[bool] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                engine.requests.append((self.path, body))
                self.send_response(engine.status)
                if engine.status != 200:
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "model not loaded"}}')
                    return
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for index, event in enumerate(engine.events):
                    if index == engine.pause_after:
                        # Streaming, not buffering: the client must see piece one before piece two exists.
                        engine.waited_ok.append(engine.first_piece_seen.wait(timeout=5))
                    self.wfile.write(f"{event}\n\n".encode())
                    self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Engine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _delta(content: str) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]})


@pytest.fixture
def engine() -> Iterator[_Engine]:
    events = [
        'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}',
        _delta("Let's breathe"),
        ": keep-alive comment",
        _delta(" together."),
        'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}',
        "data: [DONE]",
    ]
    with _Engine(events, pause_after=2) as running:
        yield running


def test_openai_backend_streams_delta_content_as_it_arrives(engine: _Engine) -> None:
    model = OpenAICompatChat(engine.base_url + "/v1/", model="gemma-2-2b-it", timeout_s=10)
    stream = model.stream_chat([SYSTEM, USER], max_tokens=50, temperature=0.5)
    assert next(stream) == "Let's breathe"
    engine.first_piece_seen.set()
    assert list(stream) == [" together."]
    assert engine.waited_ok == [True]
    path, body = engine.requests[0]
    assert path == "/v1/chat/completions"
    assert body["stream"] is True
    assert body["model"] == "gemma-2-2b-it"
    assert body["max_tokens"] == 50 and body["temperature"] == 0.5
    assert body["messages"] == fold_system([SYSTEM, USER])
    assert model.name == "openai:gemma-2-2b-it"


def test_openai_backend_reports_an_engine_error_status_as_llm_failed() -> None:
    with _Engine([], status=503) as engine:
        model = OpenAICompatChat(engine.base_url, timeout_s=10)
        with pytest.raises(LlmError) as error:
            list(model.stream_chat([USER], max_tokens=8, temperature=0.5))
    assert error.value.code == "llm_failed"
    assert "503" in error.value.message and "model not loaded" in error.value.message
    assert "model" not in engine.requests[0][1]


def test_openai_backend_reports_an_error_event_mid_stream_as_llm_failed() -> None:
    events = [_delta("Okay."), 'data: {"error": {"message": "context overflow"}}']
    with _Engine(events) as engine:
        model = OpenAICompatChat(engine.base_url, timeout_s=10)
        stream = model.stream_chat([USER], max_tokens=8, temperature=0.5)
        assert next(stream) == "Okay."
        with pytest.raises(LlmError) as error:
            next(stream)
    assert error.value.code == "llm_failed"
    assert "context overflow" in error.value.message


def test_openai_backend_unreachable_is_llm_unavailable_naming_the_key() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = OpenAICompatChat(f"http://127.0.0.1:{port}", timeout_s=5)
    with pytest.raises(LlmError) as error:
        list(model.stream_chat([USER], max_tokens=8, temperature=0.5))
    assert error.value.code == "llm_unavailable"
    assert error.value.status == 503
    assert "llm.base_url" in error.value.message
    assert f"127.0.0.1:{port}" in error.value.message


def test_openai_backend_needs_a_base_url() -> None:
    with pytest.raises(ConfigError, match=r"llm\.base_url"):
        OpenAICompatChat("")


# --- the factory ---------------------------------------------------------------------------------


def test_get_chat_model_builds_each_backend_by_name(tiny_gguf: pathlib.Path) -> None:
    local = get_chat_model("llama_cpp", model_path=tiny_gguf, n_ctx=512, n_threads=1, n_batch=64, seed=7)
    remote = get_chat_model("openai", base_url="http://127.0.0.1:9", model="", timeout_s=1)
    assert isinstance(local, LlamaCppChat) and local.name == "llama_cpp:tiny-gemma2.gguf"
    assert isinstance(remote, OpenAICompatChat) and remote.name == "openai:http://127.0.0.1:9"


def test_get_chat_model_rejects_unknown_backends() -> None:
    with pytest.raises(ValueError, match=r"'ollama'.*llama_cpp, openai"):
        get_chat_model("ollama")


# --- OpenAICompatChat against llama-cpp-python's own OpenAI-compatible server ---------------------


@pytest.fixture(scope="module")
def llama_server(tiny_gguf: pathlib.Path) -> Iterator[str]:
    with llama_cpp_server(tiny_gguf) as base_url:
        yield base_url


def test_openai_backend_against_llama_cpp_server(llama_server: str) -> None:
    model = OpenAICompatChat(llama_server, timeout_s=30)
    stats = GenerationStats()
    pieces = list(
        model.stream_chat(
            [SYSTEM, USER],
            max_tokens=16,
            temperature=0.7,
            top_p=0.9,
            top_k=40,
            repeat_penalty=1.1,
            stats=stats,
        )
    )
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert stats.generated_tokens == len(pieces) and stats.first_token_ms > 0
    assert "<start_of_turn>" not in "".join(pieces)


def test_a_whole_turn_through_the_openai_backend(llama_server: str, tmp_path: pathlib.Path) -> None:
    from server.config import load_settings
    from server.conversation.components import Components
    from server.conversation.engine import Companion
    from server.conversation.prompt import Prompts
    from server.conversation.turns import TurnInput
    from server.records.store import Records

    config = tmp_path / "tadbot.toml"
    config.write_text('[llm]\nbackend = "openai"\nmax_tokens = 16\n', encoding="utf-8")
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(tmp_path)})
    components = Components(records=Records(tmp_path / "db.sqlite3"), chat=OpenAICompatChat(llama_server))
    companion = Companion(components, settings, Prompts.load("Tad"))
    session = companion.records.session(companion.start_session("ola", None)["session_id"])
    events = list(companion.turn(session, TurnInput(text="I feel a panic attack coming")))
    assert events[0]["type"] == "transcript" and events[-1]["type"] == "done", events[-1]
    assert any(e["type"] == "sentence" for e in events)
    companion.close()
