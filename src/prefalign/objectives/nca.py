"""NCA (pairwise): Noise Contrastive Alignment (Chen et al. 2024, arXiv 2402.05369), pairwise form.

    r± = β·h±   (h = summed log-ratio)
    loss = −log σ(r₊) − ½·log σ(−r₊) − ½·log σ(−r₋)

Each response is scored on its own (not through r₊ − r₋), which keeps the chosen likelihood from falling. Needs a
reference model; summed log-probs. Defaults: β = 0.1. Value at policy = reference: 2 ln 2.
TRL 1.16 ``loss_type="nca_pair"``. f_divergence: reverse_kl only (a single score does not cancel β·log Z).
Modifiers: use_weighting, ld_alpha.
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
class NCAPair(PairwiseObjective):
    name = "nca_pair"
    summary = "NCA: −log σ(βh_w) − ½ log σ(−βh_w) − ½ log σ(−βh_l)"
    supports_f_divergence = False

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        r_w, r_l = self.beta * sc.chosen_logratio, self.beta * sc.rejected_logratio
        return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
