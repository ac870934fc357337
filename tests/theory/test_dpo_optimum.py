"""DPO's population optimum is the KL-regularised optimum π* = π_ref·exp(r/β)/Z (Rafailov et al. 2023, Eq. 4).

Tabular policy, 2 prompts × 5 responses, Bradley–Terry preferences from a known reward r, exact population loss
(every ordered pair, weighted by its BT probability). The loss depends on the logits only through
β(h_i − h_j) = β(logit_i − logit_j) − β(log π_ref_i − log π_ref_j), so it is convex and L-BFGS finds the optimum.
"""

from __future__ import annotations

import torch
from _tabular import bt_win, fit_lbfgs, random_problem, total_variation

from prefalign import objectives as O


def test_dpo_recovers_the_kl_regularised_optimum():
    beta = 0.5
    ref_logp, r = random_problem(P=2, K=5, seed=0)
    logits = fit_lbfgs(O.get("dpo", beta=beta), ref_logp, bt_win(r))
    target = ref_logp + r / beta  # log π* up to log Z(x)
    assert total_variation(logits, target) < 1e-3
    # and the implicit reward differences are the true ones: β(h_i − h_j) = r_i − r_j
    h = torch.log_softmax(logits, -1) - ref_logp
    d_implicit = beta * (h[:, :, None] - h[:, None, :])
    d_true = r[:, :, None] - r[:, None, :]
    assert (d_implicit - d_true).abs().max() < 1e-3


def test_other_beta_gives_other_optimum():
    """Sanity: the optimum moves with β exactly as exp(r/β) says."""
    ref_logp, r = random_problem(P=1, K=4, seed=3)
    for beta in (0.25, 2.0):
        logits = fit_lbfgs(O.get("dpo", beta=beta), ref_logp, bt_win(r))
        assert total_variation(logits, ref_logp + r / beta) < 1e-3
