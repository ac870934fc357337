"""rDPO recovers the true reward differences under a known label-flip rate; plain DPO is shrunk.

(Chowdhury et al. 2024, arXiv 2403.00409.) Labels from Bradley–Terry p = σ(r_i − r_j), each flipped with
probability ε, so the observed win probability is p' = (1−ε)p + ε(1−p). With A(z) = −log σ(z), the rDPO loss
ℓ(z) = [(1−ε)A(z) − εA(−z)]/(1−2ε) averaged over the observed label is
    p'ℓ(z) + (1−p')ℓ(−z) = [(p'−ε)A(z) + (1−p'−ε)A(−z)]/(1−2ε) = p·A(z) + (1−p)·A(−z),
the clean DPO population loss, whose optimum is βΔ_ij = r_i − r_j (see test_dpo_optimum). Plain DPO on the noisy
labels fits p' instead: with K = 2 exactly βΔ = logit p', and |logit p'| < |r_i − r_j| for every pair.
"""

from __future__ import annotations

import torch
from _tabular import bt_win, fit_lbfgs, random_problem

from prefalign import objectives as O

EPS, BETA = 0.2, 0.5


def _margins(logits, ref_logp):
    h = torch.log_softmax(logits, -1) - ref_logp
    return BETA * (h[:, :, None] - h[:, None, :])


def _noisy(win):
    return (1 - EPS) * win + EPS * (1 - win)


def test_rdpo_recovers_reward_differences():
    ref_logp, r = random_problem(P=2, K=4, seed=0, reward_scale=2.0)
    noisy = _noisy(bt_win(r))
    d_true = r[:, :, None] - r[:, None, :]
    robust = _margins(fit_lbfgs(O.get("robust", beta=BETA, label_smoothing=EPS), ref_logp, noisy), ref_logp)
    plain = _margins(fit_lbfgs(O.get("dpo", beta=BETA), ref_logp, noisy), ref_logp)
    assert (robust - d_true).abs().max() < 1e-4
    off = ~torch.eye(4, dtype=torch.bool).expand(2, 4, 4)
    assert (plain[off].abs() < d_true[off].abs()).all()  # shrunk towards 0, every pair
    assert (plain[off].abs() / d_true[off].abs()).max() < 0.9


def test_plain_dpo_fits_the_noisy_probability():
    ref_logp, r = random_problem(P=3, K=2, seed=1, reward_scale=2.0)
    noisy = _noisy(bt_win(r))
    plain = _margins(fit_lbfgs(O.get("dpo", beta=BETA), ref_logp, noisy), ref_logp)
    assert (plain[:, 1, 0] - torch.logit(noisy[:, 1, 0])).abs().max() < 1e-5
