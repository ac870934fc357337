"""Bradley–Terry reward-model loss (HH-RLHF, Bai et al. 2022, arXiv 2204.05862; InstructGPT, Ouyang et al. 2022), with
TRL's margin and centering terms.

    Δ_i    = r(x, y_c) − r(x, y_r) − m_i            (m_i = extras["margin"] when present and use_margin)
    ℓ_i    = −log σ(Δ_i) + c·(r_c,i + r_r,i)²       (c = center_rewards_coefficient; None / 0 = off)
    loss   = mean_i ℓ_i

Verified from reference code: TRL 1.16 ``trl/trainer/reward_trainer.py`` ``RewardTrainer.compute_loss``:
``-logsigmoid(r_c − r_r − margin).mean()`` plus ``center_rewards_coefficient · mean((r_c + r_r)²)``
(tests/reward/test_rm_trl_parity.py runs TRL's code on the same scores). OpenRLHF's ``PairWiseLoss`` is the same;
its ``LogExpLoss`` log(1 + exp(r_r − r_c)) is the same function without a margin (softplus(−Δ) = −log σ(Δ)), so it
is not a separate name (equality tested).

Gradient: ∂ℓ/∂r_c = −σ(−Δ) + 2c(r_c + r_r), ∂ℓ/∂r_r = σ(−Δ) + 2c(r_c + r_r).
At r_c = r_r (an untrained head) and no margin, the loss is ln 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from prefalign.reward.losses.base import RewardLoss, RewardNeeds, RewardScores, register


def bt_delta(s: RewardScores, use_margin: bool) -> Tensor:
    """[B, K] Δ = r_c − r_r − margin (margin [B] broadcast over heads, or [B, K] per head)."""
    delta = s.chosen - s.rejected
    m = s.extras.get("margin") if use_margin else None
    return delta if m is None else delta - m.to(delta.dtype).reshape(delta.shape[0], -1)


def bt_nll(delta: Tensor) -> Tensor:
    """−log σ(Δ), elementwise; d/dΔ = −σ(−Δ)."""
    return -F.logsigmoid(delta)


@register
@dataclass
class BradleyTerry(RewardLoss):
    name = "bt"
    summary = "Bradley–Terry: −log σ(r_c − r_r − margin) + c·(r_c + r_r)² (TRL RewardTrainer)"
    rows = "pairs"

    use_margin: bool = True  # subtract extras["margin"] when the data has a margin column (TRL's behaviour)
    center_rewards_coefficient: float | None = None  # TRL's centering weight c; None = off

    def validate(self) -> None:
        c = self.center_rewards_coefficient
        if c is not None and not (math.isfinite(c) and c >= 0):
            raise ValueError(f"center_rewards_coefficient must be a finite number ≥ 0 or None, got {c}")

    def needs(self) -> RewardNeeds:
        return RewardNeeds(optional=("margin",) if self.use_margin else ())

    def _per_example(self, s: RewardScores) -> Tensor:
        loss = bt_nll(bt_delta(s, self.use_margin))[:, 0]  # [B]
        if self.center_rewards_coefficient:
            loss = loss + self.center_rewards_coefficient * (s.chosen + s.rejected)[:, 0] ** 2
        return loss

    def metrics(self, s: RewardScores) -> dict[str, float]:
        m = super().metrics(s)
        if self.center_rewards_coefficient:
            m["center_penalty"] = ((s.chosen + s.rejected) ** 2).mean().item()
        return m
