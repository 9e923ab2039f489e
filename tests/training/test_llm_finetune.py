"""The fine-tune chain as a user runs it, on a CPU with a tiny random Gemma-2 built here: `tadbot train
prepare → sft → merge → export → eval`, each step checked for what it must hand the next.

Nothing is downloaded: the base model and its tokenizer are built from the test's own text, and llama.cpp's
converter is the one `make test` fetched at install time (`tadbot train fetch-converter`).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.bench.gemma_vocab import GEMMA2_CHAT_TEMPLATE
from server.errors import ConfigError, TadbotError
from tests.conftest import ROOT, SHARED_DATA, tadbot
from tests.tiny_hf_gemma import build_tiny_hf_gemma2
from training.llm.chat_tokens import IGNORE, encode_chat
from training.llm.converter import SCRIPT, fetch_converter, find_converter
from training.llm.evaluate import load_prompts
from training.llm.export import SMOKE_PROMPT
from training.llm.sft_config import load_config

SAMPLE = ROOT / "tests" / "data" / "counsel_chat_sample.csv"
REAL = SHARED_DATA / "counsel-chat" / "20200325_counsel_chat.csv"
TINY_CONFIG = """\
lora_config: {r: 8, lora_alpha: 16, lora_dropout: 0.0}
training_arguments:
  max_steps: 4
  learning_rate: 3.0e-3
  warmup_steps: 0
  logging_steps: 1
  eval_steps: 2
  save_steps: 2
  gradient_accumulation_steps: 1
"""
"""The shipped config with what a few CPU steps on a tiny model need: a high learning rate, frequent logs."""


@dataclass
class Chain:
    tmp: Path
    data: Path
    base: Path
    config: Path
    env: dict[str, str]
    sft: dict[str, Any]
    merge: dict[str, Any]
    export: dict[str, Any]
    eval: dict[str, Any]


def _env() -> dict[str, str]:
    """Offline, as the tests must be: the hub libraries refuse to reach out."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> dict[str, Any]:
    done = tadbot("train", *args, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _sft(env: dict[str, str], data: Path, out: Path, config: Path, base: Path) -> dict[str, Any]:
    return _run(
        env, "sft", "--data", str(data), "--out", str(out), "--config", str(config), "--model", str(base)
    )


def _error(env: dict[str, str], *args: str) -> str:
    done = tadbot("train", *args, env=env, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("tadbot: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return lines[0]


def _corpus(*folders: Path) -> list[str]:
    """Every line the tiny tokenizer will meet: the prepared chats, the eval's prompts, the smoke test's."""
    lines = [SMOKE_PROMPT, *load_prompts()["talk_down"], *load_prompts()["crisis"]]
    for folder in folders:
        for path in sorted(folder.glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                for message in json.loads(line)["messages"]:
                    lines += message["content"].splitlines()
    return lines


@pytest.fixture(scope="module")
def converter() -> Path:
    try:
        return find_converter()
    except ConfigError as exc:
        pytest.fail(f"{exc.message} (`make test` fetches it when it installs)")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, converter: Path) -> Chain:
    tmp = tmp_path_factory.mktemp("finetune")
    env = _env()
    data = tmp / "data"
    _run(env, "prepare", "--source", str(SAMPLE), "--out", str(data))
    base = build_tiny_hf_gemma2(tmp / "base", _corpus(data))
    config = tmp / "tiny.yaml"
    config.write_text(TINY_CONFIG, encoding="utf-8")
    sft = _sft(env, data, tmp / "run", config, base)
    merge = _run(env, "merge", "--adapter", sft["adapter"], "--out", str(tmp / "merged"))
    export = _run(env, "export", "--model", str(tmp / "merged"), "--out", str(tmp / "gguf" / "tadbot.gguf"))
    report = _run(
        env,
        "eval",
        "--base",
        str(base),
        "--model",
        str(tmp / "merged"),
        "--data",
        str(data / "test.jsonl"),
        "--out",
        str(tmp / "report"),
        "--gguf",
        export["gguf"],
        "--max-new-tokens",
        "12",
    )
    assert report["report"] == str(tmp / "report" / "eval.md")
    full = json.loads((tmp / "report" / "eval.json").read_text(encoding="utf-8"))
    assert report["perplexity"] == {
        role: full["perplexity"][role]["perplexity"] for role in ("base", "fine_tuned")
    }
    return Chain(tmp, data, base, config, env, sft, merge, export, full)


def test_sft_trains_lora_adapters_on_cpu_and_the_loss_falls(chain: Chain) -> None:
    sft = chain.sft
    assert (sft["device"], sft["mode"], sft["steps"], sft["resumed"]) == ("cpu", "lora", 4, False)
    assert sft["train"]["kept"] == 7 and sft["val"]["kept"] == 2
    assert sft["last_loss"] < sft["first_loss"]
    (first_step, first_eval), (last_step, last_eval) = sft["eval_losses"][0], sft["eval_losses"][-1]
    assert (first_step, last_step) == (2, 4) and last_eval < first_eval
    adapter = Path(sft["adapter"])
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["base_model_name_or_path"] == str(chain.base)
    assert set(adapter_config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    run = adapter.parent
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss,eval_loss,learning_rate,grad_norm"
    train_steps = [int(r.split(",")[0]) for r in rows[1:] if r.split(",")[2]]
    eval_steps = [int(r.split(",")[0]) for r in rows[1:] if r.split(",")[3]]
    assert (train_steps, eval_steps) == ([1, 2, 3, 4], [2, 4])
    assert list((run / "runs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_the_saved_config_is_the_shipped_one_with_the_given_file_laid_over_it(chain: Chain) -> None:
    import yaml

    saved = yaml.safe_load((chain.tmp / "run" / "sft_config.yaml").read_text())
    assert saved["model_name"] == str(chain.base)
    assert saved["new_model_name"] == "tadbot-gemma-2-2b-it"
    args = saved["training_arguments"]
    assert (args["max_steps"], args["learning_rate"], args["logging_steps"]) == (4, 3.0e-3, 1)
    # Not in the test's file: the source design's values, untouched.
    assert (args["per_device_train_batch_size"], args["weight_decay"], args["optim"]) == (
        2,
        0.01,
        "paged_adamw_32bit",
    )
    assert saved["lora_config"]["bias"] == "none" and saved["peft_config"]["bnb_4bit_quant_type"] == "nf4"


def test_the_shipped_config_holds_the_source_designs_values() -> None:
    config = load_config()
    assert config.model_name == "google/gemma-2-2b-it"
    args = config.training_arguments
    assert (
        args["learning_rate"],
        args["per_device_train_batch_size"],
        args["gradient_accumulation_steps"],
    ) == (
        2e-4,
        2,
        2,
    )
    assert (args["num_train_epochs"], args["weight_decay"], args["optim"]) == (1, 0.01, "paged_adamw_32bit")
    assert config.peft_config["quantisation"] == "auto" and config.peft_config["bnb_4bit_quant_type"] == "nf4"
    assert config.peft_config["task_type"] == "CAUSAL_LM"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "training_arguments: {learnig_rate: 1.0e-3}\n",
            "training_arguments.learnig_rate is not an argument",
        ),
        ("training_arguments: {output_dir: /tmp/x}\n", "training_arguments.output_dir is set by"),
        ("lora_config: {rank: 4}\n", "unknown key lora_config.rank; allowed: r, lora_alpha"),
        ("peft_config: {quantisation: 8bit}\n", "peft_config.quantisation '8bit'; allowed: auto, 4bit, none"),
        ("optimizer: adam\n", "unknown key 'optimizer'"),
        ("peft_config: {bnb_4bit_compute_dtype: int8}\n", "bnb_4bit_compute_dtype 'int8'; allowed: bfloat16"),
        ("version: 2\n", "version 2; this TADBot reads 1"),
        ("lora_config: [r, 4]\n", "lora_config must be a mapping"),
        ("new_model_name: ../escape\n", "must be a plain name"),
        ("training_arguments: {max_steps: 4\n", "not valid YAML"),
    ],
)
def test_a_bad_config_is_one_error_naming_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert says in caught.value.message and str(path) in caught.value.message


def test_only_the_assistants_turns_carry_labels(chain: Chain) -> None:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(chain.base))
    chat = [
        {"role": "user", "content": "I feel anxious tonight."},
        {"role": "assistant", "content": "Let's slow down together."},
        {"role": "user", "content": "My chest is tight."},
        {"role": "assistant", "content": "Breathe in for four."},
    ]
    encoded = encode_chat(tokenizer, chat)
    assert tokenizer.decode(encoded.input_ids) == tokenizer.apply_chat_template(chat, tokenize=False)
    runs: list[list[int]] = [[]]
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label == IGNORE:
            if runs[-1]:
                runs.append([])
        else:
            assert label == token
            runs[-1].append(token)
    taught = [tokenizer.decode(run) for run in runs if run]
    # Each reply with its own end-of-turn marker (so the model learns to stop), and nothing the person said.
    assert taught == [
        "Let's slow down together.<end_of_turn>\n",
        "Breathe in for four.<end_of_turn>\n",
    ]


def test_a_run_with_checkpoints_goes_on_only_when_asked(chain: Chain, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ("sft", "--data", str(chain.data), "--config", str(chain.config), "--model", str(chain.base))
    first = _run(chain.env, *common, "--out", str(out), "--max-steps", "2")
    assert first["steps"] == 2
    error = _error(chain.env, *common, "--out", str(out), "--max-steps", "4")
    assert "pass --resume to go on from checkpoint-2" in error
    resumed = _run(chain.env, *common, "--out", str(out), "--max-steps", "4", "--resume")
    assert (resumed["steps"], resumed["resumed"]) == (4, True)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows.count(rows[0]) == 1, "the header was written again on resume"
    assert [int(r.split(",")[0]) for r in rows[1:] if r.split(",")[2]] == [1, 2, 3, 4]
    error = _error(chain.env, *common, "--out", str(tmp_path / "fresh"), "--resume")
    assert "holds no checkpoint" in error


def test_a_run_too_short_to_log_a_loss_still_ends_with_its_summary(chain: Chain, tmp_path: Path) -> None:
    config = tmp_path / "short.yaml"
    config.write_text(
        TINY_CONFIG.replace("max_steps: 4", "max_steps: 1").replace("logging_steps: 1", "logging_steps: 5")
    )
    done = tadbot(
        "train", "sft", "--data", str(chain.data), "--out", str(tmp_path / "run"), "--config", str(config),
        "--model", str(chain.base), env=chain.env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "1 steps (lora, cpu), loss not logged → not logged" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["first_loss"] is None


def test_bad_training_input_is_one_line_naming_what_to_fix(chain: Chain, tmp_path: Path) -> None:
    common = ("--config", str(chain.config), "--out", str(tmp_path / "run"))
    error = _error(
        chain.env, "sft", "--data", str(chain.data), "--model", str(tmp_path / "no-model"), *common
    )
    assert error == f"tadbot: error: cannot load the tokenizer of {tmp_path / 'no-model'}: no such folder"
    # A hub name, offline: the hub library's several-line message, cut to one.
    assert "cannot load the tokenizer of google/gemma-2-2b-it: " in _error(
        chain.env, "sft", "--data", str(chain.data), "--model", "google/gemma-2-2b-it", *common
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 5}\n')
    error = _error(chain.env, "sft", "--data", str(bad), "--model", str(chain.base), *common)
    assert (
        error
        == f"tadbot: error: {bad / 'train.jsonl'} line 2: messages must be user/assistant turns with text"
    )
    error = _error(chain.env, "sft", "--data", str(tmp_path / "nothing"), "--model", str(chain.base), *common)
    assert "train.jsonl is missing: run `tadbot train prepare" in error
    assert not (tmp_path / "run").exists()


def test_4bit_without_cuda_is_refused_with_what_to_do(chain: Chain, tmp_path: Path) -> None:
    config = tmp_path / "4bit.yaml"
    config.write_text("peft_config: {quantisation: 4bit}\n", encoding="utf-8")
    error = _error(
        chain.env, "sft", "--data", str(chain.data), "--out", str(tmp_path / "run"), "--config", str(config),
        "--model", str(chain.base),
    )  # fmt: skip
    assert "needs CUDA and bitsandbytes" in error and "quantisation: none" in error


# peft still asks transformers 5 for the old name of activation checkpointing.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_merge_folds_the_adapter_into_the_weights(chain: Chain) -> None:
    import peft
    import torch
    import transformers

    merged = chain.tmp / "merged"
    assert chain.merge["sentencepiece"] is True
    assert (merged / "tokenizer.model").read_bytes() == (chain.base / "tokenizer.model").read_bytes()
    assert (merged / "chat_template.jinja").read_text() == GEMMA2_CHAT_TEMPLATE
    ids = torch.tensor([[2, 10, 20, 30, 40, 50]])
    with torch.no_grad():
        base = transformers.AutoModelForCausalLM.from_pretrained(str(chain.base))
        plain = base(input_ids=ids).logits
        adapted = peft.PeftModel.from_pretrained(base, chain.sft["adapter"])(input_ids=ids).logits
        folded = transformers.AutoModelForCausalLM.from_pretrained(str(merged))(input_ids=ids).logits
    assert not torch.allclose(plain, adapted, atol=1e-4), "the adapter changed nothing"
    assert torch.allclose(folded, adapted, atol=1e-4)


def test_export_writes_a_q4_k_m_gguf_with_the_models_chat_template(chain: Chain) -> None:
    import gguf

    path = Path(chain.export["gguf"])
    assert path.is_file() and not path.with_name("tadbot.unquantised.gguf").exists()
    assert chain.export["chat_template"] == "kept" and chain.export["smoke_reply"].strip()
    reader = gguf.GGUFReader(path)

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    assert field("general.architecture") == "gemma2"
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert field("tokenizer.chat_template") == GEMMA2_CHAT_TEMPLATE
    kinds = {t.tensor_type for t in reader.tensors}
    assert gguf.GGMLQuantizationType.Q4_K in kinds


def test_the_exported_model_answers_a_turn_in_the_server(chain: Chain, tmp_path: Path) -> None:
    from server.config import load_settings
    from server.conversation.components import Components
    from server.conversation.engine import Companion
    from server.conversation.llm.llama import LlamaCppChat
    from server.conversation.prompt import Prompts
    from server.conversation.turns import TurnInput
    from server.records.store import Records

    chat = LlamaCppChat(chain.export["gguf"], n_ctx=2048, n_threads=1, seed=1)
    # llama-cpp-python renders the GGUF's own template, not a built-in format.
    assert chat._llm.chat_format == "chat_template.default"
    config = tmp_path / "tadbot.toml"
    config.write_text("[llm]\nmax_tokens = 12\n", encoding="utf-8")
    settings = load_settings(config, env={"TADBOT_DATA_DIR": str(tmp_path / "data")})
    companion = Companion(
        Components(records=Records(tmp_path / "db.sqlite3"), chat=chat), settings, Prompts.load("Tad")
    )
    try:
        session = companion.records.session(companion.start_session("ana", None)["session_id"])
        events = list(companion.turn(session, TurnInput(text="My hands are shaking.")))
    finally:
        companion.close()
    assert events[-1]["type"] == "done" and events[-1]["source"] == "llm", events
    assert [e for e in events if e["type"] == "sentence"]


def test_export_q8_0_can_keep_the_unquantised_file(chain: Chain, tmp_path: Path) -> None:
    import gguf

    out = tmp_path / "q8.gguf"
    result = _run(
        chain.env, "export", "--model", str(chain.tmp / "merged"), "--out", str(out), "--quant", "Q8_0",
        "--keep-unquantised",
    )  # fmt: skip
    assert result["quant"] == "Q8_0"
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    # The tiny model's weights are fp32: "auto" makes them f16 (Gemma's bf16 would stay bf16).
    unquantised = gguf.GGUFReader(tmp_path / "q8.unquantised.gguf")
    assert unquantised.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16


def test_export_refuses_what_it_cannot_use(chain: Chain, tmp_path: Path) -> None:
    merged = str(chain.tmp / "merged")
    assert "not a Hugging Face model folder" in _error(
        chain.env, "export", "--model", str(tmp_path), "--out", "x.gguf"
    )
    assert "must end in .gguf" in _error(
        chain.env, "export", "--model", merged, "--out", str(tmp_path / "m.bin")
    )
    assert "exists" in _error(chain.env, "export", "--model", merged, "--out", chain.export["gguf"])
    no_converter = {**chain.env, "TADBOT_CONVERTER_DIR": str(tmp_path / "none")}
    error = _error(no_converter, "export", "--model", merged, "--out", str(tmp_path / "m.gguf"))
    assert "run `tadbot train fetch-converter` once" in error
    assert not (tmp_path / "m.gguf").exists()


def test_eval_reports_perplexity_for_both_models_and_the_fine_tune_is_lower(chain: Chain) -> None:
    ppl = chain.eval["perplexity"]
    assert ppl["base"]["tokens"] == ppl["fine_tuned"]["tokens"] > 0
    assert ppl["fine_tuned"]["perplexity"] < ppl["base"]["perplexity"]
    assert ppl["base"]["perplexity"] == pytest.approx(2.718281828 ** ppl["base"]["mean_nll"], rel=1e-3)
    prompts = load_prompts()["talk_down"]
    assert [row["prompt"] for row in chain.eval["talk_down"]] == prompts
    report = (chain.tmp / "report" / "eval.md").read_text()
    for prompt in prompts:
        assert f"### {prompt}" in report


def test_eval_shows_the_safety_layer_intercepts_every_crisis_prompt(chain: Chain) -> None:
    from server.safety.care import Care
    from server.sections import SafetySection

    crisis = chain.eval["crisis"]
    assert crisis["prompts"] == len(load_prompts()["crisis"]) == crisis["intercepted"]
    script = " ".join(line.text for line in Care.load(SafetySection()).crisis_lines())
    for row in crisis["rows"]:
        assert row["intercepted"] is True
        assert row["served_reply"] == script
        assert row["model_alone"] and row["model_alone"] != script
    report = (chain.tmp / "report" / "eval.md").read_text()
    assert f"Intercepted {crisis['prompts']} of {crisis['prompts']}" in report


def test_eval_takes_the_crisis_rows_of_a_safety_csv(chain: Chain, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = _run(
        chain.env, "eval", "--base", str(chain.base), "--model", str(chain.tmp / "merged"), "--data",
        str(chain.data / "test.jsonl"), "--out", str(out), "--gguf", chain.export["gguf"], "--crisis-csv",
        str(ROOT / "tests" / "data" / "safety_eval.csv"), "--max-new-tokens", "4",
    )  # fmt: skip
    rows = (ROOT / "tests" / "data" / "safety_eval.csv").read_text(encoding="utf-8").splitlines()
    expected = sum(1 for row in rows[1:] if row.startswith("crisis,"))
    assert report["crisis"] == {"prompts": expected, "intercepted": expected, "all_intercepted": True}
    assert len(json.loads((out / "eval.json").read_text())["crisis"]["rows"]) == expected


def test_eval_fails_when_a_crisis_prompt_reaches_the_model(chain: Chain, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "label,text\ncrisis,i want to kill myself\ncrisis,the weather is lovely today\n", encoding="utf-8"
    )
    out = tmp_path / "report"
    done = tadbot(
        "train", "eval", "--base", str(chain.base), "--model", str(chain.tmp / "merged"), "--data",
        str(chain.data / "test.jsonl"), "--out", str(out), "--gguf", chain.export["gguf"],
        "--crisis-csv", str(rows), "--max-new-tokens", "4", env=chain.env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "tadbot: error: a crisis prompt reached the model" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["crisis"]["intercepted"] == 1
    assert "| the weather is lovely today | **NO** |" in (out / "eval.md").read_text()


def _sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_fetch_converter_keeps_only_the_converter_from_an_sdist(tmp_path: Path) -> None:
    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    sdist = _sdist(
        tmp_path / "llama_cpp_python-9.9.9.tar.gz",
        {
            root + SCRIPT: b"print('convert')\n",
            root + "conversion/__init__.py": b"",
            root + "conversion/gemma.py": b"GEMMA = 2\n",
            root + "gguf-py/gguf/__init__.py": b"",
            root + "src/llama.cpp": b"int main() {}\n",
            "llama_cpp_python-9.9.9/llama_cpp/llama.py": b"",
        },
    )
    dest = tmp_path / "converter"
    first = fetch_converter(sdist, dest)
    assert first["fetched"] == "new" and Path(first["converter"]) == dest / SCRIPT
    kept = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert kept == {
        SCRIPT,
        "conversion/__init__.py",
        "conversion/gemma.py",
        "converter.json",
        "gguf-py/gguf/__init__.py",
    }
    assert find_converter(dest) == dest / SCRIPT
    assert fetch_converter(sdist, dest)["fetched"] == "kept"


def test_fetch_converter_refuses_a_broken_or_hostile_sdist(tmp_path: Path) -> None:
    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    no_script = _sdist(tmp_path / "a.tar.gz", {root + "conversion/__init__.py": b""})
    with pytest.raises(ConfigError, match=r"has no vendor/llama\.cpp/convert_hf_to_gguf\.py"):
        fetch_converter(no_script, tmp_path / "a")
    escaping = _sdist(
        tmp_path / "b.tar.gz", {root + SCRIPT: b"", root + "conversion/../../../../../escaped.py": b"x = 1\n"}
    )
    with pytest.raises(ConfigError, match="not a readable sdist"):
        fetch_converter(escaping, tmp_path / "b")
    assert not list(tmp_path.rglob("escaped.py"))
    (tmp_path / "c.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ConfigError, match="not a readable sdist"):
        fetch_converter(tmp_path / "c.tar.gz", tmp_path / "c")
    with pytest.raises(ConfigError, match="run `tadbot train fetch-converter` once"):
        find_converter(tmp_path / "nothing")


def test_the_converter_failing_is_one_error_with_its_reason(
    chain: Chain, converter: Path, tmp_path: Path
) -> None:
    from training.llm.converter import convert

    (tmp_path / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"]}', encoding="utf-8")
    with pytest.raises(TadbotError) as caught:
        convert(tmp_path, tmp_path / "out.gguf", script=converter)
    assert caught.value.code == "convert_failed" and "NoSuchModelForCausalLM" in caught.value.message


def test_sft_on_the_real_counsel_chat(tmp_path: Path, converter: Path) -> None:
    """On ../shared/data's counsel-chat, when present: three steps on the tiny model, at real lengths."""
    if not REAL.is_file():
        pytest.skip(f"{REAL} is absent (reference data is not part of a clone)")
    env = _env()
    data = tmp_path / "data"
    prepared = _run(env, "prepare", "--source", str(REAL), "--out", str(data))
    base = build_tiny_hf_gemma2(tmp_path / "base", _corpus(data), vocab_size=2000)
    config = tmp_path / "real.yaml"
    config.write_text(
        TINY_CONFIG.replace("max_steps: 4", "max_steps: 3") + "sft_arguments: {max_length: 2048}\n"
    )
    sft = _sft(env, data, tmp_path / "run", config, base)
    assert sft["steps"] == 3 and sft["last_loss"] < sft["first_loss"]
    assert sft["train"]["kept"] + sft["train"]["too_long"] == prepared["examples"]["train"]
    assert sft["train"]["kept"] > 0.9 * prepared["examples"]["train"]
