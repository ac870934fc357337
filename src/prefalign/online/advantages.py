"""Advantage estimators: pure functions of rewards (and values), no gradient.

Conventions shared by every function here:

- ``rewards`` [N] holds one scalar per sequence; NaN means no reward function could judge it. A NaN reward is left
  out of every mean, std and count, and its advantage is 0 (it carries no learning signal).
- ``group`` [N] (long) names the prompt each sequence answers; groups need not be contiguous or numbered from 0.
- ``reduce`` SUMS a tensor over processes (identity on one process). Batch statistics are built from reduced sums
  and counts, so they are the statistics of the *global* batch however it is sharded. Group statistics need no
  reduction: a process always holds whole groups.

Stds are Bessel-corrected (÷ (n − 1)), as ``torch.std`` and TRL's ``nanstd`` are, except in ``whiten``, which follows
OpenRLHF's REINFORCE++ (÷ n).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]
SCALES = ("group", "batch", "none")


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _group_stats(rewards: torch.Tensor, group: torch.Tensor):
    """Per-sequence view of its group's scorable count, sum and Bessel std; NaN rewards count for nothing."""
    ok = ~torch.isnan(rewards)  # [N]
    r = torch.where(ok, rewards, torch.zeros_like(rewards))  # [N] NaN → 0 so sums skip it
    _, idx = torch.unique(group, return_inverse=True)  # [N] dense group index 0..P−1
    n_groups = int(idx.max()) + 1 if idx.numel() else 0
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, idx, ok.to(r.dtype))  # [P]
    total = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, idx, r)  # [P]
    mean = total / count.clamp(min=1)  # [P]
    sq = torch.where(ok, (r - mean[idx]).square(), torch.zeros_like(r))  # [N]
    ss = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, idx, sq)  # [P]
    std = torch.where(count > 1, (ss / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(ss))  # [P]
    return ok, r, count[idx], total[idx], std[idx]  # each [N]


def global_mean_std(x: torch.Tensor, ok: torch.Tensor, reduce: Reduce = _identity, unbiased: bool = True):
    """Mean and std (scalars) of x[ok] over all processes; two reduced passes, so no cancellation; std 0 if n ≤ 1."""
    xs = torch.where(ok, x, torch.zeros_like(x))
    n_sum = reduce(torch.stack([ok.to(x.dtype).sum(), xs.sum()]))  # [2] (count, Σx)
    n = n_sum[0]
    mean = n_sum[1] / n.clamp(min=1)
    ss = reduce(torch.where(ok, (xs - mean).square(), torch.zeros_like(xs)).sum())
    denom = (n - 1) if unbiased else n
    var = torch.where(denom > 0, ss / denom.clamp(min=1), torch.zeros_like(ss))
    return mean, var.sqrt()


def group_advantages(rewards: torch.Tensor, group: torch.Tensor, scale: str = "group", eps: float = 1e-4,
                     reduce: Reduce = _identity) -> torch.Tensor:
    """GRPO's advantage A_i = (r_i − mean_group(r)) / s, [N] → [N] (Shao et al. 2024, arXiv 2402.03300).

    ``scale``: ``"group"`` s = std_group(r) + eps (GRPO); ``"batch"`` s = std(r over the global batch) + eps (the
    std of the *rewards*, as in TRL and Lite PPO, Liu et al. 2025 "Tricks or Traps?"); ``"none"`` s = 1 (Dr. GRPO, Liu
    et al. 2025, arXiv 2503.20783). Stds are Bessel-corrected like TRL's; a group with one scorable member has std 0.
    eps = 1e-4 is TRL's. A zero-std group gets A = 0 exactly (0 / eps).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown reward scale '{scale}'; known: {', '.join(SCALES)}")
    ok, r, count, total, std = _group_stats(rewards, group)
    adv = r - total / count.clamp(min=1)  # [N]
    if scale == "group":
        adv = adv / (std + eps)
    elif scale == "batch":
        _, batch_std = global_mean_std(r, ok, reduce)
        adv = adv / (batch_std + eps)
    return torch.where(ok, adv, torch.zeros_like(adv))


def rloo_advantages(rewards: torch.Tensor, group: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740), [N] → [N].

        A_i = r_i − (Σ_{j≠i} r_j)/(k − 1) = k/(k − 1) · (r_i − r̄)      over the k scorable members of i's group

    A NaN reward, or the only scorable member of its group (no sibling to compare with), gets ``fill`` (0 by
    default; NaN lets a caller leave those out of later statistics, as TRL's batch normalisation does).
    """
    ok, r, count, total, _ = _group_stats(rewards, group)
    adv = r - (total - r) / (count - 1).clamp(min=1)  # [N]
    return torch.where(ok & (count > 1), adv, torch.full_like(adv, fill))


def whiten(x: torch.Tensor, mask: torch.Tensor, reduce: Reduce = _identity, shift_mean: bool = True,
           std: bool = True) -> torch.Tensor:
    """Whiten x over the masked entries of the *global* batch: (x − μ)/σ, zero outside ``mask``; any shape.

    μ, σ² are the mean and (÷ n, not n − 1) variance over every process's masked entries, σ² clamped at 1e-8, as
    OpenRLHF's REINFORCE++ token-advantage normalisation (Hu 2025, arXiv 2501.03262). ``std=False`` only centres
    (OpenRLHF ``no_std_norm``); ``shift_mean=False`` adds μ back after scaling (TRL's ``masked_whiten`` option).
    """
    ok = mask.bool()
    mean, sigma = global_mean_std(x, ok, reduce, unbiased=False)
    out = x - mean
    if std:
        out = out * sigma.square().clamp(min=1e-8).rsqrt()
    if not shift_mean:
        out = out + mean
    return torch.where(ok, out, torch.zeros_like(out))


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  beta: float = 0.0) -> torch.Tensor:
    """Per-token rewards of RLHF-style PPO / REINFORCE++: r_t = −β·kl_t, plus the scalar score on the last token.

    ``scores`` [N] (NaN → 0: the caller masks unjudged sequences), ``mask`` [N, T], ``kl`` [N, T] or None → [N, T],
    zero outside the mask; a row with an empty mask gets no score (it has no token to carry it).
    """
    m = mask.bool()
    T = m.shape[1]
    last = (T - 1 - m.flip(-1).to(torch.long).argmax(-1)).clamp(min=0)  # [N] index of the last True token
    out = torch.zeros(m.shape, dtype=scores.dtype, device=scores.device)
    has = m.any(-1)  # [N]
    out[has, last[has]] = torch.nan_to_num(scores, nan=0.0)[has]
    if kl is not None and beta:
        out = out - beta * kl
    return torch.where(m, out, torch.zeros_like(out))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438), [N, T] → ([N, T], [N, T]).

        δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t      (returns, the value target)

    with V = 0 and A = 0 past the last completion token (the episode ends there). ``mask`` is the right-padded
    completion mask; rewards and values outside it are ignored and the outputs are 0 there.
    """
    m = mask.to(values.dtype)
    r, v = rewards * m, values * m  # [N, T]
    adv = torch.zeros_like(v)
    last = torch.zeros_like(v[:, 0])  # [N] A_{t+1}
    for t in range(v.shape[1] - 1, -1, -1):
        next_v = v[:, t + 1] if t + 1 < v.shape[1] else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]  # masked: padding never leaks into earlier steps
        adv[:, t] = last
    return adv, (adv + v) * m
