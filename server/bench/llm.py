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
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.bench.live import BENCH_CLIENT, LiveServer, Say
from server.datafiles import DataFile
from server.records.rows import Conversation

REREAD_RATIO = 1.3
"""A turn that evaluated more than this many tokens per token it added re-read part of its prompt."""
SPEAKING_WPM = 165
"""The device's default speaking rate (device.tts_rate)."""


@dataclass(frozen=True)
class BenchOptions:
    model: Path
    turns: int
    n_threads: int
    n_ctx: int
    max_tokens: int
    speaking_wpm: int = SPEAKING_WPM
    """Words a minute the reply is "spoken" at between turns; 0 sends the next turn at once."""


CONVERSATION = "server/bench/conversation.toml"
"""What the benchmarks say to the server: memories, a conversation and crisis lines."""
CONVERSATION_VERSION = 1


def conversation_lines() -> tuple[list[str], list[str]]:
    """The memories to seed, and the conversation to walk through."""
    return DataFile(CONVERSATION, CONVERSATION_VERSION, "bench_invalid", _conversation_lines).load()


def _conversation_lines(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    return list(data["earlier"]), list(data["turns"])


def run_llm_bench(options: BenchOptions, say: Say) -> dict[str, Any]:
    earlier, lines = conversation_lines()
    wanted = [lines[i % len(lines)] for i in range(options.turns)]
    with tempfile.TemporaryDirectory(prefix="tadbot-bench-") as tmp:
        data = Path(tmp) / "data"
        remembered = _seed_memory(data, earlier)
        server = LiveServer(
            Path(tmp),
            model=options.model,
            n_ctx=options.n_ctx,
            n_threads=options.n_threads,
            max_tokens=options.max_tokens,
            speaking_wpm=options.speaking_wpm,
        )
        with server:
            say(f"{options.turns} turns through the server")
            measured = server.session(wanted, progress=True)
            peak_rss_mb = server.peak_rss_mb()
        conversation = _conversation(data / "tadbot.sqlite3")
        say("raw llama.cpp on the same model and the server's last prompts")
        raw_tps = _raw_decode_rate(options, _last_prompts(conversation[1], 3))
        say("the same conversation with the memories at the top of the prompt")
        naive = _naive_prefix_eval_ratio(options, conversation, data) if remembered else None
    last, before = measured[-1].timings, measured[-2].timings if len(measured) > 1 else None
    server_tps = statistics.median(_decode_rate(m.timings) for m in measured if m.timings.get("decode_ms"))
    three = [m.first_sentence_s / m.done_s for m in measured if m.sentences >= 3 and m.first_sentence_s]
    ratios = [_eval_ratio(a.timings, b.timings) for a, b in itertools.pairwise(measured)]
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
        "prefix_eval_ratio_median": _median(ratios),
        "naive_prefix_eval_ratio": naive,
        # Turns that read much more than they added: the running summary changed the prompt's start.
        "reread_turns": [i + 2 for i, r in enumerate(ratios) if r is not None and r > REREAD_RATIO],
        "reread_first_token_ms_max": max(
            (
                m.timings.get("first_token_ms", 0.0)
                for m, r in zip(measured[1:], ratios, strict=True)
                if r is not None and r > REREAD_RATIO
            ),
            default=None,
        ),
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
    if before is None or "prompt_tokens" not in before or "prompt_tokens" not in now:
        return None  # a turn the model did not answer (an exercise, say)
    added = now["prompt_tokens"] - before["prompt_tokens"]
    return round(now["evaluated_tokens"] / added, 3) if added > 0 else None


def _memory(data: Path) -> Any:
    """The server's memory store under `data`, or None where no embedder is installed."""
    from server.memory.embedding import MiniLMEmbedder, find_embedder_dir
    from server.memory.store import Memory
    from server.models.catalogue import models_dir

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
    from server.records.store import Records

    records = Records(database)
    (last,) = [s["id"] for s in records.list_sessions([BENCH_CLIENT])][:1]
    return last, records.conversation(last)


def _last_prompts(conversation: Conversation, count: int) -> list[list[dict[str, str]]]:
    """The messages of the session's last `count` user turns, as the server laid them out."""
    from server.conversation.prompt import Prompts, build_messages

    prompts = Prompts.load("Tad")
    turns = conversation.turns
    users = [i for i, turn in enumerate(turns) if turn.role == "user"][-count:]
    return [
        build_messages(
            prompts,
            summary=conversation.summary,
            history=[{"role": t.role, "content": t.prompt} for t in turns[:index]],
            content=turns[index].prompt,
        )
        for index in users
    ]


def _raw_decode_rate(options: BenchOptions, chats: list[list[dict[str, str]]]) -> float:
    """Median decode speed of plain `Llama` chat streaming on the server's own prompts (so the context is
    as long), with the same threads and sampling."""
    import llama_cpp

    from server.conversation.llm.chat import fold_system
    from server.sections import LlmSection

    sampling = LlmSection()
    llm = llama_cpp.Llama(
        model_path=str(options.model),
        n_ctx=options.n_ctx,
        n_threads=options.n_threads,
        seed=1,
        swa_full=True,
        verbose=False,
    )
    rates = []
    for messages in chats:
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        first = 0.0
        stream = llm.create_chat_completion(
            messages=fold_system(messages),  # type: ignore[arg-type]
            max_tokens=options.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            repeat_penalty=sampling.repeat_penalty,
            stream=True,
        )
        for index, _ in enumerate(stream):
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
    from server.conversation.llm.chat import GenerationStats
    from server.conversation.llm.llama import LlamaCppChat
    from server.conversation.prompt import Prompts, stage_for

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
