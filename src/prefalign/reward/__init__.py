"""Reward scorers shared by sampling, labelling, evaluation and decoding.

    from prefalign.reward import load_reward
    reward = load_reward("vader")
    reward(["Say something."], ["What a wonderful day!"])  # tensor([0.6...])
"""

from prefalign.reward.base import CallableReward, RewardFn, VaderReward
from prefalign.reward.load import load_reward
from prefalign.reward.model import ModelReward, render_pair

__all__ = ["CallableReward", "ModelReward", "RewardFn", "VaderReward", "load_reward", "render_pair"]
