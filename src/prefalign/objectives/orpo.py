"""ORPO: Monolithic Preference Optimization without Reference Model (Hong et al. 2024, arXiv 2403.07691, Eqs. 4-7).

    a± = log π_θ(y±|x) / |y±|                        (length-averaged: the paper's odds use the per-token mean)
    log odds(y) = a − log(1 − e^a)
    log OR = log odds(y₊) − log odds(y₋)
    loss_b = nll − λ·log σ(log OR_b)
    nll    = −Σ_b log π_θ(y₊,b) / Σ_b |y₊,b|         (token mean over all chosen completion tokens of the batch)

Reference-free; needs real token counts. λ is called ``beta`` as in TRL's experimental ``ORPOTrainer`` (default 0.1,
the paper uses 0.1 too). log(1 − e^a) is computed stably (log1p(−e^a) below −ln 2, log(−expm1(a)) above).
Differences: TRL's ORPOTrainer computes the odds in fp32 whatever the input dtype, and its NLL covers the prompt
tokens too (its code says so); the paper's L_SFT, and this, cover only the chosen response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps, reward_metrics
from prefalign.objectives.pairwise import chosen_nll
from prefalign.objectives.registry import register


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, accurate at both ends; each branch only sees inputs where it is finite."""
    near_zero = x > -math.log(2)
    far = torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x)))
    near = torch.log(-torch.expm1(torch.where(near_zero, x, -1.0)))
    return torch.where(near_zero, near, far)


@register
@dataclass
class ORPO(Objective):
    name = "orpo"
    summary = "ORPO: NLL(chosen) − λ·log σ(log odds ratio of length-averaged likelihoods), reference-free"
    needs_reference = False

    beta: float = 0.1  # the paper's λ

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta (λ) must be > 0, got {self.beta}")

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        a_w = lp.policy_chosen / lp.chosen_tokens.clamp(min=1)  # [B]
        a_l = lp.policy_rejected / lp.rejected_tokens.clamp(min=1)  # [B]
        log_or = (a_w - a_l) - (log1mexp(a_w) - log1mexp(a_l))  # [B]
        nll = chosen_nll(lp)
        per_example = nll - self.beta * F.logsigmoid(log_or)  # [B]
        metrics = reward_metrics(self.beta * a_w.detach(), self.beta * a_l.detach())
        metrics["nll"] = nll.item()
        metrics["log_odds_ratio"] = log_or.detach().mean().item()
        return ObjectiveOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)
