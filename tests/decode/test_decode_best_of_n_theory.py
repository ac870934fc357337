"""Best-of-n on toys, through the library's own selection rule ``best_of_n_select`` (no language model).

Closed forms (continuous, tie-free rewards; methods.md section 9):
- the chosen sample beats one fresh base sample with probability n/(n+1)
  (n+1 i.i.d. draws; the best of the first n wins unless the fresh one is the max of all n+1);
- on a discrete toy with distinct rewards, P_BoN(y) = F(y)^n − F(y⁻)^n, F the base CDF in reward order
  (the max of n draws is ≤ y with probability F(y)^n);
- KL(P_BoN ‖ P) ≤ log n − (n−1)/n, with equality in the continuous limit.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.decode import best_of_n_select, bon_kl_bound

M = 200_000  # Monte-Carlo trials; tolerances are 4.5 standard errors


def exact_bon(p: torch.Tensor, r: torch.Tensor, n: int) -> torch.Tensor:
    """F(y)^n − F(y⁻)^n for base probs p [K] and distinct rewards r [K] (float64)."""
    order = r.argsort()
    cdf = p[order].cumsum(0)  # F(y) in reward order
    below = torch.cat([torch.zeros(1, dtype=p.dtype), cdf[:-1]])  # F(y⁻)
    out = torch.empty_like(p)
    out[order] = cdf**n - below**n
    return out


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_win_rate_against_one_sample_is_n_over_n_plus_1(n):
    g = torch.Generator().manual_seed(n)
    rewards = torch.randn(M, n, generator=g)  # continuous: ties have probability 0
    best = rewards.gather(1, best_of_n_select(rewards)[:, None])[:, 0]  # [M]
    win = (best > torch.randn(M, generator=g)).double().mean().item()
    expected = n / (n + 1)
    assert abs(win - expected) < 4.5 * math.sqrt(expected * (1 - expected) / M) + 1e-12


@pytest.mark.parametrize("n", [2, 5])
def test_chosen_sample_distribution_is_F_to_the_n_difference(n):
    g = torch.Generator().manual_seed(10 + n)
    k = 6
    p = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    r = torch.randperm(k, generator=g).double() + 0.5 * torch.rand(k, generator=g, dtype=torch.float64)
    outcomes = torch.multinomial(p, M * n, replacement=True, generator=g).view(M, n)  # [M, n]
    chosen = outcomes.gather(1, best_of_n_select(r[outcomes])[:, None])[:, 0]  # [M]
    freq = torch.bincount(chosen, minlength=k).double() / M
    exact = exact_bon(p, r, n)
    torch.testing.assert_close(exact.sum(), torch.tensor(1.0, dtype=torch.float64))
    se = (exact * (1 - exact) / M).sqrt()
    assert bool(((freq - exact).abs() <= 4.5 * se + 1e-9).all()), (freq, exact)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_kl_to_base_is_at_most_log_n_minus_n_minus_1_over_n(n):
    g = torch.Generator().manual_seed(100 + n)
    bound = bon_kl_bound(n)
    assert bound == pytest.approx(math.log(n) - (n - 1) / n)
    for k in (3, 10, 50):
        p = torch.softmax(2 * torch.randn(k, generator=g, dtype=torch.float64), 0)
        r = torch.randn(k, generator=g, dtype=torch.float64)
        q = exact_bon(p, r, n)
        kl = float((q * (q / p).log()).sum())
        assert 0 <= kl <= bound + 1e-12
    # Many outcomes of tiny mass behave like a continuous reward: the bound is attained.
    k = 20_000
    p = torch.full((k,), 1.0 / k, dtype=torch.float64)
    q = exact_bon(p, torch.randn(k, generator=g, dtype=torch.float64), n)
    kl = float((q * (q / p).log()).sum())
    assert kl == pytest.approx(bound, abs=2e-3)


def test_selection_is_argmax_and_nan_never_wins():
    rewards = torch.tensor([[0.1, float("nan"), 0.3], [float("nan"), -5.0, -6.0]])
    assert best_of_n_select(rewards).tolist() == [2, 1]
    assert best_of_n_select(torch.randn(2, 3, 5)).shape == (2, 3)
