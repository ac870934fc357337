"""CPO: Contrastive Preference Optimization (Xu et al. 2024, arXiv 2401.08417, Eq. 3 + the NLL of Eq. 5).

    loss_b = −(1 − ε)·log σ(β·(log π_θ(y₊) − log π_θ(y₋))) − ε·log σ(−β·(…))  +  α·nll
    nll    = −Σ_b log π_θ(y₊,b) / Σ_b |y₊,b|      (token mean over all chosen completion tokens of the batch)

The DPO loss with a uniform reference (dropped), plus behaviour cloning of the chosen responses. Reference-free;
summed log-probs (the NLL needs real token counts). Defaults as TRL's experimental ``CPOTrainer``: β = 0.1,
cpo_alpha = 1.0, ε = 0. The NLL is a batch scalar, so it is the same in every ``per_example`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps, reward_metrics
from prefalign.objectives.pairwise import chosen_nll, smoothed_sigmoid_loss
from prefalign.objectives.registry import register


@register
@dataclass
class CPO(Objective):
    name = "cpo"
    summary = "CPO: −log σ(β(logp_w − logp_l)) + cpo_alpha·NLL(chosen), reference-free"
    needs_reference = False

    beta: float = 0.1
    cpo_alpha: float = 1.0
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.cpo_alpha >= 0:
            raise ValueError(f"cpo_alpha must be >= 0, got {self.cpo_alpha}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        z = self.beta * (lp.policy_chosen - lp.policy_rejected)  # [B]
        pref = smoothed_sigmoid_loss(z, self.label_smoothing)  # [B]
        nll = chosen_nll(lp)
        per_example = pref + self.cpo_alpha * nll if self.cpo_alpha else pref
        metrics = reward_metrics(
            self.beta * lp.policy_chosen.detach(), self.beta * lp.policy_rejected.detach()
        )
        metrics["nll"] = nll.item()
        return ObjectiveOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)
