"""The training configuration: one typed dataclass; YAML file plus ``--field value`` overrides.

Unknown keys and ill-typed values are errors that name the closest valid field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from prefalign.errors import UserError
from prefalign.online.config import OnlineFields
from prefalign.train.fields import GROUPS, _m, _parse_range, in_range  # noqa: F401  (re-exported)

# ``report_to`` backends MetricsLogger knows.
REPORT_BACKENDS = ("tensorboard", "wandb")

# Path fields: ``~`` and ``$VARS`` are expanded in them (YAML has no shell to do it), wherever the config comes from.
PATH_FIELDS = ("model", "tokenizer", "data", "eval_data", "reference_cache_dir", "output_dir")


@dataclass
class TrainConfig(OnlineFields):
    # --- model -------------------------------------------------------------------------------------------------
    model: str = field(default="", metadata=_m(
        "model", "local folder (or hub name when online) of the causal LM to train"))
    tokenizer: str | None = field(default=None, metadata=_m(
        "model", "tokenizer folder or name; null: the model's"))
    trust_remote_code: bool = field(default=False, metadata=_m(
        "model", "run the model folder's own Python code; only when you trust it"))
    dtype: str = field(default="auto", metadata=_m(
        "model", "weights' dtype: auto (bf16 where the device computes it natively — CUDA with bf16, CPUs with "
        "AVX512-BF16 or AMX — fp32 elsewhere; the run's first lines say which and why), fp32 or bf16",
        ("auto", "fp32", "bf16")))
    # --- data --------------------------------------------------------------------------------------------------
    data: str = field(default="", metadata=_m(
        "data", "training rows: a .jsonl / .json / .parquet / .csv file or a save_to_disk folder"))
    eval_data: str | None = field(default=None, metadata=_m(
        "data", "separate eval rows (same formats); null: hold out eval_fraction of data"))
    eval_fraction: float = field(default=0.0, metadata=_m(
        "data", "fraction of data held out for eval when eval_data is null, in [0, 1); 0: no eval",
        range="[0, 1)"))
    max_length: int | None = field(default=1024, metadata=_m(
        "data", "most prompt + completion tokens per sequence (>= 2), longer ones truncated; null: no limit",
        range=">= 2"))
    truncation: str = field(default="keep_start", metadata=_m(
        "data", "over-long sequences: keep_start (cut completions' ends) or keep_end (cut the prompt's start)",
        ("keep_start", "keep_end")))
    skip_invalid: bool = field(default=False, metadata=_m(
        "data", "drop invalid rows (counted in the report) instead of stopping at the first"))
    # --- objective ---------------------------------------------------------------------------------------------
    method: str = field(default="auto", metadata=_m(
        "objective", "kind of training: preference (offline pairs / unpaired rows, the objectives), sft "
        "(supervised fine-tuning on TRL's SFT rows: text, messages, prompt/completion); auto: sft when "
        "objective is 'sft' and the rows are SFT rows, else preference; reward (a reward model: objective names "
        "its loss, `prefalign reward train`); online (RL from a reward: objective names the algorithm)",
        ("auto", "preference", "sft", "reward", "online")))
    objective: str | list = field(default="dpo", metadata=_m(
        "objective", "objective name (`prefalign objectives` lists them), or a list of names summed with "
        "objective_weights"))
    objective_weights: list | None = field(default=None, metadata=_m(
        "objective", "one weight per objective of a list (each >= 0); null: 1.0 each", range=">= 0"))
    beta: float = field(default=0.1, metadata=_m(
        "objective", "β (>= 0) of every objective that has one (strength of the pull towards the reference; > 0 "
        "offline; online RL: 0 turns the KL term off and loads no reference)", range=">= 0"))
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
        "lora", "LoRA rank (>= 1)", range=">= 1"))
    lora_alpha: int = field(default=32, metadata=_m(
        "lora", "LoRA alpha (> 0): the update is scaled by lora_alpha / lora_r", range="> 0"))
    lora_dropout: float = field(default=0.0, metadata=_m(
        "lora", "dropout probability on the LoRA input, in [0, 1)", range="[0, 1)"))
    lora_target_modules: str | list = field(default="all-linear", metadata=_m(
        "lora", "modules that get an adapter: a list of module names, or all-linear (every linear but the LM head)"))
    merge_lora: bool = field(default=False, metadata=_m(
        "lora", "also save the model with the adapter merged in, under <output_dir>/merged"))
    # --- optimisation ------------------------------------------------------------------------------------------
    learning_rate: float = field(default=1e-6, metadata=_m(
        "optimisation", "peak AdamW learning rate (>= 0); the default is TRL's DPO default", range=">= 0"))
    lr_scheduler: str = field(default="linear", metadata=_m(
        "optimisation", "learning-rate schedule after warmup: linear (decay to 0), cosine or constant",
        ("linear", "cosine", "constant")))
    warmup_steps: int = field(default=0, metadata=_m(
        "optimisation", "optimizer steps of linear warmup from 0 (>= 0); 0: use warmup_ratio", range=">= 0"))
    warmup_ratio: float = field(default=0.0, metadata=_m(
        "optimisation", "warmup as a fraction of all optimizer steps, in [0, 1] (when warmup_steps is 0)",
        range="[0, 1]"))
    weight_decay: float = field(default=0.0, metadata=_m(
        "optimisation", "AdamW decoupled weight decay (>= 0); as in Hugging Face's Trainer, not applied to biases "
        "and norm weights", range=">= 0"))
    adam_beta1: float = field(default=0.9, metadata=_m(
        "optimisation", "AdamW β1 (first-moment decay), in [0, 1)", range="[0, 1)"))
    adam_beta2: float = field(default=0.999, metadata=_m(
        "optimisation", "AdamW β2 (second-moment decay), in [0, 1)", range="[0, 1)"))
    adam_epsilon: float = field(default=1e-8, metadata=_m(
        "optimisation", "AdamW ε added to the denominator (>= 0)", range=">= 0"))
    max_grad_norm: float = field(default=1.0, metadata=_m(
        "optimisation", "clip the global gradient L2 norm to this (>= 0); 0: no clipping", range=">= 0"))
    batch_size: int = field(default=4, metadata=_m(
        "optimisation", "rows (pairs) per process per micro-batch (>= 1)", range=">= 1"))
    gradient_accumulation_steps: int = field(default=1, metadata=_m(
        "optimisation", "micro-batches per optimizer step (>= 1); global batch = batch_size × this × processes",
        range=">= 1"))
    num_epochs: float = field(default=1.0, metadata=_m(
        "optimisation", "passes over the training rows (> 0, may be fractional); ignored when max_steps > 0",
        range="> 0"))
    max_steps: int = field(default=-1, metadata=_m(
        "optimisation", "optimizer steps to run; > 0 overrides num_epochs, <= 0: from num_epochs"))
    seed: int = field(default=42, metadata=_m(
        "optimisation", "seed for initialisation, the eval split and the data order (>= 0)", range=">= 0"))
    shuffle: bool = field(default=True, metadata=_m(
        "optimisation", "shuffle rows each epoch; false: file order (e.g. to compare step by step with another "
        "trainer)"))
    disable_dropout: bool = field(default=True, metadata=_m(
        "optimisation", "set every dropout to 0, as TRL does (dropout makes policy ≠ reference at step 0)"))
    log_prob_chunk_size: int = field(default=1024, metadata=_m(
        "optimisation", "completion positions per LM-head chunk when computing log-probs (>= 1); lower: less memory",
        range=">= 1"))
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
        "output", "checkpoint every N optimizer steps (>= 0); 0: none until the end", range=">= 0"))
    save_total_limit: int = field(default=2, metadata=_m(
        "output", "checkpoints kept (the oldest are deleted; >= 0); 0: all", range=">= 0"))
    logging_steps: int = field(default=1, metadata=_m(
        "output", "log metrics every N optimizer steps (>= 1; and always the first)", range=">= 1"))
    eval_steps: int = field(default=0, metadata=_m(
        "output", "evaluate every N optimizer steps (>= 0); 0: at the end only (needs eval data)", range=">= 0"))
    report_to: list = field(default_factory=lambda: ["tensorboard"], metadata=_m(
        "output", "metric loggers besides metrics.jsonl: a list of tensorboard, wandb; [] for none",
        items=REPORT_BACKENDS))
    nan_policy: str = field(default="stop", metadata=_m(
        "output", "on NaN/inf loss or gradients: stop (exit 3, last checkpoint kept) or skip the batch",
        ("stop", "skip")))
    progress: bool = field(default=True, metadata=_m(
        "output", "show a progress bar"))

    def __post_init__(self) -> None:
        _expand_paths(self)


def _expand_paths(cfg: TrainConfig) -> None:
    from prefalign.model import expand_path

    for name in PATH_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, str) and value:
            object.__setattr__(cfg, name, expand_path(value))


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
    values = dict(values)
    for key, value in values.items():
        if key not in hints:
            raise UserError(where, f"unknown key '{key}'{_closest(key)}", "see `prefalign train --help`")
        if isinstance(value, str) and _accepts_float(hints[key]):
            values[key] = value = _float_or_str(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
        if not _type_ok(value, hints[key]):
            raise UserError(where, f"'{key}' must be {_type_name(hints[key])}, got {value!r}",
                            "fix the value")
    cfg = TrainConfig(**{k: (float(v) if hints[k] is float else v) for k, v in values.items()})
    check(cfg, where)
    return cfg


@dataclass(frozen=True)
class Conflict:
    """Options that make no sense together: ``fields`` (named in the error), when it happens, what to do."""

    fields: tuple[str, ...]
    when: typing.Callable[[TrainConfig], bool]
    what: str
    todo: str


def _flat_beta(cfg: TrainConfig) -> bool:
    return "beta" in cfg.objective_args


def _online(cfg: TrainConfig) -> bool:
    """Whether the config trains online RL (method online, or auto with an online algorithm's name)."""
    if cfg.method != "auto":
        return cfg.method == "online"
    from prefalign.online import algos

    return isinstance(cfg.objective, str) and cfg.objective in algos.names()


def _has_eval(cfg: TrainConfig) -> bool:
    return bool(cfg.eval_data) or cfg.eval_fraction > 0


# Every conflict between options, declared once; ``check`` reports the first that holds. (Conflicts that need the
# model or the objective — LoRA target modules matching nothing, objectives over different row kinds, kto with
# batch_size 1, reference kinds — are checked where those are built: train/method.py, train/setup.py.)
CONFLICTS: tuple[Conflict, ...] = (
    Conflict(("merge_lora", "lora"), lambda c: c.merge_lora and not c.lora,
             "merge_lora is set but lora is not (there is no adapter to merge)",
             "set lora: true, or drop merge_lora"),
    Conflict(("eval_data", "eval_fraction"), lambda c: bool(c.eval_data) and c.eval_fraction > 0,
             "eval_data and eval_fraction are both set", "give one: eval_data (separate rows) or eval_fraction "
             "(held out of data)"),
    Conflict(("warmup_steps", "warmup_ratio"), lambda c: c.warmup_steps > 0 and c.warmup_ratio > 0,
             "warmup_steps and warmup_ratio are both set", "give one of them"),
    Conflict(("eval_steps",), lambda c: c.eval_steps > 0 and not _has_eval(c),
             "eval_steps is set but there is no eval data", "set eval_data or eval_fraction, or drop eval_steps"),
    Conflict(("beta", "method"), lambda c: c.beta == 0 and not _online(c),
             "beta is 0: an offline objective needs β > 0", "set beta > 0 (β = 0 is for online RL: method: online)"),
    Conflict(("beta", "objective_args"), lambda c: _flat_beta(c),
             "beta is given twice: as the beta field and in objective_args", "set it with beta: X (a different β "
             "for one objective of a list: objective_args: {name: {beta: X}})"),
)


def _problem(name: str, value: Any, meta: dict, hint: Any) -> str | None:
    """What is wrong with one field's value against its metadata (choices, items, range, finiteness), or None."""
    if meta.get("choices") and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}, got {value!r}"
    if meta.get("items") and isinstance(value, list):
        for v in value:
            if v not in meta["items"]:
                return f"names '{v}', which is not one of {', '.join(meta['items'])}"
    numbers = value if isinstance(value, list) else [value]
    for v in numbers:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            if isinstance(value, list) and meta.get("range"):
                return f"must be a list of numbers, got {value!r}"
            continue
        if not math.isfinite(v):
            return f"must be a finite number, got {value!r}"
        rule = meta.get("range")
        if rule and not in_range(v, rule):
            rule = f"in {rule}" if rule[0] in "[(" else rule
            suffix = " or null" if _accepts_none(hint) else ""
            if isinstance(value, list):
                return f"items must each be {rule}, got {value!r}"
            return f"must be {rule}{suffix}, got {value!r}"
    return None


def _accepts_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def check(cfg: TrainConfig, where: str = "config") -> None:
    """THE check of a config's values: every field against its metadata (choices, list items, range; floats
    finite), then every declared conflict. Raises a one-line ``UserError``."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        problem = _problem(f.name, getattr(cfg, f.name), f.metadata, hints[f.name])
        if problem:
            raise UserError(where, f"'{f.name}' {problem}", "fix the value")
    for c in CONFLICTS:
        if c.when(cfg):
            raise UserError(where, f"{c.what} ({', '.join(c.fields)})", c.todo)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int):
        self.key, self.line, self.first = key, line, first


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # unhashable key: let PyYAML report it
                continue
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses duplicated keys, naming the key and its lines."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as e:
        lines = f"line {e.line}" if e.first == e.line else f"line {e.first} and line {e.line}"
        raise UserError(where, f"key '{e.key}' is given twice ({lines})",
                        "keep one of them") from None


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(path, "config file not found", "check the path given to --config")
    try:
        data = safe_load(p.read_text(encoding="utf-8"), path) or {}
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
            out[key] = safe_load(val, f"--{key}") if val != "" else ""
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
    """Written to ``.<name>.tmp`` and renamed: a full disk leaves the previous file whole and no temp file."""
    import os

    path = Path(path)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


from prefalign.train.config_help import describe_fields, help_text  # noqa: E402,F401  (re-exported)
