"""IPO stays away from the boundary under deterministic preferences; DPO does not (Azar et al. 2023, Sec. 4-5).

One prompt, K = 5 responses with a strict ranking, every pair labelled by the ranking (P(better wins) = 1).

IPO (lengths 1, so normalised = summed): minimise Σ_{k>j} (h_k − h_j − c)² with c = 1/(2β). Setting the gradient
in h_m to zero, Σ_{j<m}(h_m − h_j − c) = Σ_{k>m}(h_k − h_m − c), is solved by h_m = a·m: with n = K−1−m,
a·(m(m+1) − n(n+1))/2 = c(m − n), and m(m+1) − n(n+1) = (m − n)K, so a = 2c/K = 1/(βK).
Hence π_IPO(m) ∝ π_ref(m)·exp(m/(βK)): every probability is bounded away from 0.

DPO: −log σ(βΔ) → 0 only as Δ → ∞, so the worst response's probability keeps falling towards 0.
"""

from __future__ import annotations

import torch
from _tabular import fit_adam, fit_lbfgs, random_problem, total_variation

from prefalign import objectives as O

K, BETA = 5, 0.5


def _deterministic():
    ref_logp, _ = random_problem(P=1, K=K, seed=1)
    rank = torch.arange(K)  # response m has rank m (higher wins)
    win = (rank[:, None] > rank[None, :]).to(torch.float64).unsqueeze(0)  # [1, K, K]
    return ref_logp, win


def test_ipo_optimum_closed_form():
    ref_logp, win = _deterministic()
    logits = fit_lbfgs(O.get("ipo", beta=BETA), ref_logp, win)
    target = ref_logp + torch.arange(K, dtype=torch.float64) / (BETA * K)
    assert total_variation(logits, target) < 1e-6
    assert torch.softmax(target, -1).min() > 0.02


def test_ipo_bounded_while_dpo_collapses():
    ref_logp, win = _deterministic()
    worst = {}  # probability of the lowest-ranked response after 25, 100, 400 Adam steps
    for name in ("ipo", "dpo"):
        tables = fit_adam(O.get(name, beta=BETA), ref_logp, win, [25, 100, 400], lr=0.2)
        worst[name] = [torch.softmax(x, -1)[0, 0].item() for x in tables]
    ipo_floor = torch.softmax(ref_logp + torch.arange(K, dtype=torch.float64) / (BETA * K), -1)[0, 0].item()
    # DPO: the loser's probability keeps decreasing with more steps, towards 0
    assert worst["dpo"][0] > worst["dpo"][1] > worst["dpo"][2]
    assert worst["dpo"][2] < 1e-10
    # IPO: converges to its closed-form value (≈ 0.124 here) and stays there
    assert abs(worst["ipo"][1] - ipo_floor) < 1e-3 and abs(worst["ipo"][2] - ipo_floor) < 1e-6
