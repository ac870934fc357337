"""Length-normalised DPO ("sigmoid_norm"): the SimPO-style average, kept with a reference model.

    loss = −log σ(β·(s₊/|y₊| − s₋/|y₋|))

Per-token averaged log-ratios remove DPO's length bias (SimPO, Meng et al. 2024, arXiv 2405.14734 uses the same
average without a reference). |y| counts all completion tokens, also under LD-DPO. Needs a reference model.
Defaults: β = 0.1. Value at policy = reference: ln 2. TRL 1.16 ``loss_type="sigmoid_norm"``.
Modifiers: f_divergence (the per-length division keeps g's constant, so use TRL 1.16's g), use_weighting, ld_alpha.
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
class SigmoidNorm(PairwiseObjective):
    name = "sigmoid_norm"
    summary = "DPO on token-averaged log-ratios: −log σ(β(s_w/|y_w| − s_l/|y_l|))"

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        return -F.logsigmoid(self.beta * (sc.chosen / sc.chosen_tokens - sc.rejected / sc.rejected_tokens))
