"""SPPO with hard labels: Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675, Eq. 4.7 / Alg. 1).

    loss = (h₊ − 1/(2β))² + (h₋ + 1/(2β))²

The paper regresses each log-ratio on β⁻¹·(P(y ≻ π) − ½) with a soft win probability P (from PairRM); the hard
version sets P = 1 for the chosen and 0 for the rejected response. Needs a reference model; summed log-probs.
Defaults: β = 0.1. Value at policy = reference: 1/(2β²) = 50. TRL 1.16 ``loss_type="sppo_hard"``.
f_divergence: reverse_kl only. Modifiers: use_weighting, ld_alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective
from prefalign.objectives.registry import register


@register
@dataclass
class SPPOHard(PairwiseObjective):
    name = "sppo_hard"
    summary = "SPPO, hard labels: (h_w − 1/(2β))² + (h_l + 1/(2β))²"
    supports_f_divergence = False

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        target = 0.5 / self.beta
        return (sc.chosen_logratio - target) ** 2 + (sc.rejected_logratio + target) ** 2
