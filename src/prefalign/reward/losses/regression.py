"""Regression reward model: mean squared error against scalar targets (scored rows).

    loss = mean_i (r(x_i, y_i) − t_i)²          (t = extras["targets"] [B, 1])

Used for rating data (e.g. 1–10 helpfulness scores) instead of pairs. The choice of plain MSE, with no target
scaling, is ours: normalise targets in the data if their scale matters. NaN targets are an error here (use
``multihead`` with kind="mse" for partially-labelled rows).
Gradient: ∂ℓ_i/∂r_i = 2(r_i − t_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefalign.reward.losses.base import RewardLoss, RewardNeeds, RewardScores, register


def scored_metrics(r: Tensor, t: Tensor, prefix: str = "") -> dict[str, float]:
    """Regression metrics on [N] scores and targets."""
    r, t = r.detach().double(), t.detach().double()
    err = r - t
    out = {f"{prefix}mse": (err**2).mean().item(), f"{prefix}mae": err.abs().mean().item(),
           f"{prefix}reward_mean": r.mean().item(), f"{prefix}reward_std": r.std(unbiased=False).item(),
           f"{prefix}target_mean": t.mean().item()}
    if r.numel() > 1 and r.std() > 0 and t.std() > 0:
        out[f"{prefix}pearson"] = torch.corrcoef(torch.stack([r, t]))[0, 1].item()
    return out


@register
@dataclass
class MSE(RewardLoss):
    name = "mse"
    summary = "regression on scored rows: (r − target)²"
    rows = "scored"

    def needs(self) -> RewardNeeds:
        return RewardNeeds(extras=("targets",))

    def _per_example(self, s: RewardScores) -> Tensor:
        t = s.extras["targets"].to(s.chosen.dtype).reshape(s.chosen.shape)  # [B, 1]
        if torch.isnan(t).any():
            raise ValueError("reward loss 'mse': NaN targets (use 'multihead' with kind='mse' to mask heads)")
        return ((s.chosen - t) ** 2)[:, 0]

    def metrics(self, s: RewardScores) -> dict[str, float]:
        return scored_metrics(s.chosen[:, 0], s.extras["targets"].reshape(-1))
