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

# Help-screen headers, in the order `prefalign train --help` prints them.
GROUPS = {
    "model": "model",
    "data": "data",
    "objective": "objective",
    "sft": "SFT (method: sft)",
    "reference": "reference",
    "lora": "LoRA",
    "optimisation": "optimisation",
    "distributed": "distributed (several processes)",
    "output": "output, logging, checkpoints",
}


def _m(group: str, help: str, choices: tuple | None = None) -> dict:
    """A field's metadata: its one-line help, its --help group and (optionally) its allowed values."""
    assert group in GROUPS, group
    return {"help": help, "group": group, **({"choices": choices} if choices else {})}


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------------------------
    model: str = field(default="", metadata=_m(
        "model", "local folder (or hub name when online) of the causal LM to train"))
    tokenizer: str | None = field(default=None, metadata=_m(
        "model", "tokenizer folder or name; null: the model's"))
    trust_remote_code: bool = field(default=False, metadata=_m(
        "model", "run the model folder's own Python code; only when you trust it"))
    dtype: str = field(default="fp32", metadata=_m(
        "model", "weights' dtype: fp32 or bf16", ("fp32", "bf16")))
    # --- data --------------------------------------------------------------------------------------------------
    data: str = field(default="", metadata=_m(
        "data", "training rows: a .jsonl / .json / .parquet / .csv file or a save_to_disk folder"))
    eval_data: str | None = field(default=None, metadata=_m(
        "data", "separate eval rows (same formats); null: hold out eval_fraction of data"))
    eval_fraction: float = field(default=0.0, metadata=_m(
        "data", "fraction of data held out for eval when eval_data is null, in [0, 1); 0: no eval"))
    max_length: int | None = field(default=1024, metadata=_m(
        "data", "most prompt + completion tokens per sequence (>= 2), longer ones truncated; null: no limit"))
    truncation: str = field(default="keep_start", metadata=_m(
        "data", "over-long sequences: keep_start (cut completions' ends) or keep_end (cut the prompt's start)",
        ("keep_start", "keep_end")))
    skip_invalid: bool = field(default=False, metadata=_m(
        "data", "drop invalid rows (counted in the report) instead of stopping at the first"))
    # --- objective ---------------------------------------------------------------------------------------------
    method: str = field(default="auto", metadata=_m(
        "objective", "kind of training: preference (offline pairs / unpaired rows, the objectives), sft "
        "(supervised fine-tuning on TRL's SFT rows: text, messages, prompt/completion); auto: sft when "
        "objective is 'sft' and the rows are SFT rows, else preference", ("auto", "preference", "sft")))
    objective: str | list = field(default="dpo", metadata=_m(
        "objective", "objective name (`prefalign objectives` lists them), or a list of names summed with "
        "objective_weights"))
    objective_weights: list | None = field(default=None, metadata=_m(
        "objective", "one weight per objective of a list; null: 1.0 each"))
    beta: float = field(default=0.1, metadata=_m(
        "objective", "β (> 0) of every objective that has one (strength of the pull towards the reference)"))
    objective_args: dict = field(default_factory=dict, metadata=_m(
        "objective", "other hyperparameters: {name: value}, or per objective {objective: {name: value}}"))
    # --- SFT ---------------------------------------------------------------------------------------------------
    completion_only_loss: bool = field(default=True, metadata=_m(
        "sft", "SFT loss on completion tokens only (messages rows: assistant turns only); false: every token"))
    # --- reference ---------------------------------------------------------------------------------------------
    reference: str = field(default="auto", metadata=_m(
        "reference", "reference model: copy (frozen copy), precompute (its log-probs computed once and cached), "
        "adapter (LoRA base with the adapter off), none; auto: adapter with LoRA, else copy, none if unneeded",
        ("auto", "copy", "precompute", "none", "adapter")))
    reference_cache_dir: str | None = field(default=None, metadata=_m(
        "reference", "folder for precomputed reference log-probs; null: <output_dir>/../.prefalign-cache"))
    # --- LoRA --------------------------------------------------------------------------------------------------
    lora: bool = field(default=False, metadata=_m(
        "lora", "train a LoRA adapter (PEFT) instead of every weight"))
    lora_r: int = field(default=16, metadata=_m(
        "lora", "LoRA rank (>= 1)"))
    lora_alpha: int = field(default=32, metadata=_m(
        "lora", "LoRA alpha: the update is scaled by lora_alpha / lora_r"))
    lora_dropout: float = field(default=0.0, metadata=_m(
        "lora", "dropout probability on the LoRA input, in [0, 1)"))
    lora_target_modules: str | list = field(default="all-linear", metadata=_m(
        "lora", "modules that get an adapter: a list of module names, or all-linear (every linear but the LM head)"))
    merge_lora: bool = field(default=False, metadata=_m(
        "lora", "also save the model with the adapter merged in, under <output_dir>/merged"))
    # --- optimisation ------------------------------------------------------------------------------------------
    learning_rate: float = field(default=1e-6, metadata=_m(
        "optimisation", "peak AdamW learning rate (>= 0); the default is TRL's DPO default"))
    lr_scheduler: str = field(default="linear", metadata=_m(
        "optimisation", "learning-rate schedule after warmup: linear (decay to 0), cosine or constant",
        ("linear", "cosine", "constant")))
    warmup_steps: int = field(default=0, metadata=_m(
        "optimisation", "optimizer steps of linear warmup from 0; 0: use warmup_ratio"))
    warmup_ratio: float = field(default=0.0, metadata=_m(
        "optimisation", "warmup as a fraction of all optimizer steps, in [0, 1] (when warmup_steps is 0)"))
    weight_decay: float = field(default=0.0, metadata=_m(
        "optimisation", "AdamW decoupled weight decay"))
    adam_beta1: float = field(default=0.9, metadata=_m(
        "optimisation", "AdamW β1 (first-moment decay)"))
    adam_beta2: float = field(default=0.999, metadata=_m(
        "optimisation", "AdamW β2 (second-moment decay)"))
    adam_epsilon: float = field(default=1e-8, metadata=_m(
        "optimisation", "AdamW ε added to the denominator"))
    max_grad_norm: float = field(default=1.0, metadata=_m(
        "optimisation", "clip the global gradient L2 norm to this; 0: no clipping"))
    batch_size: int = field(default=4, metadata=_m(
        "optimisation", "rows (pairs) per process per micro-batch (>= 1)"))
    gradient_accumulation_steps: int = field(default=1, metadata=_m(
        "optimisation", "micro-batches per optimizer step (>= 1); global batch = batch_size × this × processes"))
    num_epochs: float = field(default=1.0, metadata=_m(
        "optimisation", "passes over the training rows (may be fractional); ignored when max_steps > 0"))
    max_steps: int = field(default=-1, metadata=_m(
        "optimisation", "optimizer steps to run; > 0 overrides num_epochs, <= 0: from num_epochs"))
    seed: int = field(default=42, metadata=_m(
        "optimisation", "seed for initialisation, the eval split and the data order"))
    shuffle: bool = field(default=True, metadata=_m(
        "optimisation", "shuffle rows each epoch; false: file order (e.g. to compare step by step with another "
        "trainer)"))
    disable_dropout: bool = field(default=True, metadata=_m(
        "optimisation", "set every dropout to 0, as TRL does (dropout makes policy ≠ reference at step 0)"))
    log_prob_chunk_size: int = field(default=1024, metadata=_m(
        "optimisation", "completion positions per LM-head chunk when computing log-probs (>= 1); lower: less memory"))
    layout: str = field(default="shared_prefix", metadata=_m(
        "optimisation", "shared_prefix: each pair's prompt computed once; separate: prompt+chosen and "
        "prompt+rejected as two sequences", ("separate", "shared_prefix")))
    pack: bool = field(default=False, metadata=_m(
        "optimisation", "padding-free: a micro-batch's sequences in one row with a block attention mask"))
    gradient_checkpointing: bool = field(default=False, metadata=_m(
        "optimisation", "recompute each layer in backward: far less activation memory, ~30% slower"))
    memory_probe: bool = field(default=True, metadata=_m(
        "optimisation", "run the longest micro-batch once before training, so out-of-memory shows at once"))
    # --- distributed -------------------------------------------------------------------------------------------
    sharding: str = field(default="none", metadata=_m(
        "distributed", "multi-process training: ddp replicates the model and averages gradients (PyTorch DDP); "
        "fsdp shards parameters, gradients and optimizer state across processes (PyTorch FSDP2, fully_shard); "
        "none with several processes means ddp", ("none", "ddp", "fsdp")))
    mixed_precision: str = field(default="no", metadata=_m(
        "distributed", "no, or bf16: bf16 compute with fp32 master weights and optimizer state", ("no", "bf16")))
    # --- output, logging, checkpoints --------------------------------------------------------------------------
    output_dir: str = field(default="outputs/run", metadata=_m(
        "output", "folder for the trained model or adapter, checkpoints, logs and the report"))
    overwrite: bool = field(default=False, metadata=_m(
        "output", "allow replacing an output_dir that is not empty or holds a finished run"))
    resume: bool = field(default=False, metadata=_m(
        "output", "continue from output_dir's last checkpoint (the result-changing config must match)"))
    save_steps: int = field(default=0, metadata=_m(
        "output", "checkpoint every N optimizer steps; 0: none until the end"))
    save_total_limit: int = field(default=2, metadata=_m(
        "output", "checkpoints kept (the oldest are deleted)"))
    logging_steps: int = field(default=1, metadata=_m(
        "output", "log metrics every N optimizer steps (and always the first)"))
    eval_steps: int = field(default=0, metadata=_m(
        "output", "evaluate every N optimizer steps; 0: at the end only (when there is eval data)"))
    report_to: list = field(default_factory=lambda: ["tensorboard"], metadata=_m(
        "output", "metric loggers besides metrics.jsonl: a list of tensorboard, wandb; [] for none"))
    nan_policy: str = field(default="stop", metadata=_m(
        "output", "on NaN/inf loss or gradients: stop (exit 3, last checkpoint kept) or skip the batch",
        ("stop", "skip")))
    progress: bool = field(default=True, metadata=_m(
        "output", "show a progress bar"))


def _metadata() -> dict[str, Any]:
    return {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}


# Allowed values per field (read from the fields' metadata; kept for importers of the old table).
_CHOICES = {name: meta["choices"] for name, meta in _metadata().items() if "choices" in meta}
# Fields that do not change the result, so a resumed run may differ in them. Checkpoints hold full unsharded
# state, so a run may resume under another sharding.
RUN_CONTROL_FIELDS = {"resume", "overwrite", "progress", "report_to", "logging_steps", "save_total_limit",
                      "reference_cache_dir", "sharding"}


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
    meta = _metadata()
    values = dict(values)
    for key, value in values.items():
        if key not in hints:
            raise UserError(where, f"unknown key '{key}'{_closest(key)}", "see `prefalign train --help`")
        if isinstance(value, str) and _accepts_float(hints[key]):
            values[key] = value = _float_or_str(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
        if not _type_ok(value, hints[key]):
            raise UserError(where, f"'{key}' must be {_type_name(hints[key])}, got {value!r}",
                            "fix the value")
        choices = meta[key].get("choices")
        if choices and value not in choices:
            raise UserError(where, f"'{key}' must be one of {', '.join(choices)}, got {value!r}",
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


def _type_label(tp: Any, choices: tuple | None) -> str:
    if choices:
        return "{" + ",".join(choices) + "}"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return "|".join(_type_label(a, None) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _yaml_value(value: Any) -> str:
    """A default as it would be written in the YAML file or after --field."""
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, float):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def describe_fields() -> list[dict]:
    """Every field as {name, group, type, default, help, choices}, in declaration order."""
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        choices = f.metadata.get("choices")
        out.append({"name": f.name, "group": f.metadata["group"], "type": _type_label(hints[f.name], choices),
                    "default": _yaml_value(default), "help": f.metadata["help"], "choices": choices})
    return out


def help_text(width: int = 100, help_column: int = 34) -> str:
    """The fields grouped under a header per group: ``--name TYPE  help (default: X)``, help wrapped at ``width``
    and aligned at ``help_column`` (on the next line when name and type are longer)."""
    import textwrap

    by_group: dict[str, list[dict]] = {g: [] for g in GROUPS}
    for d in describe_fields():
        by_group[d["group"]].append(d)
    wrap = textwrap.TextWrapper(width=max(width - help_column, 20), break_on_hyphens=False)
    lines: list[str] = []
    for group, items in by_group.items():
        if not items:
            continue
        lines += ["", f"{GROUPS[group]}:"]
        for d in items:
            head = f"  --{d['name']} {d['type']}"
            nbsp = "\N{NO-BREAK SPACE}"  # keeps "(default: X)" on one line
            default = f"(default: {d['default']})".replace(" ", nbsp)
            body = [b.replace(nbsp, " ") for b in wrap.wrap(f"{d['help']} {default}")]
            if len(head) + 2 > help_column:
                lines.append(head)
            else:
                lines.append(head.ljust(help_column) + body.pop(0))
            lines += [" " * help_column + b for b in body]
    return "\n".join(lines[1:])


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
