"""PoFT: closed-form values and the coefficient τ (derivations in the docstrings).

Notation: a = log p_θ(y)/T₀, b_j = log p_j(y)/T_j (T_j = T₀ = T here), u = a − mean_j b_j, loss = −log σ(u).
"""

from __future__ import annotations

import math

import pytest
import torch
from tests.hand import f64, t
from torch.testing import assert_close

from prefalign import objectives as O
from prefalign.objectives import PairLogps
from prefalign.objectives.poft import poft_tau


def lp(policy, tokens, aligned):
    return PairLogps(t(*policy), t(*[-9.0] * len(policy)), chosen_tokens=t(*tokens),
                     extras={"aligned_chosen": torch.tensor(aligned, dtype=f64)})


def test_poft_values():
    """Row 0: log p_θ = −4 over T = 2 → a = −2; aligned log p = (−2, −6) → b = (−1, −3), mean −2 → u = 0 → ln 2.
    Row 1: log p_θ = −3, T = 3 → a = −1; aligned log p = (−9, −3) → b = (−3, −1), mean −2 → u = 1 → log(1 + e^(−1)). The rejected response plays no part."""
    out = O.get("poft")(lp([-4.0, -3.0], [2, 3], [[-2.0, -6.0], [-9.0, -3.0]]))
    assert_close(out.per_example, t(math.log(2), math.log1p(math.exp(-1))))
    assert abs(out.metrics["nll"] - 1.5) < 1e-12  # mean of −a = (2 + 1)/2


def test_poft_gradient_is_cross_entropy_gradient_times_tau():
    """∂(−log σ(u))/∂ log p_θ = −σ(−u)/T₀, while the token-mean CE −log p_θ/T₀ has gradient −1/T₀; so the ratio is
    τ = σ(−u) = 1/(1 + e^u) = ḡ/(ḡ + p_θ^{1/T₀}), ḡ = exp(mean_j b_j). Row 0 above: u = 0 → τ = ½.
    Row 1: ḡ = e^(−2), p_θ^{1/3} = e^(−1) → τ = e^(−2)/(e^(−2) + e^(−1)) = 1/(1 + e) = σ(−1)."""
    batch = lp([-4.0, -3.0], [2, 3], [[-2.0, -6.0], [-9.0, -3.0]])
    batch.policy_chosen.requires_grad_(True)
    O.get("poft")(batch).per_example.sum().backward()
    tau = poft_tau(batch.policy_chosen.detach(), batch.chosen_tokens, batch.extras["aligned_chosen"])
    assert_close(tau, t(0.5, 1 / (1 + math.e)))
    ce_grad = -1 / batch.chosen_tokens  # ∂(−log p_θ/T₀)/∂ log p_θ
    assert_close(batch.policy_chosen.grad, tau * ce_grad)


def test_tau_is_small_when_the_aligned_models_find_the_target_unlikely():
    """τ = ḡ/(ḡ + p^{1/T}) ∈ (0, 1): → 0 as ḡ → 0, → 1 as ḡ ≫ p^{1/T}; monotone in each aligned log-prob."""
    pol, tok = t(-2.0, -2.0, -2.0), t(2.0, 2.0, 2.0)
    al = torch.tensor([[-40.0], [-2.0], [0.0]], dtype=f64)
    tau = poft_tau(pol, tok, al)
    assert tau[0] < 1e-8 and abs(tau[1] - 0.5) < 1e-12 and tau[2] > 0.7
    assert (tau[1:] > tau[:-1]).all()


def test_poft_needs_aligned_logps():
    """The aligned log-probs come from ``prepare`` (once, before training), not from the forward pass."""
    assert O.get("poft").needs() == O.Needs(reference=False) and not O.get_class("poft").needs_reference
    assert O.get_class("poft").prepare is not O.Objective.prepare
    with pytest.raises(ValueError, match="aligned_chosen"):
        O.get("poft")(PairLogps(t(-1.0), t(-2.0)))
    with pytest.raises(ValueError, match="aligned_models must be a list"):
        O.get("poft", aligned_models="folder")
