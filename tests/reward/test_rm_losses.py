"""Reward-model losses on hand-derived scores: closed-form values, autograd vs hand-derived gradients, the MORE
min-norm solver vs closed form and brute force, PAL's sign and shapes, multi-head masking, registry errors.

Notation: Δ = r_c − r_r − m; softplus(x) = ln(1 + eˣ); −log σ(Δ) = softplus(−Δ).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from prefalign.reward import losses as L
from prefalign.reward.losses import RewardScores
from prefalign.reward.losses.prm import first_error

f64 = torch.float64
sp = lambda x: math.log1p(math.exp(x))  # softplus


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on 2 shared cores: threads only add contention
    yield
    torch.set_num_threads(n)


def col(*v, grad=False):
    return torch.tensor(v, dtype=f64).reshape(-1, 1).requires_grad_(grad)


def pairs(rc, rr, **extras):
    return RewardScores(col(*rc, grad=True), col(*rr, grad=True), {k: torch.tensor(v) for k, v in extras.items()})


# ---------------------------------------------------------------------------------------------------------------- bt


def test_bt_closed_form_and_gradient():
    # rows: Δ = 1, 0, −3 → ℓ = ln(1+e⁻¹), ln 2, ln(1+e³)
    s = pairs([1.0, 0.0, -2.0], [0.0, 0.0, 1.0])
    loss, m = L.get("bt")(s)
    assert_close(loss, torch.tensor((sp(-1) + math.log(2) + sp(3)) / 3, dtype=f64))
    loss.backward()
    # ∂ℓ/∂r_c = −σ(−Δ), ∂ℓ/∂r_r = +σ(−Δ), each over B = 3
    d = torch.tensor([1.0, 0.0, -3.0], dtype=f64)
    assert_close(s.chosen.grad[:, 0], -torch.sigmoid(-d) / 3)
    assert_close(s.rejected.grad[:, 0], torch.sigmoid(-d) / 3)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["margin"] == pytest.approx(-2 / 3)
    assert m["chosen"] == pytest.approx(-1 / 3) and m["rejected"] == pytest.approx(1 / 3)
    allr = torch.tensor([1.0, 0.0, -2.0, 0.0, 0.0, 1.0], dtype=f64)
    assert m["reward_mean"] == pytest.approx(0.0) and m["reward_std"] == pytest.approx(allr.std(unbiased=False).item())


def test_bt_single_pair_and_untrained_head():
    assert L.get("bt")(pairs([1.0], [0.0]))[0].item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert L.get("bt")(pairs([0.3, -2.0], [0.3, -2.0]))[0].item() == pytest.approx(math.log(2))  # r_c = r_r: ln 2


def test_bt_margin():
    s = pairs([1.0, 2.0], [0.0, 0.0], margin=[0.5, 3.0])  # Δ = 0.5, −1
    assert L.get("bt")(s)[0].item() == pytest.approx((sp(-0.5) + sp(1.0)) / 2)
    assert L.get("bt", use_margin=False)(s)[0].item() == pytest.approx((sp(-1) + sp(-2)) / 2)
    assert L.get("bt").needs().optional == ("margin",) and L.get("bt", use_margin=False).needs().optional == ()


def test_bt_centering_value_and_gradient():
    c = 0.1
    s = pairs([1.0, 0.0], [0.0, 0.5])  # Δ = 1, −0.5; r_c + r_r = 1, 0.5
    loss, m = L.get("bt", center_rewards_coefficient=c)(s)
    assert loss.item() == pytest.approx((sp(-1) + sp(0.5)) / 2 + c * (1 + 0.25) / 2)
    assert m["center_penalty"] == pytest.approx(0.625)
    loss.backward()
    d, tot = torch.tensor([1.0, -0.5], dtype=f64), torch.tensor([1.0, 0.5], dtype=f64)
    assert_close(s.chosen.grad[:, 0], (-torch.sigmoid(-d) + 2 * c * tot) / 2)
    assert_close(s.rejected.grad[:, 0], (torch.sigmoid(-d) + 2 * c * tot) / 2)
    assert L.get("bt", center_rewards_coefficient=0.0)(pairs([1.0], [0.0]))[0].item() == pytest.approx(sp(-1))


def test_openrlhf_logexp_is_bt_up_to_numerics():
    """OpenRLHF's LogExpLoss log(1 + exp(r_r − r_c)) is −log σ(r_c − r_r): equal where the naive form is finite."""
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(64, 1, generator=g, dtype=f64) * 5, torch.randn(64, 1, generator=g, dtype=f64) * 5
    naive = torch.log(1 + torch.exp(rr - rc)).mean()
    assert_close(L.get("bt")(RewardScores(rc, rr))[0], naive)
    far = RewardScores(col(-800.0), col(0.0))  # Δ = −800: exp overflows in the naive form, not in ours
    assert torch.isinf(torch.log(1 + torch.exp(far.rejected - far.chosen))).all()
    assert L.get("bt")(far)[0].item() == pytest.approx(800.0)


# ------------------------------------------------------------------------------------------------- mse / multihead


def test_mse_closed_form_and_gradient():
    s = RewardScores(col(1.0, 2.0, grad=True), None, {"targets": torch.tensor([0.0, 4.0], dtype=f64)})
    loss, m = L.get("mse")(s)
    assert loss.item() == pytest.approx((1 + 4) / 2) and m["mse"] == pytest.approx(2.5) and m["mae"] == 1.5
    loss.backward()
    assert_close(s.chosen.grad[:, 0], torch.tensor([2 * 1.0, 2 * -2.0], dtype=f64) / 2)  # 2(r − t)/B
    with pytest.raises(ValueError, match="NaN targets"):
        L.get("mse")(RewardScores(col(1.0), None, {"targets": torch.tensor([math.nan])}))


def test_multihead_bt_masks_nan_targets():
    rc = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=f64, requires_grad=True)
    rr = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=f64, requires_grad=True)
    t = torch.tensor([[1.0, math.nan], [0.0, 1.0]], dtype=f64)  # row 0 does not label head 1; row 1 prefers rejected
    s = RewardScores(rc, rr, {"targets": t})
    # head 0: Δ = 1 (t=1) and Δ = −1 (t=0) → both softplus(−1); head 1: only row 1, Δ = 2 → softplus(−2)
    L0, L1 = sp(-1), sp(-2)
    loss, m = L.get("multihead")(s)
    assert loss.item() == pytest.approx(0.5 * L0 + 0.5 * L1)
    assert m["head0/loss"] == pytest.approx(L0) and m["head1/loss"] == pytest.approx(L1)
    assert m["head0/accuracy"] == 1.0 and m["accuracy"] == 1.0
    assert L.get("multihead", head_weights=(0.25, 0.75))(s)[0].item() == pytest.approx(0.25 * L0 + 0.75 * L1)
    loss.backward()
    assert torch.isfinite(rc.grad).all() and rc.grad[0, 1] == 0 and rr.grad[0, 1] == 0  # masked: no gradient
    assert rc.grad[1, 1].item() == pytest.approx(-0.5 * torch.sigmoid(torch.tensor(-2.0)).item())
    # no targets: plain BT on every head
    plain = L.get("multihead")(RewardScores(rc, rr))[0]
    assert plain.item() == pytest.approx(0.5 * (sp(-1) + sp(1)) / 2 + 0.5 * (sp(0) + sp(-2)) / 2)


def test_multihead_mse_masks_nan_targets():
    r = torch.tensor([[1.0, 5.0], [3.0, 0.0], [0.0, 1.0]], dtype=f64, requires_grad=True)
    t = torch.tensor([[0.0, math.nan], [1.0, 2.0], [math.nan, math.nan]], dtype=f64)
    loss = L.get("multihead", kind="mse", num_heads=2)
    assert loss.rows == "scored" and loss.needs() == L.RewardNeeds(extras=("targets",), num_heads=2)
    value, m = loss(RewardScores(r, None, {"targets": t}))
    # head 0: rows 0, 1 → (1 + 4)/2; head 1: row 1 → 4
    assert value.item() == pytest.approx(0.5 * 2.5 + 0.5 * 4.0) and m["head1/mse"] == 4.0
    value.backward()
    assert torch.isfinite(r.grad).all() and (r.grad[2] == 0).all() and r.grad[0, 1] == 0


# ------------------------------------------------------------------------------------------------------------- MORE


def norm2(lam, G):
    return float((lam.to(G.dtype) @ G).pow(2).sum())


def test_min_norm_two_vectors_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        g1, g2 = torch.randn(2, 5, generator=g, dtype=f64)
        if trial == 0:
            g2 = 3 * g1  # same direction: the optimum is the shorter vector, λ₁ = 1 (clip)
        lam = L.min_norm_weights(torch.stack([g1, g2]))
        expect = min(max(float((g2 - g1) @ g2) / float((g1 - g2).pow(2).sum()), 0.0), 1.0)
        assert lam[0].item() == pytest.approx(expect, abs=1e-9) and lam.sum().item() == pytest.approx(1.0)


def test_min_norm_three_vectors_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    grid = [(i / 200, j / 200) for i in range(201) for j in range(201 - i)]
    W = torch.tensor([(a, b, 1 - a - b) for a, b in grid], dtype=f64)  # [N, 3] simplex grid, step 1/200
    for _ in range(8):
        G = torch.randn(3, 4, generator=g, dtype=f64)
        lam = L.min_norm_weights(G, max_iter=2000)
        assert (lam >= 0).all() and lam.sum().item() == pytest.approx(1.0)
        brute = (W @ G).pow(2).sum(1)
        assert norm2(lam, G) <= brute.min().item() + 1e-9  # FW finds at least the best grid point
        assert norm2(lam, G) >= brute.min().item() - 1e-3 * G.pow(2).sum(1).max().item()  # and is not below it by more than grid error
    assert L.min_norm_weights(torch.randn(1, 3)).tolist() == [1.0]


def more_batch(seed=0, B=12, H=4, n_src=3):
    g = torch.Generator().manual_seed(seed)
    hc, hr = torch.randn(B, H, generator=g, dtype=f64), torch.randn(B, H, generator=g, dtype=f64)
    w = torch.randn(H, generator=g, dtype=f64, requires_grad=True)
    src = torch.arange(B) % n_src + 10  # source ids need not start at 0
    return hc, hr, w, src


def test_more_head_gradients_from_features_are_autograd_gradients():
    """g_k computed from features (no backward) equals ∇_w L_k for the linear head r = w·h."""
    hc, hr, w, src = more_batch()
    s = RewardScores((hc @ w)[:, None], (hr @ w)[:, None], {"source": src}, hc, hr)
    ell, idx, n, lam, ids = L.get("more")._solve(s)
    for k in range(len(ids)):
        (gk,) = torch.autograd.grad(ell[idx == k].mean(), w, retain_graph=True)
        coef = -torch.sigmoid(-(hc - hr)[idx == k] @ w.detach()) / n[k]
        assert_close(coef @ (hc - hr)[idx == k], gk)
    G = torch.stack([torch.autograd.grad(ell[idx == k].mean(), w, retain_graph=True)[0] for k in range(len(ids))])
    assert_close(lam, L.min_norm_weights(G))


def test_more_loss_is_lambda_weighted_with_lambda_detached():
    hc, hr, w, src = more_batch(seed=2)
    s = RewardScores((hc @ w)[:, None], (hr @ w)[:, None], {"source": src}, hc, hr)
    more = L.get("more")
    loss, m = more(s)
    ell, idx, n, lam, ids = more._solve(s)
    Lk = torch.stack([ell[idx == k].mean() for k in range(3)])
    assert_close(loss, (lam * Lk).sum())
    assert sum(m[f"lambda/{i}"] for i in (10, 11, 12)) == pytest.approx(1.0)
    assert m["loss/11"] == pytest.approx(Lk[1].item())
    (gw,) = torch.autograd.grad(loss, w, retain_graph=True)
    expect = sum(lam[k] * torch.autograd.grad(Lk[k], w, retain_graph=True)[0] for k in range(3))
    assert_close(gw, expect)  # no gradient flows through λ
    # one source: λ = 1 and MORE is BT
    one = RewardScores(s.chosen, s.rejected, {"source": torch.zeros(12, dtype=torch.long)}, hc, hr)
    assert_close(more(one)[0], L.get("bt")(one)[0])


# -------------------------------------------------------------------------------------------------------------- PAL


def pal_with(P, user_logits):
    loss = L.get("pal", num_users=user_logits.shape[0], num_prototypes=P.shape[0], dim=P.shape[1])
    mod = loss.module(P.shape[1]).double()
    with torch.no_grad():  # f = identity, so distances are in item space
        mod.proj.weight.copy_(torch.eye(P.shape[1]))
        mod.proj.bias.zero_()
        mod.prototypes.copy_(P)
        mod.user_logits.copy_(user_logits)
    return loss, mod


def test_pal_logit_sign_value_and_shapes():
    P = torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=f64)
    loss, mod = pal_with(P, torch.tensor([[0.0, 0.0], [20.0, -20.0]], dtype=f64))  # user 0 at (2, 0), user 1 ≈ (0, 0)
    assert_close(mod.ideal(torch.tensor([0, 1])), torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=f64))
    hc = torch.tensor([[2.0, 1.0], [0.0, 1.0], [2.0, 5.0]], dtype=f64)  # chosen: distance 1, 1 and 5 from u
    hr = torch.tensor([[5.0, 4.0], [0.0, 3.0], [0.0, 0.0]], dtype=f64)  # rejected: 5, 3 and 2 → logits 4, 2, −3
    s = RewardScores(torch.zeros(3, 1), torch.zeros(3, 1), {"user": torch.tensor([0, 1, 0])}, hc, hr)
    z = mod.logit(hc, hr, torch.tensor([0, 1, 0]))
    assert z.shape == (3,)
    assert_close(z, torch.tensor([4.0, 2.0, -3.0], dtype=f64))  # chosen closer to the ideal point → positive
    value, m = loss(s)
    assert value.item() == pytest.approx((sp(-4) + sp(-2) + sp(3)) / 3)
    assert m["accuracy"] == pytest.approx(2 / 3) and mod.reward(hc, torch.tensor([0, 1, 0])).shape == (3,)
    assert loss.needs() == L.RewardNeeds(features=True, extras=("user",), num_heads=None)
    assert mod.user_logits.shape == (2, 2) and mod.prototypes.shape == (2, 2)
    assert loss.module(2) is mod  # the loss keeps (and returns) the module it trains with


def test_pal_requires_module_and_valid_users():
    loss = L.get("pal", num_users=2, dim=2)
    s = RewardScores(torch.zeros(1, 1), torch.zeros(1, 1), {"user": torch.tensor([1])}, torch.ones(1, 3),
                     torch.zeros(1, 3))
    with pytest.raises(ValueError, match="call loss.module"):
        loss(s)
    loss.module(3)
    assert torch.isfinite(loss(s)[0])
    with pytest.raises(ValueError, match="user ids must be in 0..1"):
        loss(RewardScores(s.chosen, s.rejected, {"user": torch.tensor([2])}, s.features_chosen, s.features_rejected))
    mlp = L.get("pal", num_users=2, dim=2, mlp_hidden=8).module(3)
    assert isinstance(mlp.proj, torch.nn.Sequential)


def test_fit_new_user_only_fits_w():
    P = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=f64)
    _, mod = pal_with(P, torch.zeros(1, 3, dtype=f64))
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, 2, generator=g, dtype=f64) * 4, torch.rand(40, 2, generator=g, dtype=f64) * 4
    u = P[1]  # the new user is prototype 1
    closer = (a - u).norm(dim=1) < (b - u).norm(dim=1)
    hc, hr = torch.where(closer[:, None], a, b), torch.where(closer[:, None], b, a)
    w = L.fit_new_user(mod, hc, hr, steps=40, lr=0.3)
    assert w.shape == (3,) and int(w.argmax()) == 1
    assert all(torch.equal(v, mod.state_dict()[k]) for k, v in before.items())  # module untouched


# -------------------------------------------------------------------------------------------------------------- PRM


def prm_scores(z, y, row, B):
    return RewardScores(torch.zeros(B, 1, dtype=f64), None, {
        "step_scores": torch.tensor(z, dtype=f64, requires_grad=True), "step_labels": torch.tensor(y, dtype=f64),
        "step_row": torch.tensor(row)})


def test_prm_closed_form_reductions_and_gradient():
    # row 0: steps (z=2, y=1), (z=−1, y=0); row 1: step (z=1, y=0)
    s = prm_scores([2.0, -1.0, 1.0], [1.0, 0.0, 0.0], [0, 0, 1], B=2)
    ell = [sp(-2), sp(-1), sp(1)]  # BCE: y=1 → softplus(−z), y=0 → softplus(z)
    loss, m = L.get("prm")(s)
    assert loss.item() == pytest.approx(sum(ell) / 3)
    assert L.get("prm", reduction="row")(s)[0].item() == pytest.approx(((ell[0] + ell[1]) / 2 + ell[2]) / 2)
    loss.backward()
    z, y = s.extras["step_scores"], s.extras["step_labels"]
    assert_close(z.grad, (torch.sigmoid(z.detach()) - y) / 3)  # ∂BCE/∂z = σ(z) − y
    assert m["step_accuracy"] == pytest.approx(2 / 3) and m["first_error_accuracy"] == pytest.approx(0.5)
    assert m["score_correct"] == 2.0 and m["score_incorrect"] == 0.0


def test_first_error_index():
    bad = torch.tensor([False, True, True, False, False, True])
    row = torch.tensor([0, 0, 0, 1, 2, 2])  # row 0: first bad at 1; row 1: none; row 2: at 1; row 3: no steps
    assert first_error(bad, row, 4).tolist() == [1, -1, 1, -1]
    shuffled = torch.tensor([3, 4, 0, 5, 1, 2])  # steps of different rows interleaved, order within rows kept
    assert first_error(bad[shuffled], row[shuffled], 4).tolist() == [1, -1, 1, -1]


# ------------------------------------------------------------------------------------------------ contract, registry


def valid_scores(name: str, seed=0, B=6):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)
    hc, hr = r(B, 4), r(B, 4)
    if name == "mse":
        return RewardScores(r(B, 1), None, {"targets": r(B)})
    if name == "prm":
        return RewardScores(r(B, 1), None, {"step_scores": r(2 * B), "step_labels": (r(2 * B) > 0).double(),
                                            "step_row": torch.arange(2 * B) // 2})
    if name == "multihead":
        t = (r(B, 3) > 0).double()
        t[0, 1] = math.nan
        return RewardScores(r(B, 3), r(B, 3), {"targets": t, "margin": r(B).abs()})
    return RewardScores(r(B, 1), r(B, 1), {"margin": r(B).abs(), "source": torch.arange(B) % 2,
                                           "user": torch.arange(B) % 3}, hc, hr)


@pytest.mark.parametrize("name", ["bt", "mse", "multihead", "more", "pal", "prm"])
def test_loss_is_mean_of_per_example(name):
    loss = L.get(name, **({"num_users": 3} if name == "pal" else {}))
    if name == "pal":
        loss.module(4).double()
    s = valid_scores(name)
    value, metrics = loss(s)
    pe = loss.per_example(s)
    assert value.dim() == 0 and pe.shape == (6,) and all(isinstance(v, float) for v in metrics.values())
    assert_close(pe.mean(), value)


def test_half_precision_scores_are_upcast():
    s = RewardScores(torch.tensor([[1.0]], dtype=torch.bfloat16), torch.tensor([[0.0]], dtype=torch.bfloat16))
    value, _ = L.get("bt")(s)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(sp(-1), rel=1e-6)


def test_names_and_exports():
    assert L.names() == ["bt", "more", "mse", "multihead", "pal", "prm"]
    assert {L.get_class(n).rows for n in L.names() if n != "multihead"} == {"pairs", "scored", "steps"}
    assert sorted(L.__all__) == sorted(set(L.__all__))
    assert all(hasattr(L, n) for n in L.__all__)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown reward loss 'btt'") as e:
        L.get("btt")
    assert "did you mean 'bt'" in str(e.value) and "known: bt, more" in str(e.value)
    with pytest.raises(ValueError, match="no hyperparameter 'center_reward_coefficient'") as e:
        L.get("bt", center_reward_coefficient=0.1)
    assert "did you mean 'center_rewards_coefficient'" in str(e.value)
    with pytest.raises(ValueError, match="num_users"):
        L.get("pal")  # required, from the data
    for name, bad in [("bt", {"center_rewards_coefficient": -1.0}), ("multihead", {"kind": "hinge"}),
                      ("multihead", {"num_heads": 2, "head_weights": (1.0,)}), ("prm", {"reduction": "sum"}),
                      ("pal", {"num_users": 0}), ("more", {"max_iter": 0})]:
        with pytest.raises(ValueError):
            L.get(name, **bad)
    with pytest.raises(ValueError, match="registered twice"):
        L.register(type("Other", (L.RewardLoss,), {"name": "bt"}))


def test_input_checks_name_what_is_missing():
    with pytest.raises(ValueError, match="needs pair rows"):
        L.get("bt")(RewardScores(col(1.0), None))
    with pytest.raises(ValueError, match="1 output"):
        L.get("bt")(RewardScores(torch.zeros(2, 2), torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="source, features_chosen, features_rejected"):
        L.get("more")(RewardScores(col(1.0), col(0.0)))
    with pytest.raises(ValueError, match="targets"):
        L.get("mse")(RewardScores(col(1.0), None))
    with pytest.raises(ValueError, match="rejected must be None"):
        L.get("mse")(RewardScores(col(1.0), col(0.0), {"targets": torch.zeros(1)}))
    with pytest.raises(ValueError, match="extras\\['margin'\\] has 2 rows"):
        L.get("bt")(RewardScores(col(1.0), col(0.0), {"margin": torch.zeros(2)}))
    with pytest.raises(ValueError, match="step_row must be in 0..0"):
        L.get("prm")(prm_scores([1.0], [1.0], [3], B=1))


def test_bt_matches_bce_on_many_random_scores():
    """−log σ(Δ) is BCE-with-logits at target 1 (TRL's and OpenRLHF's PairWiseLoss), on odd shapes."""
    for B in (1, 7, 33):
        rc, rr, m = (torch.randn(B, 1, dtype=f64) for _ in range(3))
        ours = L.get("bt")(RewardScores(rc, rr, {"margin": m[:, 0]}))[0]
        ref = F.binary_cross_entropy_with_logits(rc - rr - m, torch.ones_like(rc))
        assert_close(ours, ref)

