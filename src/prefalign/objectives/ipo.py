"""IPO: Identity Preference Optimisation (Azar et al. 2023, arXiv 2310.12036, Eq. 17).

    length_normalize=True (default):  loss = (s₊/|y₊| − s₋/|y₋| − 1/(2β))²
    length_normalize=False:           loss = (s₊ − s₋ − 1/(2β))²

β plays the role of the paper's τ. Needs a reference model. With the default, the log-ratios are averaged over
completion tokens: TRL 1.16 does this (its code says the IPO authors confirmed it); OpenRLHF, NeMo-Aligner and a
literal reading of the paper use the summed form (``length_normalize=False``). |y| counts all completion tokens,
also under LD-DPO. Defaults: β = 0.1, length_normalize = True. Value at policy = reference: 1/(4β²) = 25.
TRL 1.16 ``loss_type="ipo"``. Modifiers: f_divergence, use_weighting, ld_alpha.
Population optimum (tests/theory/test_ipo_bounded.py): on a deterministic ranking of K responses with all pairs
equally likely, h_k = k/(βK) + c, so no response's probability goes to 0 (DPO drives it to 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective
from prefalign.objectives.registry import register


@register
@dataclass
class IPO(PairwiseObjective):
    name = "ipo"
    summary = "IPO: (Δ − 1/(2β))², log-ratios averaged over tokens by default (as TRL)"

    length_normalize: bool = True

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        if self.length_normalize:
            delta = sc.chosen / sc.chosen_tokens - sc.rejected / sc.rejected_tokens
        else:
            delta = sc.delta
        return (delta - 1 / (2 * self.beta)) ** 2
