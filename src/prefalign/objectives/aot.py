"""AOT: Alignment via Optimal Transport (Melnyk et al. 2024, arXiv 2406.05882), paired and unpaired.

    aot:           δ = sort_B(log π_θ(y₊) − log π_θ(y₋)) − sort_B(log π_ref(y₊) − log π_ref(y₋))
    aot_unpaired:  δ = sort_B(h₊) − sort_B(h₋)
    loss_i = −(1 − ε)·log σ(βδ_i) − ε·log σ(−βδ_i)          (ε = label_smoothing)

Sorting across the batch is the optimal transport plan in 1-D for a convex cost (tests/theory/test_aot_ot.py
checks it against brute force); it makes the objective a first-order stochastic-dominance constraint on the
distribution of margins rather than a per-pair one. **``per_example[i]`` is the loss at the i-th quantile, not the
loss of row i.** The batch is what is sorted: a larger batch gives a better quantile estimate (TRL: per device).
"Unpaired" names how chosen and rejected are matched; the rows are still pairs. Needs a reference model; summed
log-probs. Defaults: β = 0.1, ε = 0. Value at policy = reference: ln 2. TRL 1.16 ``loss_type="aot"`` /
``"aot_unpaired"``. f_divergence: reverse_kl only; use_weighting: refused (weights would not follow the sort);
ld_alpha: supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.objectives.base import PairLogps
from prefalign.objectives.pairwise import PairScores, PairwiseObjective, smoothed_sigmoid_loss
from prefalign.objectives.registry import register


@dataclass
class _AOTBase(PairwiseObjective):
    supports_f_divergence = False
    supports_weighting = False

    label_smoothing: float = 0.0

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def matched(self, sc: PairScores) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def pair_loss(self, sc: PairScores, lp: PairLogps) -> torch.Tensor:
        a, b = self.matched(sc)
        delta = torch.sort(a).values - torch.sort(b).values  # [B] quantile-matched margins
        return smoothed_sigmoid_loss(self.beta * delta, self.label_smoothing)


@register
@dataclass
class AOT(_AOTBase):
    name = "aot"
    summary = "AOT, paired: sorted policy log-odds vs sorted reference log-odds across the batch"

    def matched(self, sc: PairScores) -> tuple[torch.Tensor, torch.Tensor]:
        return sc.policy_chosen - sc.policy_rejected, sc.ref_chosen - sc.ref_rejected


@register
@dataclass
class AOTUnpaired(_AOTBase):
    name = "aot_unpaired"
    summary = "AOT, unpaired: sorted chosen log-ratios vs sorted rejected log-ratios across the batch"

    def matched(self, sc: PairScores) -> tuple[torch.Tensor, torch.Tensor]:
        return sc.chosen_logratio, sc.rejected_logratio
