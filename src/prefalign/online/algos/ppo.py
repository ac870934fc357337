"""PPO for RLHF (Schulman et al. 2017, arXiv 1707.06347; Ouyang et al. 2022, arXiv 2203.02155), with a value head.

    r_t   = −β · k1_t  +  [t = last] · R,       k1_t = log π_old(y_t) − log π_ref(y_t)
    A, G  = GAE(r, V_old; γ, λ)                  (advantages.gae; G = A + V_old is the value target)
    A     ← whiten(A) over every completion token of the global batch
    ℓ_t   = −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε_high) A_t)
          + c_v · ½ · max((V_t − G_t)², (V_old,t + clip(V_t − V_old,t, ±ε_v) − G_t)²)
    loss  = global token mean of ℓ               (loss_type "dapo")

Defaults are those of TRL's PPOConfig (≤ 0.2x; TRL 1.16 no longer ships PPO): β = 0.05 (``kl_coef``), k1 in the
reward, γ = 1, λ = 0.95, ε = 0.2 (``cliprange``), c_v = 0.1 (``vf_coef``), ε_v = 0.2 (``cliprange_value``),
advantage whitening on. OpenRLHF's defaults differ (β = 0.01, λ = 1, value clip 0.5).

Whitening follows ``advantages.whiten`` (global, ÷ n) where TRL's whitened each process's batch (÷ n − 1). A NaN
reward (not judged) has no value target: its completion gets a zeroed ``"loss_mask"`` (returned by advantages(),
for the method to aggregate with), so neither the policy nor the value head learns from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.online.advantages import gae, token_rewards, whiten
from prefalign.online.algos.base import OnlineAlgorithm, OnlineNeeds, PolicyBatch, Rollout, register
from prefalign.online.algos.grpo import clipped_surrogate, masked_mean, ratio_metrics
from prefalign.online.kl import KL_ESTIMATORS, kl_per_token


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(target − pred)/Var(target) over masked entries: 1 is a perfect critic, 0 a constant one."""
    ok = mask.bool()
    t, p = target.detach()[ok], pred.detach()[ok]
    if t.numel() < 2:
        return float("nan")
    var = t.var()
    return float(1 - (t - p).var() / var) if var > 0 else float("nan")


@register
@dataclass
class PPO(OnlineAlgorithm):
    name = "ppo"
    loss_type = "dapo"  # fixed: the global token mean (TRL's PPO masked_mean over tokens)

    beta: float = 0.05  # per-token KL coefficient in the reward; 0: no reference
    kl_estimator: str = "k1"
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE λ
    epsilon: float = 0.2  # policy clip
    epsilon_high: float | None = None  # None: = epsilon
    vf_coef: float = 0.1  # weight of the value loss
    cliprange_value: float = 0.2  # value clip around the rollout-time value
    whiten_advantages: bool = True

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def needs(self) -> OnlineNeeds:
        return OnlineNeeds(reference=self.beta > 0, value_head=True, old_logp=self.beta > 0)

    def validate(self) -> None:
        if self.beta < 0 or self.vf_coef < 0 or self.cliprange_value <= 0:
            raise ValueError(f"beta and vf_coef must be >= 0 and cliprange_value > 0, got {self.beta}, "
                             f"{self.vf_coef}, {self.cliprange_value}")
        if not 0 < self.epsilon < 1 or self.eps_high <= 0:
            raise ValueError(f"epsilon must be in (0, 1) and epsilon_high > 0, got {self.epsilon}, "
                             f"{self.epsilon_high}")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma must be in (0, 1] and lam in [0, 1], got {self.gamma}, {self.lam}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got '{self.kl_estimator}'")

    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:
        if ro.values is None:
            raise ValueError("PPO needs Rollout.values (the value head at rollout time)")
        ok = ~torch.isnan(ro.rewards)  # [N]
        valid = ro.mask.bool() & ok[:, None]  # [N, T] judged completion tokens
        kl = None
        if self.beta > 0:
            if ro.ref_logp is None:
                raise ValueError("PPO with beta > 0 needs Rollout.ref_logp")
            kl = kl_per_token(ro.old_logp, ro.ref_logp, self.kl_estimator)  # [N, T]
        rewards = token_rewards(ro.rewards, valid, kl, self.beta)  # [N, T]
        adv, returns = gae(rewards, ro.values, valid, self.gamma, self.lam)  # [N, T] each
        if self.whiten_advantages:
            adv = whiten(adv, valid, ro.reduce)
        out = {"advantages": adv, "returns": returns}
        if not bool(ok.all()):
            out["loss_mask"] = valid
        return out

    def loss(self, b: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if b.values is None or b.old_values is None or b.returns is None:
            raise ValueError("PPO needs PolicyBatch.values, old_values and returns")
        mask = b.extra.get("loss_mask", b.mask).bool()  # [N, T]
        m = mask.to(b.logp.dtype)
        ratio = ((b.logp - b.old_logp) * m).exp()  # [N, T]
        adv = b.advantages if b.advantages.dim() == 2 else b.advantages[:, None]  # [N, T] from advantages()
        pg, low, high = clipped_surrogate(ratio, adv, self.epsilon, self.eps_high)  # [N, T]
        v_clip = b.old_values + (b.values - b.old_values).clamp(-self.cliprange_value, self.cliprange_value)
        vf1 = (b.values - b.returns).square()  # [N, T]
        vf2 = (v_clip - b.returns).square()
        vf = 0.5 * torch.max(vf1, vf2)  # pessimistic: the clip only ever removes gradient
        metrics = ratio_metrics(ratio, low, high, mask)
        metrics["clipfrac"] = metrics["clip_ratio/region"]
        metrics["value_loss"] = masked_mean(vf, mask)
        metrics["value_clipfrac"] = masked_mean((vf2 > vf1).to(vf.dtype), mask)
        metrics["explained_variance"] = explained_variance(b.old_values, b.returns, mask)
        return (pg + self.vf_coef * vf) * m, metrics
