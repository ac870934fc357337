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
Each micro-batch is one call (TRL: each per-device batch). The UDM weighting (a prompt classifier) is not here.

Needs a reference model; summed log-probs; unpaired rows. Defaults: β = 0.1, delta = True. Value at policy =
reference, first call: ln 2 per row (δ = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefalign.objectives.base import ObjectiveOutput, PointLogps
from prefalign.objectives.pointwise import PointObjective, check_beta, point_metrics
from prefalign.objectives.registry import register


@register
@dataclass
class BCO(PointObjective):
    name = "bco"
    summary = "BCO, unpaired: −log σ(±(βh − δ)), δ = running mean of batch-mean rewards"

    beta: float = 0.1
    delta: bool = True

    def __post_init__(self) -> None:
        self._sum, self._count = 0.0, 0  # running-mean state of δ (not hyperparameters)

    def validate(self) -> None:
        check_beta(self.beta)

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
        return ObjectiveOutput(per_example.mean(), per_example, metrics)
