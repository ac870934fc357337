"""The online-algorithm contract: pure functions of a rollout's log-probs, rewards and masks.

An algorithm sees tensors only (never a model, tokenizer or optimizer), in two stages:

1. ``advantages(ro: Rollout) -> dict`` once per rollout, without gradient, over this process's whole rollout
   (complete groups; ``ro.reduce`` sums a tensor over processes, for batch statistics such as REINFORCE++'s global
   whitening). It returns at least ``"advantages"``: [N] per sequence or [N, T] per token; PPO adds ``"returns"``.
2. ``loss(b: PolicyBatch) -> (per_token [N, T], metrics)`` per micro-batch, with gradient through ``b.logp`` (and
   ``b.values``): the per-token loss, zero where ``b.mask`` is False. A sequence-level loss is broadcast over the
   sequence's tokens. The method then aggregates it by ``loss_type`` over the *global* batch
   (``online/aggregate.py``), so the algorithm never divides by a batch size.

Conventions: N sequences (P prompts × G completions per prompt, group-contiguous: sequence n belongs to prompt
``group[n]``); T the longest completion; per-token tensors are zero past a sequence's end. ``logp`` / ``old_logp`` /
``ref_logp`` are per-token log-probs of the sampled ids under the current policy, the policy that sampled them
(μ > 1: the weights at rollout time; μ = 1: ``logp.detach()``), and the reference. Rewards are NaN where no reward
function could judge the completion (advantage 0, left out of every baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class OnlineNeeds:
    """What an algorithm asks the method for."""

    reference: bool = False  # reference per-token log-probs (ref_logp); False: no reference model is loaded
    value_head: bool = False  # a value head on the policy (PPO): values at rollout time and in the update
    pairs: bool = False  # a pairwise objective on best-vs-worst pairs (online DPO) instead of a token loss
    # advantages() reads the sampling policy's per-token log-probs (a KL in the reward, an importance weight): one
    # more no-grad forward per rollout, which GRPO (KL in the loss, ratio 1 at μ = 1) does without.
    old_logp: bool = False


@dataclass
class Rollout:
    """This process's rollout, as ``advantages`` sees it (no gradient)."""

    rewards: torch.Tensor  # [N] combined reward; NaN: not judged
    group: torch.Tensor  # [N] long, the prompt each sequence answers (contiguous groups of G)
    mask: torch.Tensor  # [N, T] bool, completion tokens
    old_logp: torch.Tensor  # [N, T] the sampling policy's per-token log-probs
    ref_logp: torch.Tensor | None = None  # [N, T]
    values: torch.Tensor | None = None  # [N, T] value head at rollout time (PPO)
    truncated: torch.Tensor | None = None  # [N] bool: hit max_new_tokens without EOS
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # SUM over processes (identity for one)


@dataclass
class PolicyBatch:
    """One micro-batch, as ``loss`` sees it: whole groups, in rollout order."""

    logp: torch.Tensor  # [N, T] current policy, with gradient
    old_logp: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T] bool
    advantages: torch.Tensor  # [N] or [N, T]
    group: torch.Tensor  # [N] long
    rewards: torch.Tensor  # [N]
    ref_logp: torch.Tensor | None = None  # [N, T]
    values: torch.Tensor | None = None  # [N, T] current value head, with gradient (PPO)
    old_values: torch.Tensor | None = None  # [N, T]
    returns: torch.Tensor | None = None  # [N, T]
    entropy: torch.Tensor | None = None  # [N, T] per-token entropy of the current policy (with gradient)
    extra: dict[str, Any] = field(default_factory=dict)  # what advantages() returned besides the above


class OnlineAlgorithm:
    """Base class. Subclasses are dataclasses of hyperparameters (the paper's defaults), registered by name."""

    name: ClassVar[str] = ""
    # Non-empty: why the online method cannot train this algorithm yet (it is usable as pure functions only).
    not_trainable: ClassVar[str] = ""
    loss_type: str = "dapo"  # aggregation (online/aggregate.py); a subclass may fix it or expose it as a field

    def needs(self) -> OnlineNeeds:
        return OnlineNeeds()

    def validate(self) -> None:
        """Raise ValueError for out-of-range hyperparameters."""

    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, b: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: dict[str, type[OnlineAlgorithm]] = {}


def register(cls: type[OnlineAlgorithm]) -> type[OnlineAlgorithm]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"online algorithm '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    import importlib
    import pkgutil

    import prefalign.online.algos as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "base":
            importlib.import_module(f"prefalign.online.algos.{mod.name}")


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_class(name: str) -> type[OnlineAlgorithm]:
    import difflib

    _load_all()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown online algorithm '{name}'{hint}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get(name: str, **hparams) -> OnlineAlgorithm:
    """Algorithm ``name`` with hyperparameters; an unknown name or hyperparameter raises ValueError."""
    import dataclasses
    import difflib

    cls = get_class(name)
    known = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    for key in hparams:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"online algorithm '{name}' has no hyperparameter '{key}'{hint}; "
                             f"known: {', '.join(known) or 'none'}")
    algo = cls(**hparams)
    algo.validate()
    return algo
