"""BCO, unpaired: Binary Classifier Optimization with the reward shift δ (Jung et al. 2024, arXiv 2404.04656;
TRL ``trl/experimental/bco/bco_trainer.py`` ``bco_loss`` at commit f2cd577 — not shipped in TRL 1.16).

    r = β·h,  h = log π_θ(y|x) − log π_ref(y|x)            (summed)
    δ ← running mean of the batch-mean reward (updated once per call in training, i.e. with grad enabled)
    desirable row:    −log σ(r − δ)
    undesirable row:  −log σ(−(r − δ))
    loss = mean over rows

δ follows TRL: each call adds mean_batch(r) (detached) to a running mean, then uses the updated mean — so δ is the
mean over calls of the batch-mean rewards. It is **state**: the only non-pure part of an objective here; it is
updated only when gradients are enabled (training), so evaluation does not move it. ``delta=False`` fixes δ = 0.
Each micro-batch is one call (TRL: each per-device batch).

``udm: true`` adds underlying distribution matching (the paper's UDM, TRL's ``_get_udm_weight``): each undesirable
row's loss is weighted by clamp(p/(1 − p), min_density_ratio, max_density_ratio), p = P(desirable | prompt) from a
balanced logistic regression on frozen prompt embeddings fitted once before training (``prepare``, train/udm.py);
the training loop hands the weights in as ``extras["udm_weight"]``. ``udm_encoder`` names an encoder folder; empty = the
initial policy's mean-pooled prompt states. Loss = mean over rows of the weighted terms (as TRL).

Needs a reference model; summed log-probs; unpaired rows. Defaults: β = 0.1, delta = True. Value at policy =
reference, first call: ln 2 per row (δ = 0). UDM (TRL's defaults): udm = False, prompt_sample_size = 1024,
min_density_ratio = 0.5, max_density_ratio = 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefalign.objectives.base import ObjectiveOutput, PointLogps, PrepareContext
from prefalign.objectives.pointwise import PointObjective, check_beta, point_metrics
from prefalign.objectives.registry import register


@register
@dataclass
class BCO(PointObjective):
    name = "bco"
    summary = "BCO, unpaired: −log σ(±(βh − δ)), δ = running mean of batch-mean rewards"

    beta: float = 0.1
    delta: bool = True
    udm: bool = False
    udm_encoder: str = ""
    prompt_sample_size: int = 1024
    min_density_ratio: float = 0.5
    max_density_ratio: float = 10.0

    def __post_init__(self) -> None:
        self._sum, self._count = 0.0, 0  # running-mean state of δ (not hyperparameters)

    def validate(self) -> None:
        check_beta(self.beta)
        if not 0 < self.min_density_ratio <= self.max_density_ratio:
            raise ValueError("need 0 < min_density_ratio ≤ max_density_ratio, got "
                             f"{self.min_density_ratio}, {self.max_density_ratio}")
        if self.prompt_sample_size < 1:
            raise ValueError(f"prompt_sample_size must be ≥ 1, got {self.prompt_sample_size}")

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor] | None:
        """``udm_weight`` [N] (with ``udm``): the density-ratio weight of every example, from the initial policy's
        (or ``udm_encoder``'s) prompt embeddings."""
        if not self.udm:
            return None
        from prefalign.train.udm import udm_weights

        return {"udm_weight": udm_weights(self, ctx.model, ctx.tokenizer, ctx.examples, ctx.config)}

    def state(self) -> dict:
        return {"sum": self._sum, "count": self._count}

    def load_state(self, state: dict) -> None:
        self._sum, self._count = float(state.get("sum", 0.0)), int(state.get("count", 0))

    @property
    def running_delta(self) -> float:
        return self._sum / self._count if self._count else 0.0

    def compute(self, lp: PointLogps) -> ObjectiveOutput:
        r = self.beta * (lp.policy - lp.ref)  # [B]
        if self.delta and torch.is_grad_enabled():
            self._sum += r.detach().mean().item()
            self._count += 1
        d = self.running_delta if self.delta else 0.0
        per_example = torch.where(lp.label, -F.logsigmoid(r - d), -F.logsigmoid(-(r - d)))
        metrics = {**point_metrics(r, lp.label), "delta": d}
        if self.udm:
            if "udm_weight" not in lp.extras:
                raise ValueError("objective 'bco' with udm needs PointLogps.extras['udm_weight'] (train/udm.py)")
            w = lp.extras["udm_weight"].to(per_example)  # [B]; 1 on desirable rows
            per_example = per_example * torch.where(lp.label, torch.ones_like(w), w)
            if (~lp.label).any():
                metrics["udm/weight"] = w[~lp.label].mean().item()
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
