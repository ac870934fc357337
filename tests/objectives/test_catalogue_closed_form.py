"""Closed-form values of the catalogue objectives (jpo, bonbon, iregression, aft, sparsepo, kto, bco,
pointwise_dpo, ulma), derived by hand in each docstring.

Notation as in test_closed_form.py: h± = log π_θ(y±) − log π_ref(y±), L(z) = −log σ(z). ``STD`` is policy (−1, −3),
reference (−2, −2): h₊ = 1, h₋ = −1, Δ = 2. Point-wise ``PT`` has the same numbers as two rows: row 0 desirable
with h = 1, row 1 undesirable with h = −1.
"""

from __future__ import annotations

import math

import pytest
import torch
from tests.hand import L, f64, sig, t
from torch.testing import assert_close

from prefalign import objectives as O
from prefalign.objectives import PairLogps, PointLogps
from prefalign.objectives.bonbon import bonbon_beta
from prefalign.objectives.sparsepo import sparsepo_loss


def STD(**kw) -> PairLogps:
    return PairLogps(t(-1.0), t(-3.0), t(-2.0), t(-2.0), **kw)


def PT(**kw) -> PointLogps:
    return PointLogps(policy=t(-1.0, -3.0), label=torch.tensor([True, False]), ref=t(-2.0, -2.0), **kw)


def value(name, batch, **hp):
    return O.get(name, **hp)(batch).per_example


def random_pairs(B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda: -10 * torch.rand(B, generator=g, dtype=f64)  # noqa: E731
    return PairLogps(r(), r(), r(), r())


# ---------------------------------------------------------------------------------------------------------------
def test_jpo_is_dpo_on_same_prompt():
    """Same-prompt pairs: −log σ(β(h₁ − h₂)) is DPO's loss exactly. STD at β = 0.5: L(1)."""
    for beta in (0.1, 0.5, 2.0):
        b = random_pairs()
        assert_close(value("jpo", b, beta=beta), value("dpo", b, beta=beta))
    assert_close(value("jpo", STD(), beta=0.5), t(L(1)))


def test_bonbon_beta_star():
    """β* = 1/(2(n−1)H_{n−1}): n = 2 → ½; n = 8 → 1/(2·7·363/140) = 0.0275482 (the authors' README value)."""
    assert bonbon_beta(2) == 0.5
    assert abs(bonbon_beta(8) - 0.0275482) < 5e-8
    assert O.get("bonbon").beta == bonbon_beta(8)
    assert O.get("bonbon", n=4, beta_override=0.2).beta == 0.2
    with pytest.raises(ValueError, match="n must be"):
        O.get("bonbon", n=1)


def test_bonbon_values():
    """STD: NLL(best) = −(−1) = 1, h₊ − h₋ = 2.
    n = 4: H₃ = 11/6, 1/(2β*) = 3·11/6 = 5.5 → (2 − 5.5)² = 12.25; α = ½ → ½·1 + ½·12.25 = 6.625.
    sigmoid form (the released code), n = 2: β* = ½ → L(½·2) = L(1); α = 0 → L(1)."""
    assert_close(value("bonbon", STD(), n=4, alpha=0.5), t(6.625))
    assert_close(value("bonbon", STD(), n=2, alpha=0.0, form="sigmoid"), t(L(1)))
    assert_close(value("bonbon", STD(), n=2, alpha=1.0), t(1.0))


def test_iregression():
    """βΔ = 0.5·2 = 1. p̂ = ¾: logit = log 3 → (1 − log 3)². p̂ = ½ → 1. p̂ = 1 is clamped to 1 − 10⁻³:
    logit = log 999 → (1 − log 999)²."""
    b = STD(extras={"pref_prob": t(0.75)})
    assert_close(value("iregression", b, beta=0.5), t((1 - math.log(3)) ** 2))
    assert_close(value("iregression", STD(extras={"pref_prob": t(0.5)}), beta=0.5), t(1.0))
    assert_close(value("iregression", STD(extras={"pref_prob": t(1.0)}), beta=0.5), t((1 - math.log(999)) ** 2))
    with pytest.raises(ValueError, match="pref_prob"):
        O.get("iregression")(STD())
    assert O.get_class("iregression").extra_fields == ("pref_prob",)


def test_aft_ranking_and_constraints():
    """Lengths (2, 4): s₊ = −½, s₋ = −¾.
    none: L(¼); ∂/∂log π(y₋) = σ(s₋ − s₊)·¼ = σ(−¼)/4, ∂/∂log π(y₊) = −σ(−¼)/2.
    detach: same value, no gradient into y₋.
    boundary, γ = 0.5: T = s₊ − 1 = −1.5 (constant); loss = ln(1 + e^{−¼} + e^{T − s₋}) = ln(1 + e^{−¼} + e^{−¾}).
    With Z that sum: ∂/∂s₋ = (e^{−¼} − e^{−¾})/Z, so ∂/∂log π(y₋) = that/4; ∂/∂s₊ = −e^{−¼}/Z → /2."""
    a, b = math.exp(-0.25), math.exp(-0.75)
    z = 1 + a + b
    cases = (("none", L(0.25), sig(-0.25) / 4, -sig(-0.25) / 2), ("detach", L(0.25), 0.0, -sig(-0.25) / 2),
             ("boundary", math.log(z), (a - b) / z / 4, -a / z / 2))
    for constraint, val, g_l, g_w in cases:
        pw, pr = t(-1.0).requires_grad_(True), t(-3.0).requires_grad_(True)
        lp = PairLogps(pw, pr, chosen_tokens=t(2.0), rejected_tokens=t(4.0))
        out = O.get("aft", constraint=constraint, gamma=0.5)(lp)
        assert_close(out.per_example, t(val))
        out.loss.backward()
        assert_close(pr.grad if pr.grad is not None else t(0.0), t(g_l))  # detach: no gradient reaches y₋
        assert_close(pw.grad, t(g_w))


def _token_pairs(B=3, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = lambda: -3 * torch.rand(B, T, generator=g, dtype=f64)  # noqa: E731
    mw = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    ml = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    pw, pl, rw, rl = (x * m for x, m in ((tok(), mw), (tok(), ml), (tok(), mw), (tok(), ml)))
    return PairLogps(pw.sum(1), pl.sum(1), rw.sum(1), rl.sum(1), mw.sum(1).to(f64), ml.sum(1).to(f64),
                     policy_chosen_token_logps=pw, policy_rejected_token_logps=pl, ref_chosen_token_logps=rw,
                     ref_rejected_token_logps=rl, chosen_mask=mw, rejected_mask=ml)


def test_sparsepo_ones_is_dpo():
    """Masks ≡ 1 and no KL term: u = Σ_t h_t(y₊) − Σ_t h_t(y₋) = Δ, so the loss is DPO's."""
    b = _token_pairs()
    assert_close(value("sparsepo", b, beta=0.3, mask="ones", kl_term=False), value("dpo", b, beta=0.3))
    obj = O.get("sparsepo")
    assert obj.needs().ref_features == ("token_logps", "states") and obj.needs().live_reference


def test_sparsepo_masks_sparsity_and_kl():
    """h(y₊) = [1, 2], h(y₋) = [0.5], β = 1. m^u(y₊) = [1, 0], m^u(y₋) = [1]: u = 1 − 0.5 = 0.5 → L(0.5);
    λ_u = 0.3: ‖m^u(y₊)‖₁ + ‖m^u(y₋)‖₁ = (1 + 0) + 1 = 2 (sums over completion tokens) → +0.6.
    KL: D(y₊) = [−0.1, −0.2], D(y₋) = [−0.5], m^d ≡ 1: d = −0.3 + 0.5 = 0.2 → L(0.5 − 0.2) = L(0.3); λ_d = 0.1
    adds 0.1·(2 + 1) = 0.3."""
    hw, hl = t(1.0, 2.0)[None], t(0.5, 0.0)[None]
    mw, ml = torch.tensor([[1, 1]]), torch.tensor([[1, 0]])
    muw, mul = t(1.0, 0.0)[None], t(1.0, 0.0)[None]
    assert_close(sparsepo_loss(hw, hl, mw, ml, muw, mul, 1.0), t(L(0.5)))
    assert_close(sparsepo_loss(hw, hl, mw, ml, muw, mul, 1.0, lambda_u=0.3), t(L(0.5) + 0.6))
    one = torch.ones(1, 2, dtype=f64)
    got = sparsepo_loss(hw, hl, mw, ml, muw, mul, 1.0, m_d_w=one, m_d_l=one, d_w=t(-0.1, -0.2)[None],
                        d_l=t(-0.5, 0.0)[None], lambda_d=0.1)
    assert_close(got, t(L(0.3) + 0.3))


# ---------------------------------------------------------------------------------------------------------------
# Point-wise


def test_kto_trl_formula():
    """TRL KTOTrainer: desirable λ_D(1 − σ(β(h − z₀))), undesirable λ_U(1 − σ(β(z₀ − h))), β = 0.5.
    z₀ = 0 ('none'): both rows 1 − σ(½).
    mismatched log-ratios (0.5, 0.5) → z₀ = ½: 1 − σ(¼) and 1 − σ(¾); λ_D = 2 doubles row 0.
    mismatched log-ratios (−1, −1) → mean −1 clamped to z₀ = 0.
    'batch': mean h = 0 → z₀ = 0."""
    assert_close(value("kto", PT(), beta=0.5, kl_estimate="none"), t(1 - sig(0.5), 1 - sig(0.5)))
    kl = {"kl_policy": t(-1.5, -1.5), "kl_ref": t(-2.0, -2.0)}
    assert_close(value("kto", PT(**kl), beta=0.5), t(1 - sig(0.25), 1 - sig(0.75)))
    assert_close(value("kto", PT(**kl), beta=0.5, desirable_weight=2.0), t(2 * (1 - sig(0.25)), 1 - sig(0.75)))
    neg = {"kl_policy": t(-3.0, -3.0), "kl_ref": t(-2.0, -2.0)}
    assert_close(value("kto", PT(**neg), beta=0.5), t(1 - sig(0.5), 1 - sig(0.5)))
    assert_close(value("kto", PT(), beta=0.5, kl_estimate="batch"), t(1 - sig(0.5), 1 - sig(0.5)))
    with pytest.raises(ValueError, match="kl_policy"):
        O.get("kto")(PT())
    assert O.get("kto").needs().row_options == {"mismatched": True}
    assert O.get("kto", kl_estimate="batch").needs().row_options == {}


def test_kto_reference_point_has_no_gradient():
    kp = t(-1.5, -1.5).requires_grad_(True)
    pol = t(-1.0, -3.0).requires_grad_(True)
    out = O.get("kto", beta=0.5)(PointLogps(pol, torch.tensor([True, False]), t(-2.0, -2.0), kl_policy=kp,
                                            kl_ref=t(-2.0, -2.0)))
    out.loss.backward()
    assert kp.grad is None
    # d/dh of mean: row 0: −½·β·σ'(β(h − z₀)), σ' = σ(1−σ) at ¼
    assert_close(pol.grad[0], t(-0.5 * 0.5 * sig(0.25) * (1 - sig(0.25)))[0])


def test_bco_running_delta():
    """β = 0.5, r = (½, −½): first call, batch-mean reward 0 → δ = 0: rows L(½), −log σ(½) = L(½).
    Second call, h = (3, 1) → r = (1.5, 0.5), batch mean 1 → δ = (0 + 1)/2 = ½: L(1) and −log σ(0) = ln 2.
    Under no_grad δ is read, not updated; delta=False keeps δ = 0."""
    obj = O.get("bco", beta=0.5)
    assert_close(obj(PT()).per_example, t(L(0.5), L(0.5)))
    second = PointLogps(t(1.0, -1.0), torch.tensor([True, False]), t(-2.0, -2.0))
    assert_close(obj(second).per_example, t(L(1.0), math.log(2)))
    with torch.no_grad():
        obj(second)
    assert obj.running_delta == 0.5
    assert_close(value("bco", second, beta=0.5, delta=False), t(L(1.5), L(-0.5)))


def test_bco_bounds_dpo():
    """The paper's bound: −log σ(a) − log σ(−b) ≥ −log σ(a − b) for all a, b."""
    g = torch.Generator().manual_seed(0)
    a, b = 10 * torch.randn(2, 1000, generator=g, dtype=f64)
    import torch.nn.functional as F
    assert (-F.logsigmoid(a) - F.logsigmoid(-b) >= -F.logsigmoid(a - b) - 1e-12).all()


def test_pointwise_dpo_and_ulma():
    """β = 0.5: z = βh + c. c = 0: z = (½, −½) → desirable L(½), undesirable −log σ(½) = L(½).
    c = ½: z = (1, 0) → L(1), ln 2.  ulma: desirable row is the NLL −log π = 1; undesirable L(½)."""
    assert_close(value("pointwise_dpo", PT(), beta=0.5), t(L(0.5), L(0.5)))
    assert_close(value("pointwise_dpo", PT(), beta=0.5, c=0.5), t(L(1.0), math.log(2)))
    assert_close(value("ulma", PT(), beta=0.5), t(1.0, L(0.5)))


@pytest.mark.parametrize("name", ["kto", "bco", "pointwise_dpo", "ulma"])
def test_point_contract(name):
    """Point-wise objectives take PointLogps, need a reference, report per-row losses and a margin metric."""
    obj = O.get(name, kl_estimate="batch") if name == "kto" else O.get(name)
    assert obj.row_kind == "unpaired"
    out = obj(PT())
    assert out.per_example.shape == (2,)
    assert_close(out.loss, out.per_example.mean())
    assert "rewards/margins" in out.metrics and "rewards/accuracies" in out.metrics
    with pytest.raises(ValueError, match="needs reference"):
        obj(PointLogps(t(-1.0, -3.0), torch.tensor([True, False])))
    with pytest.raises(TypeError, match="PointLogps"):
        obj(STD())
    doc = __import__(O.get_class(name).__module__, fromlist=["_"]).__doc__
    assert doc and "Default" in doc
