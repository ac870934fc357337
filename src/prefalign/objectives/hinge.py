"""Hinge (SLiC, Zhao et al. 2023, arXiv 2305.10425; RSO, Liu et al. 2023, arXiv 2309.06657).

    loss = relu(1 − βΔ),   Δ = s₊ − s₋ (summed log-ratios; s = h unless an f-divergence is set)

β is the inverse margin: the loss is zero once Δ ≥ 1/β. Needs a reference model; summed log-probs.
Defaults: β = 0.1 (TRL). Value at policy = reference: 1. TRL 1.16 ``loss_type="hinge"``.
Modifiers: f_divergence, use_weighting, ld_alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective
from prefalign.objectives.registry import register


@register
@dataclass
class Hinge(PairwiseObjective):
    name = "hinge"
    summary = "SLiC/RSO hinge: relu(1 − β·(h_w − h_l))"

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        return torch.relu(1 - self.beta * sc.delta)
