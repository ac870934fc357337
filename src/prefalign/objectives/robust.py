"""rDPO: robust DPO under label noise (Chowdhury et al. 2024, arXiv 2403.00409).

    loss = [(1 − ε)·(−log σ(βΔ)) − ε·(−log σ(−βΔ))] / (1 − 2ε)

ε = label_smoothing is the known probability that a pair's label was flipped. The loss is unbiased: its expectation
over the noisy label equals the clean DPO loss, so its population optimum recovers βΔ = r(y₊) − r(y₋) where plain
DPO is shrunk towards 0 (tests/theory/test_rdpo_noise.py). Needs a reference model; summed log-probs.
Defaults: β = 0.1, ε = 0 (then it is DPO). ε must be in [0, 0.5) (TRL 1.16 only logs a warning outside it).
Value at policy = reference: ln 2. TRL 1.16 ``loss_type="robust"``. Modifiers: f_divergence, use_weighting, ld_alpha.
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
class RobustDPO(PairwiseObjective):
    name = "robust"
    summary = "rDPO: DPO debiased for a known label-flip rate ε = label_smoothing"

    label_smoothing: float = 0.0

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing (flip rate) must be in [0, 0.5), got {self.label_smoothing}")

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        z, eps = self.beta * sc.delta, self.label_smoothing
        return ((1 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1 - 2 * eps)
