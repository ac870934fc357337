"""The reward-model loss contract, and the registry of losses by name.

A reward-model loss is a pure function of scores: it receives what the reward model produced for the rows of a
micro-batch (``RewardScores``) and returns a scalar loss and named metrics. It never sees the model, tokenizer or
optimizer; the training method reads ``needs()`` and provides exactly that. A loss with its own parameters (PAL's
prototypes) builds them in ``module(hidden_size)``; the method optimises, moves and checkpoints that module with the
model, and the loss keeps a reference to it, so ``__call__`` uses the trained copy.

Conventions:
- ``chosen`` / ``rejected`` are [B, K] scores (K heads; K = 1 for a scalar reward model), in the model's dtype;
  half-precision scores are upcast to fp32 before the loss (OpenRLHF's ``compute_fp32_loss``), fp64 stays fp64.
- ``rows``: "pairs" (chosen ≻ rejected), "scored" (one sequence + ``targets``), "steps" (one sequence + per-step
  scores and labels). Read it on the instance: ``multihead``'s depends on its ``kind``.
- ``loss == per_example(s).mean()`` for every loss (tested), so a method may weight rows across micro-batches by
  summing ``per_example`` and dividing by the global row count.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class RewardScores:
    """What the reward model produced for B rows of a micro-batch."""

    chosen: Tensor  # [B, K] scores of the chosen (or only) sequence
    rejected: Tensor | None = None  # [B, K] for "pairs" rows; None for "scored" and "steps" rows
    # per-row values: "margin" [B] float, "source" [B] long (dataset id, MORE), "user" [B] long (PAL),
    # "targets" [B, K] float (regression; NaN = unlabelled head); per-step values (PRM): "step_scores" [S],
    # "step_labels" [S] float in [0, 1], "step_row" [S] long (which row the step belongs to, in 0..B−1)
    extras: dict[str, Tensor] = field(default_factory=dict)
    features_chosen: Tensor | None = None  # [B, H] pooled hidden state the linear score head reads (MORE, PAL)
    features_rejected: Tensor | None = None  # [B, H]

    @property
    def batch_size(self) -> int:
        return self.chosen.shape[0]

    @property
    def num_heads(self) -> int:
        return self.chosen.shape[1]


@dataclass(frozen=True)
class RewardNeeds:
    """What a loss asks the method for.

    - ``features``: ``features_chosen`` (and ``features_rejected`` for pairs), the pooled hidden states;
    - ``extras``: names that must be in ``RewardScores.extras``; ``optional``: names used when the data has them
      (``bt``'s "margin": TRL's column, used when present);
    - ``num_heads``: the K the score head must have; None = any (the method takes it from the data).
    """

    features: bool = False
    extras: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    num_heads: int | None = 1


class RewardLoss:
    """Base class. Subclasses are dataclasses of hyperparameters and implement ``_per_example`` (and ``metrics``),
    or override ``compute`` when the loss is not a plain row mean."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for listings
    rows: ClassVar[str] = "pairs"  # "pairs" | "scored" | "steps"

    def needs(self) -> RewardNeeds:
        return RewardNeeds()

    def module(self, hidden_size: int) -> nn.Module | None:
        """Trainable parameters the loss owns, built once the model's hidden size is known. Default: none."""
        return None

    def validate(self) -> None:
        """Check hyperparameter ranges; ValueError naming the field."""

    def hparams(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) else {}

    # -- the contract ------------------------------------------------------------------------------------------
    def __call__(self, s: RewardScores) -> tuple[Tensor, dict[str, float]]:
        """(scalar loss: the mean over the micro-batch's rows, metrics)."""
        return self.compute(self.check(s))

    def per_example(self, s: RewardScores) -> Tensor:
        """[B] per-row losses whose mean is the loss."""
        return self._per_example(self.check(s))

    # -- what subclasses implement -----------------------------------------------------------------------------
    def compute(self, s: RewardScores) -> tuple[Tensor, dict[str, float]]:
        return self._per_example(s).mean(), self.metrics(s)

    def _per_example(self, s: RewardScores) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def metrics(self, s: RewardScores) -> dict[str, float]:
        return pair_metrics(s.chosen, s.rejected) if s.rejected is not None else {}

    # -- input checks ------------------------------------------------------------------------------------------
    def check(self, s: RewardScores) -> RewardScores:
        """Validate ``s`` against ``rows`` and ``needs()``; return it with half-precision tensors upcast to fp32."""
        who, n = f"reward loss '{self.name}'", self.needs()
        if s.chosen.dim() != 2:
            raise ValueError(f"{who}: chosen scores must be [B, K], got shape {tuple(s.chosen.shape)}")
        B, K = s.chosen.shape
        if self.rows == "pairs":
            if s.rejected is None or s.rejected.shape != s.chosen.shape:
                got = None if s.rejected is None else tuple(s.rejected.shape)
                raise ValueError(f"{who} needs pair rows: rejected scores of shape {(B, K)}, got {got}")
        elif s.rejected is not None:
            raise ValueError(f"{who} takes {self.rows} rows: rejected must be None")
        if n.num_heads is not None and K != n.num_heads:
            raise ValueError(f"{who} needs a score head with {n.num_heads} output(s), got K={K}")
        missing = [k for k in n.extras if k not in s.extras]
        if n.features:
            missing += [f for f in ("features_chosen",) + (("features_rejected",) if self.rows == "pairs" else ())
                        if getattr(s, f) is None]
        if missing:
            raise ValueError(f"{who} needs {', '.join(missing)} (RewardScores.extras / features)")
        for k, v in s.extras.items():
            if k not in ("step_scores", "step_labels", "step_row") and v.shape[0] != B:
                raise ValueError(f"{who}: extras['{k}'] has {v.shape[0]} rows, scores have {B}")
        up = lambda t: t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t
        return RewardScores(up(s.chosen), up(s.rejected), {k: up(v) for k, v in s.extras.items()},
                            up(s.features_chosen), up(s.features_rejected))


def pair_metrics(chosen: Tensor, rejected: Tensor, prefix: str = "") -> dict[str, float]:
    """What every pairwise loss reports: accuracy (chosen > rejected), margin mean, reward mean/std/min/max over all
    2B scores, chosen / rejected means. Scores [B] or [B, K] (all heads pooled)."""
    c, r = chosen.detach().double(), rejected.detach().double()
    both = torch.cat([c.reshape(-1), r.reshape(-1)])
    return {
        f"{prefix}accuracy": (c > r).double().mean().item(),
        f"{prefix}margin": (c - r).mean().item(),
        f"{prefix}reward_mean": both.mean().item(),
        f"{prefix}reward_std": both.std(unbiased=False).item(),
        f"{prefix}reward_min": both.min().item(),
        f"{prefix}reward_max": both.max().item(),
        f"{prefix}chosen": c.mean().item(),
        f"{prefix}rejected": r.mean().item(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Registry: every module of this package registers its losses with ``@register``.

_REGISTRY: dict[str, type[RewardLoss]] = {}
_LOADED = False


def register(cls: type[RewardLoss]) -> type[RewardLoss]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"reward loss name '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        import prefalign.reward.losses as pkg

        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.name != "base":
                importlib.import_module(f"{pkg.__name__}.{mod.name}")
        _LOADED = True


def _hint(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_class(name: str) -> type[RewardLoss]:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward loss '{name}'{_hint(name, _REGISTRY)}; known: {', '.join(names())}")
    return _REGISTRY[name]


def hparam_names(name: str) -> list[str]:
    cls = get_class(name)
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def get(name: str, **hparams) -> RewardLoss:
    """Build loss ``name``; unknown names or hyperparameters raise ValueError naming close matches."""
    cls, known = get_class(name), hparam_names(name)
    for key in hparams:
        if key not in known:
            raise ValueError(f"reward loss '{name}' has no hyperparameter '{key}'{_hint(key, known)}; "
                             f"known: {', '.join(known) or 'none'}")
    try:
        loss = cls(**hparams)
    except TypeError as e:  # a required hyperparameter (PAL's num_users) is missing
        raise ValueError(f"reward loss '{name}': {e}") from None
    loss.validate()
    return loss
