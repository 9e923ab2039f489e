"""`tadbot train merge`: the LoRA adapter folded into the base weights, saved as a plain Hugging Face folder
(safetensors, tokenizer, chat template) that llama.cpp's converter and any other tool can read.

The base is loaded in its own precision on the CPU, never in 4-bit: adapters trained with QLoRA are merged
into the full weights, as QLoRA intends.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.for_training import ConfigError
from training.llm.libraries import require, unloadable

_LOGGER = logging.getLogger(__name__)
# llama.cpp's converter reads Gemma's vocabulary from the SentencePiece model, which newer transformers no
# longer write when saving a tokenizer: it is copied from the base.
_SENTENCEPIECE = "tokenizer.model"


@dataclass(frozen=True)
class MergeRun:
    adapter: Path
    out: Path
    base: str | None = None
    command_line: str = ""


def run_merge(run: MergeRun) -> dict[str, Any]:
    config_file = run.adapter / "adapter_config.json"
    try:
        adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            "no_adapter",
            f"{config_file}: cannot read ({exc}); pass the adapter folder `tadbot train sft` wrote",
        ) from exc
    base = run.base or adapter_config.get("base_model_name_or_path")
    if not base:
        raise ConfigError("no_base", f"{config_file} names no base model: pass --base")
    if run.out.exists() and any(run.out.iterdir()):
        raise ConfigError("out_not_empty", f"{run.out} is not empty: choose a new --out")
    require("torch", "transformers", "peft")
    import peft
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(run.adapter))
    if not tokenizer.chat_template:
        raise ConfigError("no_chat_template", f"the tokenizer in {run.adapter} has no chat template")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    except (OSError, ValueError) as exc:
        raise unloadable("the base model", base, exc) from exc
    merged = peft.PeftModel.from_pretrained(model, str(run.adapter)).merge_and_unload()
    run.out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(run.out))
    tokenizer.save_pretrained(str(run.out))
    sentencepiece = _copy_sentencepiece(base, run.out)
    summary = {
        "base_model": base,
        "adapter": str(run.adapter),
        "out": str(run.out),
        "parameters": sum(p.numel() for p in merged.parameters()),
        "dtype": str(merged.dtype).removeprefix("torch."),
        "sentencepiece": sentencepiece,
        "command": run.command_line,
    }
    (run.out / "merge.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _copy_sentencepiece(base: str, out: Path) -> bool:
    """Copy the base's tokenizer.model beside the merged weights; from the hub's cache when the base is a
    hub name (the file is small, and fetched like the rest of the model)."""
    local = Path(base)
    if local.is_dir():
        source = local / _SENTENCEPIECE
        if not source.is_file():
            _LOGGER.warning(
                "%s has no %s; llama.cpp's converter may not read the vocabulary", base, _SENTENCEPIECE
            )
            return False
        shutil.copyfile(source, out / _SENTENCEPIECE)
        return True
    try:
        from huggingface_hub import hf_hub_download

        shutil.copyfile(hf_hub_download(base, _SENTENCEPIECE), out / _SENTENCEPIECE)
    except Exception as exc:  # the hub raises many kinds; any of them means the file is not there
        _LOGGER.warning("could not fetch %s of %s (%s)", _SENTENCEPIECE, base, exc)
        return False
    return True
