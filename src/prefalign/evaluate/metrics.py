"""Pure statistics on reward/log-prob tensors: means with standard errors over prompts, win rate, best-of-n.

Every estimate averages first within a prompt (over its samples) and then over prompts; the standard error is
the standard deviation of the per-prompt values over √P, so prompts, not samples, are the independent units.
"""

from __future__ import annotations

import math

import torch

from prefalign.decode.best_of_n import bon_kl_bound


def mean_se(per_prompt: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of per-prompt values [P] (SE = sample std / √P; 0 for P = 1)."""
    x = per_prompt.double().reshape(-1)
    if x.numel() == 0:
        return float("nan"), float("nan")
    se = float(x.std(unbiased=True) / math.sqrt(x.numel())) if x.numel() > 1 else 0.0
    return float(x.mean()), se


def win_rate(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[P] per prompt: P(policy sample beats a reference sample), ties counting half.

    policy [P, k], reference [P, m]: all k·m comparisons within a prompt.
    """
    p, r = policy.double()[:, :, None], reference.double()[:, None, :]  # [P, k, 1], [P, 1, m]
    return ((p > r).double() + 0.5 * (p == r).double()).mean(dim=(1, 2))


def best_of_n_expected(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """[P] unbiased estimate of E[max of n fresh samples] from m ≥ n i.i.d. samples per prompt, rewards [P, m].

    Every n-subset of the m samples is an i.i.d. draw of n, so average the max over all C(m, n) subsets: with
    the samples sorted, r_(k) is the max of C(k−1, n−1) of them, so the estimate is
    Σ_{k=n}^{m} C(k−1, n−1) / C(m, n) · r_(k).
    """
    m = rewards.shape[-1]
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} needs at least {n} samples per prompt, got {m}")
    sorted_r = rewards.double().sort(dim=-1).values  # ascending: r_(1) .. r_(m)
    weights = torch.tensor([math.comb(k - 1, n - 1) for k in range(1, m + 1)], dtype=torch.float64)
    return sorted_r @ (weights / math.comb(m, n))  # [P]


def best_of_n_curve(rewards: torch.Tensor, ns=(1, 2, 4, 8, 16)) -> list[dict]:
    """Best-of-n from the reference for each n ≤ m: mean reward ± SE and the analytic KL log n − (n−1)/n."""
    out = []
    for n in ns:
        if n > rewards.shape[-1]:
            continue
        mean, se = mean_se(best_of_n_expected(rewards, n))
        out.append({"n": n, "reward_mean": mean, "reward_se": se, "kl": bon_kl_bound(n)})
    return out


def compare(policy_rewards: torch.Tensor, reference_rewards: torch.Tensor, kl: torch.Tensor,
            policy_lengths: torch.Tensor) -> dict:
    """Policy-vs-reference metrics; rewards [P, k] / [P, m], kl [P, k] (log π − log π_ref per policy sample)."""
    pol, ref = policy_rewards.double().mean(-1), reference_rewards.double().mean(-1)  # [P] each
    reward_mean, reward_se = mean_se(pol)
    gain, gain_se = mean_se(pol - ref)  # paired by prompt
    wr, wr_se = mean_se(win_rate(policy_rewards, reference_rewards))
    kl_mean, kl_se = mean_se(kl.double().mean(-1))
    length, length_se = mean_se(policy_lengths.double().mean(-1))
    return {"reward_mean": reward_mean, "reward_se": reward_se, "reward_gain": gain, "reward_gain_se": gain_se,
            "reward_gain_z": gain / gain_se if gain_se > 0 else None,
            "win_rate": wr, "win_rate_se": wr_se, "kl": kl_mean, "kl_se": kl_se,
            "length": length, "length_se": length_se}
