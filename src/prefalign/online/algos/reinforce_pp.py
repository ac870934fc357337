"""REINFORCE++ (Hu 2025, arXiv 2501.03262), as OpenRLHF 0.11 implements it (``--advantage_estimator reinforce``).

    R_i   ← R_i − mean_group R           (only with baseline="group": OpenRLHF's "reinforce_baseline")
    r_t   = −β · k1_t  +  [t = last] · R_i,      k1_t = log π_old(y_t) − log π_ref(y_t)
    G_t   = Σ_{s ≥ t} γ^{s−t} r_s            (the return to go; γ = 1)
    A_t   = (G_t − μ) / σ                     μ, σ over every completion token of the *global* batch
    ℓ_t   = −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε_high) A_t),   ρ_t = π_θ/π_old per token
    loss  = global token mean of ℓ            (loss_type "dapo")

No critic: the per-token KL in the reward plus the batch whitening stand in for one. Defaults are OpenRLHF's:
β = 0.01 (``init_kl_coef``), k1 in the reward, γ = 1, ε = 0.2, whitening on (``no_advantage_std_norm`` off). With
baseline="group" OpenRLHF forces γ = 1; here γ is yours to set. OpenRLHF also clamps the KL to [−10, 10]; we do not
(a divergence that large is a bug to see, not to hide).

A NaN reward (not judged) gets A = 0 on every token and stays out of the group baseline and the whitening statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.online.advantages import group_advantages, token_rewards, whiten
from prefalign.online.algos.base import OnlineAlgorithm, OnlineNeeds, PolicyBatch, Rollout, register
from prefalign.online.algos.grpo import clipped_surrogate, ratio_metrics
from prefalign.online.kl import KL_ESTIMATORS, kl_per_token

BASELINES = ("none", "group")


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = Σ_{s≥t} γ^{s−t} r_s over the masked tokens, [N, T] → [N, T], zero outside ``mask``."""
    m = mask.to(rewards.dtype)
    r = rewards * m
    out = torch.zeros_like(r)
    acc = torch.zeros_like(r[:, 0])  # [N]
    for t in range(r.shape[1] - 1, -1, -1):
        acc = r[:, t] + gamma * acc
        out[:, t] = acc
    return out * m


@register
@dataclass
class ReinforcePP(OnlineAlgorithm):
    name = "reinforce_pp"
    loss_type = "dapo"  # fixed: the global token mean, as OpenRLHF's token-level aggregation

    beta: float = 0.01  # per-token KL coefficient in the reward; 0: no reference
    kl_estimator: str = "k1"  # the in-reward KL (OpenRLHF warns unless it is k1)
    gamma: float = 1.0  # discount of the return to go
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: = epsilon
    baseline: str = "none"  # none | group (subtract the group mean reward first: "REINFORCE++-baseline")
    whiten_std: bool = True  # False: centre the advantages only

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def needs(self) -> OnlineNeeds:
        return OnlineNeeds(reference=self.beta > 0, old_logp=self.beta > 0)

    def validate(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.epsilon < 1 or self.eps_high <= 0:
            raise ValueError(f"epsilon must be in (0, 1) and epsilon_high > 0, got {self.epsilon}, "
                             f"{self.epsilon_high}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got '{self.baseline}'")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got '{self.kl_estimator}'")

    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:
        ok = ~torch.isnan(ro.rewards)  # [N]
        scores = ro.rewards
        if self.baseline == "group":
            scores = group_advantages(ro.rewards, ro.group, scale="none")  # [N] r − group mean; NaN → 0
        kl = None
        if self.beta > 0:
            if ro.ref_logp is None:
                raise ValueError("REINFORCE++ with beta > 0 needs Rollout.ref_logp")
            kl = kl_per_token(ro.old_logp, ro.ref_logp, self.kl_estimator)  # [N, T]
        valid = ro.mask.bool() & ok[:, None]  # [N, T] judged completion tokens
        returns = reward_to_go(token_rewards(scores, valid, kl, self.beta), valid, self.gamma)  # [N, T]
        adv = whiten(returns, valid, ro.reduce, std=self.whiten_std)  # [N, T], 0 outside valid
        out = {"advantages": adv}
        if kl is not None:
            out["kl"] = (kl * ro.mask.to(kl.dtype)).sum(-1)  # [N] per-sequence KL, for logging
        return out

    def loss(self, b: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        m = b.mask.to(b.logp.dtype)  # [N, T]
        ratio = ((b.logp - b.old_logp) * m).exp()  # [N, T]
        adv = b.advantages if b.advantages.dim() == 2 else b.advantages[:, None]
        per_token, low, high = clipped_surrogate(ratio, adv, self.epsilon, self.eps_high)
        return per_token * m, ratio_metrics(ratio, low, high, b.mask)
