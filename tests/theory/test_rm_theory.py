"""Reward-model losses on synthetic problems with a known answer (linear models, full batch, fp64, a few seconds).

1. BT maximum likelihood recovers the generating weights to within the Fisher-information bound.
2. MORE vs uniform mixing on three datasets sharing one direction with conflicting private ones (accuracy, ECE).
3. PAL recovers planted prototype ideal points and fits a new user from a few pairs.
4. A linear PRM trained on per-step labels ranks incorrect steps lower and finds the first error.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prefalign.reward import losses as L
from prefalign.reward.losses import RewardScores

f64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors on shared cores: threads only add contention
    yield
    torch.set_num_threads(n)


def lbfgs(params, loss_fn, iters=100):
    opt = torch.optim.LBFGS(params, lr=1, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20)

    def closure():
        opt.zero_grad()
        value = loss_fn()
        value.backward()
        return value

    opt.step(closure)


def bt_pairs(W: torch.Tensor, sizes, g, d):
    """Pairs (chosen, rejected features [n, d], source [n]) labelled by BT with weights W[k] for dataset k."""
    out = []
    for k, n in enumerate(sizes):
        a, b = torch.randn(n, d, generator=g, dtype=f64), torch.randn(n, d, generator=g, dtype=f64)
        a_wins = torch.rand(n, generator=g, dtype=f64) < torch.sigmoid((a - b) @ W[k])
        out.append((torch.where(a_wins[:, None], a, b), torch.where(a_wins[:, None], b, a), torch.full((n,), k)))
    return tuple(torch.cat(t) for t in zip(*out))


def linear_scores(w, hc, hr, **extras):
    return RewardScores((hc @ w)[:, None], (hr @ w)[:, None], extras, hc, hr)


def ece(p: torch.Tensor, bins: int = 10) -> float:
    """Expected calibration error of P(chosen ≻ rejected) = p on pairs whose label is "chosen": confidence
    max(p, 1 − p) in equal-width bins over [0.5, 1], |accuracy − confidence| weighted by bin mass."""
    conf, correct = torch.maximum(p, 1 - p), (p > 0.5).double()
    b = ((conf - 0.5) * 2 * bins).long().clamp(0, bins - 1)
    return sum(float((b == i).double().mean() * (correct[b == i].mean() - conf[b == i].mean()).abs())
               for i in range(bins) if (b == i).any())


# ------------------------------------------------------------------------------------------ 1. BT recovers w


def test_bt_mle_recovers_generating_weights_within_fisher_bound():
    """MLE asymptotics: ŵ − w ≈ N(0, (n·I)⁻¹), I = E[σ(wᵀx)σ(−wᵀx)·x xᵀ], x = φ_a − φ_b. So the Mahalanobis error
    n·(ŵ − w)ᵀ I (ŵ − w) ≈ χ²_d: assert it is below χ²_5's 0.999 quantile, 20.52; and ‖ŵ − w‖ ≤ 3·√(tr I⁻¹ / n)
    (E‖ŵ − w‖² = tr I⁻¹ / n)."""
    d, n = 5, 20000
    g = torch.Generator().manual_seed(0)
    w_true = torch.tensor([1.0, -0.5, 0.8, 0.0, 0.3], dtype=f64)
    hc, hr, _ = bt_pairs(w_true[None], [n], g, d)
    w = torch.zeros(d, dtype=f64, requires_grad=True)
    bt = L.get("bt")
    lbfgs([w], lambda: bt(linear_scores(w, hc, hr))[0])
    x = hc - hr  # the sign of x does not change I
    p = torch.sigmoid(x @ w_true)
    info = (x.T * (p * (1 - p))) @ x / n  # [d, d] Fisher information per pair
    err = w.detach() - w_true
    maha = float(n * err @ info @ err)
    rms = math.sqrt(float(torch.linalg.inv(info).trace()) / n)
    print(f"\nBT recovery: |w_hat - w| = {err.norm():.4f}, sqrt(tr I^-1 / n) = {rms:.4f}, Mahalanobis = {maha:.2f}")
    assert maha < 20.52
    assert err.norm() < 3 * rms


# ------------------------------------------------------------------------------------------ 2. MORE vs uniform


def test_more_vs_uniform_mixing_on_conflicting_datasets():
    """Three BT datasets sharing direction e0, with private directions: D0 (4× larger) prefers +e1, D1 prefers −e1
    (conflict), D2 prefers +e2. Uniform mixing (plain BT on the pooled rows) follows the large D0; MORE weights the
    datasets by the MGDA min-norm point of their head gradients. Both are trained the same way (full-batch gradient
    descent, lr 1, 100 steps, from w = 0). Robust claims asserted: MORE ends Pareto-stationary (min-norm combination
    ≈ 0), keeps the shared direction, raises the worst dataset's accuracy and lowers the mean ECE (the paper's
    calibration claim). The mean accuracy is only printed (it moves little either way)."""
    d = 4
    g = torch.Generator().manual_seed(0)
    W = torch.tensor([[2.0, 2, 0, 0], [2, -2, 0, 0], [2, 0, 2, 0]], dtype=f64)
    hc, hr, src = bt_pairs(W, [2400, 600, 600], g, d)
    tc, tr, tsrc = bt_pairs(W, [2000] * 3, g, d)

    def train(loss):
        w = torch.zeros(d, dtype=f64, requires_grad=True)
        for _ in range(100):
            value, m = loss(linear_scores(w, hc, hr, source=src))
            (grad,) = torch.autograd.grad(value, w)
            with torch.no_grad():
                w -= grad
        return w.detach(), m

    results = {}
    for name in ("bt", "more"):
        w, m = train(L.get(name))
        p = [torch.sigmoid((tc - tr)[tsrc == k] @ w) for k in range(3)]
        acc, cal = [float((q > 0.5).double().mean()) for q in p], [ece(q) for q in p]
        results[name] = (w, acc, cal, m)
        print(f"\n{'uniform' if name == 'bt' else 'MORE'}: w = {[round(v, 3) for v in w.tolist()]}, "
              f"accuracy per dataset {[round(a, 3) for a in acc]} (mean {sum(acc) / 3:.3f}), "
              f"ECE {[round(c, 3) for c in cal]} (mean {sum(cal) / 3:.3f})"
              + (f", lambda {[round(m[f'lambda/{k}'], 3) for k in range(3)]}" if name == "more" else ""))
    (_, acc_u, ece_u, _), (wm, acc_m, ece_m, m) = results["bt"], results["more"]

    # Pareto-stationary: the min-norm combination of the per-dataset gradients at MORE's solution is ≈ 0
    s = linear_scores(wm.clone().requires_grad_(), hc, hr, source=src)
    ell, idx, n, lam, _ = L.get("more")._solve(s)
    G = torch.stack([torch.autograd.grad(ell[idx == k].mean(), s.chosen, retain_graph=True)[0][:, 0] @ hc
                     + torch.autograd.grad(ell[idx == k].mean(), s.rejected, retain_graph=True)[0][:, 0] @ hr
                     for k in range(3)])
    assert (lam @ G).norm() < 0.05 * G.norm(dim=1).max()
    assert abs(sum(m[f"lambda/{k}"] for k in range(3)) - 1) < 1e-9
    assert wm[0] / wm.norm() > 0.9  # the shared direction dominates
    assert min(acc_m) > min(acc_u) + 0.05
    assert sum(ece_m) < 0.6 * sum(ece_u)


# ------------------------------------------------------------------------------------------------------ 3. PAL


def distance_pairs(ideal, n, beta, g):
    """n pairs per ideal point (items uniform in [−3, 3]²), labelled by σ(β(‖b − u‖ − ‖a − u‖)); also the noiseless
    truth (a closer than b)."""
    U = len(ideal)
    a, b = torch.rand(U, n, 2, generator=g, dtype=f64) * 6 - 3, torch.rand(U, n, 2, generator=g, dtype=f64) * 6 - 3
    z = beta * ((b - ideal[:, None]).norm(dim=-1) - (a - ideal[:, None]).norm(dim=-1))
    a_wins = torch.rand(U, n, generator=g, dtype=f64) < torch.sigmoid(z)
    hc, hr = torch.where(a_wins[..., None], a, b).reshape(-1, 2), torch.where(a_wins[..., None], b, a).reshape(-1, 2)
    return hc, hr, torch.arange(U).repeat_interleave(n), ((z > 0) == a_wins).reshape(-1)


def test_pal_recovers_planted_prototypes_and_fits_a_new_user():
    """50 users of 3 planted types (user u has ideal point P*[u mod 3], P* on a circle of radius 1.5), 40 pairs
    each, β = 3; PAL-A with K = 3, D = 2, linear f, fitted by L-BFGS. f(x) = Ax + c is learned, so fitted points are
    mapped back to item space by f⁻¹.

    Identifiability: with softmax mixtures any triangle containing the users' ideal points fits equally well, so
    the prototype parameters P are identified only up to such a triangle; what the data pins down is each type's
    ideal point. Asserted: (a) each planted prototype is recovered, up to permutation, as the mean fitted ideal
    point of its users, within 4·σ_F, σ_F = √tr(I_g⁻¹) the Fisher-information standard error of one type's ideal
    point from its ~680 pairs with the true metric (≈ 0.08; bound ≈ 0.33, a quarter of the prototypes' spacing,
    2.6); (b) the fitted triangle contains every planted prototype; (c) a new user (mixture 0.7, 0.3, 0) fitted from
    20 pairs agrees with their true preference on 1000 held-out pairs far above chance (> 0.8)."""
    K, U, beta = 3, 50, 3.0
    g = torch.Generator().manual_seed(0)
    ang = torch.tensor([90.0, 210.0, 330.0], dtype=f64) * math.pi / 180
    P_true = 1.5 * torch.stack([ang.cos(), ang.sin()], 1)  # [3, 2]
    group = torch.arange(U) % K
    hc, hr, user, _ = distance_pairs(P_true[group], 40, beta, g)
    pal = L.get("pal", num_users=U, num_prototypes=K, dim=2)
    torch.manual_seed(0)
    mod = pal.module(2).double()
    s = RewardScores(torch.zeros(len(user), 1, dtype=f64), torch.zeros(len(user), 1, dtype=f64), {"user": user},
                     hc, hr)
    lbfgs(list(mod.parameters()), lambda: pal(s)[0], iters=200)

    A, c = mod.proj.weight.detach(), mod.proj.bias.detach()
    back = lambda pts: torch.linalg.solve(A, (pts - c).T).T  # f⁻¹ on [N, 2]
    ideal = back(mod.ideal(torch.arange(U)).detach())  # [U, 2] fitted ideal points in item space
    type_ideal = torch.stack([ideal[group == k].mean(0) for k in range(K)])
    sigma = []
    for k in range(K):  # Fisher information of type k's ideal point u from its pairs, metric β·I known
        m = group[user] == k
        a, b, u = hc[m], hr[m], P_true[k]
        z = beta * ((b - u).norm(dim=-1) - (a - u).norm(dim=-1))
        dz = beta * ((u - b) / (u - b).norm(dim=-1, keepdim=True) - (u - a) / (u - a).norm(dim=-1, keepdim=True))
        info = (dz.T * (torch.sigmoid(z) * torch.sigmoid(-z))) @ dz
        sigma.append(math.sqrt(float(torch.linalg.inv(info).trace())))
    err = (type_ideal - P_true).norm(dim=1)
    protos = back(mod.prototypes.detach())
    perm = min(itertools.permutations(range(K)), key=lambda p: float((protos[list(p)] - P_true).norm(dim=1).max()))
    print(f"\nPAL: type ideal-point error {[round(e, 3) for e in err.tolist()]} (sigma_F {[round(x, 3) for x in sigma]}),"
          f" raw prototype error {[round(e, 3) for e in (protos[list(perm)] - P_true).norm(dim=1).tolist()]}")
    assert (err < 4 * torch.tensor(sigma, dtype=f64)).all()
    bary = torch.linalg.solve(torch.cat([protos.T, torch.ones(1, K, dtype=f64)]),
                              torch.cat([P_true.T, torch.ones(1, K, dtype=f64)]))  # [K, K] barycentric coordinates
    assert (bary > -0.05).all()

    u_new = torch.tensor([[0.7, 0.3, 0.0]], dtype=f64) @ P_true
    fc, fr, _, _ = distance_pairs(u_new, 20, beta, g)
    w = L.fit_new_user(mod, fc, fr, steps=200)
    tc, tr, _, truth = distance_pairs(u_new, 1000, beta, g)  # truth: the chosen is really closer to u_new
    acc = float(((mod.logit(tc, tr, weights=w) > 0) == truth).double().mean())
    u_err = float((back(mod.ideal(weights=w[None]).detach()) - u_new).norm())
    print(f"PAL new user (20 pairs): ideal-point error {u_err:.3f}, held-out accuracy vs truth {acc:.3f}")
    assert acc > 0.8


# ------------------------------------------------------------------------------------------------------ 4. PRM


def test_linear_prm_ranks_incorrect_steps_lower_and_finds_the_first_error():
    """Rows of 6 steps with features φ [4]; a step is correct with probability σ(3·w*ᵀφ + 1). A linear PRM
    z = wᵀφ + b trained with the ``prm`` loss (L-BFGS) must: rank truly incorrect steps (w*ᵀφ < −1/3) below correct
    ones (AUC > 0.95 on held-out rows), and find each held-out row's first truly incorrect step (or that there is
    none) in > 85% of rows; the linear fit also recovers w*'s direction."""
    B, S, d = 400, 6, 4
    g = torch.Generator().manual_seed(0)
    w_star = torch.tensor([1.0, -0.5, 0.5, 0.0], dtype=f64)

    def rows():
        phi = torch.randn(B * S, d, generator=g, dtype=f64)
        logit = 3 * phi @ w_star + 1
        y = (torch.rand(B * S, generator=g, dtype=f64) < torch.sigmoid(logit)).double()
        return phi, y, logit > 0, torch.arange(B).repeat_interleave(S)

    phi, y, _, row = rows()
    w = torch.zeros(d + 1, dtype=f64, requires_grad=True)
    prm = L.get("prm")
    score = lambda f: f @ w[:d] + w[d]
    lbfgs([w], lambda: prm(RewardScores(torch.zeros(B, 1, dtype=f64), None, {
        "step_scores": score(phi), "step_labels": y, "step_row": row}))[0])

    phi_t, y_t, good_t, row_t = rows()
    with torch.no_grad():
        z = score(phi_t)
    _, m = prm(RewardScores(torch.zeros(B, 1, dtype=f64), None, {
        "step_scores": z, "step_labels": good_t.double(), "step_row": row_t}))  # metrics against the truth
    auc = float((z[good_t][:, None] > z[~good_t][None, :]).double().mean())
    w = w.detach()
    cos = float(w[:d] @ w_star / (w[:d].norm() * w_star.norm()))
    print(f"\nPRM: AUC {auc:.3f}, first-error accuracy {m['first_error_accuracy']:.3f}, "
          f"step accuracy {m['step_accuracy']:.3f}, cos(w, w*) {cos:.4f}, "
          f"mean score correct {m['score_correct']:.2f} / incorrect {m['score_incorrect']:.2f}")
    assert auc > 0.95 and m["score_incorrect"] < m["score_correct"]
    assert m["first_error_accuracy"] > 0.85
    assert cos > 0.99
