"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300), with its variants.

    A_i   = (r_i − mean_group r) / (std_group r + 1e-4)                      (``scale_rewards``; advantages.py)
    ρ_t   = π_θ(y_t|·) / π_old(y_t|·)                                        (token level)
          = exp( mean_t log π_θ/π_old )  for every t of the sequence           (GSPO, Zheng et al. 2025, arXiv 2507.18071)
    ℓ_t   = −min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε_high) A)  +  β · ρ_t · k3_t  −  c · H_t
    loss  = aggregate(ℓ, mask, loss_type)                                     (aggregate.py; "dapo" by default)

k3_t = exp(ref − logπ) − (ref − logπ) − 1 (kl.py). Multiplying it by ρ_t, gradient through ρ included, is TRL 1.16's
``use_bias_correction_kl=True``: it makes the KL gradient the exact ∇KL(π‖π_ref) (kl.py explains; without it the
k3 gradient is the forward KL's). With ``importance_sampling_level="sequence"`` that ρ is the sequence ratio, as in
TRL.

Defaults are TRL 1.16's ``GRPOConfig``: β = 0 (no reference model; R1 used 0.001), ε = 0.2, ε_high = ε (DAPO's
clip-higher: 0.28, Yu et al. 2025, arXiv 2503.14476), loss_type "dapo", scale_rewards "group", token-level ratios,
k3 with the correction, no entropy bonus, truncated completions kept.

``mask_truncated_completions`` (DAPO's overlong filtering): as in TRL, a completion that hit the length limit gets
its whole loss mask zeroed — its policy, KL and entropy terms vanish and its tokens leave the *token* count (dapo,
bnpo), while it still counts as a *sequence* (grpo, dr_grpo divide by all N rows, as TRL's ``.mean()`` does). It
still takes part in its group's baseline. ``advantages()`` then returns ``"loss_mask"``, which the method must use
as the mask for ``units``/``aggregate``.

Deviation from TRL: the entropy bonus −c·H_t is a per-token term aggregated by ``loss_type`` like everything else;
TRL adds −c · (token mean of H over the micro-batch) whatever the loss type. They agree for dapo/bnpo with one
micro-batch (``tests/online/test_algos_trl_parity.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefalign.online.advantages import SCALES, group_advantages
from prefalign.online.aggregate import LOSS_TYPES
from prefalign.online.algos.base import OnlineAlgorithm, OnlineNeeds, PolicyBatch, Rollout, register
from prefalign.online.kl import KL_ESTIMATORS, kl_per_token

LEVELS = ("token", "sequence")


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float):
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv 1707.06347): −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A).

    Broadcasts ``ratio`` and ``adv``. Also returns where the clip is *active* (the gradient is cut): ρ < 1 − ε_low
    with A < 0 ("low"), ρ > 1 + ε_high with A > 0 ("high"); TRL's clip_ratio/low and /high.
    """
    loss = -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    low = (ratio < 1 - eps_low) & (adv < 0)
    high = (ratio > 1 + eps_high) & (adv > 0)
    return loss, low, high


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of x over True entries of mask (NaN if none); a metric, no gradient."""
    x, mask = torch.broadcast_tensors(x.detach(), mask.bool())
    n = int(mask.sum())
    return float(x[mask].sum() / n) if n else float("nan")


def ratio_metrics(ratio: torch.Tensor, low: torch.Tensor, high: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """clip_ratio/low, /high, /region and ratio/mean, /min, /max over the masked entries (tokens or sequences)."""
    ratio, low, high, mask = torch.broadcast_tensors(ratio.detach(), low, high, mask.bool())
    sel = ratio[mask]
    empty = sel.numel() == 0
    return {
        "clip_ratio/low": masked_mean(low.to(ratio.dtype), mask),
        "clip_ratio/high": masked_mean(high.to(ratio.dtype), mask),
        "clip_ratio/region": masked_mean((low | high).to(ratio.dtype), mask),
        "ratio/mean": float("nan") if empty else float(sel.mean()),
        "ratio/min": float("nan") if empty else float(sel.min()),
        "ratio/max": float("nan") if empty else float(sel.max()),
    }


@register
@dataclass
class GRPO(OnlineAlgorithm):
    name = "grpo"

    beta: float = 0.0  # KL coefficient; > 0 loads a reference model
    epsilon: float = 0.2  # lower clip ε (and upper, unless epsilon_high is set)
    epsilon_high: float | None = None  # upper clip; None: = epsilon; DAPO clip-higher 0.28
    loss_type: str = "dapo"  # grpo | bnpo | dr_grpo | dapo | sequence (TRL's luspo), see aggregate.py
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO), see advantages.py
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    kl_estimator: str = "k3"  # k1 | k2 | k3, see kl.py
    kl_bias_correction: bool = True  # multiply the KL term by ρ (gradient through ρ): exact ∇KL for k1, k3
    entropy_coef: float = 0.0  # entropy bonus −c·H per token; needs PolicyBatch.entropy
    mask_truncated_completions: bool = False  # zero the loss mask of completions that hit the length limit

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def needs(self) -> OnlineNeeds:
        return OnlineNeeds(reference=self.beta > 0)

    def validate(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if self.eps_high <= 0:
            raise ValueError(f"epsilon_high must be > 0, got {self.epsilon_high}")
        for field, value, known in (("loss_type", self.loss_type, LOSS_TYPES), ("scale_rewards", self.scale_rewards,
                                    SCALES), ("importance_sampling_level", self.importance_sampling_level, LEVELS),
                                    ("kl_estimator", self.kl_estimator, KL_ESTIMATORS)):
            if value not in known:
                raise ValueError(f"{field} must be one of {', '.join(known)}, got '{value}'")
        if self.beta > 0 and self.kl_estimator == "k2" and self.kl_bias_correction:
            # E_π[k2] ≠ KL, so ρ·k2's gradient is ∇E_π[k2], not ∇KL; uncorrected k2 already has ∇KL on-policy
            raise ValueError("kl_estimator 'k2' with kl_bias_correction=True has a biased gradient; "
                             "set kl_bias_correction=False (k2's own gradient is the exact ∇KL on-policy)")

    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:
        out = {"advantages": group_advantages(ro.rewards, ro.group, self.scale_rewards, reduce=ro.reduce)}  # [N]
        if self.mask_truncated_completions:
            if ro.truncated is None:
                raise ValueError("mask_truncated_completions=True needs Rollout.truncated")
            out["loss_mask"] = ro.mask.bool() & ~ro.truncated.bool()[:, None]  # [N, T]
        return out

    def loss(self, b: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = b.extra.get("loss_mask", b.mask).bool()  # [N, T]
        m = mask.to(b.logp.dtype)
        adv = b.advantages[:, None] if b.advantages.dim() == 1 else b.advantages  # [N, 1] or [N, T]
        log_ratio = (b.logp - b.old_logp) * m  # [N, T]; masked so padding cannot overflow exp
        if self.importance_sampling_level == "token":
            log_w = log_ratio  # [N, T]
            unit_mask = mask  # metrics per token
        else:  # GSPO: one ratio per sequence, the exp of the mean log-ratio, broadcast over its tokens
            log_w = log_ratio.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)  # [N, 1]
            unit_mask = torch.ones_like(log_w, dtype=torch.bool)  # metrics per sequence, as TRL
        ratio = log_w.exp()
        pg, low, high = clipped_surrogate(ratio, adv, self.epsilon, self.eps_high)  # [N, 1 or T]
        per_token = pg.expand_as(b.logp)  # [N, T]
        metrics = ratio_metrics(ratio, low, high, unit_mask)

        if b.ref_logp is not None:  # KL diagnostics whenever a reference is there, per estimator
            with torch.no_grad():
                for est in KL_ESTIMATORS:
                    metrics[f"kl/{est}"] = masked_mean(kl_per_token(b.logp, b.ref_logp, est), mask)
        if self.beta > 0:
            if b.ref_logp is None:
                raise ValueError("GRPO with beta > 0 needs PolicyBatch.ref_logp")
            kl = kl_per_token(b.logp, b.ref_logp, self.kl_estimator)  # [N, T]
            if self.kl_bias_correction:
                kl = kl * ratio  # gradient through ρ on purpose: ∇E_old[ρ k] = ∇E_π[k] = ∇KL
            per_token = per_token + self.beta * kl
            metrics["kl"] = masked_mean(kl, mask)  # the term in the loss, as TRL logs it
        if b.entropy is not None:
            metrics["entropy"] = masked_mean(b.entropy, mask)
        if self.entropy_coef != 0:
            if b.entropy is None:
                raise ValueError("GRPO with entropy_coef != 0 needs PolicyBatch.entropy")
            per_token = per_token - self.entropy_coef * b.entropy
        return per_token * m, metrics
