"""PoFT on a toy SFT set with 30% corrupted targets (methods.md #12 CPU check), exact population loss.

Five prompts, four single-token responses each (T = 1). For every prompt, 70% of its examples have the right
target (response 0) and 30% a corrupted one (response 1). A frozen "aligned" model gives the right target
probability 0.7 and the corrupted one 0.02 (0.14 to each of the others). Cross-entropy's optimum copies the data:
π(corrupted) = 0.3. PoFT weighs each example's CE gradient by τ = p_al/(p_al + π) (T = 1), small for targets the
aligned model finds unlikely, so the corrupted target keeps less mass. Measured: π_PoFT(corrupted) = 0.121 on
every prompt (Adam, 600 steps; 0.1208 after 4000), against 0.300 for CE.
"""

from __future__ import annotations

import torch

from prefalign import objectives as O
from prefalign.objectives import PairLogps
from prefalign.objectives.poft import poft_tau

f64 = torch.float64
P, K = 5, 4
FREQ = torch.tensor([0.7, 0.3], dtype=f64)  # right target, corrupted target
ALIGNED = torch.log(torch.tensor([0.7, 0.02, 0.14, 0.14], dtype=f64))


def population(logits: torch.Tensor, obj) -> torch.Tensor:
    """Σ_prompts Σ_targets freq·loss; logits [P, K]."""
    lp = torch.log_softmax(logits, -1)[:, :2].reshape(-1)  # [P·2] log π(right), log π(corrupted) per prompt
    weight = FREQ.repeat(P)
    if obj is None:  # token-mean cross-entropy (T = 1)
        return -(weight * lp).sum()
    batch = PairLogps(lp, lp.detach(), chosen_tokens=torch.ones_like(lp),
                      extras={"aligned_chosen": ALIGNED[:2].repeat(P)[:, None]})
    return (weight * obj(batch).per_example).sum()


def fit(obj, steps: int = 600) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = (0.1 * torch.randn(P, K, generator=g, dtype=f64)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        population(x, obj).backward()
        opt.step()
    return torch.softmax(x.detach(), -1)


def test_poft_down_weights_corrupted_targets():
    ce, poft = fit(None), fit(O.get("poft"))
    assert ((ce[:, 1] - 0.3).abs() < 1e-3).all()  # CE copies the 30% corruption
    assert (poft[:, 1] < 0.15).all() and (poft[:, 0] > 0.85).all()  # PoFT keeps much less of it
    # At the start (π uniform = ¼) the corrupted examples' gradient weight τ is far below the clean ones'.
    pol = torch.log(torch.full((2,), 0.25, dtype=f64))
    tau = poft_tau(pol, torch.ones(2, dtype=f64), ALIGNED[:2, None])
    assert tau[1] < 0.1 < 0.7 < tau[0]  # 0.02/(0.02 + 0.25) = 0.074; 0.7/(0.7 + 0.25) = 0.737
