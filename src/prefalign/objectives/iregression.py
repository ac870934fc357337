"""iREPO regression: implicit-reward differences regressed on the logit of empirical preferences (Le et al. 2024,
"iREPO: implicit Reward Pairwise Difference based Empirical Preference Optimization", arXiv 2405.15230).

    p̂ = pref_prob (row field): the fraction of annotators preferring "chosen", clamped to [ε, 1 − ε]
    loss = (β·(h₊ − h₋) − log(p̂/(1 − p̂)))²

**Reconstructed, unverified**: methods.md #8 builds this from the abstract and a review ("regression-based loss on
the logit of empirical preferences"); the paper's equation was not found (search of the paper mirrors did not show
it). Its population optimum is βΔ = E[logit p̂] = r₊ − r₋ under Bradley–Terry annotators (the same optimum as
DPO's, but regressed on soft labels, so it does not push margins to infinity on p̂ = 1 rows thanks to the clamp).

Needs a reference model; summed log-probs; row field ``pref_prob`` ∈ [0, 1] (declared in ``extra_fields``).
Defaults: β = 0.1, clip = 1e-3 (ε). Value at policy = reference: logit(p̂)². The iterative self-sampling loop of the
paper is not here (offline loss only). f_divergence: supported (the loss uses Δ). Modifiers: use_weighting, ld_alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective
from prefalign.objectives.registry import register


@register
@dataclass
class IRegression(PairwiseObjective):
    name = "iregression"
    summary = "iREPO (reconstructed): (βΔ − logit(pref_prob))², pref_prob = empirical fraction preferring chosen"
    extra_fields = ("pref_prob",)
    extra_ranges = {"pref_prob": (0.0, 1.0)}  # checked per row by the data layer (data.validate.declared_ranges)

    clip: float = 1e-3

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.clip < 0.5:
            raise ValueError(f"clip must be in (0, 0.5), got {self.clip}")

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        if "pref_prob" not in lp.extras:
            raise ValueError("objective 'iregression' needs the row field 'pref_prob' (PairLogps.extras)")
        p = lp.extras["pref_prob"].to(sc.delta.dtype)
        if ((p < 0) | (p > 1)).any():
            raise ValueError("pref_prob must lie in [0, 1]")
        p = p.clamp(self.clip, 1 - self.clip)
        target = torch.log(p) - torch.log1p(-p)  # logit p̂
        return (self.beta * sc.delta - target) ** 2
