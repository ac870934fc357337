"""What a training method supplies to the engine (``train/engine.py``), and the parts methods share.

A method builds its model(s) in ``setup``, names its trainable parameters, splits step s's examples into this
process's micro-batches (deterministic in seed and s: the engine hands it the step's example indices), computes a
micro-batch's loss, evaluates, keeps running state for ``--resume``, and saves what it trained. The engine never
looks inside a micro-batch. Methods register by name; ``select`` picks one for a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prefalign.errors import UserError


@dataclass
class MicroBatch:
    data: Any  # what the method's ``loss`` reads (a batch of token ids)
    rows: list[int] = field(default_factory=list)  # source rows, for NaN reports
    weight: float = 1.0  # its share of the global batch's loss (the weights of one step sum to 1 over processes)
    share: float = 1.0  # its share of this process's metrics (sums to 1 per process)


class Method:
    """Base class: shared data loading and model building; subclasses implement ``micro_batches`` and ``loss``."""

    name = ""
    progress_keys: tuple[str, ...] = ()  # metrics shown on the progress bar besides the loss

    model: torch.nn.Module  # the policy (a transformers causal LM, possibly PEFT-wrapped)
    extra_module: torch.nn.Module | None = None  # trainable parameters the objective owns (SparsePO's masks)
    examples: list
    eval_examples: list

    # --- setup helpers ---------------------------------------------------------------------------------------
    def load_examples(self, kind: str, row_options: dict, encode_options: dict | None = None) -> None:
        """Rows → validated rows → examples (train and eval split); every bad row is reported before any model."""
        from prefalign.data import encode_rows, load_rows
        from prefalign.model import load_tokenizer

        cfg = self.cfg
        row_options = {k: v for k, v in row_options.items() if k != "kind"}
        rows = load_rows(cfg.data, kind=kind, skip_invalid=cfg.skip_invalid, **row_options)
        eval_rows = (load_rows(cfg.eval_data, kind=kind, skip_invalid=cfg.skip_invalid, **row_options)
                     if cfg.eval_data else None)
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
        enc = encode_options or {}
        examples, self.report = encode_rows(rows, self.tokenizer, cfg.max_length, cfg.truncation, **enc)
        self.eval_examples = (encode_rows(eval_rows, self.tokenizer, cfg.max_length, cfg.truncation, **enc)[0]
                              if eval_rows else [])
        if cfg.eval_fraction > 0 and not eval_rows:
            perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            n_eval = max(1, int(round(cfg.eval_fraction * len(examples))))
            self.eval_examples = [examples[i] for i in sorted(perm[:n_eval])]
            examples = [examples[i] for i in sorted(perm[n_eval:])]
        if not examples:
            raise UserError(cfg.data, "no usable rows after preprocessing", "see the preprocessing report")
        self.examples = examples
        if self.engine.acc.is_main_process:
            self.engine.log(self.report.render())

    def build_policy(self) -> torch.nn.Module:
        """The policy as configured: dtype, dropout off, checkpointing, LoRA; on the engine's device."""
        from prefalign.model import add_lora, disable_dropout, enable_checkpointing, load_model

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = load_model(cfg.model, cfg.dtype, cfg.trust_remote_code)
        if cfg.disable_dropout:
            disable_dropout(model)
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        if cfg.lora:
            check_lora_targets(model, cfg.lora_target_modules)
            try:
                model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
            except ValueError as e:  # PEFT: a target it cannot wrap
                raise UserError("config", f"lora_target_modules: {str(e).splitlines()[0][:200]}",
                                "name linear layers of the model, or use all-linear") from None
        model.config.use_cache = False
        return model.to(self.engine.acc.device)

    def split(self, idx: list[int], rank: int, world: int, sizes=None) -> list[tuple[list[int], float, float]]:
        """This process's micro-batches of a step's indices, each with (weight, share): by rows, or by the
        ``sizes`` (e.g. trained tokens per example) when given, so a token-mean loss is exact across any split."""
        per_proc = len(idx) // world
        mine = idx[rank * per_proc : (rank + 1) * per_proc]
        bs = self.cfg.batch_size
        chunks = [mine[i : i + bs] for i in range(0, len(mine), bs)]
        size = (lambda c: float(len(c))) if sizes is None else (lambda c: float(sum(sizes(i) for i in c)))
        total, own = size(idx), size(mine)
        return [(c, size(c) / total, size(c) / own) for c in chunks]

    # --- what the engine calls ----------------------------------------------------------------------------------
    @property
    def num_examples(self) -> int:
        return len(self.examples)

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_examples)

    def param_groups(self) -> list[dict]:
        """The policy's trainable parameters in two groups, as Hugging Face's Trainer (and so TRL) does: weight
        decay on weights, none on biases and norm weights (``no_decay_names``); then the objective's own."""
        skip = no_decay_names(self.model)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n not in skip], "weight_decay": self.cfg.weight_decay},
                  {"params": [p for n, p in named if n in skip], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        if self.extra_module is not None:
            groups.append({"params": list(self.extra_module.parameters()),
                           "weight_decay": getattr(self.extra_module, "weight_decay", self.cfg.weight_decay)})
        return groups

    def named_trainable(self):
        """(name, parameter) of everything the optimizer updates: the policy's, then the objective's own."""
        yield from ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)
        if self.extra_module is not None:
            yield from ((f"objective.{n}", p) for n, p in self.extra_module.named_parameters())

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def snapshot(self):
        """Everything a trial forward/backward (the memory probe) may change, for ``restore``."""
        return self.state()

    def restore(self, snap) -> None:
        self.load_state(snap)

    def save_inputs(self, out: Path) -> None:
        self.report.save(out)

    def summary(self) -> dict:
        return {}

    def rebuild_model(self) -> torch.nn.Module:
        """A fresh CPU copy of the policy's architecture (with LoRA), for saving gathered FSDP weights."""
        from prefalign.model import add_lora, load_model

        cfg = self.cfg
        model = load_model(cfg.model, cfg.dtype, cfg.trust_remote_code)
        if cfg.lora:
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        return model

    def save_final(self, model, out: Path) -> None:
        from prefalign.train.save import save_final

        save_final(model, self.tokenizer, out, self.cfg.merge_lora, self.extra_module)

    def longest_micro_batch(self) -> MicroBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def micro_batches(self, step: int, idx: list[int], rank: int, world: int) -> list[MicroBatch]:
        raise NotImplementedError  # pragma: no cover - abstract

    def loss(self, mb: MicroBatch, step: int):  # pragma: no cover - abstract
        """(scalar loss tensor with gradient, {metric: float})."""
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}


# Hugging Face Trainer's ``get_decay_parameter_names``: parameters of LayerNorm modules and names matching these.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters weight decay skips: biases and norm weights (HF Trainer's rule, plus any module
    whose class name ends in "Norm", e.g. LlamaRMSNorm, so a norm under another attribute name is caught too)."""
    from transformers.trainer_pt_utils import get_parameter_names

    norms = tuple({torch.nn.LayerNorm, *(type(m) for m in model.modules() if type(m).__name__.endswith("Norm"))})
    decay = set(get_parameter_names(model, norms, list(NO_DECAY_PATTERNS)))
    return {n for n, _ in model.named_parameters() if n not in decay}


def check_lora_targets(model: torch.nn.Module, targets) -> None:
    """Every name in ``lora_target_modules`` must match a module of the model (PEFT's rule: the full name, or its
    last dotted parts); a string other than all-linear is a regular expression matched against full names."""
    import re

    names = [n for n, _ in model.named_modules() if n]
    if isinstance(targets, str):
        if targets == "all-linear":
            return
        try:
            hit = any(re.fullmatch(targets, n) for n in names)
        except re.error as e:
            raise UserError("config", f"lora_target_modules '{targets}' is not a valid regular expression ({e})",
                            "give a list of module names, or all-linear") from None
        missing = [] if hit else [targets]
    else:
        bad = [t for t in targets if not isinstance(t, str) or not t]
        if bad:
            raise UserError("config", f"lora_target_modules must be module names, got {bad[0]!r}",
                            "give a list of module names, or all-linear")
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError("config", f"lora_target_modules {', '.join(map(repr, missing))} match no module of the "
                        f"model (its linear layers: {', '.join(leaves[:12])})",
                        "use names from that list, or all-linear")


_METHODS: dict[str, type[Method]] = {}
BUILTIN_METHODS = ("prefalign.train.preference", "prefalign.train.sft", "prefalign.reward.method",
                   "prefalign.online.method")


def register(cls: type[Method]) -> type[Method]:
    _METHODS[cls.name] = cls
    return cls


def select(cfg) -> Method:
    """The method for ``cfg.method``; ``auto`` is sft for ``objective: sft`` on SFT rows, online for an online
    algorithm's name (grpo, rloo, …), preference otherwise."""
    import importlib

    for module in BUILTIN_METHODS:  # register the built-in methods (each module's @register)
        importlib.import_module(module)
    from prefalign.train import sft

    name = cfg.method
    if name == "auto":
        from prefalign.online import algos

        if cfg.objective == "sft" and sft.looks_like_sft(cfg.data):
            name = "sft"
        elif isinstance(cfg.objective, str) and cfg.objective in algos.names():
            name = "online"
        else:
            name = "preference"
    if name not in _METHODS:
        raise UserError("config", f"unknown method '{name}'", f"use one of: auto, {', '.join(sorted(_METHODS))}")
    return _METHODS[name](cfg)
