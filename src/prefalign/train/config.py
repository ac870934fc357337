"""The training configuration: one typed dataclass; YAML file plus ``--field value`` overrides.

Unknown keys and ill-typed values are errors that name the closest valid field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from prefalign.errors import UserError


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------------------------
    model: str = ""  # local folder (or hub name when online) of a causal LM
    tokenizer: str | None = None  # defaults to the model folder
    trust_remote_code: bool = False  # only when you trust the model folder's code
    dtype: str = "fp32"  # fp32 | bf16
    # --- data --------------------------------------------------------------------------------------------------
    data: str = ""  # .jsonl / .json / .parquet / .csv / save_to_disk folder
    eval_data: str | None = None  # separate eval file; otherwise eval_fraction of data
    eval_fraction: float = 0.0
    max_length: int | None = 1024  # prompt + completion tokens per sequence
    truncation: str = "keep_start"  # keep_start | keep_end
    skip_invalid: bool = False  # drop invalid rows (counted in the report) instead of stopping
    # --- objective ---------------------------------------------------------------------------------------------
    objective: str | list = "dpo"  # a name, or a list of names combined with objective_weights
    objective_weights: list | None = None
    beta: float = 0.1  # passed to every objective that has a beta
    objective_args: dict = field(default_factory=dict)  # other hyperparameters: {name: value} or {objective: {..}}
    # --- reference ---------------------------------------------------------------------------------------------
    reference: str = "auto"  # auto | copy | precompute | none | adapter (auto: adapter with LoRA, none if unneeded)
    reference_cache_dir: str | None = None  # default: <output_dir>/../.prefalign-cache
    # --- LoRA --------------------------------------------------------------------------------------------------
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str | list = "all-linear"
    merge_lora: bool = False  # also save the merged model under <output_dir>/merged
    # --- optimisation ------------------------------------------------------------------------------------------
    learning_rate: float = 1e-6  # TRL's DPO default
    lr_scheduler: str = "linear"  # linear | cosine | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    batch_size: int = 4  # pairs per device per micro-batch
    gradient_accumulation_steps: int = 1
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs
    seed: int = 42
    shuffle: bool = True  # false: examples in file order (e.g. to compare with another trainer step by step)
    disable_dropout: bool = True  # as TRL: dropout makes policy ≠ reference at step 0
    log_prob_chunk_size: int = 1024  # completion positions per LM-head chunk
    layout: str = "shared_prefix"  # shared_prefix: prompt once per pair | separate: prompt+chosen, prompt+rejected
    pack: bool = False  # padding-free: a micro-batch's sequences in one row with a block mask
    gradient_checkpointing: bool = False  # recompute each layer in backward: far less activation memory, ~30% slower
    memory_probe: bool = True  # run the longest micro-batch once before training, so out-of-memory shows at once
    # --- output, logging, checkpoints --------------------------------------------------------------------------
    output_dir: str = "outputs/run"
    overwrite: bool = False  # allow writing into a folder that holds a finished run
    resume: bool = False
    save_steps: int = 0  # checkpoint every N optimizer steps (0: none until the end)
    save_total_limit: int = 2
    logging_steps: int = 1
    eval_steps: int = 0  # 0: evaluate at the end only (when there is eval data)
    report_to: list = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb, or []
    nan_policy: str = "stop"  # stop | skip
    progress: bool = True


_CHOICES = {
    "dtype": ("fp32", "bf16"),
    "truncation": ("keep_start", "keep_end"),
    "reference": ("auto", "copy", "precompute", "none", "adapter"),
    "lr_scheduler": ("linear", "cosine", "constant"),
    "nan_policy": ("stop", "skip"),
    "layout": ("separate", "shared_prefix"),
}
# Fields that do not change the result, so a resumed run may differ in them.
RUN_CONTROL_FIELDS = {"resume", "overwrite", "progress", "report_to", "logging_steps", "save_total_limit",
                      "reference_cache_dir"}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _closest(key: str, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, field_names(), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, tp)


def _accepts_float(tp: Any) -> bool:
    return tp is float or float in typing.get_args(tp)


def _float_or_str(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def from_dict(values: dict, where: str = "config") -> TrainConfig:
    hints = typing.get_type_hints(TrainConfig)
    values = dict(values)
    for key, value in values.items():
        if key not in hints:
            raise UserError(where, f"unknown key '{key}'{_closest(key)}", "see `prefalign train --help`")
        if isinstance(value, str) and _accepts_float(hints[key]):
            values[key] = value = _float_or_str(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
        if not _type_ok(value, hints[key]):
            raise UserError(where, f"'{key}' must be {_type_name(hints[key])}, got {value!r}",
                            "fix the value")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise UserError(where, f"'{key}' must be one of {', '.join(_CHOICES[key])}, got {value!r}",
                            "fix the value")
    cfg = TrainConfig(**{k: (float(v) if hints[k] is float else v) for k, v in values.items()})
    _check_ranges(cfg, where)
    return cfg


def _check_ranges(cfg: TrainConfig, where: str) -> None:
    checks = [
        ("learning_rate", cfg.learning_rate >= 0, ">= 0"),
        ("beta", cfg.beta > 0, "> 0"),
        ("batch_size", cfg.batch_size >= 1, ">= 1"),
        ("gradient_accumulation_steps", cfg.gradient_accumulation_steps >= 1, ">= 1"),
        ("eval_fraction", 0 <= cfg.eval_fraction < 1, "in [0, 1)"),
        ("max_length", cfg.max_length is None or cfg.max_length >= 2, ">= 2 or null"),
        ("warmup_ratio", 0 <= cfg.warmup_ratio <= 1, "in [0, 1]"),
        ("lora_r", cfg.lora_r >= 1, ">= 1"),
        ("log_prob_chunk_size", cfg.log_prob_chunk_size >= 1, ">= 1"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise UserError(where, f"'{name}' must be {rule}, got {getattr(cfg, name)!r}", "fix the value")


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(path, "config file not found", "check the path given to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(path, f"not valid YAML ({str(e).splitlines()[0]})", "fix the file") from None
    if not isinstance(data, dict):
        raise UserError(path, "expected a mapping of config keys", "write `key: value` lines")
    return data


def parse_overrides(args: list[str]) -> dict:
    """``--field value`` / ``--field=value`` / ``--flag`` (true) → {field: value}; values parsed as YAML."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError("command line", f"unexpected argument '{arg}'", "use --field value")
        key, _, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in field_names():
            raise UserError("command line", f"unknown option '--{key}'{_closest(key, '--')}",
                            "see `prefalign train --help`")
        if not _:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                val, i = args[i + 1], i + 1
            else:
                val = "true"
        try:
            out[key] = yaml.safe_load(val) if val != "" else ""
        except yaml.YAMLError:
            out[key] = val
        if isinstance(out[key], (int, float)) and typing.get_type_hints(TrainConfig)[key] is str:
            out[key] = val  # e.g. --model 123 is a folder name
        i += 1
    return out


def resolve(config_path: str | None, overrides: list[str]) -> TrainConfig:
    values = load_yaml(config_path) if config_path else {}
    where = config_path or "command line"
    values.update(parse_overrides(overrides))
    return from_dict(values, where)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
