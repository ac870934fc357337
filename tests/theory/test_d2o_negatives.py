"""D2O on a tabular policy with negatives only (methods.md #5 CPU check), exact population loss, no sampling.

Six responses; the human negatives y_l are drawn from responses {0, 1} (in proportion to π_ref), the K = 2 self-
samples from π_ref itself (every ordered pair (a, b) with weight π_ref(a)·π_ref(b)). Claimed by the paper: the
probability mass leaves the negatives while the policy stays anchored to the reference. What the loss implies
exactly: the only thing that separates responses is being a negative, so the policy tends to π_ref conditioned on
the non-negatives, and KL(π‖π_ref) → −log(1 − π_ref(negatives)) (bounded), never further.

Measured (seed 0, π_ref(negatives) = 0.524, α = β = ½, Adam lr 0.05, 2000 steps): D2O leaves 3e-11 of the mass on
the negatives, DPO with each self-sample as "chosen" 3e-7; both have KL = 0.74307 = −log(1 − 0.524).
"""

from __future__ import annotations

import math

import torch

from prefalign import objectives as O
from prefalign.objectives import PairLogps, SampleLogps

f64 = torch.float64
Y, NEG = 6, torch.tensor([0, 1])


def problem():
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(0.5 * torch.randn(Y, generator=g, dtype=f64), -1)
    mu = ref.exp()[NEG] / ref.exp()[NEG].sum()  # distribution of the human negatives
    return ref, mu


def d2o_population(obj, logits, ref, mu):
    lp = torch.log_softmax(logits, -1)
    a, b = (t.flatten() for t in torch.meshgrid(torch.arange(Y), torch.arange(Y), indexing="ij"))
    l = NEG.repeat_interleave(len(a))  # noqa: E741 — every negative × every sample pair
    a, b = a.repeat(len(NEG)), b.repeat(len(NEG))
    weight = mu.repeat_interleave(Y * Y) * ref.exp()[a] * ref.exp()[b]
    lp_s, ref_s = torch.stack([lp[a], lp[b]], 1), torch.stack([ref[a], ref[b]], 1)  # [N, 2]
    out = obj(SampleLogps(lp[l], lp_s, torch.ones_like(lp_s, dtype=torch.bool), ref[l], ref_s)).per_example
    return (weight * out).sum()


def dpo_population(obj, logits, ref, mu):
    lp = torch.log_softmax(logits, -1)
    y, l = (t.flatten() for t in torch.meshgrid(torch.arange(Y), NEG, indexing="ij"))  # noqa: E741
    weight = ref.exp()[y] * mu[l]  # NEG == [0, 1], so mu[l] indexes the negative's weight
    return (weight * obj(PairLogps(lp[y], lp[l], ref[y], ref[l])).per_example).sum()


def adam(loss_fn, ref, steps=2000):
    x = ref.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(x).backward()
        opt.step()
    return torch.softmax(x.detach(), -1)


def test_mass_leaves_negatives_and_kl_stays_bounded():
    ref, mu = problem()
    q = ref.exp()
    keep = torch.ones(Y, dtype=torch.bool)
    keep[NEG] = False
    conditioned = torch.where(keep, q, 0) / q[keep].sum()  # π_ref restricted to the non-negatives
    kl_limit = -math.log(1 - q[NEG].sum().item())
    d2o = adam(lambda x: d2o_population(O.get("d2o", beta=0.5, alpha=0.5), x, ref, mu), ref)
    dpo = adam(lambda x: dpo_population(O.get("dpo", beta=0.5), x, ref, mu), ref)
    for pi in (d2o, dpo):
        kl = (pi * (pi / q).log()).sum().item()
        assert abs(kl - kl_limit) < 1e-4  # bounded: exactly the cost of removing the negatives
        assert 0.5 * (pi - conditioned).abs().sum() < 1e-4  # the non-negatives keep their reference proportions
    assert d2o[NEG].sum() < 1e-9 < dpo[NEG].sum() < 1e-5  # D2O's averaged anchor pushes negatives down faster here


def test_at_the_reference_the_loss_is_ln2_and_its_gradient_lowers_the_negatives():
    ref, mu = problem()
    logits = ref.clone().requires_grad_(True)
    loss = d2o_population(O.get("d2o", beta=0.5, alpha=0.5), logits, ref, mu)
    assert abs(loss.item() - math.log(2)) < 1e-12
    loss.backward()
    assert (logits.grad[NEG] > 0).all() and (logits.grad[2:] < 0).all()  # descent lowers exactly the negatives
