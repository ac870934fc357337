"""Catalogue checks for ONPO (#27), SEA (#28) and f-DPG's running state (#26), tabular and small.

ONPO: on rock–paper–scissors and a random intransitive game (an interior Nash policy x*, built as P = ½ + A/2 with A
skew-symmetric and A x* = 0), the duality gap of the average iterate of optimistic hedge (η = 1, fixed) falls like
1/T, plain multiplicative weights tuned for the horizon (η_T = √(log K / T), the 1/√T no-regret tuning) like 1/√T at
best. The log-log slope over T ∈ [10, 1000] is asserted < −0.8 (OOMD; theory −1) and > −0.7 (MWU; theory −½, with
the erratic constant of a cycling dynamics). The last iterate of OOMD converges too (on 3×3 games it reaches machine
precision), that of MWU with a constant step does not. The registered LLM loss ("onpo") solved to optimality on the
full support reproduces the OOMD iterates exactly.

SEA: a linear contextual dueling bandit (d = 8, 20 arms with fresh Gaussian features every round, θ* of norm √d, a
Bradley–Terry oracle). Regret per round is r(a*) − (r(y₁) + r(y₂))/2 (explore-and-exploit). Thompson-sampled duels
from an anchored ensemble of 10 linear heads beat uniform duels and passive ones (two distinct samples of the
learned policy softmax(r̄/0.5), what online DPO without exploration collects), averaged over 3 seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.online.aggregate import aggregate
from prefalign.online.algos import base
from prefalign.online.algos.base import PolicyBatch, Rollout
from prefalign.online.algos.onpo import duality_gap, mwu, oomd, round_robin, sync_secondary_, win_gain
from prefalign.online.sea import RewardEnsemble, best_response, ensemble_loss, passive_duel, thompson_duel, uniform_duel

f64 = torch.float64
RPS = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]], dtype=f64)  # P[i, j] = P(i ≻ j)
TS = [10, 20, 50, 100, 200, 500, 1000]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def intransitive(K: int, seed: int) -> torch.Tensor:
    """A random symmetric preference game with an interior Nash policy: P = ½ + A/(2 max|A|), A x* = 0."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(K, K, generator=g, dtype=f64)
    B = B - B.T
    x = torch.rand(K, generator=g, dtype=f64) + 0.5
    x = x / x.sum()
    v, one = B @ x, torch.ones(K, dtype=f64)
    A = B - torch.outer(v, one) + torch.outer(one, v)  # still skew, and A x = v − v + (xᵀBx)·1 = 0
    return 0.5 + 0.5 * A / A.abs().max()


def loglog_slope(xs, ys) -> float:
    x, y = torch.tensor(xs, dtype=f64).log(), torch.tensor(ys, dtype=f64).log()
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / x.square().sum())


@pytest.mark.parametrize("game", ["rps", "random5"])
def test_onpo_duality_gap_rates(game):
    pref = RPS if game == "rps" else intransitive(5, seed=2)
    K = pref.shape[0]
    assert (pref + pref.T - 1).abs().max() < 1e-12
    log_pi0 = torch.linspace(1, -1, K, dtype=f64)  # start away from the equilibrium
    iterates = oomd(pref, max(TS), eta=1.0, log_pi0=log_pi0)  # [T, K]; a fixed η: one run serves every T
    gap_oomd = [float(duality_gap(pref, iterates[:T].mean(0))) for T in TS]
    gap_mwu = [float(duality_gap(pref, mwu(pref, T, math.sqrt(math.log(K) / T), log_pi0).mean(0))) for T in TS]
    s_oomd, s_mwu = loglog_slope(TS, gap_oomd), loglog_slope(TS, gap_mwu)
    print(f"{game}: slope OOMD {s_oomd:.2f} ({gap_oomd[0]:.1e} → {gap_oomd[-1]:.1e}), "
          f"MWU {s_mwu:.2f} ({gap_mwu[0]:.1e} → {gap_mwu[-1]:.1e})")
    assert s_oomd < -0.8
    assert s_mwu > -0.7
    assert gap_oomd[-1] < gap_mwu[-1] / 5


@pytest.mark.parametrize("game", ["rps", "random3"])
def test_onpo_last_iterate_converges(game):
    pref = RPS if game == "rps" else intransitive(3, seed=1)
    log_pi0 = torch.linspace(1, -1, 3, dtype=f64)
    last_oomd = [float(duality_gap(pref, pi)) for pi in oomd(pref, 1000, 1.0, log_pi0)[[99, 999]]]
    last_mwu = float(duality_gap(pref, mwu(pref, 1000, 0.1, log_pi0)[-1]))
    print(f"{game}: last-iterate gap OOMD T=100 {last_oomd[0]:.1e}, T=1000 {last_oomd[1]:.1e}; MWU {last_mwu:.2f}")
    assert last_oomd[1] < 1e-6 < last_oomd[0]
    assert last_mwu > 0.3  # MWU cycles out towards the boundary


@pytest.mark.parametrize("game", ["rps", "random5"])
def test_onpo_regression_loss_reproduces_the_oomd_step(game):
    """The registered "onpo" loss with the secondary iterate π̂_t in the reference slot, minimised over the logits on
    the full support, gives π_{t+1}; logit averaging then gives π̂_{t+1}: the same iterates as ``oomd``."""
    pref = RPS if game == "rps" else intransitive(5, seed=2)
    K, eta, steps = pref.shape[0], 0.5, 12
    algo = base.get("onpo", eta=eta)
    expected = oomd(pref, steps, eta, torch.linspace(1, -1, K, dtype=f64))  # [steps, K]
    z = torch.log_softmax(torch.linspace(1, -1, K, dtype=f64), -1)  # π_1 = π̂_1
    z_hat = z.clone()
    for t in range(steps):
        torch.testing.assert_close(torch.softmax(z, -1), expected[t], atol=1e-7, rtol=0)
        z = solve_onpo_iteration(algo, z, z_hat, win_gain(pref, torch.softmax(z, -1)))
        sync_secondary_([z_hat], [z])  # π̂_{t+1} ∝ (π̂_t·π_{t+1})^{1/2}


def solve_onpo_iteration(algo, z: torch.Tensor, z_hat: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Minimise the "onpo" loss over the logits, every response once (one group), rewards = the exact gain."""
    K = z.shape[0]
    y, group, mask = torch.arange(K), torch.zeros(K, dtype=torch.long), torch.ones(K, 1, dtype=torch.bool)
    old, ref = torch.log_softmax(z, -1)[y][:, None], torch.log_softmax(z_hat, -1)[y][:, None]  # [K, 1]
    ro = Rollout(rewards=gain, group=group, mask=mask, old_logp=old, ref_logp=ref)
    adv = algo.advantages(ro)["advantages"]
    w = z.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=50, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        b = PolicyBatch(logp=torch.log_softmax(w, -1)[y][:, None], old_logp=old, mask=mask, advantages=adv,
                        group=group, rewards=gain, ref_logp=ref)
        loss_sum, units = aggregate(algo.loss(b)[0], mask, algo.loss_type)
        (loss_sum / units).backward()
        return loss_sum / units

    opt.step(closure)
    return w.detach()


def test_round_robin_is_the_in_group_win_rate():
    pref = torch.tensor([[[0.5, 1.0, 0.2], [0.0, 0.5, 0.4], [0.8, 0.6, 0.5]]], dtype=f64)  # [1, 3, 3]
    torch.testing.assert_close(round_robin(pref), torch.tensor([0.6, 0.2, 0.7], dtype=f64))


# -- SEA --------------------------------------------------------------------------------------------------------
D, ARMS, ROUNDS, HEADS = 8, 20, 120, 10


def run_bandit(method: str, seed: int) -> float:
    """Cumulative E&E regret of one run; the ensemble learns from every label whichever arms were chosen."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(D, generator=g)
    theta = theta / theta.norm() * math.sqrt(D)  # rewards ~ N(0, 1) per arm
    ens = RewardEnsemble(D, HEADS, hidden=0, generator=torch.Generator().manual_seed(seed + 100))
    opt = torch.optim.Adam(ens.parameters(), lr=0.03)
    won, lost, regret = [], [], 0.0
    for _ in range(ROUNDS):
        phi = torch.randn(ARMS, D, generator=g) / math.sqrt(D)  # [G, H] frozen features of this round's candidates
        r = phi @ theta  # [G]
        with torch.no_grad():
            rew = ens(phi[None])  # [E, 1, G]
        if method == "sea":
            a, b = thompson_duel(rew, g)
        elif method == "uniform":
            a, b = uniform_duel(1, ARMS, g)
        else:  # passive: two distinct samples of the learned policy softmax(r̄ / 0.5)
            pi = torch.softmax(rew.mean(0)[0] / 0.5, -1)
            a = torch.multinomial(pi, 1, generator=g)
            b = torch.multinomial(pi.index_fill(0, a, 0.0), 1, generator=g)
        a, b = int(a[0]), int(b[0])
        regret += float(r.max() - (r[a] + r[b]) / 2)
        first_wins = bool(torch.rand((), generator=g) < torch.sigmoid(r[a] - r[b]))  # the BT oracle
        won.append(phi[a] if first_wins else phi[b])
        lost.append(phi[b] if first_wins else phi[a])
        if method == "uniform":
            continue  # its choices do not depend on the model: skip the learning
        W, L = torch.stack(won), torch.stack(lost)
        for _ in range(3):  # a few SGD steps per round on a replay batch (oat: 5)
            idx = torch.randint(len(won), (min(64, len(won)),), generator=g)
            loss = ensemble_loss(ens, W[idx], L[idx], num_queries=len(won), lam=0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return regret


def test_sea_thompson_duels_have_lower_regret():
    regret = {m: sum(run_bandit(m, s) for s in range(3)) / 3 for m in ("sea", "passive", "uniform")}
    print("cumulative regret over", ROUNDS, "rounds (mean of 3 seeds):", {k: round(v, 1) for k, v in regret.items()})
    assert regret["sea"] < 0.7 * regret["passive"]
    assert regret["sea"] < 0.4 * regret["uniform"]


def test_duel_rules():
    rewards = torch.tensor([[[0.0, 1.0, 0.5]], [[0.0, 1.0, 0.9]], [[1.5, 0.0, 0.1]]])  # [E=3, P=1, G=3]
    for seed in range(6):
        first, second = thompson_duel(rewards, torch.Generator().manual_seed(seed))
        assert int(first) in (0, 1) and int(second) in (0, 1) and int(first) != int(second)  # members' argmaxes
    clash = torch.tensor([[[0.0, 1.0, 0.5]], [[0.0, 1.0, 0.9]]])  # every member agrees on arm 1
    first, second = thompson_duel(clash, torch.Generator().manual_seed(0))
    assert int(first) == int(second) == 1
    assert int(thompson_duel(clash, torch.Generator().manual_seed(0), allow_second_best=True)[1]) in (0, 2)
    assert int(thompson_duel(clash, torch.Generator().manual_seed(0), random_on_clash=True)[1]) != 1
    assert [int(t) for t in passive_duel(1)] == [0, 1] and int(best_response(rewards)) == 1
    first, second = uniform_duel(100, 5, torch.Generator().manual_seed(0))
    assert (first != second).all()


def test_fdpg_baseline_state_round_trips():
    algo, other = base.get("fdpg", divergence="js", baseline_window=6), base.get("fdpg", divergence="js")
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        ro = Rollout(rewards=torch.rand(4, generator=g, dtype=f64), group=torch.tensor([0, 0, 1, 1]),
                     mask=torch.ones(4, 1, dtype=torch.bool), old_logp=-torch.rand(4, 1, generator=g, dtype=f64),
                     ref_logp=-torch.rand(4, 1, generator=g, dtype=f64))
        algo.advantages(ro)
    assert algo.baseline() != 0 and sum(n for _, n in algo._window) <= 6 + 4
    other.load_state(algo.state())
    assert other.baseline() == algo.baseline()
    out_a, out_b = algo.advantages(ro), other.advantages(ro)
    torch.testing.assert_close(out_a["advantages"], out_b["advantages"])
    with pytest.raises(ValueError, match="divergence"):
        base.get("fdpg", divergence="hellinger")
    with pytest.raises(ValueError, match="eta"):
        base.get("onpo", eta=0.0)
