"""EXO (pairwise): Efficient Exact Optimization (Ji et al. 2024, arXiv 2402.00856, Eq. 16 with K = 2).

    q = softmax(β·[s₊, s₋]) = [σ(βΔ), σ(−βΔ)],  p = [1 − ε, ε]
    loss = KL(q ‖ p) = σ(βΔ)·[log σ(βΔ) − log(1 − ε)] + σ(−βΔ)·[log σ(−βΔ) − log ε]

The reverse KL to a smoothed label makes the objective mode-seeking. ε = label_smoothing must be > 0 (log ε);
the paper recommends 1e-3, the default here (TRL's default 0 raises for this loss). Needs a reference model; summed
log-probs. Defaults: β = 0.1, ε = 1e-3. Value at policy = reference: −log 2 − ½·log(ε(1 − ε)) ≈ 2.7612.
TRL 1.16 ``loss_type="exo_pair"``. Modifiers: f_divergence, use_weighting, ld_alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective
from prefalign.objectives.registry import register


@register
@dataclass
class EXOPair(PairwiseObjective):
    name = "exo_pair"
    summary = "EXO: KL(softmax(β·[s_w, s_l]) ‖ [1 − ε, ε])"

    label_smoothing: float = 1e-3

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in (0, 1) for exo_pair (1e-3 recommended), got "
                             f"{self.label_smoothing}")

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        z, eps = self.beta * sc.delta, self.label_smoothing
        log_q_w, log_q_l = F.logsigmoid(z), F.logsigmoid(-z)
        return log_q_w.exp() * (log_q_w - math.log1p(-eps)) + log_q_l.exp() * (log_q_l - math.log(eps))
