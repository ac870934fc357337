"""Population optima of catalogue objectives on tabular policies (exact losses, no sampling).

- pointwise_dpo: βh(y) = logit P(z=1|y) − c (methods.md §9, ULMA).
- BoNBoN: E[log-ratio(best) − log-ratio(worst)] under π_BoN = (n−1)H_{n−1} = 1/(2β*); and the BoNBoN optimum moves
  π₀ most of the way to π_BoN(y) = F(y)ⁿ − F(y⁻)ⁿ (not exactly: the squared loss fits one target to every pair).
- JPO: on same-prompt pairs the optimum is π* = π_ref·e^{r/β}/Z; on cross-prompt pairs it is biased unless
  log Z(x₁) = log Z(x₂), because the loss drops β(log Z(x₁) − log Z(x₂)) (table in docs/objectives.md).
"""

from __future__ import annotations

import torch

from prefalign import objectives as O
from prefalign.objectives import PairLogps, PointLogps
from prefalign.objectives.bonbon import bonbon_beta

f64 = torch.float64


def lbfgs(loss_fn, x0: torch.Tensor, iters: int = 300) -> torch.Tensor:
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        return loss

    opt.step(closure)
    return x.detach()


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum(-1).max().item()


# ---------------------------------------------------------------------------------------------------------------
def test_pointwise_dpo_optimum_is_logit_minus_c():
    """Each response is labelled equally often, z ~ Bernoulli(p_y). c is chosen so that βh = logit p − c is a
    normalised policy (Σ π_ref e^{h} = 1), i.e. c = β log Σ π_ref e^{logit p/β}; then it is the exact optimum."""
    K, beta = 5, 0.5
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(K, generator=g, dtype=f64), -1)
    p = 0.1 + 0.8 * torch.rand(K, generator=g, dtype=f64)
    logit = torch.log(p) - torch.log1p(-p)
    c = beta * torch.logsumexp(ref + logit / beta, 0).item()
    obj = O.get("pointwise_dpo", beta=beta, c=c)
    label = torch.tensor([True] * K + [False] * K)
    weight = torch.cat([p, 1 - p])

    def loss(logits):
        lp = torch.log_softmax(logits, -1)
        return (weight * obj(PointLogps(lp.repeat(2), label, ref.repeat(2))).per_example).sum()

    h = torch.log_softmax(lbfgs(loss, ref), -1) - ref
    assert (beta * h - (logit - c)).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------
def best_worst(pi0: torch.Tensor, n: int):
    """(best, worst, P) over responses sorted by reward (index = rank): P(best = i, worst = j), i > j, for n i.i.d.
    draws from π₀ — inclusion–exclusion on 'all draws in [j, i]'."""
    F = torch.cumsum(pi0, 0)
    Fm = F - pi0
    K = len(pi0)
    i, j = torch.meshgrid(torch.arange(K), torch.arange(K), indexing="ij")
    keep = i > j
    i, j = i[keep], j[keep]
    P = (F[i] - Fm[j]) ** n - (F[i] - F[j]) ** n - (Fm[i] - Fm[j]) ** n + (Fm[i] - F[j]).clamp(min=0) ** n
    return i, j, P


def bon(pi0: torch.Tensor, n: int) -> torch.Tensor:
    F = torch.cumsum(pi0, 0)
    return F**n - (F - pi0) ** n


def test_best_minus_worst_log_ratio_is_one_over_two_beta_star():
    """Near-continuous (1000 equally likely responses): E[log π_BoN/π₀ (best) − (worst)] = (n−1)H_{n−1}."""
    for n in (4, 8):
        pi0 = torch.full((1000,), 1e-3, dtype=f64)
        i, j, P = best_worst(pi0, n)
        lr = (bon(pi0, n) / pi0).log()
        mean = ((P * (lr[i] - lr[j])).sum() / P.sum()).item()
        assert abs(mean - 1 / (2 * bonbon_beta(n))) < 0.01 * mean


def test_bonbon_optimum_approaches_best_of_n():
    """Tabular policy (K = 12, random π₀), exact best/worst-of-n pair distribution, α = 0 (the IPO term alone).
    Measured: TV(π_fit, π_BoN) ≈ 0.09 (n = 4) and ≈ 0.32 (n = 8), against TV(π₀, π_BoN) ≈ 0.47 / 0.65."""
    K = 12
    g = torch.Generator().manual_seed(1)
    ref = torch.log_softmax(0.5 * torch.randn(K, generator=g, dtype=f64), -1)
    for n, ratio in ((4, 0.35), (8, 0.6)):
        i, j, P = best_worst(ref.exp(), n)
        obj = O.get("bonbon", n=n, alpha=0.0)

        def loss(logits, i=i, j=j, P=P, obj=obj):
            lp = torch.log_softmax(logits, -1)
            return (P * obj(PairLogps(lp[i], lp[j], ref[i], ref[j])).per_example).sum()

        pi = torch.softmax(lbfgs(loss, ref, 500), -1)
        target = bon(ref.exp(), n)
        assert tv(pi, target) < ratio * tv(ref.exp(), target)
        assert (pi[1:] >= pi[:-1] * ref.exp()[1:] / ref.exp()[:-1] - 1e-9).all()  # likelihood ratio rises with rank


# ---------------------------------------------------------------------------------------------------------------
def jpo_fit(ref: torch.Tensor, r: torch.Tensor, beta: float, cross: bool) -> torch.Tensor:
    """Fit JPO on every ordered pair of (prompt, response) items — same-prompt only, or all pairs — labelled by
    Bradley–Terry on r(x, y)."""
    P, K = ref.shape
    idx = torch.arange(P * K)
    a, b = torch.meshgrid(idx, idx, indexing="ij")
    keep = (a != b) & ((a // K == b // K) | cross)
    a, b = a[keep], b[keep]
    rf = r.flatten()
    win = torch.sigmoid(rf[a] - rf[b])
    obj = O.get("jpo", beta=beta)

    def loss(logits):
        lp = torch.log_softmax(logits, -1).flatten()
        return (win * obj(PairLogps(lp[a], lp[b], ref.flatten()[a], ref.flatten()[b])).per_example).mean()

    return torch.softmax(lbfgs(loss, ref), -1)


def cross_prompt_bias(shift: float, beta: float = 0.5, seed: int = 0):
    """(β(log Z(x₁) − log Z(x₂)), TV(π_JPO, π*)) with prompt 2's rewards shifted by ``shift``."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(torch.randn(2, 4, generator=g, dtype=f64), -1)
    r = torch.rand(2, 4, generator=g, dtype=f64)
    r[1] += shift
    logz = torch.logsumexp(ref + r / beta, -1)
    target = torch.softmax(ref + r / beta, -1)
    return beta * (logz[0] - logz[1]).item(), tv(jpo_fit(ref, r, beta, cross=True), target)


def test_jpo_same_prompt_pairs_recover_the_optimum():
    beta = 0.5
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(2, 4, generator=g, dtype=f64), -1)
    r = torch.rand(2, 4, generator=g, dtype=f64)
    assert tv(jpo_fit(ref, r, beta, cross=False), torch.softmax(ref + r / beta, -1)) < 1e-4


def test_jpo_cross_prompt_bias_vanishes_only_when_log_z_match():
    """Shift prompt 2's rewards so that log Z(x₁) = log Z(x₂): no bias. Otherwise the bias grows with the gap."""
    gap0, _ = cross_prompt_bias(0.0)
    zero_gap, tv0 = cross_prompt_bias(gap0)  # shifting r(x₂) by s moves β log Z(x₂) by s
    assert abs(zero_gap) < 1e-9 and tv0 < 1e-4
    rows = [cross_prompt_bias(gap0 + d) for d in (0.5, 1.0, 2.0)]
    tvs = [v for _, v in rows]
    assert tvs[0] > 1e-3 and tvs[0] < tvs[1] < tvs[2]
