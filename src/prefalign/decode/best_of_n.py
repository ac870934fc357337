"""Best-of-n: draw n completions per prompt from the model, keep the one with the highest reward.

For continuous, tie-free rewards the chosen sample y has P(y) = F(y)^n − F(y⁻)^n, where F is the CDF of the
reward under the model; it beats one fresh sample with probability n/(n+1); and
KL(π_BoN ‖ π) = log n − (n−1)/n exactly (an upper bound when outputs are discrete and can repeat).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from prefalign.decode.generate import GenOptions, sample


@dataclass
class BestOfNConfig:
    n: int = field(default=4, metadata={"help": "completions sampled per prompt; the best by reward is kept"})


def best_of_n_select(rewards: torch.Tensor) -> torch.Tensor:
    """Index of the best candidate along the last dim: rewards [..., n] -> [...] long.

    A pure function of the rewards, so it is tested on toys without a model. NaN (a failed score) never wins.
    """
    return torch.nan_to_num(rewards.float(), nan=float("-inf")).argmax(dim=-1)


def bon_kl_bound(n: int) -> float:
    """KL(π_BoN ‖ π) = log n − (n−1)/n for tie-free rewards; an upper bound otherwise."""
    return math.log(n) - (n - 1) / n


def best_of_n(model, tokenizer, prompts: Sequence[str], reward, opts: GenOptions,
              cfg: BestOfNConfig) -> tuple[list[str], list[dict]]:
    """One completion per prompt: the highest-reward of ``cfg.n`` samples."""
    n = cfg.n
    repeated = [p for p in prompts for _ in range(n)]  # prompt i owns rows i*n .. i*n+n-1
    drawn = sample(model, tokenizer, repeated, opts)
    texts, counts = drawn.texts, drawn.counts
    rewards = reward(repeated, texts).view(len(prompts), n)  # [P, n]
    best = best_of_n_select(rewards)  # [P]
    completions, info = [], []
    for i, j in enumerate(best.tolist()):
        completions.append(texts[i * n + j])
        info.append({"reward": float(rewards[i, j]), "rewards": rewards[i].tolist(), "chosen": j, "n": n,
                     "tokens": counts[i * n + j], "kl_bound": bon_kl_bound(n)})
    return completions, info
