"""The fine-tune's YAML config: the shipped `sft.yaml` with a user's file laid over it, checked before any
model is loaded, so a typo costs a second and not a download."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.for_training import ConfigError

DEFAULT_CONFIG = Path(__file__).with_name("sft.yaml")
VERSION = 1
QUANTISATIONS = ("auto", "4bit", "none")
_DTYPES = ("bfloat16", "float16", "float32")
_LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "bias", "target_modules")
_PEFT_KEYS = (
    "task_type",
    "quantisation",
    "bnb_4bit_quant_type",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_use_double_quant",
    "gradient_checkpointing",
)
# Set from the command line and the run itself, never from the file.
_OWNED = (
    "output_dir",
    "eval_strategy",
    "save_strategy",
    "resume_from_checkpoint",
    "use_cpu",
    "assistant_only_loss",
    "completion_only_loss",
)
_GROUPS = ("lora_config", "peft_config", "training_arguments", "sft_arguments")


@dataclass(frozen=True)
class SftConfig:
    model_name: str
    new_model_name: str
    lora_config: dict[str, Any] = field(default_factory=dict)
    peft_config: dict[str, Any] = field(default_factory=dict)
    training_arguments: dict[str, Any] = field(default_factory=dict)
    sft_arguments: dict[str, Any] = field(default_factory=dict)
    source: str = str(DEFAULT_CONFIG)

    def as_yaml_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["source"]
        return {"version": VERSION, **data}


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> SftConfig:
    """The defaults, then `path`'s values group by group, then `overrides` (flags, as top-level keys or
    `group.key`)."""
    merged = _read(DEFAULT_CONFIG)
    source = str(DEFAULT_CONFIG)
    if path is not None:
        given = _read(path)
        source = str(path)
        for key, value in given.items():
            if key in _GROUPS:
                if not isinstance(value, dict):
                    raise ConfigError("config_invalid", f"{path}: {key} must be a mapping, got {value!r}")
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    for dotted, value in (overrides or {}).items():
        group, _, key = dotted.rpartition(".")
        if group:
            merged[group][key] = value
        else:
            merged[key] = value
    return _check(merged, source)


def _read(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config_unreadable", f"{path}: cannot read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("config_invalid", f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError("config_invalid", f"{path}: must be a mapping of the config's groups")
    if data.get("version", VERSION) != VERSION:
        raise ConfigError(
            "config_invalid", f"{path}: version {data['version']!r}; this TADBot reads {VERSION}"
        )
    data.pop("version", None)
    allowed = ("model_name", "new_model_name", *_GROUPS)
    for key in data:
        if key not in allowed:
            raise ConfigError("config_invalid", f"{path}: unknown key {key!r}; allowed: {', '.join(allowed)}")
    return data


def _check(data: dict[str, Any], source: str) -> SftConfig:
    for name in ("model_name", "new_model_name"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise ConfigError("config_invalid", f"{source}: {name} must be a non-empty string")
    if "/" in data["new_model_name"] or data["new_model_name"].startswith("."):
        raise ConfigError(
            "config_invalid", f"{source}: new_model_name {data['new_model_name']!r} must be a plain name"
        )
    _known(source, "lora_config", data["lora_config"], _LORA_KEYS)
    _known(source, "peft_config", data["peft_config"], _PEFT_KEYS)
    _one_of(source, "peft_config", "quantisation", data["peft_config"]["quantisation"], QUANTISATIONS)
    _one_of(
        source,
        "peft_config",
        "bnb_4bit_compute_dtype",
        data["peft_config"]["bnb_4bit_compute_dtype"],
        _DTYPES,
    )
    arguments = _sft_fields()
    for group in ("training_arguments", "sft_arguments"):
        for key in data[group]:
            if key in _OWNED:
                raise ConfigError(
                    "config_invalid",
                    f"{source}: {group}.{key} is set by `tadbot train sft` (--out, --resume)",
                )
            if key not in arguments:
                raise ConfigError(
                    "config_invalid",
                    f"{source}: {group}.{key} is not an argument of trl's SFTConfig or transformers' "
                    "TrainingArguments",
                )
    return SftConfig(
        model_name=data["model_name"],
        new_model_name=data["new_model_name"],
        lora_config=dict(data["lora_config"]),
        peft_config=dict(data["peft_config"]),
        training_arguments=dict(data["training_arguments"]),
        sft_arguments=dict(data["sft_arguments"]),
        source=source,
    )


def _one_of(source: str, group: str, key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            "config_invalid", f"{source}: {group}.{key} {value!r}; allowed: {', '.join(allowed)}"
        )


def _known(source: str, group: str, table: object, keys: tuple[str, ...]) -> None:
    if not isinstance(table, dict):
        raise ConfigError("config_invalid", f"{source}: {group} must be a mapping")
    for key in table:
        if key not in keys:
            raise ConfigError(
                "config_invalid", f"{source}: unknown key {group}.{key}; allowed: {', '.join(keys)}"
            )


def _sft_fields() -> set[str]:
    """The argument names trl accepts, read from trl itself so a newer release's arguments are allowed."""
    from trl import SFTConfig as TrlSftConfig

    return {f.name for f in dataclasses.fields(TrlSftConfig) if f.init}
