"""The objective contract: an objective is a pure function of log-probs.

An objective receives per-sequence (and per-token) log-probs of the policy and, when it needs one, of the reference,
for the rows of a batch, plus the row fields it declares and the per-token features it asks for. It returns
per-example losses and named metrics. It never sees a model, tokenizer or optimizer (``prepare``, the one exception,
computes per-example constants from frozen models once before training).

Conventions (stated once, used everywhere):
- ``policy_*`` / ``ref_*`` are **summed** log-probs over completion tokens, shape [B].
- ``*_tokens`` are completion token counts, shape [B] (so length-averaged log-probs are ``logp / tokens``).
- ``*_token_logps`` are per-token log-probs, [B, T], zero where ``*_mask`` is 0.
- ``features`` are per-token quantities the objective asked for in ``needs()`` (registered reducers of the log-prob
  layer, logps.py) and per-sequence row data, [B, T, ...], zero where the mask is 0, keyed by the sequence's role:
  ``chosen_<out>`` / ``rejected_<out>`` for the policy's outputs (``chosen_log_sum_sq``: log Σ_v π_θ(v)², WPO;
  ``rejected_topk_logps`` / ``rejected_topk_ids`` / ``rejected_target_ids``: Cringe; ``chosen_token_kl``: SparsePO),
  ``chosen_ref_<out>`` for the reference's (``chosen_ref_states``: SparsePO), and ``chosen_marks`` /
  ``rejected_marks`` for revision rows' token marks (FIGA).
- ``extras`` are [B] (or [B, M]) per-example values: declared row fields (``pref_prob``) and what ``prepare`` computed
  (BCO's ``udm_weight``, PoFT's ``aligned_chosen``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from prefalign.logps import Feature, reducer


@dataclass(frozen=True)
class Needs:
    """What an objective asks the training loop for (``Objective.needs()``); the loop provides exactly that.

    - ``reference``: reference summed log-probs (``ref_*``);
    - ``policy_features``: per-token features computed on the policy's logits (``"log_sum_sq"``,
      ``feature("topk", k=6)``, ``"token_kl"``, or any registered reducer), in ``features`` as ``chosen_<out>``...;
    - ``ref_features``: from the reference: ``"token_logps"`` (per-token ``ref_*_token_logps``) or a registered
      reducer run on the reference (``"states"``), in ``features`` as ``chosen_ref_<out>``...;
    - ``row_options``: options for collating this row kind (KTO: ``{"mismatched": True}``).
    """

    reference: bool = True
    policy_features: tuple[Feature, ...] = ()
    ref_features: tuple[str, ...] = ()
    row_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy_features", tuple(Feature.of(f) for f in self.policy_features))
        object.__setattr__(self, "ref_features", tuple(self.ref_features))
        object.__setattr__(self, "row_options", dict(self.row_options))

    def merge(self, other: Needs) -> Needs:
        """What two objectives need together; the same feature with different parameters, or the same row option
        with different values, cannot be served at once (ValueError)."""
        feats = dict((f.name, f) for f in self.policy_features)
        for f in other.policy_features:
            if feats.setdefault(f.name, f) != f:
                raise ValueError(f"cannot combine objectives asking for feature {feats[f.name]} and {f}")
        opts = dict(self.row_options)
        for k, v in other.row_options.items():
            if opts.setdefault(k, v) != v:
                raise ValueError(f"cannot combine objectives with row option {k}={opts[k]!r} and {k}={v!r}")
        return Needs(self.reference or other.reference, tuple(feats.values()),
                     tuple(dict.fromkeys(self.ref_features + other.ref_features)), opts)

    def ref_inputs(self) -> tuple[str, ...]:
        """The reference's outputs the policy's reducers read (their ``ref_<x>`` context keys), ``head`` included."""
        keys = (k for f in self.policy_features for k in reducer(f.name).inputs)
        return tuple(dict.fromkeys(k[len("ref_"):] for k in keys if k.startswith("ref_")))

    @property
    def live_reference(self) -> bool:
        """True when the reference must run alongside the policy (``copy`` or ``adapter``): per-token or feature
        outputs of it are needed, which a precomputed reference does not have."""
        return bool(self.ref_features or self.ref_inputs())


@dataclass
class PrepareContext:
    """What ``Objective.prepare`` may use, once, before training."""

    model: Any  # the initial policy (frozen by convention: do not train it here)
    tokenizer: Any
    examples: list  # every example: the training ones, then the evaluation ones
    config: Any  # TrainConfig
    accelerator: Any
    cache_dir: str  # where expensive results may be cached (like ``reference: precompute``)
    log: Callable[..., None] = print


@dataclass
class PairLogps:
    """Log-probs for a batch of B preference pairs (chosen = y_w, rejected = y_l)."""

    policy_chosen: torch.Tensor  # [B] summed log π_θ(y_w|x)
    policy_rejected: torch.Tensor  # [B]
    ref_chosen: torch.Tensor | None = None  # [B] summed log π_ref(y_w|x); None for reference-free objectives
    ref_rejected: torch.Tensor | None = None  # [B]
    chosen_tokens: torch.Tensor | None = None  # [B] completion token counts
    rejected_tokens: torch.Tensor | None = None  # [B]
    policy_chosen_token_logps: torch.Tensor | None = None  # [B, Tc]
    policy_rejected_token_logps: torch.Tensor | None = None  # [B, Tr]
    ref_chosen_token_logps: torch.Tensor | None = None  # [B, Tc], when ``needs().ref_features`` has "token_logps"
    ref_rejected_token_logps: torch.Tensor | None = None  # [B, Tr]
    chosen_mask: torch.Tensor | None = None  # [B, Tc] 1 on completion tokens
    rejected_mask: torch.Tensor | None = None  # [B, Tr]
    # Per-example values: declared row fields and ``prepare``'s results, [B] or [B, M].
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    # Requested per-token features and per-sequence row data, [B, T, ...] (module docstring for the keys).
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.chosen_tokens is None:
            self.chosen_tokens = torch.ones_like(self.policy_chosen)
        if self.rejected_tokens is None:
            self.rejected_tokens = torch.ones_like(self.policy_rejected)

    @property
    def batch_size(self) -> int:
        return self.policy_chosen.shape[0]


def require(lp, who: str, *names: str) -> list[torch.Tensor]:
    """The fields or ``features`` entries ``names`` of a log-prob container; a ValueError naming what is missing."""
    feats = getattr(lp, "features", {})
    got = [getattr(lp, n, None) if n in {f.name for f in fields(lp)} else feats.get(n) for n in names]
    cls = type(lp).__name__
    missing = [f"{cls}.{n}" if n in {f.name for f in fields(lp)} else f"{cls}.features['{n}']"
               for n, g in zip(names, got) if g is None]
    if missing:
        raise ValueError(f"{who} needs {', '.join(missing)}")
    return got


@dataclass
class PointLogps:
    """Log-probs for a batch of B unpaired (point-wise) examples: one completion each, labelled desirable or not.

    ``kl_policy`` / ``kl_ref`` are the log-probs of *mismatched* completions (prompt i with the completion of
    example i − 1, TRL's KTO "KL dataset"), provided only when the objective's ``needs().row_options`` has
    ``mismatched``. ``features`` hold the rows' requested per-token features ([B, T, ...]; the mismatched
    sequences' under ``mismatched_<out>``).
    """

    policy: torch.Tensor  # [B] summed log π_θ(y|x)
    label: torch.Tensor  # [B] bool: True = desirable (thumbs up)
    ref: torch.Tensor | None = None  # [B] summed log π_ref(y|x); None for reference-free objectives
    tokens: torch.Tensor | None = None  # [B] completion token counts
    kl_policy: torch.Tensor | None = None  # [B] log π_θ(y_{i−1}|x_i), mismatched pairs
    kl_ref: torch.Tensor | None = None  # [B] log π_ref(y_{i−1}|x_i)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = torch.ones_like(self.policy)
        self.label = self.label.bool()

    @property
    def batch_size(self) -> int:
        return self.policy.shape[0]


@dataclass
class SampleLogps:
    """Log-probs for B rows of one human negative y_l and K self-generated samples y_1..y_K each (D2O's rows).

    K may differ between rows: ``*_samples`` are [B, K_max], zero where ``sample_mask`` is False. ``features``:
    ``rejected_<out>`` [B, T, ...] and ``samples_<out>`` [B, K, T, ...].
    """

    policy_rejected: torch.Tensor  # [B] summed log π_θ(y_l|x)
    policy_samples: torch.Tensor  # [B, K] summed log π_θ(y_k|x)
    sample_mask: torch.Tensor  # [B, K] bool: True where row b has a k-th sample
    ref_rejected: torch.Tensor | None = None  # [B]
    ref_samples: torch.Tensor | None = None  # [B, K]
    rejected_tokens: torch.Tensor | None = None  # [B]
    sample_tokens: torch.Tensor | None = None  # [B, K]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sample_mask = self.sample_mask.bool()
        if self.rejected_tokens is None:
            self.rejected_tokens = torch.ones_like(self.policy_rejected)
        if self.sample_tokens is None:
            self.sample_tokens = self.sample_mask.to(self.policy_samples.dtype)

    @property
    def batch_size(self) -> int:
        return self.policy_rejected.shape[0]


@dataclass
class JudgedLogps:
    """Per-token log-probs of B completions y, each scored after the prompt x alone and after x with a judgment j in
    context (CUT's rows). Token t of both views is the same token of y. ``features``: ``<out>`` after x,
    ``judged_<out>`` after x ⊕ j, [B, T, ...]."""

    policy_token_logps: torch.Tensor  # [B, T] log π_θ(y_t | x, y_<t), 0 past the end
    judged_token_logps: torch.Tensor  # [B, T] log π_θ(y_t | x ⊕ j, y_<t), 0 past the end
    mask: torch.Tensor  # [B, T] 1 on completion tokens
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.policy_token_logps.shape[0]


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar: the mean of ``per_example`` unless the objective says otherwise
    per_example: torch.Tensor  # [B]
    metrics: dict[str, float] = field(default_factory=dict)


class Objective:
    """Base class. Subclasses set the class attributes and implement ``compute``.

    Hyperparameters are dataclass fields of the subclass (decorate it with ``@dataclass``); ``get`` passes
    keyword arguments to them, so an unknown hyperparameter is an error. What the loop must provide beyond summed
    log-probs is asked for by ``needs()`` (which may depend on hyperparameters), per-example constants from frozen
    models by ``prepare``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for ``prefalign objectives``
    needs_reference: ClassVar[bool] = True
    # "paired" | "unpaired" | "samples" (SampleLogps) | "revision" (PairLogps with token marks) | "judgment"
    # (JudgedLogps) | "ranked"
    row_kind: ClassVar[str] = "paired"
    extra_fields: ClassVar[tuple[str, ...]] = ()  # row fields the data layer must validate and pass in ``extras``
    # Paired rows may be cross-prompt pairs (``chosen_prompt``/``rejected_prompt``): chosen scored after x₁, rejected
    # after x₂. Only objectives whose loss is meaningful across prompts (JPO) set it; the others refuse such files.
    cross_prompt: ClassVar[bool] = False

    def needs(self) -> Needs:
        """What the loop must provide (see ``Needs``). Default: the reference per ``needs_reference``, nothing more;
        subclasses extend it, e.g. ``replace(super().needs(), policy_features=("log_sum_sq",))``."""
        return Needs(reference=self.needs_reference)

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor] | None:
        """Per-example constants computed once before training from frozen models (BCO's UDM weights, PoFT's
        aligned-model log-probs): ``{name: [N] or [N, M]}`` in ``ctx.examples`` order; the loop hands them to
        ``compute`` as ``extras[name]``. Cache what is expensive under ``ctx.cache_dir``. Default: nothing."""
        return None

    def build_module(self, model_config) -> torch.nn.Module | None:
        """Trainable parameters the objective owns (SparsePO's mask network), built once the model is known; the
        training loop optimises, checkpoints and saves them with the policy. Default: none."""
        return None

    def __call__(self, logps: PairLogps) -> ObjectiveOutput:
        if self.needs_reference and (logps.ref_chosen is None or logps.ref_rejected is None):
            raise ValueError(f"objective '{self.name}' needs reference log-probs (ref_chosen, ref_rejected)")
        return self.compute(logps)

    def compute(self, logps: PairLogps) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self) -> None:
        """Check hyperparameter ranges; raise ValueError with a message naming the field."""

    def state(self) -> dict:
        """Running state (BCO's δ), JSON-serialisable; checkpointed so that ``--resume`` continues exactly."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what ``state`` returned."""

    def hparams(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} if hasattr(self, "__dataclass_fields__") else {}


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """The implicit-reward metrics TRL logs: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies."""
    c, r = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    return {
        "rewards/chosen": c.mean().item(),
        "rewards/rejected": r.mean().item(),
        "rewards/margins": (c - r).mean().item(),
        "rewards/accuracies": (c > r).float().mean().item(),
    }
