"""Reward scorers shared by sampling, labelling, evaluation, decoding and online RL.

    from prefalign.reward import load_reward
    reward = load_reward("vader")
    reward(["Say something."], ["What a wonderful day!"])  # tensor([0.6...])
    math = load_reward("0.9*math + 0.1*format:think")  # verifiable, against the rows' "answer" column
    math(prompts, completions, columns={"answer": answers}, allow_none=True)  # NaN where no answer
"""

from prefalign.reward.base import CallableReward, RewardFn, VaderReward, expand_columns
from prefalign.reward.load import load_reward
from prefalign.reward.model import ModelReward, render_pair
from prefalign.reward.transforms import CalibratedReward, CombinedReward, LSCReward, NormalizedReward, ReferenceSamples
from prefalign.reward.verifiable import (
    ExactReward,
    FormatReward,
    LengthReward,
    MathReward,
    RegexReward,
    extract_answer,
    parse_number,
)

__all__ = ["CalibratedReward", "CallableReward", "CombinedReward", "ExactReward", "FormatReward", "LSCReward",
           "LengthReward", "MathReward", "ModelReward", "NormalizedReward", "ReferenceSamples", "RegexReward",
           "RewardFn", "VaderReward", "expand_columns", "extract_answer", "load_reward", "parse_number",
           "render_pair"]
