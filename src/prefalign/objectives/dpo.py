"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), with cDPO label smoothing.

    h± = log π_θ(y±|x) − log π_ref(y±|x)       (summed over completion tokens)
    Δ  = h₊ − h₋
    loss = −(1 − ε)·log σ(βΔ) − ε·log σ(−βΔ)      (ε = label_smoothing; ε = 0 is plain DPO)

Needs a reference model; summed log-probs. Defaults: β = 0.1 (paper and TRL), ε = 0.
At policy = reference, Δ = 0 and the loss is ln 2 for every ε.
Implicit rewards (logged): β·h₊ and β·h₋.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefalign.objectives.base import Objective, ObjectiveOutput, PairLogps, reward_metrics
from prefalign.objectives.registry import register


@register
@dataclass
class DPO(Objective):
    name = "dpo"
    summary = "Direct Preference Optimization: −log σ(β·(h_w − h_l)); label_smoothing gives cDPO"
    needs_reference = True

    beta: float = 0.1
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def compute(self, lp: PairLogps) -> ObjectiveOutput:
        h_w = lp.policy_chosen - lp.ref_chosen  # [B]
        h_l = lp.policy_rejected - lp.ref_rejected  # [B]
        z = self.beta * (h_w - h_l)  # [B]
        eps = self.label_smoothing
        per_example = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)  # [B]
        metrics = reward_metrics(self.beta * h_w.detach(), self.beta * h_l.detach())
        return ObjectiveOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)
