"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), with cDPO label smoothing.

    h± = log π_θ(y±|x) − log π_ref(y±|x)       (summed over completion tokens)
    Δ  = s₊ − s₋, s± = h± unless an f-divergence is set (see pairwise.py)
    loss = −(1 − ε)·log σ(βΔ) − ε·log σ(−βΔ)      (ε = label_smoothing; ε = 0 is plain DPO)

Needs a reference model; summed log-probs. Defaults: β = 0.1 (paper and TRL), ε = 0.
At policy = reference, Δ = 0 and the loss is ln 2 for every ε.
Implicit rewards (logged): β·h₊ and β·h₋.
TRL 1.16 ``loss_type="sigmoid"`` is this with ε = 0 (its sigmoid loss ignores ``label_smoothing``).
Modifiers: f_divergence, use_weighting (WPO), ld_alpha (LD-DPO), all supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective, smoothed_sigmoid_loss
from prefalign.objectives.registry import register


@register
@dataclass
class DPO(PairwiseObjective):
    name = "dpo"
    summary = "Direct Preference Optimization: −log σ(β·(h_w − h_l)); label_smoothing gives cDPO"

    label_smoothing: float = 0.0

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        return smoothed_sigmoid_loss(self.beta * sc.delta, self.label_smoothing)
