"""DiscoPOP / LRML: log-ratio modulated loss (Chris Lu et al. 2024, arXiv 2406.08414, Eq. 5).

    z = βΔ,  m = σ(z/τ)
    loss = (1 − m)·(−log σ(z)) + m·exp(−z)

A blend of the logistic (DPO) and exponential losses, switched by the sign of the margin at temperature τ
(``discopop_tau``). Needs a reference model; summed log-probs. Defaults: β = 0.1, τ = 0.05 (paper and TRL).
Value at policy = reference: (ln 2 + 1)/2 ≈ 0.8466. TRL 1.16 ``loss_type="discopop"``; here m·e^(−z) is
computed as exp(log σ(z/τ) − z), which is finite for very negative z where TRL's product gives nan.
Modifiers: f_divergence, use_weighting, ld_alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective
from prefalign.objectives.registry import register


@register
@dataclass
class DiscoPOP(PairwiseObjective):
    name = "discopop"
    summary = "DiscoPOP: σ(βΔ/τ)-weighted blend of −log σ(βΔ) and exp(−βΔ)"

    discopop_tau: float = 0.05

    def validate(self) -> None:
        super().validate()
        if not self.discopop_tau > 0:
            raise ValueError(f"discopop_tau must be > 0, got {self.discopop_tau}")

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        z, tau = self.beta * sc.delta, self.discopop_tau
        one_minus_m = torch.sigmoid(-z / tau)
        # m·e^(−z) as exp(log m − z): finite for very negative z, where the plain product is 0·∞
        return one_minus_m * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / tau) - z)
