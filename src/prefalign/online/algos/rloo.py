"""RLOO: REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740; Kool et al. 2019).

TRL 1.16 ``RLOOTrainer`` semantics, the KL going into the *reward*, not the loss:

    KL_i  = Σ_t (log π_old − log π_ref)(y_t)                       (k1, summed over the completion)
    r̃_i   = clip(r_i) − β · KL_i
    A_i   = r̃_i − mean_{j≠i, scorable} r̃_j = k/(k−1) · (r̃_i − mean_group r̃)      (advantages.rloo_advantages)
    A     ← (A − mean A) / (std A + 1e-4) over the global batch    (only with normalize_advantages)
    ρ_i   = exp( Σ_t log π_θ − Σ_t log π_old )                      (one ratio per *sequence*)
    loss  = mean_i −min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε_high) A_i)

The sequence loss is broadcast over the sequence's tokens and aggregated with loss_type "grpo" (per-sequence token
mean, then the mean over sequences), which is exactly the mean over sequences above — for every micro-batch split.
Its gradient equals TRL's; its value differs only for an empty completion, which TRL scores −A and we score 0
(no token carries it, so neither gradient sees it).

Defaults are TRL 1.16's ``RLOOConfig``: β = 0.05, ε = ε_high = 0.2, no advantage normalisation, no reward clip.
A NaN reward (not judged) and the only scorable member of a group get advantage 0 and stay out of the batch
normalisation's statistics, as in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.online.advantages import global_mean_std, rloo_advantages
from prefalign.online.algos.base import OnlineAlgorithm, OnlineNeeds, PolicyBatch, Rollout, register
from prefalign.online.algos.grpo import clipped_surrogate, ratio_metrics
from prefalign.online.kl import KL_ESTIMATORS, kl_per_token


@register
@dataclass
class RLOO(OnlineAlgorithm):
    name = "rloo"
    loss_type = "grpo"  # fixed (not a field): the per-sequence token mean of a broadcast sequence loss

    beta: float = 0.05  # coefficient of the summed per-token KL subtracted from the reward; 0: no reference
    epsilon: float = 0.2  # sequence-level clip
    epsilon_high: float | None = None  # None: = epsilon
    normalize_advantages: bool = False  # z-score the advantages over the global batch
    reward_clip_range: tuple[float, float] | None = None  # clamp rewards before the KL penalty
    kl_estimator: str = "k1"  # the in-reward KL; k1 as TRL and the paper

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
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got '{self.kl_estimator}'")
        if self.reward_clip_range is not None and not self.reward_clip_range[0] <= self.reward_clip_range[1]:
            raise ValueError(f"reward_clip_range must be (low, high) with low <= high, got {self.reward_clip_range}")

    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:
        rewards = ro.rewards  # [N], NaN kept: it marks "not judged" through every step below
        if self.reward_clip_range is not None:
            rewards = rewards.clamp(*self.reward_clip_range)
        out: dict[str, torch.Tensor] = {}
        if self.beta > 0:
            if ro.ref_logp is None:
                raise ValueError("RLOO with beta > 0 needs Rollout.ref_logp")
            m = ro.mask.to(ro.old_logp.dtype)
            kl = (kl_per_token(ro.old_logp, ro.ref_logp, self.kl_estimator) * m).sum(-1)  # [N]
            rewards = rewards - self.beta * kl
            out["kl"] = kl
        adv = rloo_advantages(rewards, ro.group, fill=float("nan"))  # [N]; NaN: no signal
        if self.normalize_advantages:
            ok = ~torch.isnan(adv)
            mean, std = global_mean_std(adv, ok, ro.reduce)
            adv = (adv - mean) / (std + 1e-4)
        out["advantages"] = torch.nan_to_num(adv, nan=0.0)
        return out

    def loss(self, b: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        m = b.mask.to(b.logp.dtype)  # [N, T]
        log_ratio = ((b.logp - b.old_logp) * m).sum(-1)  # [N] Σ log π_θ − Σ log π_old
        ratio = log_ratio.exp()
        seq_loss, low, high = clipped_surrogate(ratio, b.advantages, self.epsilon, self.eps_high)  # [N]
        metrics = ratio_metrics(ratio, low, high, torch.ones_like(low))  # per sequence, as TRL
        return seq_loss[:, None] * m, metrics  # [N, T]: token mean per sequence = seq_loss
