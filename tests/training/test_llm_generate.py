"""`tadbot train generate`: the prompt file, reading replies as Person A/B dialogs, dedup, retries, the rate
limit, resuming, and the command's exit codes, against two loopback endpoints: a scripted fake that speaks
OpenAI's chat completions (well-formed, malformed and duplicate dialogs, 429 and 500), and the real
`llama_cpp.server` serving the tiny random GGUF, whose gibberish must be counted as unparseable.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from server.errors import ConfigError
from tests.conftest import free_port, tadbot
from tests.llama_server import llama_cpp_server
from training.__main__ import main
from training.llm.generate import (
    EndpointError,
    GenerateConfig,
    Prompts,
    format_dialog,
    jobs,
    parse_dialog,
    run_generate,
)
from training.llm.readers import read_person_dialogs

Reply = tuple[int, str]
"""(HTTP status, the message content, or the error text for a status other than 200)."""


def dialog(n: int, exchanges: int = 2) -> str:
    """A well-formed reply, unique for each n."""
    lines = []
    for i in range(exchanges):
        lines.append(f"Person A: My heart is pounding, worry {n} number {i}.")
        lines.append(f"Person B: You are safe here. Breathe in slowly with me, {n} and {i}.")
    return "\n".join(lines)


@dataclass
class Fake:
    """A chat-completions endpoint on 127.0.0.1: replies come from `script` in order, then from `default`
    (given the request's number), which by default answers a new dialog each time."""

    url: str
    script: list[Reply] = field(default_factory=list)
    default: Callable[[int], Reply] = lambda n: (200, dialog(n))
    requests: list[tuple[float, dict[str, Any], dict[str, str]]] = field(default_factory=list)

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        self.requests.append((time.monotonic(), body, headers))
        return self.script.pop(0) if self.script else self.default(len(self.requests))


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                status, text = 404, "no such path"
            else:
                status, text = state.answer(body, dict(self.headers))
            payload: dict[str, Any] = {"error": {"message": text}}
            if status == 200:
                message = {"role": "assistant", "content": text}
                payload = {"choices": [{"message": message, "finish_reason": "stop"}]}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _config(tmp: Path, url: str, **extra: Any) -> GenerateConfig:
    settings: dict[str, Any] = {"rate_per_min": 0, "backoff_s": 0.01, "progress_bar": False, "count": 6}
    return GenerateConfig(out=tmp / "dialogs.txt", **({"base_url": url} | settings | extra))


def _read_back(path: Path) -> list[tuple[tuple[str, str], ...]]:
    """The file as `prepare --source` reads it: every dialog alternates user / companion from the user."""
    dialogs, dropped = read_person_dialogs(path)
    assert not dropped
    for d in dialogs:
        assert [role for role, _ in d.turns] == ["user", "assistant"] * (len(d.turns) // 2)
    return [d.turns for d in dialogs]


# --- the prompt file and the order -----------------------------------------------------------------


def test_the_prompt_file_covers_scenarios_techniques_and_lengths() -> None:
    prompts = Prompts.load()
    assert len(prompts.scenarios) >= 8 and len(prompts.techniques) >= 5 and len(prompts.lengths) >= 2
    combos = prompts.combinations()
    assert len(combos) == len(set(combos)) == len(prompts.scenarios) * len(prompts.techniques) * 3
    text = prompts.render("bus", "grounding", "short")
    assert "crowded bus" in text and "five, four, three" in text
    assert "exactly 3 exchanges: 6 lines" in text and '"Person A: ..."' in text
    assert "{" not in text


def test_the_order_is_seeded_and_a_larger_count_goes_round_again() -> None:
    prompts = Prompts.load()
    total = len(prompts.combinations())
    first = [job.key for job in jobs(prompts, None, seed=1)]
    assert len(first) == len(set(first)) == total
    assert first == [job.key for job in jobs(prompts, None, seed=1)]
    assert first != [job.key for job in jobs(prompts, None, seed=2)]
    assert [job.key for job in jobs(prompts, 5, seed=1)] == first[:5]
    more = [job.key for job in jobs(prompts, total + 3, seed=1)]
    assert more[:total] == first and all(key.endswith("#2") for key in more[total:])
    assert len({job.seed for job in jobs(prompts, total + 3, seed=1)}) == total + 3


# --- reading a reply -------------------------------------------------------------------------------


def test_a_reply_with_the_usual_variations_is_read_as_alternating_turns() -> None:
    reply = (
        "Sure! Here is the conversation:\n\n"
        "**Person A:** I can't breathe, everyone is looking at me.\n"
        "  Person B - You are safe on this bus.\n"
        "Let's breathe together.\n"
        "\n"
        "*Person A*: Okay. It's still fast.\n"
        'person b: "That is alright. In for four, out for six."\n'
        "\n"
        "I hope this helps with your training data."
    )
    assert parse_dialog(reply) == (
        ("user", "I can't breathe, everyone is looking at me."),
        ("assistant", "You are safe on this bus. Let's breathe together."),
        ("user", "Okay. It's still fast."),
        ("assistant", "That is alright. In for four, out for six."),
    )


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I am sorry, I cannot write that.",
        "Person A: Help.\nPerson B: You are safe.",
        "Person A: Help.\nPerson A: Please.\nPerson B: You are safe.\nPerson B: Breathe.",
        "Person B: Hello.\nPerson B: Again.\nPerson A: Hi.",
        "Person A: Help.\nPerson B:\nPerson A: Still here.\nPerson B: Breathe.",
        "ølkj Person A sdf B: : ;; <unused42> asd",
    ],
    ids=["empty", "refusal", "one-exchange", "not-alternating", "starts-with-B", "empty-turn", "gibberish"],
)
def test_replies_that_are_not_a_usable_dialog_are_none(reply: str) -> None:
    assert parse_dialog(reply) is None


def test_a_truncated_reply_loses_its_unfinished_last_turn() -> None:
    reply = dialog(1, exchanges=3) + "\nPerson A: And then"
    assert len(parse_dialog(reply) or ()) == 6
    assert len(parse_dialog(dialog(1, exchanges=3), truncated=True) or ()) == 4


def test_a_trailing_user_turn_is_dropped_and_the_file_format_reads_back(tmp_path: Path) -> None:
    turns = parse_dialog(dialog(3) + "\nPerson A: Thank you.")
    assert turns is not None and len(turns) == 4
    (tmp_path / "one.txt").write_text(format_dialog(turns), encoding="utf-8")
    assert _read_back(tmp_path / "one.txt") == [turns]


# --- against the scripted endpoint -----------------------------------------------------------------


def test_good_malformed_and_duplicate_replies_are_counted_and_only_new_dialogs_written(
    fake: Fake, tmp_path: Path
) -> None:
    opener_again = dialog(1).replace("Breathe in slowly", "Let us breathe")
    fake.script = [
        (200, dialog(1)),
        (200, "I'd rather not."),
        (200, dialog(1).upper().replace(",", " ,")),
        (200, opener_again),
        (200, dialog(2, exchanges=3)),
        (200, "Person B: hi\nPerson A: hello"),
    ]
    summary = run_generate(_config(tmp_path, fake.url))
    assert {k: summary[k] for k in ("requested", "written", "rejected_unparseable", "duplicates")} == {
        "requested": 6,
        "written": 2,
        "rejected_unparseable": 2,
        "duplicates": 2,
    }
    assert summary["failed"] == summary["pending"] == 0 and "stopped" not in summary
    assert _read_back(tmp_path / "dialogs.txt") == [parse_dialog(dialog(1)), parse_dialog(dialog(2, 3))]
    body = fake.requests[0][1]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "model" not in body and body["max_tokens"] == 800 and isinstance(body["seed"], int)


def test_429_and_500_are_retried_with_back_off_and_exhausted_retries_count_as_failed(
    fake: Fake, tmp_path: Path
) -> None:
    fake.script = [(429, "slow down"), (500, "oops"), (200, dialog(1)), *[(503, "down")] * 3]
    summary = run_generate(_config(tmp_path, fake.url, count=3, retries=2))
    assert summary["written"] == 2 and summary["failed"] == 1 and summary["pending"] == 1
    assert len(fake.requests) == 3 + 3 + 1
    times = [t for t, _, _ in fake.requests]
    assert times[1] - times[0] >= 0.009 and times[2] - times[1] >= 0.019


def test_requests_are_spaced_by_the_rate_limit(fake: Fake, tmp_path: Path) -> None:
    summary = run_generate(_config(tmp_path, fake.url, count=4, rate_per_min=600))
    assert summary["written"] == 4
    times = [t for t, _, _ in fake.requests]
    # Measured where the requests arrive, so one gap may shrink by scheduling jitter; the span cannot.
    assert times[-1] - times[0] >= 3 * 0.1 * 0.95


def test_a_stopped_run_resumes_without_writing_a_dialog_twice(fake: Fake, tmp_path: Path) -> None:
    fake.default = lambda n: (200, dialog(n)) if n <= 3 else (500, "the GPU fell over")
    first = run_generate(_config(tmp_path, fake.url, count=8, retries=1))
    assert first["written"] == 3 and first["pending"] == 5 and "in a row" in first["stopped"]
    assert len(_read_back(tmp_path / "dialogs.txt")) == 3

    fake.default = lambda n: (200, dialog(n))
    second = run_generate(_config(tmp_path, fake.url, count=8))
    assert second["written"] == 8 and second["pending"] == 0 and "stopped" not in second
    written = _read_back(tmp_path / "dialogs.txt")
    assert len(written) == len(set(written)) == 8
    asked = [body["seed"] for _, body, _ in fake.requests if body]
    assert len(set(asked)) == 8

    third = run_generate(_config(tmp_path, fake.url, count=8))
    assert third["written"] == 8 and len(fake.requests) == len(asked)


def test_a_dialog_written_but_never_recorded_is_cut_on_resume(fake: Fake, tmp_path: Path) -> None:
    run_generate(_config(tmp_path, fake.url, count=2))
    out = tmp_path / "dialogs.txt"
    with out.open("a", encoding="utf-8") as handle:
        handle.write("\nPerson A: half a dia")
    summary = run_generate(_config(tmp_path, fake.url, count=3))
    assert summary["written"] == 3 and len(_read_back(out)) == 3


def test_an_existing_dialog_file_is_appended_to_without_repeating_it(fake: Fake, tmp_path: Path) -> None:
    out = tmp_path / "dialogs.txt"
    out.write_text(dialog(1), encoding="utf-8")
    fake.script = [(200, dialog(1)), (200, dialog(2))]
    summary = run_generate(_config(tmp_path, fake.url, count=2))
    assert summary["duplicates"] == 1 and summary["written"] == 1
    assert len(_read_back(out)) == 2


def test_a_refusal_ends_the_run_and_an_api_key_is_sent_from_the_environment(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TADBOT_TEST_KEY", "sk-test")
    fake.default = lambda n: (401, "invalid api key")
    with pytest.raises(EndpointError, match=r"HTTP 401.*api-key-env"):
        run_generate(_config(tmp_path, fake.url, api_key_env="TADBOT_TEST_KEY", model="m"))
    assert len(fake.requests) == 1
    _, body, headers = fake.requests[0]
    assert headers["Authorization"] == "Bearer sk-test" and body["model"] == "m"


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        ({"count": 0}, "--count"),
        ({"base_url": "localhost:8080"}, "--base-url"),
        ({"temperature": 3.0}, "--temperature"),
        ({"api_key_env": "TADBOT_TEST_UNSET_KEY"}, "--api-key-env"),
    ],
)
def test_bad_settings_name_the_flag(settings: dict[str, Any], flag: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=flag):
        _config(tmp_path, "http://127.0.0.1:1/v1", **settings)


# --- the command ------------------------------------------------------------------------------------


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_the_command_prints_a_summary_and_json_last(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dialogs.txt"
    args = ["generate", "--out", str(out), "--base-url", fake.url, "--count", "3", "--rate-per-min", "0"]
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["requested"] == summary["written"] == 3 and summary["failed"] == 0
    assert "train generate: 3 dialogs" in captured.err and "dialogs:" in captured.err


def test_the_command_exits_1_when_the_endpoint_is_unreachable_or_refuses(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "dialogs.txt")
    closed = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["generate", "--out", out, "--base-url", closed, "--no-progress"]) == 1
    assert _one_line_error(capsys.readouterr().err).startswith(f"tadbot: error: cannot reach {closed}")
    fake.default = lambda n: (401, "bad key")
    assert main(["generate", "--out", out, "--base-url", fake.url, "--no-progress"]) == 1
    assert "HTTP 401" in _one_line_error(capsys.readouterr().err)


def test_the_command_exits_1_with_json_when_it_stops_early(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.default = lambda n: (200, dialog(n)) if n == 1 else (500, "down")
    args = ["generate", "--out", str(tmp_path / "d.txt"), "--base-url", fake.url, "--retries", "0"]
    assert main([*args, "--count", "5", "--rate-per-min", "0", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["written"] == 1
    assert "rerun to resume" in captured.err.splitlines()[-1]


def test_tadbot_train_generate_exits_2_on_bad_input(tmp_path: Path) -> None:
    done = tadbot("train", "generate", "--out", str(tmp_path / "d.txt"), "--count", "0", env=dict(os.environ))
    assert done.returncode == 2
    assert _one_line_error(done.stderr) == "tadbot: error: --count 0: expected 1 or more"


# --- against llama.cpp's own server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tiny_gguf: Path) -> Iterator[str]:
    """llama.cpp's own OpenAI-compatible server with the tiny random GGUF, as a local endpoint would be."""
    with llama_cpp_server(tiny_gguf) as base_url:
        yield base_url + "/v1"


def test_a_random_model_answers_but_its_gibberish_is_counted_unparseable(
    llama_server: str, tmp_path: Path
) -> None:
    summary = run_generate(_config(tmp_path, llama_server, count=2, max_tokens=24, timeout_s=60))
    assert summary["rejected_unparseable"] == 2
    assert summary["written"] == summary["failed"] == summary["pending"] == 0
    assert not (tmp_path / "dialogs.txt").exists() or not _read_back(tmp_path / "dialogs.txt")
