"""`tadbot train sft`: LoRA adapters on the base model from the chat JSONL `prepare` wrote.

QLoRA (the base held in 4-bit nf4 by bitsandbytes, paged AdamW) when CUDA is present; plain LoRA in full
precision otherwise, which is how the tests run it on a CPU with a tiny model. The loss is on the
assistant's turns only (chat_tokens). Checkpoints every `save_steps` make a run resumable; metrics go to
metrics.csv, and to TensorBoard when it is installed.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.for_training import ConfigError
from training.llm.chat_tokens import Encoded, encode_chat, read_chats
from training.llm.libraries import require, unloadable
from training.llm.sft_config import SftConfig

_LOGGER = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"
_METRICS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm")


@dataclass(frozen=True)
class SftRun:
    config: SftConfig
    data: Path
    out: Path
    resume: bool = False
    command_line: str = ""


def run_sft(run: SftRun) -> dict[str, Any]:
    """Train, save the adapter (with the tokenizer) in `out/adapter`, and return the run's summary, which is
    also written to `out/sft.json`."""
    started = time.monotonic()
    train_path, val_path = run.data / "train.jsonl", run.data / "val.jsonl"
    if not train_path.is_file():
        raise ConfigError(
            "no_data", f"{train_path} is missing: run `tadbot train prepare --out {run.data}` first"
        )
    checkpoints = sorted(run.out.glob("checkpoint-*"), key=_checkpoint_step)
    if checkpoints and not run.resume:
        raise ConfigError(
            "out_not_empty",
            f"{run.out} holds checkpoints from an earlier run: pass --resume to go on from "
            f"{checkpoints[-1].name}, or choose another --out",
        )
    if run.resume and not checkpoints:
        raise ConfigError("no_checkpoint", f"--resume: {run.out} holds no checkpoint-* folder to go on from")
    libs = _import_training_libraries()
    torch, transformers = libs["torch"], libs["transformers"]
    config = run.config
    seed = int(config.training_arguments.get("seed", 42))
    transformers.set_seed(seed)

    cuda = bool(torch.cuda.is_available())
    four_bit = _four_bit(config, cuda)
    tokenizer = _load_tokenizer(transformers, config.model_name)
    max_length = int(config.sft_arguments.get("max_length") or 1024)
    train, train_counts = _encode_split(tokenizer, train_path, max_length)
    val, val_counts = (
        _encode_split(tokenizer, val_path, max_length) if val_path.is_file() else ([], {"kept": 0})
    )
    if not train:
        raise ConfigError("no_data", f"{train_path}: no conversation fits in max_length {max_length} tokens")

    model = _load_model(libs, config, cuda=cuda, four_bit=four_bit)
    run.out.mkdir(parents=True, exist_ok=True)
    arguments = _trainer_arguments(libs, config, run.out, cuda=cuda, four_bit=four_bit, has_val=bool(val))
    lora = libs["peft"].LoraConfig(**config.lora_config, task_type=config.peft_config["task_type"])
    datasets = libs["datasets"]
    trainer = libs["trl"].SFTTrainer(
        model=model,
        args=arguments,
        train_dataset=datasets.Dataset.from_list([_row(e) for e in train]),
        eval_dataset=datasets.Dataset.from_list([_row(e) for e in val]) if val else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_csv_metrics(transformers, run.out / "metrics.csv", append=run.resume)],
    )
    mode = "qlora-4bit-nf4" if four_bit else "lora"
    _LOGGER.info(
        "Training %s on %s (%s, %d conversations; %d for validation)",
        config.model_name,
        "CUDA" if cuda else "CPU",
        mode,
        len(train),
        len(val),
    )
    result = trainer.train(resume_from_checkpoint=True if run.resume else None)
    adapter = run.out / ADAPTER_DIR
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    _write_yaml(run.out / "sft_config.yaml", config.as_yaml_dict())

    history = trainer.state.log_history
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    eval_losses = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    summary: dict[str, Any] = {
        "base_model": config.model_name,
        "new_model_name": config.new_model_name,
        "adapter": str(adapter),
        "device": "cuda" if cuda else "cpu",
        "mode": mode,
        "steps": int(trainer.state.global_step),
        "resumed": run.resume,
        "train": {"path": str(train_path), **train_counts},
        "val": {"path": str(val_path), **val_counts},
        "trained_tokens": sum(e.trained for e in train),
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "train_loss": float(result.training_loss),
        "eval_losses": eval_losses,
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "command": run.command_line,
    }
    (run.out / "sft.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _checkpoint_step(path: Path) -> int:
    """checkpoint-10 comes after checkpoint-9, which a plain sort would not give."""
    step = path.name.rpartition("-")[2]
    return int(step) if step.isdigit() else -1


def _import_training_libraries() -> dict[str, Any]:
    require()
    import datasets
    import peft
    import torch
    import transformers
    import trl

    datasets.disable_progress_bars()
    return {"torch": torch, "transformers": transformers, "peft": peft, "trl": trl, "datasets": datasets}


def _four_bit(config: SftConfig, cuda: bool) -> bool:
    wanted = config.peft_config["quantisation"]
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    if wanted == "none":
        return False
    if cuda and bnb:
        return True
    if wanted == "4bit" or cuda:
        why = "no CUDA GPU is present" if not cuda else "bitsandbytes is not installed"
        raise ConfigError(
            "no_4bit",
            f"4-bit QLoRA needs CUDA and bitsandbytes, and {why}: pip install 'tadbot[training-cuda]', or "
            "set peft_config.quantisation: none for full-precision LoRA",
        )
    return False


def _load_tokenizer(transformers: Any, name: str) -> Any:
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise unloadable("the tokenizer of", name, exc) from exc
    if not tokenizer.chat_template:
        raise ConfigError(
            "no_chat_template", f"{name} has no chat template: use an instruction-tuned (-it) model"
        )
    return tokenizer


def _encode_split(tokenizer: Any, path: Path, max_length: int) -> tuple[list[Encoded], dict[str, int]]:
    kept: list[Encoded] = []
    too_long = 0
    for messages in read_chats(path):
        encoded = encode_chat(tokenizer, messages)
        if len(encoded.input_ids) > max_length:
            too_long += 1
        elif encoded.trained:
            kept.append(encoded)
    if too_long:
        _LOGGER.warning("%s: left out %d conversations longer than %d tokens", path, too_long, max_length)
    return kept, {"kept": len(kept), "too_long": too_long}


def _row(encoded: Encoded) -> dict[str, list[int]]:
    return {"input_ids": encoded.input_ids, "labels": encoded.labels}


def _load_model(libs: dict[str, Any], config: SftConfig, *, cuda: bool, four_bit: bool) -> Any:
    torch, transformers = libs["torch"], libs["transformers"]
    peft_config = config.peft_config
    kwargs: dict[str, Any] = {
        # Gemma-2's logit soft-capping is only honoured by the eager attention.
        "attn_implementation": "eager",
        "dtype": _half(torch) if cuda else torch.float32,
    }
    if cuda:
        kwargs["device_map"] = {"": 0}
    if four_bit:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=peft_config["bnb_4bit_quant_type"],
            bnb_4bit_compute_dtype=_compute_dtype(torch, peft_config["bnb_4bit_compute_dtype"]),
            bnb_4bit_use_double_quant=bool(peft_config["bnb_4bit_use_double_quant"]),
        )
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(config.model_name, **kwargs)
    except (OSError, ValueError) as exc:
        raise unloadable("the model", config.model_name, exc) from exc
    if four_bit:
        model = libs["peft"].prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(peft_config["gradient_checkpointing"])
        )
    return model


def _half(torch: Any) -> Any:
    """bf16 where the GPU has it natively (Ampere on), else fp16: torch would otherwise emulate bf16 on a T4,
    slowly."""
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def _compute_dtype(torch: Any, name: str) -> Any:
    wanted = getattr(torch, name)  # one of sft_config's dtypes, checked when the config was read
    if wanted == torch.bfloat16 and _half(torch) != torch.bfloat16:
        _LOGGER.warning("this GPU has no native bfloat16: computing in float16 (Gemma-2 can overflow in it)")
        return torch.float16
    return wanted


def _trainer_arguments(
    libs: dict[str, Any], config: SftConfig, out: Path, *, cuda: bool, four_bit: bool, has_val: bool
) -> Any:
    torch = libs["torch"]
    given = {**config.training_arguments, **config.sft_arguments}
    if not four_bit and str(given.get("optim", "")).startswith("paged_"):
        _LOGGER.info("optim %s needs bitsandbytes on CUDA; using adamw_torch", given["optim"])
        given["optim"] = "adamw_torch"
    report_to = given.pop("report_to", [])
    report_to = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "tensorboard" in report_to and importlib.util.find_spec("tensorboard") is None:
        _LOGGER.warning("tensorboard is not installed: metrics go to metrics.csv only")
        report_to.remove("tensorboard")
    half = _half(torch) if cuda else None
    settings = {
        "bf16": half == torch.bfloat16,
        "fp16": half == torch.float16,
        _checkpointing_key(libs["trl"]): bool(config.peft_config["gradient_checkpointing"]),
        **given,
        "output_dir": str(out),
        "eval_strategy": "steps" if has_val and given.get("eval_steps") else "no",
        "save_strategy": "steps",
        "report_to": report_to or "none",
        "use_cpu": not cuda,
        # Labels are built here, turn by turn; trl must not mask or retokenise them.
        "assistant_only_loss": False,
        "completion_only_loss": False,
    }
    return libs["trl"].SFTConfig(**settings)


def _checkpointing_key(trl: Any) -> str:
    """transformers 5 renamed gradient checkpointing to activation checkpointing; the old name warns."""
    names = {f.name for f in dataclasses.fields(trl.SFTConfig)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _csv_metrics(transformers: Any, path: Path, *, append: bool) -> Any:
    """A callback writing each logged train/eval figure to a CSV, so a run can be read without TensorBoard."""

    class CsvMetrics(transformers.TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not (append and path.is_file()):
                with path.open("w", encoding="utf-8", newline="") as handle:
                    csv.writer(handle).writerow(_METRICS)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            logs = logs or {}
            if "loss" not in logs and "eval_loss" not in logs:
                return
            row = {**logs, "step": state.global_step}
            with path.open("a", encoding="utf-8", newline="") as handle:
                csv.writer(handle).writerow([row.get(name, "") for name in _METRICS])

    return CsvMetrics()


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
