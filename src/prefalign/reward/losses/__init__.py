"""Reward-model losses: pure functions of scores, by name.

    from prefalign.reward import losses as L
    loss = L.get("bt", center_rewards_coefficient=0.01)
    value, metrics = loss(L.RewardScores(chosen=r_c[:, None], rejected=r_r[:, None], extras={"margin": m}))

Registered: bt, mse, multihead, more, pal, prm (``names()``). The contract is in ``base.py``.
"""

from prefalign.reward.losses.base import (
    RewardLoss,
    RewardNeeds,
    RewardScores,
    get,
    get_class,
    hparam_names,
    names,
    pair_metrics,
    register,
)
from prefalign.reward.losses.more import min_norm_weights
from prefalign.reward.losses.pal import PALModule, fit_new_user

__all__ = [
    "PALModule", "RewardLoss", "RewardNeeds", "RewardScores", "fit_new_user", "get", "get_class", "hparam_names",
    "min_norm_weights", "names", "pair_metrics", "register",
]
