"""`tadbot train eval`: is the fine-tune better, and is it still safe to serve?

- Perplexity of the base and the fine-tuned model on the held-out split, over the assistant's tokens only
  (the tokens training was scored on; chat_tokens), token-weighted over the whole split.
- A fixed set of talk-down prompts (eval_prompts.toml) answered greedily by both, side by side.
- Crisis prompts sent through the server's own turn path with the fine-tuned GGUF as its model: each must
  get the scripted crisis reply. The model's own answer, unguarded, is shown beside it for the reader.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.for_training import (
    Companion,
    Components,
    ConfigError,
    DataFile,
    LlamaCppChat,
    Prompts,
    Records,
    TadbotError,
    TurnInput,
    fold_system,
    load_settings,
    read_rows,
)
from training.llm.chat_tokens import IGNORE, encode_chat, read_chats
from training.llm.libraries import require, unloadable

_LOGGER = logging.getLogger(__name__)
PROMPTS = "training/llm/eval_prompts.toml"
PROMPTS_VERSION = 1
PERSONA_NAME = "Tad"


@dataclass(frozen=True)
class EvalRun:
    base: str
    model: str
    data: Path
    out: Path
    gguf: Path | None = None
    crisis_csv: Path | None = None
    max_new_tokens: int = 80
    max_length: int = 2048
    command_line: str = ""


def load_prompts() -> dict[str, list[str]]:
    return DataFile(PROMPTS, PROMPTS_VERSION, "bad_prompts", _prompts).load()


def _prompts(data: dict[str, Any]) -> dict[str, list[str]]:
    return {key: [str(p) for p in data[key]] for key in ("talk_down", "crisis")}


def crisis_prompts(path: Path | None) -> tuple[list[str], str]:
    """The crisis rows of a label,text CSV (the safety eval's format), else the shipped list."""
    if path is None:
        return load_prompts()["crisis"], PROMPTS
    try:
        rows = read_rows(path)
    except TadbotError as exc:  # the file is the user's input: a bad one is exit 2, as elsewhere here
        raise ConfigError(exc.code, f"--crisis-csv {exc.message}") from None
    texts = [r.text for r in rows if r.label == "crisis" and r.text.strip()]
    if not texts:
        raise ConfigError("bad_data", f"--crisis-csv {path}: no rows labelled crisis (columns label,text)")
    return texts, str(path)


def run_eval(run: EvalRun) -> dict[str, Any]:
    if not run.data.is_file():
        raise ConfigError(
            "no_data", f"{run.data}: no such file (the test.jsonl `tadbot train prepare` wrote)"
        )
    chats = list(read_chats(run.data))
    if not chats:
        raise ConfigError("no_data", f"{run.data}: no conversations")
    talk_down = load_prompts()["talk_down"]
    crisis, crisis_source = crisis_prompts(run.crisis_csv)
    prompts = Prompts.load(PERSONA_NAME)
    # transformers renders Gemma's own template, which refuses a system turn: fold it as the server does.
    asks = [fold_system(_told(prompts.system, p)) for p in talk_down]
    started = time.monotonic()
    scored: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[str]] = {}
    for role, name in (("base", run.base), ("fine_tuned", run.model)):
        scored[role], answers[role] = _score_model(name, chats, asks, run.max_new_tokens, run.max_length)
    report: dict[str, Any] = {
        "base": run.base,
        "fine_tuned": run.model,
        "data": str(run.data),
        "perplexity": scored,
        "talk_down": [
            {"prompt": p, "base": answers["base"][i], "fine_tuned": answers["fine_tuned"][i]}
            for i, p in enumerate(talk_down)
        ],
        "crisis": _crisis(run.gguf, crisis, prompts, run.max_new_tokens) if run.gguf else None,
        "crisis_source": crisis_source,
        "command": run.command_line,
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "eval.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (run.out / "eval.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _score_model(
    name: str,
    chats: list[list[dict[str, str]]],
    asks: list[list[dict[str, str]]],
    max_new: int,
    max_length: int,
) -> tuple[dict[str, Any], list[str]]:
    """Perplexity over the assistant's tokens and greedy answers to `asks`, with the model loaded once."""
    require("torch", "transformers")
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            name,
            dtype="auto" if device == "cuda" else torch.float32,
            attn_implementation="eager",
            device_map={"": device},
        )
    except (OSError, ValueError) as exc:
        raise unloadable("the model", name, exc) from exc
    model.eval()
    total_nll, tokens, skipped = 0.0, 0, 0
    with torch.no_grad():
        for messages in chats:
            encoded = encode_chat(tokenizer, messages)
            if len(encoded.input_ids) > max_length or not encoded.trained:
                skipped += 1
                continue
            ids = torch.tensor([encoded.input_ids], device=device)
            labels = torch.tensor([encoded.labels], device=device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            targets = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total_nll += float(nll)
            tokens += int((targets != IGNORE).sum())
        replies = [_greedy(tokenizer, model, ask, max_new, device) for ask in asks]
    if not tokens:
        raise ConfigError("no_data", f"no conversation fits in {max_length} tokens for {name}")
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    mean = total_nll / tokens
    _LOGGER.info("%s: perplexity %.3f over %d assistant tokens", name, math.exp(mean), tokens)
    figures = {
        "perplexity": round(math.exp(mean), 4),
        "mean_nll": round(mean, 5),
        "tokens": tokens,
        "conversations": len(chats) - skipped,
        "skipped_too_long": skipped,
    }
    return figures, replies


def _greedy(tokenizer: Any, model: Any, messages: list[dict[str, str]], max_new: int, device: str) -> str:
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
    stop = [
        t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")) if t is not None
    ]
    out = model.generate(
        ids, max_new_tokens=max_new, do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id
    )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


def _told(persona: str, text: str) -> list[dict[str, str]]:
    """`text` said to the companion, with its persona as the system turn."""
    return [{"role": "system", "content": persona}, {"role": "user", "content": text}]


def _crisis(gguf: Path, texts: list[str], prompts: Prompts, max_new: int) -> dict[str, Any]:
    """Each text through the server's engine with `gguf` as its model, and through the model alone."""
    chat = LlamaCppChat(gguf, n_ctx=2048, seed=1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tadbot-eval-") as tmp:
        config = Path(tmp) / "tadbot.toml"
        config.write_text("", encoding="utf-8")
        settings = load_settings(config, env={"TADBOT_DATA_DIR": tmp})
        components = Components(records=Records(Path(tmp) / "eval.sqlite3"), chat=chat)
        companion = Companion(components, settings, prompts)
        try:
            for prompt in texts:
                session_id = companion.start_session("train-eval", None)["session_id"]
                events = list(companion.turn(companion.records.session(session_id), TurnInput(text=prompt)))
                safety = [e for e in events if e["type"] == "safety"]
                done = [e for e in events if e["type"] == "done"]
                served = " ".join(e["text"] for e in events if e["type"] == "sentence")
                alone = "".join(
                    chat.stream_chat(_told(prompts.system, prompt), max_tokens=max_new, temperature=0.0)
                )
                rows.append(
                    {
                        "prompt": prompt,
                        "intercepted": bool(safety) and bool(done) and done[-1].get("source") == "crisis",
                        "served_reply": served,
                        "model_alone": alone.strip(),
                    }
                )
        finally:
            companion.close()
    caught = sum(r["intercepted"] for r in rows)
    return {
        "gguf": str(gguf),
        "prompts": len(rows),
        "intercepted": caught,
        "all_intercepted": caught == len(rows),
        "rows": rows,
    }


def render_markdown(report: dict[str, Any]) -> str:
    base, tuned = report["perplexity"]["base"], report["perplexity"]["fine_tuned"]
    lines = [
        "# Fine-tune evaluation",
        "",
        f"- Base: `{report['base']}`",
        f"- Fine-tuned: `{report['fine_tuned']}`",
        f"- Held-out data: `{report['data']}`",
        "",
        "## Perplexity on the held-out split (assistant tokens only)",
        "",
        "| model | perplexity | assistant tokens | conversations |",
        "|---|---|---|---|",
        f"| base | {base['perplexity']} | {base['tokens']} | {base['conversations']} |",
        f"| fine-tuned | {tuned['perplexity']} | {tuned['tokens']} | {tuned['conversations']} |",
        "",
        "## Talk-down prompts (greedy, persona in front as the server sends it)",
        "",
    ]
    for row in report["talk_down"]:
        lines += [
            f"### {row['prompt']}",
            "",
            f"- **Base:** {_one_line(row['base'])}",
            f"- **Fine-tuned:** {_one_line(row['fine_tuned'])}",
            "",
        ]
    lines += ["## Crisis prompts through the safety layer (fine-tuned GGUF as the server's model)", ""]
    crisis = report["crisis"]
    if crisis is None:
        lines += ["Not run: pass --gguf with the exported model.", ""]
    else:
        lines += [
            f"Intercepted {crisis['intercepted']} of {crisis['prompts']} "
            f"(prompts from `{report['crisis_source']}`).",
            "",
            "| prompt | intercepted | what the server said | what the model alone would have said |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(r['prompt'])} | {'yes' if r['intercepted'] else '**NO**'} | "
            f"{_cell(r['served_reply'])} | {_cell(r['model_alone'])} |"
            for r in crisis["rows"]
        ]
        lines.append("")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(nothing)"


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")
