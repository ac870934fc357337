"""APO: Anchored Preference Optimization (D'Oosterlinck et al. 2024, arXiv 2408.06266, Eqs. 7 and 8).

    apo_zero:  loss = (1 − σ(β·h₊)) + σ(β·h₋)                 raise the winner, lower the loser
    apo_down:  loss = σ(β·h₊) + (1 − σ(β·(h₊ − h₋)))          lower both, the loser more

Use apo_zero when the chosen answers are better than the model's own, apo_down when they are worse. Needs a
reference model; summed log-probs. Defaults: β = 0.1. Value at policy = reference: 1 (both).
TRL 1.16 ``loss_type="apo_zero"`` / ``"apo_down"``. f_divergence: reverse_kl only. Modifiers: use_weighting, ld_alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective
from prefalign.objectives.registry import register


@register
@dataclass
class APOZero(PairwiseObjective):
    name = "apo_zero"
    summary = "APO-zero: (1 − σ(βh_w)) + σ(βh_l)"
    supports_f_divergence = False

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        h_w, h_l = sc.chosen_logratio, sc.rejected_logratio
        return (1 - torch.sigmoid(self.beta * h_w)) + torch.sigmoid(self.beta * h_l)


@register
@dataclass
class APODown(PairwiseObjective):
    name = "apo_down"
    summary = "APO-down: σ(βh_w) + (1 − σ(β(h_w − h_l)))"
    supports_f_divergence = False

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        h_w, h_l = sc.chosen_logratio, sc.rejected_logratio
        return torch.sigmoid(self.beta * h_w) + (1 - torch.sigmoid(self.beta * (h_w - h_l)))
