"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al. 2024, arXiv 2405.14734, Eq. 6).

    a± = log π_θ(y±|x) / |y±|              (length-averaged, no reference)
    z  = β·(a₊ − a₋ − γ/β)                 (γ/β = gamma_beta_ratio, so the margin is γ = β·gamma_beta_ratio)
    loss = −(1 − ε)·log σ(z) − ε·log σ(−z)

Reference-free; length-averaged log-probs (needs real token counts). Defaults follow the paper's recipes and the
authors' code: β = 2.0, gamma_beta_ratio = 0.5 (γ = 1.0), ε = 0. No NLL term (combine with ``sft`` for one).
TRL (experimental ``CPOTrainer``, ``loss_type="simpo"``) names the margin itself ``simpo_gamma`` (default 0.5 with
β = 0.1): TRL(β, simpo_gamma) = this with gamma_beta_ratio = simpo_gamma/β and TRL's ``cpo_alpha = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps, reward_metrics
from prefalign.objectives.pairwise import smoothed_sigmoid_loss
from prefalign.objectives.registry import register


@register
@dataclass
class SimPO(Objective):
    name = "simpo"
    summary = "SimPO: −log σ(β(avg logp_w − avg logp_l) − γ), reference-free"
    needs_reference = False

    beta: float = 2.0
    gamma_beta_ratio: float = 0.5
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        a_w = lp.policy_chosen / lp.chosen_tokens.clamp(min=1)  # [B]
        a_l = lp.policy_rejected / lp.rejected_tokens.clamp(min=1)  # [B]
        z = self.beta * (a_w - a_l - self.gamma_beta_ratio)  # [B]
        per_example = smoothed_sigmoid_loss(z, self.label_smoothing)
        metrics = reward_metrics(self.beta * a_w.detach(), self.beta * a_l.detach())
        return ObjectiveOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)
