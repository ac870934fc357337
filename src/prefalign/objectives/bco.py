"""BCO (paired): Binary Classifier Optimization (Jung et al. 2024, arXiv 2404.04656), paired form without δ.

    loss = −log σ(β·h₊) − log σ(−β·h₋)

Each response is classified on its own (chosen → 1, rejected → 0); the loss upper-bounds DPO's:
−log σ(a) − log σ(−b) ≥ −log σ(a − b). The paper's reward shift δ and the unpaired (UDM) form are not here.
Needs a reference model; summed log-probs. Defaults: β = 0.1. Value at policy = reference: 2 ln 2.
TRL 1.16 ``loss_type="bco_pair"``. f_divergence: reverse_kl only. Modifiers: use_weighting, ld_alpha.
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
class BCOPair(PairwiseObjective):
    name = "bco_pair"
    summary = "BCO, paired: −log σ(βh_w) − log σ(−βh_l)"
    supports_f_divergence = False

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        return -F.logsigmoid(self.beta * sc.chosen_logratio) - F.logsigmoid(-self.beta * sc.rejected_logratio)
