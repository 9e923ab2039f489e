"""`tadbot bench llm`: how fast replies come, through the real server, beside raw llama.cpp on the same model.

Everything is measured side by side in one run on one machine, so the figures are ratios that survive a
noisy, shared machine:
- decode_ratio: decoding speed inside a whole server turn (HTTP, sentence splitting, records) over raw
  `llama_cpp.Llama` streaming on the same model, prompt size and threads;
- prefix_eval_ratio: tokens llama.cpp evaluated for the last turn of a conversation over the tokens that
  turn added to the prompt; naive_prefix_eval_ratio: the same when the per-turn notes sit at the top;
- first_sentence_ratio: when the first `sentence` event arrived over when `done` did, for replies of three
  sentences or more;
- peak_rss_mb: the server process's peak resident memory with the model loaded.

Between turns the bench waits as long as the reply takes to say aloud at the device's speaking rate, as a
person listening to it would; the server does its background work (folding old turns into the running
summary, reading the new prompt start into the cache) in that time, as it does on a real device.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from server.errors import TadbotError
from server.records import Conversation

Say = Callable[[str], None]
SPEAKING_WPM = 165
"""The device's default speaking rate (device.tts_rate)."""


@dataclass(frozen=True)
class TurnMeasure:
    timings: dict[str, float]
    sentences: int
    first_sentence_s: float | None
    done_s: float
    words: int


@dataclass(frozen=True)
class BenchOptions:
    model: Path
    turns: int
    n_threads: int
    n_ctx: int
    max_tokens: int
    speaking_wpm: int = SPEAKING_WPM
    """Words a minute the reply is "spoken" at between turns; 0 sends the next turn at once."""


def conversation_lines() -> tuple[list[str], list[str]]:
    data = tomllib.loads(resources.files("server.bench").joinpath("conversation.toml").read_text("utf-8"))
    return list(data["earlier"]), list(data["turns"])


def run_llm_bench(options: BenchOptions, say: Say) -> dict[str, Any]:
    earlier, lines = conversation_lines()
    wanted = [lines[i % len(lines)] for i in range(options.turns)]
    with tempfile.TemporaryDirectory(prefix="tadbot-bench-") as tmp:
        data = Path(tmp) / "data"
        remembered = _seed_memory(data, earlier)
        with _Server(Path(tmp), options, say) as server:
            say(f"{options.turns} turns through the server")
            measured = server.session(wanted, progress=True)
            peak_rss_mb = server.peak_rss_mb()
        conversation = _conversation(data / "tadbot.sqlite3")
        say("raw llama.cpp on the same model")
        raw_tps = _raw_decode_rate(options, wanted[:3])
        say("the same conversation with the memories at the top of the prompt")
        naive = _naive_prefix_eval_ratio(options, conversation, data) if remembered else None
    last, before = measured[-1].timings, measured[-2].timings if len(measured) > 1 else None
    server_tps = statistics.median(_decode_rate(m.timings) for m in measured if m.timings.get("decode_ms"))
    three = [m.first_sentence_s / m.done_s for m in measured if m.sentences >= 3 and m.first_sentence_s]
    return {
        "model": str(options.model),
        "turns": options.turns,
        "n_threads": options.n_threads,
        "n_ctx": options.n_ctx,
        "max_tokens": options.max_tokens,
        "server_decode_tokens_per_s": round(server_tps, 2),
        "raw_decode_tokens_per_s": round(raw_tps, 2),
        "decode_ratio": round(server_tps / raw_tps, 3),
        "prefix_eval_ratio": _eval_ratio(before, last),
        "prefix_eval_ratio_median": _median(
            [_eval_ratio(a.timings, b.timings) for a, b in itertools.pairwise(measured)]
        ),
        "naive_prefix_eval_ratio": naive,
        "last_turn": {k: last.get(k) for k in ("prompt_tokens", "evaluated_tokens", "generated_tokens")},
        "first_sentence_ratio": round(statistics.median(three), 3) if three else None,
        "three_sentence_replies": len(three),
        "first_token_ms_median": statistics.median(m.timings.get("first_token_ms", 0.0) for m in measured),
        "first_sentence_ms_median": statistics.median(
            m.timings.get("first_sentence_ms", 0.0) for m in measured
        ),
        "speaking_wpm": options.speaking_wpm,
        "peak_rss_mb": peak_rss_mb,
    }


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def _decode_rate(timings: dict[str, float]) -> float:
    """Tokens decoded per second after the first: each one is one evaluation inside `decode_ms`."""
    return (timings["generated_tokens"] - 1) / timings["decode_ms"] * 1000


def _eval_ratio(before: dict[str, float] | None, now: dict[str, float]) -> float | None:
    if before is None:
        return None
    added = now["prompt_tokens"] - before["prompt_tokens"]
    return round(now["evaluated_tokens"] / added, 3) if added > 0 else None


class _Server:
    """`tadbot serve` in a subprocess on a loopback port, with its own data dir and a device token."""

    def __init__(self, root: Path, options: BenchOptions, say: Say) -> None:
        from server.records import Records

        self._say = say
        self._speaking_wpm = options.speaking_wpm
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        data = root / "data"
        config = root / "tadbot.toml"
        config.write_text(
            f'[server]\nport = {port}\ndata_dir = "{data}"\nlog_level = "WARNING"\n'
            f'[llm]\nmodel_path = "{options.model}"\nn_ctx = {options.n_ctx}\n'
            f"n_threads = {options.n_threads}\nmax_tokens = {options.max_tokens}\nseed = 1\n"
            f'[fer]\nmodel_path = "{root / "no-fer.onnx"}"\n',
            encoding="utf-8",
        )
        self._token = Records(data / "tadbot.sqlite3").add_credential("devices", "bench")
        self._log = (root / "server.log").open("wb")
        env = {**os.environ, "TADBOT_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._root = root

    def __enter__(self) -> _Server:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                health = self._get("/api/v1/health")
            except OSError:
                time.sleep(0.5)
                continue
            if health["components"]["llm"]["status"] == "ok":
                return self
            break
        self.__exit__()
        log = (self._root / "server.log").read_text(errors="replace")[-2000:]
        raise TadbotError("bench_failed", f"the server did not come up with the model loaded:\n{log}")

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._log.close()

    def peak_rss_mb(self) -> float | None:
        """The largest VmHWM among gunicorn's processes (the worker holds the model); Linux only."""
        pids = [self._process.pid]
        for task in Path(f"/proc/{self._process.pid}/task").glob("*/children"):
            pids += [int(pid) for pid in task.read_text().split()]
        peaks = []
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            peaks += [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
        return round(max(peaks) / 1024, 1) if peaks else None

    def session(self, lines: list[str], progress: bool = False) -> list[TurnMeasure]:
        from tqdm import tqdm

        session_id = self._post_json("/api/v1/sessions", {"client": BENCH_CLIENT})["session_id"]
        measured = []
        for text in tqdm(lines, desc="turns", disable=not progress, file=sys.stderr, leave=False):
            measured.append(self._turn(session_id, text))
            if self._speaking_wpm:
                time.sleep(measured[-1].words * 60 / self._speaking_wpm)
        self._post_json(f"/api/v1/sessions/{session_id}/end", {})
        return measured

    def _turn(self, session_id: str, text: str) -> TurnMeasure:
        boundary = "tadbotbench"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n--{boundary}--\r\n'
        ).encode()
        request = self._request(
            f"/api/v1/sessions/{session_id}/turns", body, f"multipart/form-data; boundary={boundary}"
        )
        started = time.monotonic()
        first: float | None = None
        sentences = words = 0
        for item in self._events(request):
            if item["type"] == "sentence":
                sentences += 1
                words += len(item["text"].split())
                if first is None:
                    first = time.monotonic() - started
            elif item["type"] == "done":
                return TurnMeasure(item["timings"], sentences, first, time.monotonic() - started, words)
            elif item["type"] == "error":
                raise TadbotError("bench_failed", f"a turn failed: {item['code']}: {item['message']}")
        raise TadbotError("bench_failed", "a turn's stream ended without `done`")

    def _events(self, request: urllib.request.Request) -> Iterator[dict[str, Any]]:
        with self._opener().open(request, timeout=900) as answer:
            for line in answer:
                if line.strip():
                    yield json.loads(line)

    def _get(self, path: str) -> dict[str, Any]:
        with self._opener().open(self.url + path, timeout=5) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        request = self._request(path, json.dumps(payload).encode(), "application/json")
        with self._opener().open(request, timeout=900) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def _request(self, path: str, body: bytes, content_type: str) -> urllib.request.Request:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": content_type}
        return urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")

    @staticmethod
    def _opener() -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BENCH_CLIENT = "bench"


def _memory(data: Path) -> Any:
    """The server's memory store under `data`, or None where no embedder is installed."""
    from server.embedding import MiniLMEmbedder, find_embedder_dir
    from server.memory import Memory
    from server.models import models_dir

    found = find_embedder_dir("", models_dir())
    return Memory(data / "memory", MiniLMEmbedder(found)) if found else None


def _seed_memory(data: Path, lines: list[str]) -> bool:
    """What the client said in earlier sessions, stored as the server stores turns."""
    memory = _memory(data)
    if memory is None:
        return False
    for line in lines:
        memory.add(client=BENCH_CLIENT, session_id="earlier", role="user", text=line, ts=time.time())
    return True


def _conversation(database: Path) -> tuple[str, Conversation]:
    """The benchmark's session as the server left it: running summary and the turns after it."""
    from server.records import Records

    records = Records(database)
    (last,) = [s["id"] for s in records.list_sessions(BENCH_CLIENT)][:1]
    return last, records.conversation(last)


def _raw_decode_rate(options: BenchOptions, lines: list[str]) -> float:
    """Median decode speed of plain `Llama` streaming on prompts like the server's, with the same threads."""
    import llama_cpp

    from server.prompt import Prompts

    llm = llama_cpp.Llama(
        model_path=str(options.model),
        n_ctx=options.n_ctx,
        n_threads=options.n_threads,
        seed=1,
        swa_full=True,
        verbose=False,
    )
    system = Prompts.load("Tad").system
    rates = []
    for text in lines:
        prompt = f"<start_of_turn>user\n{system}\n\n{text}<end_of_turn>\n<start_of_turn>model\n"
        llama_cpp.llama_perf_context_reset(llm.ctx)
        first = 0.0
        for index, _ in enumerate(llm.create_completion(prompt, max_tokens=options.max_tokens, stream=True)):
            if index == 0:
                first = time.monotonic()
        decode_s = time.monotonic() - first
        evaluated = llama_cpp.llama_perf_context(llm.ctx).n_eval
        if evaluated and decode_s > 0:
            rates.append(evaluated / decode_s)
    llm.close()
    return statistics.median(rates)


def _naive_prefix_eval_ratio(
    options: BenchOptions, session: tuple[str, Conversation], data: Path
) -> float | None:
    """The last two turns again, with that turn's memories and stage at the top of the prompt.

    That is where a simple design puts them. Same summary, same turns and the same recall as the server;
    only the place differs. The memories recalled change from turn to turn, and everything after them is
    then evaluated again.
    """
    from server.config import load_settings
    from server.llm import GenerationStats, LlamaCppChat
    from server.prompt import Prompts, stage_for

    session_id, conversation = session
    turns = conversation.turns
    users = [i for i, turn in enumerate(turns) if turn.role == "user"]
    if len(users) < 2:
        return None
    settings = load_settings(env={})
    prompts = Prompts.load(settings.persona.name)
    memory = _memory(data)
    chat = LlamaCppChat(options.model, n_ctx=options.n_ctx, n_threads=options.n_threads, seed=1)
    measured = []
    for index in users[-2:]:
        text = turns[index].text
        recalled = memory.recall(
            client=BENCH_CLIENT,
            query=text,
            k=settings.memory.recall_k,
            exclude_session=session_id,
            max_distance=settings.memory.max_distance,
            roles=("user", "summary"),
        )
        top = [
            prompts.system,
            prompts.memory_note.format(memories="\n".join(f"- {r.text}" for r in recalled)),
            prompts.stages[
                stage_for(options.turns, settings.persona.stage_building, settings.persona.stage_established)
            ],
        ]
        if conversation.summary:
            top.append(prompts.summary_note.format(summary=conversation.summary))
        messages = [
            {"role": "system", "content": "\n\n".join(top)},
            *({"role": t.role, "content": t.text} for t in turns[:index]),
            {"role": "user", "content": text},
        ]
        stats = GenerationStats()
        for _ in chat.stream_chat(messages, max_tokens=1, temperature=0.0, stats=stats):
            pass
        measured.append(stats)
    before, now = measured
    added = now.prompt_tokens - before.prompt_tokens
    return round(now.evaluated_tokens / added, 3) if added > 0 else None
